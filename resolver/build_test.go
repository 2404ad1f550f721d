package resolver_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
)

// The seed scenario: Service default/service-test, ClusterIP 10.3.241.152,
// one unnamed port 80 with targetPort http, and the EndpointSlice the
// EndpointSlice controller writes for its two pods (the slice port of an
// unnamed Service port is named "").
func seedService() *corev1.Service {
	return service("default", "service-test", []string{"10.3.241.152"},
		corev1.ServicePort{Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")})
}

func seedSlice() *discoveryv1.EndpointSlice {
	return slice("default", "service-test-x7k2p", "service-test", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{slicePort("", corev1.ProtocolTCP, 8080)},
		discoveryv1.Endpoint{
			Addresses:  []string{"10.0.1.2"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			NodeName:   ptr("node1"),
		},
		discoveryv1.Endpoint{
			Addresses:  []string{"10.0.2.2"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			NodeName:   ptr("node2"),
		},
	)
}

func ptr[T any](v T) *T { return &v }

// service returns a ClusterIP Service on clusterIPs.
func service(ns, name string, clusterIPs []string, ports ...corev1.ServicePort) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIPs: clusterIPs,
			Ports:      ports,
		},
	}
	if len(clusterIPs) > 0 {
		svc.Spec.ClusterIP = clusterIPs[0]
	}
	return svc
}

func servicePort(name string, proto corev1.Protocol, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: target}
}

// slice returns an EndpointSlice labelled as belonging to Service ns/svc
// (no label when svc is "").
func slice(ns, name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
	if svc != "" {
		es.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	return es
}

func slicePort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

// endpoints returns endpoints with no conditions set, which the API reads
// as ready and serving.
func endpoints(addrs ...string) []discoveryv1.Endpoint {
	eps := make([]discoveryv1.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = discoveryv1.Endpoint{Addresses: []string{a}}
	}
	return eps
}

func addrPort(tb testing.TB, s string) netip.AddrPort {
	tb.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		tb.Fatalf("ParseAddrPort(%q): %v", s, err)
	}
	return ap
}

func addrs(eps []resolver.Endpoint) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.Addr.String()
	}
	return out
}

// checkProblems checks that problems match want one to one, in order, each
// problem containing its wanted substring.
func checkProblems(tb testing.TB, problems []resolver.Problem, want []string) {
	tb.Helper()
	got := make([]string, len(problems))
	for i, p := range problems {
		got[i] = p.String()
	}
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.Contains(got[i], want[i])
	}
	if !ok {
		tb.Errorf("Build problems:\n\t%s\nwant problems containing:\n\t%s",
			strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func TestBuildLookup(t *testing.T) {
	type lookup struct {
		proto     resolver.Protocol
		addr      string   // ClusterIP:port
		missing   bool     // no Service port owns it
		service   string   // want ServicePort.Service, if set
		endpoints []string // want Endpoints
	}
	v4 := discoveryv1.AddressTypeIPv4
	v6 := discoveryv1.AddressTypeIPv6
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	web := func(ns string) *corev1.Service {
		return service(ns, "web", []string{"10.3.240.10"}, servicePort("", tcp, 80, intstr.FromInt32(8080)))
	}
	port8080 := []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}

	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		lookups  []lookup
		problems []string // substrings, one per problem, in order
		nservice int      // want Snapshot.Services
	}{
		{
			name:     "seed",
			services: []*corev1.Service{seedService()},
			slices:   []*discoveryv1.EndpointSlice{seedSlice()},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.241.152:80", service: "default/service-test", endpoints: []string{"10.0.1.2:8080", "10.0.2.2:8080"}},
				{proto: resolver.TCP, addr: "10.3.241.152:8080", missing: true},
				{proto: resolver.TCP, addr: "10.3.241.152:81", missing: true},
				{proto: resolver.TCP, addr: "10.3.241.153:80", missing: true},
				{proto: resolver.UDP, addr: "10.3.241.152:80", missing: true},
			},
			nservice: 1,
		},
		{
			name: "UDP and TCP on the same port are distinct",
			services: []*corev1.Service{service("kube-system", "dns", []string{"10.3.240.10"},
				servicePort("dns", udp, 53, intstr.FromString("dns")),
				servicePort("dns-tcp", tcp, 53, intstr.FromString("dns-tcp")))},
			slices: []*discoveryv1.EndpointSlice{slice("kube-system", "dns-1", "dns", v4,
				[]discoveryv1.EndpointPort{slicePort("dns", udp, 1053), slicePort("dns-tcp", tcp, 2053)},
				endpoints("10.0.1.5")...)},
			lookups: []lookup{
				{proto: resolver.UDP, addr: "10.3.240.10:53", endpoints: []string{"10.0.1.5:1053"}},
				{proto: resolver.TCP, addr: "10.3.240.10:53", endpoints: []string{"10.0.1.5:2053"}},
			},
			nservice: 1,
		},
		{
			name: "a slice port of the same name but another protocol does not match",
			services: []*corev1.Service{service("default", "syslog", []string{"10.3.240.11"},
				servicePort("syslog", udp, 514, intstr.FromInt32(514)))},
			slices: []*discoveryv1.EndpointSlice{slice("default", "syslog-1", "syslog", v4,
				[]discoveryv1.EndpointPort{slicePort("syslog", tcp, 514)}, endpoints("10.0.1.5")...)},
			lookups: []lookup{
				{proto: resolver.UDP, addr: "10.3.240.11:514", endpoints: []string{}},
				{proto: resolver.TCP, addr: "10.3.240.11:514", missing: true},
			},
			problems: []string{`EndpointSlice default/syslog-1: has no port named "syslog" (UDP); its endpoints do not serve Service default/syslog port 514`},
			nservice: 1,
		},
		{
			name: "a missing protocol means TCP",
			services: []*corev1.Service{service("default", "web", []string{"10.3.240.10"},
				servicePort("", "", 80, intstr.FromInt32(8080)))},
			slices: []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4,
				[]discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080))}}, endpoints("10.0.1.2")...)},
			lookups:  []lookup{{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{"10.0.1.2:8080"}}},
			nservice: 1,
		},
		{
			name:     "named targetPort resolves per endpoint",
			services: []*corev1.Service{seedService()},
			slices: []*discoveryv1.EndpointSlice{
				// Two pod templates name different container ports "http"
				// (a rolling update that moved the port): the controller
				// writes one slice per port number.
				slice("default", "service-test-a", "service-test", v4, port8080, endpoints("10.0.1.2")...),
				slice("default", "service-test-b", "service-test", v4,
					[]discoveryv1.EndpointPort{slicePort("", tcp, 9090)}, endpoints("10.0.2.2")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.241.152:80", endpoints: []string{"10.0.1.2:8080", "10.0.2.2:9090"}},
			},
			nservice: 1,
		},
		{
			name: "multi-port Service",
			services: []*corev1.Service{service("default", "app", []string{"10.3.240.20"},
				servicePort("http", tcp, 80, intstr.FromString("http")),
				servicePort("metrics", tcp, 9100, intstr.FromString("metrics")))},
			slices: []*discoveryv1.EndpointSlice{slice("default", "app-1", "app", v4,
				[]discoveryv1.EndpointPort{
					slicePort("metrics", tcp, 9101),
					slicePort("http", tcp, 8080),
					slicePort("admin", tcp, 9000), // no Service port of that name
				},
				endpoints("10.0.1.2", "10.0.2.2")...)},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.20:80", endpoints: []string{"10.0.1.2:8080", "10.0.2.2:8080"}},
				{proto: resolver.TCP, addr: "10.3.240.20:9100", endpoints: []string{"10.0.1.2:9101", "10.0.2.2:9101"}},
				{proto: resolver.TCP, addr: "10.3.240.20:9000", missing: true},
			},
			nservice: 1,
		},
		{
			name:     "endpoints over several slices, sorted and deduplicated",
			services: []*corev1.Service{web("default")},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "web-1", "web", v4, port8080, endpoints("10.0.3.2", "10.0.1.2")...),
				// 10.0.1.2 is in two slices while the controller moves it.
				slice("default", "web-2", "web", v4, port8080, endpoints("10.0.1.2", "10.0.2.2")...),
				slice("default", "web-3", "web", v4, port8080, endpoints("10.0.1.10")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{"10.0.1.2:8080", "10.0.1.10:8080", "10.0.2.2:8080", "10.0.3.2:8080"}},
			},
			nservice: 1,
		},
		{
			name:     "slices join by service-name label and namespace",
			services: []*corev1.Service{web("default")},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "anything-7q2x", "web", v4, port8080, endpoints("10.0.1.2")...),
				slice("prod", "web-1", "web", v4, port8080, endpoints("10.0.9.9")...),
				slice("default", "web-2", "other", v4, port8080, endpoints("10.0.8.8")...),
				slice("default", "web-3", "", v4, port8080, endpoints("10.0.7.7")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.10:80", service: "default/web", endpoints: []string{"10.0.1.2:8080"}},
			},
			problems: []string{"EndpointSlice default/web-3: no kubernetes.io/service-name label"},
			nservice: 1,
		},
		{
			name:     "a Service without slices has no endpoints",
			services: []*corev1.Service{web("default")},
			lookups:  []lookup{{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{}}},
			nservice: 1,
		},
		{
			name: "headless and ExternalName Services are skipped",
			services: []*corev1.Service{
				service("default", "headless", []string{corev1.ClusterIPNone}, servicePort("", tcp, 80, intstr.FromInt32(8080))),
				{
					ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "external"},
					Spec: corev1.ServiceSpec{
						Type:         corev1.ServiceTypeExternalName,
						ExternalName: "example.com",
						Ports:        []corev1.ServicePort{servicePort("", tcp, 80, intstr.FromInt32(80))},
					},
				},
			},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "headless-1", "headless", v4, port8080, endpoints("10.0.1.2")...),
			},
			nservice: 0,
		},
		{
			name: "SCTP and unknown protocols are reported, other ports served",
			services: []*corev1.Service{service("default", "mixed", []string{"10.3.240.30"},
				servicePort("sctp", corev1.ProtocolSCTP, 9999, intstr.FromInt32(9999)),
				servicePort("icmp", "ICMP", 7, intstr.FromInt32(7)),
				servicePort("http", tcp, 80, intstr.FromInt32(8080)))},
			slices: []*discoveryv1.EndpointSlice{slice("default", "mixed-1", "mixed", v4,
				[]discoveryv1.EndpointPort{slicePort("sctp", corev1.ProtocolSCTP, 9999), slicePort("http", tcp, 8080)},
				endpoints("10.0.1.2")...)},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.30:80", endpoints: []string{"10.0.1.2:8080"}},
				{proto: resolver.SCTP, addr: "10.3.240.30:9999", missing: true},
			},
			problems: []string{
				"Service default/mixed: port 9999: SCTP is not supported",
				`Service default/mixed: port 7: protocol "ICMP" is not supported`,
			},
			nservice: 1,
		},
		{
			name: "a bad clusterIP is reported",
			services: []*corev1.Service{
				service("default", "bad", []string{"10.3.241.300"}, servicePort("", tcp, 80, intstr.FromInt32(8080))),
				web("default"),
			},
			slices: []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, port8080, endpoints("10.0.1.2")...)},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{"10.0.1.2:8080"}},
			},
			problems: []string{`Service default/bad: clusterIP "10.3.241.300" is not an IP address`},
			nservice: 1,
		},
		{
			name:     "loopback, link-local and unspecified endpoints are refused (CVE-2020-8558)",
			services: []*corev1.Service{web("default")},
			slices: []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, port8080,
				endpoints("127.0.0.1", "10.0.1.2", "169.254.169.254", "0.0.0.0", "::ffff:127.0.0.2", "pod-1")...)},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{"10.0.1.2:8080"}},
			},
			problems: []string{
				"Service default/web: endpoint 127.0.0.1 (EndpointSlice default/web-1) is a loopback address; refused, never dialled",
				"Service default/web: endpoint 169.254.169.254 (EndpointSlice default/web-1) is a link-local address; refused",
				"unspecified address; refused", // 0.0.0.0
				"Service default/web: endpoint 127.0.0.2 (EndpointSlice default/web-1) is a loopback address; refused",
				`EndpointSlice default/web-1: address "pod-1" is not an IP address`,
			},
			nservice: 1,
		},
		{
			name: "an IPv6 clusterIP takes only IPv6 slices",
			services: []*corev1.Service{service("default", "web6", []string{"fd00:3::10"},
				servicePort("", tcp, 80, intstr.FromInt32(8080)))},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "web6-v4", "web6", v4, port8080, endpoints("10.0.1.2")...),
				slice("default", "web6-v6", "web6", v6, port8080, endpoints("fd00:0:1::2", "::1", "fe80::1", "::")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "[fd00:3::10]:80", endpoints: []string{"[fd00:0:1::2]:8080"}},
			},
			problems: []string{
				"endpoint ::1 (EndpointSlice default/web6-v6) is a loopback address",
				"endpoint fe80::1 (EndpointSlice default/web6-v6) is a link-local address",
				"unspecified address; refused", // ::
			},
			nservice: 1,
		},
		{
			name: "dual-stack clusterIPs each take their own family",
			services: []*corev1.Service{service("default", "web", []string{"10.3.240.10", "fd00:3::10"},
				servicePort("", tcp, 80, intstr.FromInt32(8080)))},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "web-v4", "web", v4, port8080, endpoints("10.0.1.2", "10.0.2.2")...),
				slice("default", "web-v6", "web", v6, port8080, endpoints("fd00:0:1::2")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.10:80", endpoints: []string{"10.0.1.2:8080", "10.0.2.2:8080"}},
				{proto: resolver.TCP, addr: "[fd00:3::10]:80", endpoints: []string{"[fd00:0:1::2]:8080"}},
			},
			nservice: 1,
		},
		{
			name: "a ClusterIP:port served twice keeps the first",
			services: []*corev1.Service{
				service("default", "a", []string{"10.3.240.40"}, servicePort("", tcp, 80, intstr.FromInt32(8080))),
				service("default", "b", []string{"10.3.240.40"},
					servicePort("http", tcp, 80, intstr.FromInt32(8080)),
					servicePort("alt", tcp, 81, intstr.FromInt32(8081))),
			},
			slices: []*discoveryv1.EndpointSlice{
				slice("default", "a-1", "a", v4, port8080, endpoints("10.0.1.2")...),
				slice("default", "b-1", "b", v4,
					[]discoveryv1.EndpointPort{slicePort("http", tcp, 8080), slicePort("alt", tcp, 8081)},
					endpoints("10.0.2.2")...),
			},
			lookups: []lookup{
				{proto: resolver.TCP, addr: "10.3.240.40:80", service: "default/a", endpoints: []string{"10.0.1.2:8080"}},
				{proto: resolver.TCP, addr: "10.3.240.40:81", service: "default/b", endpoints: []string{"10.0.2.2:8081"}},
			},
			problems: []string{"Service default/b: TCP 10.3.240.40:80 already served by Service default/a (as old, and first by namespace/name); ignored"},
			nservice: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, problems := resolver.Build(tt.services, tt.slices, nil, resolver.Topology{})
			checkProblems(t, problems, tt.problems)
			if got := snap.Services(); got != tt.nservice {
				t.Errorf("Services() = %d, want %d", got, tt.nservice)
			}
			nports, nendpoints := 0, 0
			for _, l := range tt.lookups {
				ap := addrPort(t, l.addr)
				sp, ok := snap.Lookup(l.proto, ap)
				if l.missing {
					if ok {
						t.Errorf("Lookup(%v, %v) = %v, want not found", l.proto, ap, sp)
					}
					continue
				}
				if !ok {
					t.Errorf("Lookup(%v, %v) not found, want endpoints %v", l.proto, ap, l.endpoints)
					continue
				}
				nports++
				nendpoints += len(sp.Endpoints)
				if sp.Protocol != l.proto || sp.ClusterIP != ap.Addr() || sp.Port != ap.Port() {
					t.Errorf("Lookup(%v, %v) = %v, want a port for %v %v", l.proto, ap, sp, l.proto, ap)
				}
				if l.service != "" && sp.Service != l.service {
					t.Errorf("Lookup(%v, %v).Service = %q, want %q", l.proto, ap, sp.Service, l.service)
				}
				if got := addrs(sp.Endpoints); !slices.Equal(got, l.endpoints) {
					t.Errorf("Lookup(%v, %v).Endpoints = %v, want %v", l.proto, ap, got, l.endpoints)
				}
				if !snap.HasIP(ap.Addr()) {
					t.Errorf("HasIP(%v) = false, want true", ap.Addr())
				}
			}
			// Every port a case serves is among its lookups.
			if got := len(snap.Ports()); got != nports {
				t.Errorf("len(Ports()) = %d, want %d", got, nports)
			}
			if got := snap.Endpoints(); got != nendpoints {
				t.Errorf("Endpoints() = %d, want %d", got, nendpoints)
			}
		})
	}
}

// TestBuildConditions checks the endpoint conditions Build records and which
// endpoints it lets new connections use (kube-proxy's rules, KEP-1669).
func TestBuildConditions(t *testing.T) {
	yes, no := ptr(true), ptr(false)
	cond := func(addr string, ready, serving, terminating *bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{
			Addresses:  []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
		}
	}
	ep := func(addr string, ready, serving, terminating bool) resolver.Endpoint {
		return resolver.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr(addr), 8080),
			Ready: ready, Serving: serving, Terminating: terminating}
	}
	tests := []struct {
		name      string
		endpoints []discoveryv1.Endpoint
		want      []resolver.Endpoint
		usable    []string
	}{
		{
			name: "ready ones only",
			endpoints: []discoveryv1.Endpoint{
				cond("10.0.1.2", yes, yes, no),
				cond("10.0.2.2", no, yes, no), // starting, not ready yet
				cond("10.0.3.2", yes, yes, no),
			},
			want: []resolver.Endpoint{
				ep("10.0.1.2", true, true, false),
				ep("10.0.2.2", false, true, false),
				ep("10.0.3.2", true, true, false),
			},
			usable: []string{"10.0.1.2:8080", "10.0.3.2:8080"},
		},
		{
			name: "ready ones before terminating ones",
			endpoints: []discoveryv1.Endpoint{
				cond("10.0.1.2", no, yes, yes),
				cond("10.0.2.2", yes, yes, no),
			},
			want: []resolver.Endpoint{
				ep("10.0.1.2", false, true, true),
				ep("10.0.2.2", true, true, false),
			},
			usable: []string{"10.0.2.2:8080"},
		},
		{
			name: "none ready: serving and terminating",
			endpoints: []discoveryv1.Endpoint{
				cond("10.0.1.2", no, yes, yes),
				cond("10.0.2.2", no, no, yes), // terminating, no longer serving
				cond("10.0.3.2", no, yes, no), // serving but not ready: not terminating
				cond("10.0.4.2", no, yes, yes),
			},
			want: []resolver.Endpoint{
				ep("10.0.1.2", false, true, true),
				ep("10.0.2.2", false, false, true),
				ep("10.0.3.2", false, true, false),
				ep("10.0.4.2", false, true, true),
			},
			usable: []string{"10.0.1.2:8080", "10.0.4.2:8080"},
		},
		{
			name: "never a non-serving one",
			endpoints: []discoveryv1.Endpoint{
				cond("10.0.1.2", no, no, yes),
				cond("10.0.2.2", no, no, no),
			},
			want: []resolver.Endpoint{
				ep("10.0.1.2", false, false, true),
				ep("10.0.2.2", false, false, false),
			},
			usable: []string{},
		},
		{
			name:      "nil ready and serving mean true, nil terminating false",
			endpoints: []discoveryv1.Endpoint{cond("10.0.1.2", nil, nil, nil)},
			want:      []resolver.Endpoint{ep("10.0.1.2", true, true, false)},
			usable:    []string{"10.0.1.2:8080"},
		},
		{
			name:      "nil serving of a terminating endpoint means serving",
			endpoints: []discoveryv1.Endpoint{cond("10.0.1.2", no, nil, yes)},
			want:      []resolver.Endpoint{ep("10.0.1.2", false, true, true)},
			usable:    []string{"10.0.1.2:8080"},
		},
		{
			name:      "nil terminating of a not ready endpoint means not terminating",
			endpoints: []discoveryv1.Endpoint{cond("10.0.1.2", no, yes, nil)},
			want:      []resolver.Endpoint{ep("10.0.1.2", false, true, false)},
			usable:    []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := seedSlice()
			es.Endpoints = tt.endpoints
			snap, problems := resolver.Build([]*corev1.Service{seedService()}, []*discoveryv1.EndpointSlice{es}, nil, resolver.Topology{})
			checkProblems(t, problems, nil)
			sp, ok := snap.Lookup(resolver.TCP, addrPort(t, "10.3.241.152:80"))
			if !ok {
				t.Fatal("Lookup(TCP, 10.3.241.152:80) not found")
			}
			if !reflect.DeepEqual(sp.Endpoints, tt.want) {
				t.Errorf("Endpoints = %+v, want %+v", sp.Endpoints, tt.want)
			}
			if got := addrs(sp.Usable()); !slices.Equal(got, tt.usable) {
				t.Errorf("Usable() = %v, want %v", got, tt.usable)
			}
		})
	}
}

func TestBuildEndpointDetails(t *testing.T) {
	es := seedSlice()
	es.Endpoints[0].Zone = ptr("zone-a")
	snap, _ := resolver.Build([]*corev1.Service{seedService()}, []*discoveryv1.EndpointSlice{es}, nil, resolver.Topology{})
	sp, ok := snap.Lookup(resolver.TCP, addrPort(t, "10.3.241.152:80"))
	if !ok {
		t.Fatal("Lookup(TCP, 10.3.241.152:80) not found")
	}
	want := []resolver.Endpoint{
		{Addr: addrPort(t, "10.0.1.2:8080"), NodeName: "node1", Zone: "zone-a", Ready: true, Serving: true},
		{Addr: addrPort(t, "10.0.2.2:8080"), NodeName: "node2", Ready: true, Serving: true},
	}
	if !reflect.DeepEqual(sp.Endpoints, want) {
		t.Errorf("Endpoints = %+v, want %+v", sp.Endpoints, want)
	}
	if got, want := sp.String(), "default/service-test (TCP 10.3.241.152:80)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := fmt.Sprint(resolver.Protocol(9)), "Protocol(9)"; got != want {
		t.Errorf("Protocol(9).String() = %q, want %q", got, want)
	}
}

// TestBuildSkipsHeadlessSlices: a slice labelled service.kubernetes.io/headless
// is never proxied to (kube-proxy's rule), even when it names a ClusterIP
// Service; it still feeds DNS for headless Services.
func TestBuildSkipsHeadlessSlices(t *testing.T) {
	es := seedSlice()
	es.Labels[corev1.IsHeadlessService] = ""
	snap, _ := resolver.Build([]*corev1.Service{seedService()}, []*discoveryv1.EndpointSlice{es}, nil, resolver.Topology{})
	sp, ok := snap.Lookup(resolver.TCP, addrPort(t, "10.3.241.152:80"))
	if !ok {
		t.Fatal("Lookup(TCP, 10.3.241.152:80) not found")
	}
	if len(sp.Endpoints) != 0 {
		t.Errorf("Endpoints = %v, want none from a slice labelled %s", sp.Endpoints, corev1.IsHeadlessService)
	}
}
