package dns_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	miekg "github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/dns"
)

func ptr[T any](v T) *T { return &v }

// clusterIPService returns a ClusterIP Service on ips, primary family first.
func clusterIPService(ns, name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  ips[0],
			ClusterIPs: ips,
			Ports:      ports,
		},
	}
}

// headlessService returns a Service with clusterIP: None.
func headlessService(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return clusterIPService(ns, name, []string{corev1.ClusterIPNone}, ports...)
}

func externalNameService(ns, name, target string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target},
	}
}

func servicePort(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
}

// endpointSlice returns an EndpointSlice of Service ns/svc.
func endpointSlice(ns, name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func slicePort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(port)}
}

// endpoint returns an endpoint with hostname ("" for none); ready nil
// leaves the condition unset, which the API reads as ready.
func endpoint(addr, hostname string, ready *bool) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	if hostname != "" {
		ep.Hostname = ptr(hostname)
	}
	return ep
}

// build makes a snapshot the way kubetun does.
func build(tb testing.TB, services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *resolver.Snapshot {
	tb.Helper()
	snap, problems := resolver.Build(services, slices, nil, resolver.Topology{})
	for _, p := range problems {
		tb.Logf("Build: %s", p)
	}
	return snap
}

// testSnapshot is the cluster the answer tests ask about.
func testSnapshot(tb testing.TB) *resolver.Snapshot {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	pg := []discoveryv1.EndpointPort{slicePort("pg", tcp, 15432)}
	return build(tb,
		[]*corev1.Service{
			clusterIPService("default", "web", []string{"10.3.240.20"},
				servicePort("http", tcp, 80, 8080), servicePort("dns", udp, 53, 1053)),
			clusterIPService("default", "plain", []string{"10.3.240.21"}, servicePort("", tcp, 8080, 8080)),
			clusterIPService("default", "dual", []string{"10.3.240.30", "fd00:10:96::30"}, servicePort("https", tcp, 443, 8443)),
			clusterIPService("default", "six", []string{"fd00:10:96::40"}, servicePort("http", tcp, 80, 8080)),
			headlessService("default", "db", servicePort("pg", tcp, 5432, 15432)),
			headlessService("default", "lonely", servicePort("pg", tcp, 5432, 15432)),
			externalNameService("default", "ext", "www.example.com"),
			externalNameService("default", "extip", "192.0.2.1"),
			clusterIPService("kube-system", "kube-dns", []string{"10.3.240.10"},
				servicePort("dns", udp, 53, 53), servicePort("dns-tcp", tcp, 53, 53)),
		},
		[]*discoveryv1.EndpointSlice{
			endpointSlice("default", "db-v4", "db", v4, pg,
				endpoint("10.0.1.5", "db-0", ptr(true)),
				endpoint("10.0.1.6", "db-1", ptr(true)),
				endpoint("10.0.1.7", "", nil),
				endpoint("10.0.1.8", "db-3", ptr(false)),
			),
			endpointSlice("default", "db-v6", "db", v6, pg,
				endpoint("fd00:1::5", "db-0", ptr(true)),
			),
			// Endpoints of a ClusterIP Service are named too, as CoreDNS
			// names them: for their PTR records.
			endpointSlice("default", "web-1", "web", v4,
				[]discoveryv1.EndpointPort{slicePort("http", tcp, 8080)},
				endpoint("10.0.2.2", "web-0", nil),
				endpoint("10.0.2.3", "", nil),
				endpoint("10.0.2.4", "", ptr(false))),
			endpointSlice("default", "dual-6", "dual", v6,
				[]discoveryv1.EndpointPort{slicePort("https", tcp, 8443)},
				endpoint("fd00:2::3", "", nil)),
		})
}

var testZone = dns.Zone{
	Domain:       "cluster.local",
	ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.240.0/20"), netip.MustParsePrefix("fd00:10:96::/112")},
	NameServer:   netip.MustParseAddr("10.3.240.10"),
}

// rev returns the reverse (PTR) name of ip.
func rev(ip string) string {
	name, err := miekg.ReverseAddr(ip)
	if err != nil {
		panic(err)
	}
	return name
}

// rrString formats rr as "owner TYPE data", without TTL and class.
func rrString(rr miekg.RR) string {
	h := rr.Header()
	data := strings.TrimPrefix(rr.String(), h.String())
	return h.Name + " " + miekg.TypeToString[h.Rrtype] + " " + data
}

func rrStrings(rrs []miekg.RR) []string {
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = rrString(rr)
	}
	slices.Sort(out)
	return out
}

const (
	noerror  = miekg.RcodeSuccess
	nxdomain = miekg.RcodeNameError
)

func TestAnswer(t *testing.T) {
	A, AAAA, SRV, PTR, CNAME := miekg.TypeA, miekg.TypeAAAA, miekg.TypeSRV, miekg.TypePTR, miekg.TypeCNAME
	tests := []struct {
		name    string
		qtype   uint16
		forward bool
		rcode   int
		answer  []string // any order; none means NODATA for NOERROR
		extra   []string // any order
		chase   string   // Result.Chase
	}{
		// ClusterIP Services.
		{name: "web.default.svc.cluster.local.", qtype: A, answer: []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "web.default.svc.cluster.local", qtype: A, answer: []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "WEB.Default.SVC.Cluster.LOCAL.", qtype: A, answer: []string{"WEB.Default.SVC.Cluster.LOCAL. A 10.3.240.20"}},
		{name: "web.default.svc.cluster.local.", qtype: AAAA},
		{name: "web.default.svc.cluster.local.", qtype: miekg.TypeMX},
		{name: "web.default.svc.cluster.local.", qtype: miekg.TypeANY, answer: []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "dual.default.svc.cluster.local.", qtype: A, answer: []string{"dual.default.svc.cluster.local. A 10.3.240.30"}},
		{name: "dual.default.svc.cluster.local.", qtype: AAAA, answer: []string{"dual.default.svc.cluster.local. AAAA fd00:10:96::30"}},
		{name: "six.default.svc.cluster.local.", qtype: A},
		{name: "six.default.svc.cluster.local.", qtype: AAAA, answer: []string{"six.default.svc.cluster.local. AAAA fd00:10:96::40"}},
		{name: "kube-dns.kube-system.svc.cluster.local.", qtype: A, answer: []string{"kube-dns.kube-system.svc.cluster.local. A 10.3.240.10"}},
		{name: "nosuch.default.svc.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "web.nosuch.svc.cluster.local.", qtype: A, rcode: nxdomain},
		// A ClusterIP Service's endpoints, as CoreDNS names them.
		{name: "web-0.web.default.svc.cluster.local.", qtype: A, answer: []string{"web-0.web.default.svc.cluster.local. A 10.0.2.2"}},
		{name: "10-0-2-2.web.default.svc.cluster.local.", qtype: A, rcode: nxdomain}, // named web-0
		{name: "10-0-2-3.web.default.svc.cluster.local.", qtype: A, answer: []string{"10-0-2-3.web.default.svc.cluster.local. A 10.0.2.3"}},
		{name: "10-0-2-3.web.default.svc.cluster.local.", qtype: AAAA},
		{name: "10-0-2-4.web.default.svc.cluster.local.", qtype: A, rcode: nxdomain}, // not ready
		{name: "fd00-2--3.dual.default.svc.cluster.local.", qtype: AAAA, answer: []string{"fd00-2--3.dual.default.svc.cluster.local. AAAA fd00:2::3"}},
		{name: "a.b.c.web.default.svc.cluster.local.", qtype: A, rcode: nxdomain},

		// SRV of a ClusterIP Service.
		{name: "_http._tcp.web.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "_HTTP._TCP.web.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"_HTTP._TCP.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "_dns._udp.web.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"_dns._udp.web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local."},
			extra:  []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "_dns._tcp.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_http._udp.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_http._sctp.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_http._quic.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_nope._tcp.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "http.tcp.web.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_http._tcp.web.default.svc.cluster.local.", qtype: A}, // the name exists
		{name: "_tcp.web.default.svc.cluster.local.", qtype: SRV},     // above an SRV name
		{name: "_udp.web.default.svc.cluster.local.", qtype: A},       // above an SRV name
		{name: "_sctp.web.default.svc.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "_tcp.plain.default.svc.cluster.local.", qtype: A, rcode: nxdomain}, // unnamed port: no SRV
		{name: "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.", qtype: SRV,
			answer: []string{"_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local. SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."},
			extra:  []string{"kube-dns.kube-system.svc.cluster.local. A 10.3.240.10"}},
		{name: "_https._tcp.dual.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"_https._tcp.dual.default.svc.cluster.local. SRV 0 100 443 dual.default.svc.cluster.local."},
			extra: []string{"dual.default.svc.cluster.local. A 10.3.240.30",
				"dual.default.svc.cluster.local. AAAA fd00:10:96::30"}},

		// SRV of a Service's own name: one per port (a port number on
		// TCP and UDP is one record), unnamed ports too.
		{name: "web.default.svc.cluster.local.", qtype: SRV,
			answer: []string{
				"web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local.",
				"web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local.",
			},
			extra: []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "Plain.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"Plain.default.svc.cluster.local. SRV 0 100 8080 plain.default.svc.cluster.local."},
			extra:  []string{"plain.default.svc.cluster.local. A 10.3.240.21"}},
		{name: "kube-dns.kube-system.svc.cluster.local.", qtype: SRV,
			answer: []string{"kube-dns.kube-system.svc.cluster.local. SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."},
			extra:  []string{"kube-dns.kube-system.svc.cluster.local. A 10.3.240.10"}},
		{name: "dual.default.svc.cluster.local.", qtype: SRV,
			answer: []string{"dual.default.svc.cluster.local. SRV 0 100 443 dual.default.svc.cluster.local."},
			extra: []string{"dual.default.svc.cluster.local. A 10.3.240.30",
				"dual.default.svc.cluster.local. AAAA fd00:10:96::30"}},
		{name: "db.default.svc.cluster.local.", qtype: SRV,
			answer: []string{
				"db.default.svc.cluster.local. SRV 0 100 15432 10-0-1-7.db.default.svc.cluster.local.",
				"db.default.svc.cluster.local. SRV 0 100 15432 db-0.db.default.svc.cluster.local.",
				"db.default.svc.cluster.local. SRV 0 100 15432 db-1.db.default.svc.cluster.local.",
			},
			extra: []string{
				"10-0-1-7.db.default.svc.cluster.local. A 10.0.1.7",
				"db-0.db.default.svc.cluster.local. A 10.0.1.5",
				"db-0.db.default.svc.cluster.local. AAAA fd00:1::5",
				"db-1.db.default.svc.cluster.local. A 10.0.1.6",
			}},
		{name: "lonely.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},

		// Headless Services: the ready endpoints.
		{name: "db.default.svc.cluster.local.", qtype: A, answer: []string{
			"db.default.svc.cluster.local. A 10.0.1.5",
			"db.default.svc.cluster.local. A 10.0.1.6",
			"db.default.svc.cluster.local. A 10.0.1.7",
		}},
		{name: "db.default.svc.cluster.local.", qtype: AAAA, answer: []string{"db.default.svc.cluster.local. AAAA fd00:1::5"}},
		{name: "db.default.svc.cluster.local.", qtype: miekg.TypeTXT},
		{name: "lonely.default.svc.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "db-0.db.default.svc.cluster.local.", qtype: A, answer: []string{"db-0.db.default.svc.cluster.local. A 10.0.1.5"}},
		{name: "DB-0.db.default.svc.cluster.local.", qtype: AAAA, answer: []string{"DB-0.db.default.svc.cluster.local. AAAA fd00:1::5"}},
		{name: "db-1.db.default.svc.cluster.local.", qtype: AAAA},
		{name: "10-0-1-7.db.default.svc.cluster.local.", qtype: A, answer: []string{"10-0-1-7.db.default.svc.cluster.local. A 10.0.1.7"}},
		{name: "10-0-1-5.db.default.svc.cluster.local.", qtype: A, rcode: nxdomain}, // named db-0
		{name: "db-3.db.default.svc.cluster.local.", qtype: A, rcode: nxdomain},     // not ready
		{name: "10-0-1-8.db.default.svc.cluster.local.", qtype: A, rcode: nxdomain}, // not ready
		{name: "db-9.db.default.svc.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "_pg._tcp.db.default.svc.cluster.local.", qtype: SRV,
			answer: []string{
				"_pg._tcp.db.default.svc.cluster.local. SRV 0 100 15432 10-0-1-7.db.default.svc.cluster.local.",
				"_pg._tcp.db.default.svc.cluster.local. SRV 0 100 15432 db-0.db.default.svc.cluster.local.",
				"_pg._tcp.db.default.svc.cluster.local. SRV 0 100 15432 db-1.db.default.svc.cluster.local.",
			},
			extra: []string{
				"10-0-1-7.db.default.svc.cluster.local. A 10.0.1.7",
				"db-0.db.default.svc.cluster.local. A 10.0.1.5",
				"db-0.db.default.svc.cluster.local. AAAA fd00:1::5",
				"db-1.db.default.svc.cluster.local. A 10.0.1.6",
			}},
		{name: "_pg._udp.db.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_pg._tcp.lonely.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "_tcp.db.default.svc.cluster.local.", qtype: A},

		// ExternalName: a CNAME for every type, the outside target left
		// to the server to ask upstream (see TestAnswerExternalName).
		{name: "ext.default.svc.cluster.local.", qtype: A, chase: "www.example.com.", answer: []string{"ext.default.svc.cluster.local. CNAME www.example.com."}},
		{name: "ext.default.svc.cluster.local.", qtype: AAAA, chase: "www.example.com.", answer: []string{"ext.default.svc.cluster.local. CNAME www.example.com."}},
		{name: "ext.default.svc.cluster.local.", qtype: SRV, chase: "www.example.com.", answer: []string{"ext.default.svc.cluster.local. CNAME www.example.com."}},
		{name: "ext.default.svc.cluster.local.", qtype: CNAME, answer: []string{"ext.default.svc.cluster.local. CNAME www.example.com."}},
		{name: "_http._tcp.ext.default.svc.cluster.local.", qtype: SRV, rcode: nxdomain},
		{name: "extip.default.svc.cluster.local.", qtype: A, rcode: nxdomain},

		// The structure above Services.
		{name: "cluster.local.", qtype: A},
		{name: "Cluster.Local.", qtype: miekg.TypeSOA, answer: []string{
			"Cluster.Local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"}},
		{name: "cluster.local.", qtype: miekg.TypeNS,
			answer: []string{"cluster.local. NS ns.dns.cluster.local."},
			extra:  []string{"ns.dns.cluster.local. A 10.3.240.10"}},
		{name: "ns.dns.cluster.local.", qtype: A, answer: []string{"ns.dns.cluster.local. A 10.3.240.10"}},
		{name: "dns.cluster.local.", qtype: A},
		{name: "dns-version.cluster.local.", qtype: miekg.TypeTXT, answer: []string{`dns-version.cluster.local. TXT "1.1.0"`}},
		{name: "dns-version.cluster.local.", qtype: A},
		{name: "svc.cluster.local.", qtype: A},
		{name: "default.svc.cluster.local.", qtype: A},
		{name: "kube-system.svc.cluster.local.", qtype: SRV},
		{name: "nosuch.svc.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "foo.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "web.default.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "x.dns-version.cluster.local.", qtype: A, rcode: nxdomain},

		// The spec's deprecated pod records.
		{name: "10-0-1-5.default.pod.cluster.local.", qtype: A, answer: []string{"10-0-1-5.default.pod.cluster.local. A 10.0.1.5"}},
		{name: "10-0-1-5.default.pod.cluster.local.", qtype: AAAA},
		{name: "fd00-1--5.default.pod.cluster.local.", qtype: AAAA, answer: []string{"fd00-1--5.default.pod.cluster.local. AAAA fd00:1::5"}},
		{name: "10-0-1-5.nosuch.pod.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "10-0-1.default.pod.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "web.default.pod.cluster.local.", qtype: A, rcode: nxdomain},
		{name: "default.pod.cluster.local.", qtype: A},
		{name: "pod.cluster.local.", qtype: A},

		// Reverse names.
		{name: rev("10.3.240.20"), qtype: PTR, answer: []string{rev("10.3.240.20") + " PTR web.default.svc.cluster.local."}},
		{name: rev("10.3.240.10"), qtype: PTR, answer: []string{rev("10.3.240.10") + " PTR kube-dns.kube-system.svc.cluster.local."}},
		{name: strings.ToUpper(rev("fd00:10:96::30")), qtype: PTR, answer: []string{strings.ToUpper(rev("fd00:10:96::30")) + " PTR dual.default.svc.cluster.local."}},
		{name: rev("10.3.240.30"), qtype: PTR, answer: []string{rev("10.3.240.30") + " PTR dual.default.svc.cluster.local."}},
		{name: rev("10.3.240.20"), qtype: A},
		{name: rev("10.3.240.99"), qtype: PTR, rcode: nxdomain},    // in the service range
		{name: rev("fd00:10:96::99"), qtype: PTR, rcode: nxdomain}, // in the service range
		// A Service's endpoint (specification 2.4.3 for headless
		// Services; CoreDNS's for all): named as its A record names it.
		{name: rev("10.0.1.5"), qtype: PTR, answer: []string{rev("10.0.1.5") + " PTR db-0.db.default.svc.cluster.local."}},
		{name: rev("fd00:1::5"), qtype: PTR, answer: []string{rev("fd00:1::5") + " PTR db-0.db.default.svc.cluster.local."}},
		{name: rev("10.0.1.7"), qtype: PTR, answer: []string{rev("10.0.1.7") + " PTR 10-0-1-7.db.default.svc.cluster.local."}},
		{name: rev("10.0.2.2"), qtype: PTR, answer: []string{rev("10.0.2.2") + " PTR web-0.web.default.svc.cluster.local."}},
		{name: rev("10.0.2.3"), qtype: PTR, answer: []string{rev("10.0.2.3") + " PTR 10-0-2-3.web.default.svc.cluster.local."}},
		{name: rev("fd00:2::3"), qtype: PTR, answer: []string{rev("fd00:2::3") + " PTR fd00-2--3.dual.default.svc.cluster.local."}},
		{name: rev("10.0.2.3"), qtype: A},
		{name: rev("10.0.2.4"), qtype: PTR, forward: true},  // not ready
		{name: rev("10.0.1.8"), qtype: PTR, forward: true},  // not ready
		{name: rev("10.0.1.77"), qtype: PTR, forward: true}, // a pod behind no Service
		{name: rev("8.8.8.8"), qtype: PTR, forward: true},
		{name: rev("2001:db8::1"), qtype: PTR, forward: true},
		{name: "240.3.10.in-addr.arpa.", qtype: PTR, forward: true}, // a network, not an address
		{name: "020.240.3.10.in-addr.arpa.", qtype: PTR, forward: true},

		// Everything else goes upstream.
		{name: "example.com.", qtype: A, forward: true},
		{name: "cluster.local.example.com.", qtype: A, forward: true},
		{name: "xcluster.local.", qtype: A, forward: true},
		{name: "local.", qtype: A, forward: true},
		{name: ".", qtype: miekg.TypeNS, forward: true},
	}

	snap := testSnapshot(t)
	for _, tt := range tests {
		t.Run(miekg.TypeToString[tt.qtype]+" "+tt.name, func(t *testing.T) {
			res := testZone.Answer(snap, tt.name, tt.qtype)
			call := fmt.Sprintf("Answer(%q, %s)", tt.name, miekg.TypeToString[tt.qtype])
			if res.Forward != tt.forward {
				t.Fatalf("%s.Forward = %v, want %v", call, res.Forward, tt.forward)
			}
			if tt.forward {
				if res.Rcode != 0 || len(res.Answer)+len(res.Ns)+len(res.Extra) > 0 {
					t.Errorf("%s = %+v, want nothing but Forward", call, res)
				}
				return
			}
			if res.Rcode != tt.rcode {
				t.Errorf("%s.Rcode = %s, want %s", call, miekg.RcodeToString[res.Rcode], miekg.RcodeToString[tt.rcode])
			}
			if res.Chase != tt.chase {
				t.Errorf("%s.Chase = %q, want %q", call, res.Chase, tt.chase)
			}
			if !res.Authoritative {
				t.Errorf("%s.Authoritative = false, want true", call)
			}
			if got := rrStrings(res.Answer); !slices.Equal(got, sorted(tt.answer)) {
				t.Errorf("%s.Answer:\n\t%s\nwant:\n\t%s", call, strings.Join(got, "\n\t"), strings.Join(sorted(tt.answer), "\n\t"))
			}
			if got := rrStrings(res.Extra); !slices.Equal(got, sorted(tt.extra)) {
				t.Errorf("%s.Extra:\n\t%s\nwant:\n\t%s", call, strings.Join(got, "\n\t"), strings.Join(sorted(tt.extra), "\n\t"))
			}
			checkAuthority(t, call, tt.name, res)
			for _, rr := range slices.Concat(res.Answer, res.Ns, res.Extra) {
				if rr.Header().Ttl != dns.TTL || rr.Header().Class != miekg.ClassINET {
					t.Errorf("%s: %s: want class IN, TTL %d", call, rr, dns.TTL)
				}
			}
		})
	}
}

// checkAuthority checks that a negative answer (NXDOMAIN, or NOERROR with no
// answer) carries the SOA of the zone the name is in, and a positive one
// none.
func checkAuthority(t *testing.T, call, name string, res dns.Result) {
	t.Helper()
	negative := res.Rcode == nxdomain || len(res.Answer) == 0
	if !negative {
		if len(res.Ns) > 0 {
			t.Errorf("%s.Ns = %v, want none", call, res.Ns)
		}
		return
	}
	origin := "cluster.local."
	for _, zone := range []string{"in-addr.arpa.", "ip6.arpa."} {
		if strings.HasSuffix(strings.ToLower(name), zone) {
			origin = zone
		}
	}
	if len(res.Ns) != 1 || res.Ns[0].Header().Rrtype != miekg.TypeSOA || res.Ns[0].Header().Name != origin {
		t.Errorf("%s.Ns = %v, want the SOA of %s", call, res.Ns, origin)
		return
	}
	if soa := res.Ns[0].(*miekg.SOA); soa.Minttl != dns.TTL {
		t.Errorf("%s: SOA minimum %d, want %d (negative answers are cached that long)", call, soa.Minttl, dns.TTL)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestAnswerNoSnapshot: before the first snapshot nothing in the zone is
// known, and saying NXDOMAIN would be cached as the truth.
func TestAnswerNoSnapshot(t *testing.T) {
	tests := []struct {
		name    string
		qtype   uint16
		rcode   int
		forward bool
	}{
		{name: "web.default.svc.cluster.local.", qtype: miekg.TypeA, rcode: miekg.RcodeServerFailure},
		{name: rev("10.3.240.20"), qtype: miekg.TypePTR, rcode: miekg.RcodeServerFailure},
		{name: rev("8.8.8.8"), qtype: miekg.TypePTR, forward: true},
		{name: "example.com.", qtype: miekg.TypeA, forward: true},
	}
	for _, tt := range tests {
		res := testZone.Answer(nil, tt.name, tt.qtype)
		if res.Forward != tt.forward || res.Rcode != tt.rcode || res.Authoritative || len(res.Answer) > 0 {
			t.Errorf("Answer(nil, %q, %s) = %+v, want rcode %s, forward %v, not authoritative",
				tt.name, miekg.TypeToString[tt.qtype], res, miekg.RcodeToString[tt.rcode], tt.forward)
		}
	}
}

// TestAnswerZone: the domain is any domain, in any spelling; without
// service ranges every reverse name that is no ClusterIP goes upstream; a
// zone transfer is refused.
func TestAnswerZone(t *testing.T) {
	snap := testSnapshot(t)
	tests := []struct {
		zone    dns.Zone
		name    string
		qtype   uint16
		rcode   int
		forward bool
		answer  []string
	}{
		{zone: dns.Zone{Domain: "Corp.Example."}, name: "web.default.svc.corp.example.", qtype: miekg.TypeA,
			answer: []string{"web.default.svc.corp.example. A 10.3.240.20"}},
		{zone: dns.Zone{Domain: "Corp.Example."}, name: "web.default.svc.cluster.local.", qtype: miekg.TypeA, forward: true},
		{zone: dns.Zone{Domain: "corp.example"}, name: rev("10.3.240.20"), qtype: miekg.TypePTR,
			answer: []string{rev("10.3.240.20") + " PTR web.default.svc.corp.example."}},
		{zone: dns.Zone{Domain: "corp.example"}, name: rev("10.3.240.99"), qtype: miekg.TypePTR, forward: true},
		{zone: dns.Zone{Domain: "corp.example"}, name: "corp.example.", qtype: miekg.TypeNS}, // no NameServer: NODATA
		{zone: dns.Zone{Domain: "corp.example"}, name: "ns.dns.corp.example.", qtype: miekg.TypeA, rcode: nxdomain},
		{zone: testZone, name: "cluster.local.", qtype: miekg.TypeAXFR, rcode: miekg.RcodeRefused},
	}
	for _, tt := range tests {
		res := tt.zone.Answer(snap, tt.name, tt.qtype)
		call := fmt.Sprintf("Zone{%q}.Answer(%q, %s)", tt.zone.Domain, tt.name, miekg.TypeToString[tt.qtype])
		if res.Forward != tt.forward || res.Rcode != tt.rcode {
			t.Errorf("%s = forward %v, rcode %s; want forward %v, rcode %s", call,
				res.Forward, miekg.RcodeToString[res.Rcode], tt.forward, miekg.RcodeToString[tt.rcode])
		}
		if got := rrStrings(res.Answer); !slices.Equal(got, sorted(tt.answer)) {
			t.Errorf("%s.Answer = %q, want %q", call, got, tt.answer)
		}
	}
}

// TestAnswerExternalName: an ExternalName Service's answer is its CNAME
// and the target's records, as CoreDNS gives them: a target in the zone
// from the snapshot (through other ExternalNames too), with the rcode of
// the chain's end; an outside one left to upstream (Chase). Loops and
// chains longer than 8 are SERVFAIL.
func TestAnswerExternalName(t *testing.T) {
	A, AAAA, SRV, CNAME := miekg.TypeA, miekg.TypeAAAA, miekg.TypeSRV, miekg.TypeCNAME
	const zone = ".default.svc.cluster.local."
	svcs := []*corev1.Service{
		clusterIPService("default", "web", []string{"10.3.240.20"}, servicePort("http", corev1.ProtocolTCP, 80, 8080)),
		headlessService("default", "db", servicePort("pg", corev1.ProtocolTCP, 5432, 5432)),
		externalNameService("default", "to-web", "web.default.svc.cluster.local"),
		externalNameService("default", "to-web-upper", "WEB.Default.svc.cluster.local."),
		externalNameService("default", "to-db", "db.default.svc.cluster.local"),
		externalNameService("default", "to-to-web", "to-web.default.svc.cluster.local"),
		externalNameService("default", "to-nothing", "nosuch.default.svc.cluster.local"),
		externalNameService("default", "to-outside", "www.example.com"),
		externalNameService("default", "to-to-outside", "to-outside.default.svc.cluster.local"),
		externalNameService("default", "to-reverse", "20.240.3.10.in-addr.arpa"),
		externalNameService("default", "loop-a", "loop-b.default.svc.cluster.local"),
		externalNameService("default", "loop-b", "loop-a.default.svc.cluster.local"),
		externalNameService("default", "self", "self.default.svc.cluster.local"),
	}
	// chain-1 → chain-2 → … → chain-9 → web: 9 CNAMEs from chain-1, 8
	// from chain-2.
	for i := 1; i <= 9; i++ {
		target := fmt.Sprintf("chain-%d.default.svc.cluster.local", i+1)
		if i == 9 {
			target = "web.default.svc.cluster.local"
		}
		svcs = append(svcs, externalNameService("default", fmt.Sprintf("chain-%d", i), target))
	}
	snap := build(t, svcs, []*discoveryv1.EndpointSlice{
		endpointSlice("default", "db-1", "db", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("pg", corev1.ProtocolTCP, 5432)},
			endpoint("10.0.1.5", "db-0", nil)),
	})

	var chain2 []string
	for i := 2; i <= 9; i++ {
		next := fmt.Sprintf("chain-%d"+zone, i+1)
		if i == 9 {
			next = "web" + zone
		}
		chain2 = append(chain2, fmt.Sprintf("chain-%d"+zone+" CNAME %s", i, next))
	}

	tests := []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string // in order
		extra  []string // any order
		ns     bool     // the SOA of cluster.local. in Ns
		chase  string
	}{
		{name: "to-web" + zone, qtype: A, answer: []string{
			"to-web" + zone + " CNAME web.default.svc.cluster.local.",
			"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "TO-WEB" + zone, qtype: A, answer: []string{
			"TO-WEB" + zone + " CNAME web.default.svc.cluster.local.",
			"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "to-web-upper" + zone, qtype: A, answer: []string{
			"to-web-upper" + zone + " CNAME WEB.Default.svc.cluster.local.",
			"WEB.Default.svc.cluster.local. A 10.3.240.20"}},
		{name: "to-web" + zone, qtype: AAAA, ns: true, answer: []string{ // NODATA at the end
			"to-web" + zone + " CNAME web.default.svc.cluster.local."}},
		{name: "to-web" + zone, qtype: CNAME, answer: []string{
			"to-web" + zone + " CNAME web.default.svc.cluster.local."}},
		{name: "to-web" + zone, qtype: SRV,
			answer: []string{
				"to-web" + zone + " CNAME web.default.svc.cluster.local.",
				"web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."},
			extra: []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "to-db" + zone, qtype: A, answer: []string{
			"to-db" + zone + " CNAME db.default.svc.cluster.local.",
			"db.default.svc.cluster.local. A 10.0.1.5"}},
		{name: "to-to-web" + zone, qtype: A, answer: []string{
			"to-to-web" + zone + " CNAME to-web.default.svc.cluster.local.",
			"to-web.default.svc.cluster.local. CNAME web.default.svc.cluster.local.",
			"web.default.svc.cluster.local. A 10.3.240.20"}},
		{name: "to-nothing" + zone, qtype: A, rcode: nxdomain, ns: true, answer: []string{
			"to-nothing" + zone + " CNAME nosuch.default.svc.cluster.local."}},
		{name: "to-outside" + zone, qtype: A, chase: "www.example.com.", answer: []string{
			"to-outside" + zone + " CNAME www.example.com."}},
		{name: "to-to-outside" + zone, qtype: AAAA, chase: "www.example.com.", answer: []string{
			"to-to-outside" + zone + " CNAME to-outside.default.svc.cluster.local.",
			"to-outside.default.svc.cluster.local. CNAME www.example.com."}},
		{name: "to-reverse" + zone, qtype: miekg.TypePTR, answer: []string{
			"to-reverse" + zone + " CNAME 20.240.3.10.in-addr.arpa.",
			"20.240.3.10.in-addr.arpa. PTR web.default.svc.cluster.local."}},
		{name: "loop-a" + zone, qtype: A, rcode: miekg.RcodeServerFailure},
		{name: "self" + zone, qtype: AAAA, rcode: miekg.RcodeServerFailure},
		{name: "self" + zone, qtype: CNAME, answer: []string{"self" + zone + " CNAME self.default.svc.cluster.local."}},
		{name: "chain-1" + zone, qtype: A, rcode: miekg.RcodeServerFailure}, // 9 CNAMEs
		{name: "chain-2" + zone, qtype: A, answer: append(chain2, "web.default.svc.cluster.local. A 10.3.240.20")},
	}
	for _, tt := range tests {
		t.Run(miekg.TypeToString[tt.qtype]+" "+tt.name, func(t *testing.T) {
			res := testZone.Answer(snap, tt.name, tt.qtype)
			call := fmt.Sprintf("Answer(%q, %s)", tt.name, miekg.TypeToString[tt.qtype])
			if res.Forward || res.Rcode != tt.rcode || res.Chase != tt.chase {
				t.Errorf("%s = forward %v, rcode %s, chase %q; want rcode %s, chase %q", call,
					res.Forward, miekg.RcodeToString[res.Rcode], res.Chase, miekg.RcodeToString[tt.rcode], tt.chase)
			}
			if res.Rcode == miekg.RcodeServerFailure {
				if len(res.Answer)+len(res.Ns)+len(res.Extra) > 0 {
					t.Errorf("%s: SERVFAIL with records %v %v %v", call, res.Answer, res.Ns, res.Extra)
				}
				return
			}
			if !res.Authoritative {
				t.Errorf("%s.Authoritative = false, want true", call)
			}
			var got []string
			for _, rr := range res.Answer {
				got = append(got, rrString(rr))
			}
			if !slices.Equal(got, tt.answer) {
				t.Errorf("%s.Answer:\n\t%s\nwant:\n\t%s", call, strings.Join(got, "\n\t"), strings.Join(tt.answer, "\n\t"))
			}
			if got := rrStrings(res.Extra); !slices.Equal(got, sorted(tt.extra)) {
				t.Errorf("%s.Extra = %q, want %q", call, got, tt.extra)
			}
			if soa := len(res.Ns) == 1 && res.Ns[0].Header().Rrtype == miekg.TypeSOA && res.Ns[0].Header().Name == "cluster.local."; soa != tt.ns || (!tt.ns && len(res.Ns) > 0) {
				t.Errorf("%s.Ns = %v, want the zone's SOA: %v", call, res.Ns, tt.ns)
			}
		})
	}
}

// TestAnswerEndpointPTR: an address that is an endpoint of several
// Services has one PTR record, the same whatever order the Services come
// in: an endpoint with a hostname first, then by namespace and name.
func TestAnswerEndpointPTR(t *testing.T) {
	tcp := corev1.ProtocolTCP
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	port := []discoveryv1.EndpointPort{slicePort("http", tcp, 8080)}
	svcs := []*corev1.Service{
		clusterIPService("b", "alpha", []string{"10.3.240.50"}, servicePort("http", tcp, 80, 8080)),
		clusterIPService("a", "zeta", []string{"10.3.240.51"}, servicePort("http", tcp, 80, 8080)),
		clusterIPService("a", "beta", []string{"10.3.240.52", "fd00:10:96::52"}, servicePort("http", tcp, 80, 8080)),
		headlessService("z", "sts", servicePort("http", tcp, 80, 8080)),
		clusterIPService("a", "aaa", []string{"10.3.240.53"}, servicePort("http", tcp, 80, 8080)),
	}
	eps := []*discoveryv1.EndpointSlice{
		endpointSlice("b", "alpha-1", "alpha", v4, port, endpoint("10.0.9.9", "", nil), endpoint("10.0.9.10", "", nil)),
		endpointSlice("a", "zeta-1", "zeta", v4, port, endpoint("10.0.9.9", "", nil), endpoint("10.0.9.10", "", nil)),
		endpointSlice("a", "beta-1", "beta", v4, port, endpoint("10.0.9.9", "", nil)),
		endpointSlice("a", "beta-2", "beta", v6, port, endpoint("fd00:9::9", "", nil)),
		endpointSlice("z", "sts-1", "sts", v4, port, endpoint("10.0.9.10", "web-0", nil)),
		// aaa's endpoint is not ready: it names nothing.
		endpointSlice("a", "aaa-1", "aaa", v4, port, endpoint("10.0.9.9", "", ptr(false))),
	}
	want := map[string]string{
		"10.0.9.9":  "10-0-9-9.beta.a.svc.cluster.local.",
		"10.0.9.10": "web-0.sts.z.svc.cluster.local.",
		"fd00:9::9": "fd00-9--9.beta.a.svc.cluster.local.",
	}
	for i := range 4 {
		s, e := slices.Clone(svcs), slices.Clone(eps)
		if i%2 == 1 {
			slices.Reverse(s)
		}
		if i >= 2 {
			slices.Reverse(e)
		}
		snap := build(t, s, e)
		for ip, name := range want {
			res := testZone.Answer(snap, rev(ip), miekg.TypePTR)
			got := rrStrings(res.Answer)
			if w := rev(ip) + " PTR " + name; res.Rcode != noerror || !slices.Equal(got, []string{w}) {
				t.Errorf("order %d: Answer(%s PTR) = %s %q, want %q", i, rev(ip), miekg.RcodeToString[res.Rcode], got, w)
			}
		}
	}
}

// BenchmarkAnswerEndpointPTR is the cost of the first reverse question
// after the table changes: a Zone without the server's cache indexes every
// endpoint on each question. 10 000 Services of 10 endpoints each.
func BenchmarkAnswerEndpointPTR(b *testing.B) {
	tcp := corev1.ProtocolTCP
	port := []discoveryv1.EndpointPort{slicePort("http", tcp, 8080)}
	var svcs []*corev1.Service
	var eps []*discoveryv1.EndpointSlice
	for i := range 10000 {
		name := fmt.Sprintf("svc-%d", i)
		svcs = append(svcs, clusterIPService("default", name, []string{fmt.Sprintf("10.96.%d.%d", i/256, i%256)}, servicePort("http", tcp, 80, 8080)))
		var list []discoveryv1.Endpoint
		for j := range 10 {
			n := i*10 + j
			list = append(list, endpoint(fmt.Sprintf("10.%d.%d.%d", 1+n/65536, n/256%256, n%256), "", nil))
		}
		eps = append(eps, endpointSlice("default", name+"-1", name, discoveryv1.AddressTypeIPv4, port, list...))
	}
	snap := build(b, svcs, eps)
	name := rev("10.1.0.5")
	b.ResetTimer()
	for b.Loop() {
		if res := testZone.Answer(snap, name, miekg.TypePTR); len(res.Answer) != 1 {
			b.Fatalf("Answer(%s PTR) = %+v, want one PTR", name, res)
		}
	}
}

// TestAnswerMapped checks the answers of a cluster whose ranges a laptop
// serves on mapped addresses: A, AAAA and SRV carry the mapped ones, a
// headless pod's mapped /32 too, and the PTR name of a mapped address is
// its real address's.
func TestAnswerMapped(t *testing.T) {
	m, err := new(addrmap.Map).With(
		addrmap.Pair{Real: netip.MustParsePrefix("10.3.240.0/20"), Mapped: netip.MustParsePrefix("240.16.0.0/20")},
		addrmap.Pair{Real: netip.MustParsePrefix("fd00:10:96::/112"), Mapped: netip.MustParsePrefix("fd12:3456:789a::/112")},
		addrmap.Pair{Real: netip.MustParsePrefix("10.0.1.5/32"), Mapped: netip.MustParsePrefix("241.0.0.5/32")},
	)
	if err != nil {
		t.Fatal(err)
	}
	var tab addrmap.Table
	tab.Store(m)
	zone := testZone
	zone.Map = &tab
	zone.NameServer = netip.MustParseAddr("240.16.0.10")
	snap := testSnapshot(t)
	for _, tt := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"web.default.svc.cluster.local.", miekg.TypeA, []string{"web.default.svc.cluster.local. A 240.16.0.20"}},
		{"dual.default.svc.cluster.local.", miekg.TypeAAAA, []string{"dual.default.svc.cluster.local. AAAA fd12:3456:789a::30"}},
		// db-0 is mapped, the others are not: their /32s overlap nothing.
		{"db.default.svc.cluster.local.", miekg.TypeA, []string{"db.default.svc.cluster.local. A 10.0.1.6", "db.default.svc.cluster.local. A 10.0.1.7", "db.default.svc.cluster.local. A 241.0.0.5"}},
		{"db-0.db.default.svc.cluster.local.", miekg.TypeA, []string{"db-0.db.default.svc.cluster.local. A 241.0.0.5"}},
		{"ns.dns.cluster.local.", miekg.TypeA, []string{"ns.dns.cluster.local. A 240.16.0.10"}},
		{rev("240.16.0.20"), miekg.TypePTR, []string{rev("240.16.0.20") + " PTR web.default.svc.cluster.local."}},
		{rev("fd12:3456:789a::30"), miekg.TypePTR, []string{rev("fd12:3456:789a::30") + " PTR dual.default.svc.cluster.local."}},
		{rev("241.0.0.5"), miekg.TypePTR, []string{rev("241.0.0.5") + " PTR db-0.db.default.svc.cluster.local."}},
		{addrmap.ReverseName(netip.MustParseAddr("240.16.0.10")), miekg.TypePTR, []string{rev("240.16.0.10") + " PTR kube-dns.kube-system.svc.cluster.local."}},
	} {
		res := zone.Answer(snap, tt.name, tt.qtype)
		if got := rrStrings(res.Answer); res.Rcode != noerror || !slices.Equal(got, sorted(tt.want)) {
			t.Errorf("Answer(%s %s) = %s %q, want %q", tt.name, miekg.TypeToString[tt.qtype], miekg.RcodeToString[res.Rcode], got, tt.want)
		}
	}
	res := zone.Answer(snap, "_http._tcp.web.default.svc.cluster.local.", miekg.TypeSRV)
	if got := rrStrings(res.Extra); !slices.Equal(got, []string{"web.default.svc.cluster.local. A 240.16.0.20"}) {
		t.Errorf("SRV extra = %q, want the mapped address", got)
	}
}

// TestAnswerAliases checks that a Zone answers under each alias as under
// its Domain, names (SRV targets) in the domain asked, reverse names under
// Domain, and that a longer domain wins over a shorter one it is under.
func TestAnswerAliases(t *testing.T) {
	zone := testZone
	zone.Aliases = []string{"kind-b", "B.Example."}
	snap := testSnapshot(t)
	for _, tt := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"web.default.svc.cluster.local.", miekg.TypeA, []string{"web.default.svc.cluster.local. A 10.3.240.20"}},
		{"web.default.svc.kind-b.", miekg.TypeA, []string{"web.default.svc.kind-b. A 10.3.240.20"}},
		{"WEB.default.svc.b.example.", miekg.TypeA, []string{"WEB.default.svc.b.example. A 10.3.240.20"}},
		{"_http._tcp.web.default.svc.kind-b.", miekg.TypeSRV, []string{"_http._tcp.web.default.svc.kind-b. SRV 0 100 80 web.default.svc.kind-b."}},
		{"db-0.db.default.svc.kind-b.", miekg.TypeAAAA, []string{"db-0.db.default.svc.kind-b. AAAA fd00:1::5"}},
		{rev("10.3.240.20"), miekg.TypePTR, []string{rev("10.3.240.20") + " PTR web.default.svc.cluster.local."}},
	} {
		res := zone.Answer(snap, tt.name, tt.qtype)
		if got := rrStrings(res.Answer); res.Rcode != noerror || !slices.Equal(got, tt.want) {
			t.Errorf("Answer(%s %s) = %s %q, want %q", tt.name, miekg.TypeToString[tt.qtype], miekg.RcodeToString[res.Rcode], got, tt.want)
		}
	}
	if res := zone.Answer(snap, "nope.default.svc.kind-b.", miekg.TypeA); res.Rcode != nxdomain || len(res.Ns) != 1 || res.Ns[0].Header().Name != "kind-b." {
		t.Errorf("Answer(nope...kind-b) = %s %v, want NXDOMAIN with kind-b.'s SOA", miekg.RcodeToString[res.Rcode], res.Ns)
	}
	if res := zone.Answer(snap, "web.default.svc.kind-c.", miekg.TypeA); !res.Forward {
		t.Errorf("a name under no domain of the zone is not forwarded")
	}
	// Nested: svc.kind-b as an alias of its own is the longer match.
	zone.Aliases = []string{"kind-b", "x.kind-b"}
	if res := zone.Answer(snap, "web.default.svc.x.kind-b.", miekg.TypeA); res.Rcode != noerror || len(res.Answer) != 1 {
		t.Errorf("Answer under the longer alias = %s %v", miekg.RcodeToString[res.Rcode], res.Answer)
	}
	if _, err := dns.New(dns.Config{Table: new(resolver.Table), Aliases: []string{"in-addr.arpa"}}); err == nil {
		t.Errorf("dns.New with a reverse zone as alias: want an error")
	}
}
