package resolver_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
)

// created returns svc with its creationTimestamp set to t0 + age.
func created(svc *corev1.Service, age time.Duration) *corev1.Service {
	svc.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(age))
	return svc
}

// fingerprint prints everything a snapshot answers, in a fixed order, and the
// problems Build reported, so two builds can be compared.
func fingerprint(snap *resolver.Snapshot, problems []resolver.Problem, ips []netip.Addr) string {
	var b strings.Builder
	ports := snap.Ports()
	slices.SortFunc(ports, func(x, y *resolver.ServicePort) int {
		return strings.Compare(fmt.Sprint(x.Protocol, x.ClusterIP, x.Port), fmt.Sprint(y.Protocol, y.ClusterIP, y.Port))
	})
	for _, sp := range ports {
		fmt.Fprintf(&b, "%v endpoints %+v usable %v\n", sp, sp.Endpoints, sp.Usable())
	}
	for _, ip := range ips {
		if rec, ok := snap.ServiceByIP(ip); ok {
			fmt.Fprintf(&b, "PTR %v -> %s/%s\n", ip, rec.Namespace, rec.Name)
		}
		if rec, ep, ok := snap.EndpointByIP(ip); ok {
			fmt.Fprintf(&b, "PTR %v -> %s.%s/%s %+v\n", ip, ep.Hostname, rec.Namespace, rec.Name, ep)
		}
	}
	fmt.Fprintf(&b, "services %d endpoints %d\n", snap.Services(), snap.Endpoints())
	for _, p := range problems {
		fmt.Fprintln(&b, p)
	}
	return b.String()
}

// TestBuildDeterministic builds one set of objects in many orders: the table,
// the DNS records and the problems must not change.
func TestBuildDeterministic(t *testing.T) {
	tcp := corev1.ProtocolTCP
	v4 := discoveryv1.AddressTypeIPv4
	port := func(name string) corev1.ServicePort { return servicePort(name, tcp, 80, intstr.FromInt32(8080)) }
	headless := func(ns, name string) *corev1.Service {
		svc := service(ns, name, []string{corev1.ClusterIPNone}, port(""))
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		return svc
	}
	withHost := func(host string, addr string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Hostname: ptr(host), Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready)}}
	}
	services := []*corev1.Service{
		// Three claim 10.3.240.40:80; two are as old as each other.
		created(service("b", "dup", []string{"10.3.240.40"}, port("")), time.Hour),
		created(service("a", "dup", []string{"10.3.240.40"}, port("")), time.Hour),
		created(service("z", "old", []string{"10.3.240.40"}, port("")), 0),
		service("default", "web", []string{"10.3.240.10"}, port("")),
		// Two headless Services share the pod 10.0.9.9.
		headless("ns1", "hl"),
		headless("ns2", "hl"),
	}
	es := []*discoveryv1.EndpointSlice{
		slice("b", "dup-1", "dup", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, endpoints("10.0.1.1")...),
		slice("a", "dup-1", "dup", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, endpoints("10.0.1.2")...),
		slice("z", "old-1", "old", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, endpoints("10.0.1.3")...),
		// The same pod in two slices, ready in one, not in the other, on
		// another port: as when the controller moves it.
		slice("default", "web-a", "web", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)},
			discoveryv1.Endpoint{Addresses: []string{"10.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}}),
		slice("default", "web-b", "web", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)},
			discoveryv1.Endpoint{Addresses: []string{"10.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			discoveryv1.Endpoint{Addresses: []string{"127.0.0.1"}}),
		slice("default", "web-c", "web", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 0)}, endpoints("10.0.2.3")...),
		slice("ns1", "hl-1", "hl", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, withHost("one", "10.0.9.9", true)),
		slice("ns2", "hl-1", "hl", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, withHost("two", "10.0.9.9", true)),
		slice("ns2", "hl-2", "hl", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 9090)}, withHost("three", "10.0.9.9", true)),
		slice("default", "stray", "", v4, nil, endpoints("10.0.5.5")...),
	}
	ips := []netip.Addr{netip.MustParseAddr("10.3.240.40"), netip.MustParseAddr("10.0.9.9")}
	snap, problems := resolver.Build(services, es, nil, resolver.Topology{})
	want := fingerprint(snap, problems, ips)
	for _, must := range []string{
		"TCP 10.3.240.40:80) endpoints [10.0.1.3:8080]", // z/old, the oldest, wins
		"PTR 10.3.240.40 -> z/old",                      // and names the ClusterIP
		"PTR 10.0.9.9 -> one.ns1/hl",                    // first headless Service by namespace/name
		"default/web (TCP 10.3.240.10:80) endpoints [10.0.2.2:8080] usable [10.0.2.2:8080]", // the ready copy
	} {
		if !strings.Contains(want, must) {
			t.Errorf("Build of the canonical order: missing %q in\n%s", must, want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 100 {
		ss, ee := slices.Clone(services), slices.Clone(es)
		r.Shuffle(len(ss), func(i, j int) { ss[i], ss[j] = ss[j], ss[i] })
		r.Shuffle(len(ee), func(i, j int) { ee[i], ee[j] = ee[j], ee[i] })
		snap, problems := resolver.Build(ss, ee, nil, resolver.Topology{})
		if got := fingerprint(snap, problems, ips); got != want {
			t.Fatalf("shuffle %d: Build gave\n%s\nwant, as for the sorted input,\n%s", i, got, want)
		}
	}
	// The caller's slices are not reordered.
	if services[0].Namespace != "b" || es[0].Namespace != "b" {
		t.Errorf("Build reordered its input: first Service %s/%s, first slice %s/%s", services[0].Namespace, services[0].Name, es[0].Namespace, es[0].Name)
	}
}

// TestBuildDuplicateClusterIP: the oldest Service wins a ClusterIP:port, then
// the first by namespace/name; the loser's other ports are served, and each
// losing pair of Services is reported once, naming both.
func TestBuildDuplicateClusterIP(t *testing.T) {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	v4 := discoveryv1.AddressTypeIPv4
	ports := func(n ...int32) []corev1.ServicePort {
		var out []corev1.ServicePort
		for _, p := range n {
			out = append(out, servicePort(fmt.Sprint("p", p), tcp, p, intstr.FromInt32(p)))
		}
		return out
	}
	sliceFor := func(ns, name, addr string, n ...int32) *discoveryv1.EndpointSlice {
		var eps []discoveryv1.EndpointPort
		for _, p := range n {
			eps = append(eps, slicePort(fmt.Sprint("p", p), tcp, p))
		}
		return slice(ns, name+"-1", name, v4, eps, endpoints(addr)...)
	}
	young := created(service("a", "young", []string{"10.3.240.40"}, ports(80, 443, 8080)...), time.Hour)
	old := created(service("b", "old", []string{"10.3.240.40"}, ports(80, 443)...), 0)
	// Another protocol on the same port is another Service port: no conflict.
	dns := created(service("c", "dns", []string{"10.3.240.40"}, servicePort("p80", udp, 80, intstr.FromInt32(80))), 2*time.Hour)
	snap, problems := resolver.Build([]*corev1.Service{young, old, dns},
		[]*discoveryv1.EndpointSlice{sliceFor("a", "young", "10.0.1.1", 80, 443, 8080), sliceFor("b", "old", "10.0.1.2", 80, 443),
			slice("c", "dns-1", "dns", v4, []discoveryv1.EndpointPort{slicePort("p80", udp, 80)}, endpoints("10.0.1.3")...)},
		nil, resolver.Topology{})
	checkProblems(t, problems, []string{
		"Service a/young: TCP 10.3.240.40:80, TCP 10.3.240.40:443 already served by Service b/old (the older Service); ignored",
	})
	for _, tc := range []struct {
		proto resolver.Protocol
		addr  string
		svc   string
	}{
		{resolver.TCP, "10.3.240.40:80", "b/old"},
		{resolver.TCP, "10.3.240.40:443", "b/old"},
		{resolver.TCP, "10.3.240.40:8080", "a/young"},
		{resolver.UDP, "10.3.240.40:80", "c/dns"},
	} {
		sp, ok := snap.Lookup(tc.proto, addrPort(t, tc.addr))
		if !ok || sp.Service != tc.svc {
			t.Errorf("Lookup(%v, %s) = %v, %v; want a port of %s", tc.proto, tc.addr, sp, ok, tc.svc)
		}
	}
	if got := snap.Services(); got != 3 {
		t.Errorf("Services() = %d, want 3", got)
	}
}

// TestBuildTargetPolicy: endpoints kubetun must never dial are refused and
// reported once each, with their Service and the reason; a host-network
// endpoint on a node address is served.
func TestBuildTargetPolicy(t *testing.T) {
	tcp := corev1.ProtocolTCP
	v4, v6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	routed := []netip.Prefix{netip.MustParsePrefix("10.3.240.0/20"), netip.MustParsePrefix("fd00:3::/112"), netip.MustParsePrefix("192.0.2.7/32")}
	twoPorts := []corev1.ServicePort{servicePort("http", tcp, 80, intstr.FromInt32(8080)), servicePort("alt", tcp, 81, intstr.FromInt32(8081))}
	slicePorts := []discoveryv1.EndpointPort{slicePort("http", tcp, 8080), slicePort("alt", tcp, 8081)}
	services := []*corev1.Service{
		service("default", "kubernetes", []string{"10.3.240.1"}, servicePort("https", tcp, 443, intstr.FromInt32(6443))),
		service("default", "loop", []string{"10.3.240.50"}, twoPorts...),
		service("default", "other", []string{"10.3.240.60"}, twoPorts...),
		// A ClusterIP outside every routed range is still a ClusterIP.
		service("default", "stray", []string{"10.99.0.1"}, twoPorts...),
		service("default", "v6", []string{"fd00:3::50"}, twoPorts...),
	}
	es := []*discoveryv1.EndpointSlice{
		// The apiserver on the node's own address, host network.
		slice("default", "kubernetes", "kubernetes", v4, []discoveryv1.EndpointPort{slicePort("https", tcp, 6443)}, endpoints("192.168.1.10")...),
		slice("default", "loop-1", "loop", v4, slicePorts, endpoints(
			"10.3.240.50",   // its own ClusterIP
			"10.3.240.60",   // another's
			"10.3.241.200",  // in the service CIDR, no Service's
			"192.0.2.7",     // a routed /32 (an external IP, later)
			"10.99.0.1",     // an unrouted ClusterIP
			"127.0.0.1",     // loopback
			"224.0.0.1",     // multicast
			"10.0.1.2")...), // a pod
		slice("default", "v6-1", "v6", v6, slicePorts, endpoints("fd00:3::60", "ff02::1", "fd00:0:1::2")...),
	}
	snap, problems := resolver.Build(services, es, nil, resolver.Topology{}, resolver.Routed(routed...))
	const slc = "(EndpointSlice default/loop-1) is "
	checkProblems(t, problems, []string{
		"Service default/loop: endpoint 10.3.240.50 " + slc + "the ClusterIP of Service default/loop (kubetun would dial itself); refused, never dialled",
		"Service default/loop: endpoint 10.3.240.60 " + slc + "the ClusterIP of Service default/other",
		"Service default/loop: endpoint 10.3.241.200 " + slc + "inside 10.3.240.0/20, which kubetun routes into its TUN",
		"Service default/loop: endpoint 192.0.2.7 " + slc + "inside 192.0.2.7/32, which kubetun routes into its TUN",
		"Service default/loop: endpoint 10.99.0.1 " + slc + "the ClusterIP of Service default/stray",
		"Service default/loop: endpoint 127.0.0.1 " + slc + "a loopback address",
		"Service default/loop: endpoint 224.0.0.1 " + slc + "a multicast address",
		"Service default/v6: endpoint fd00:3::60 (EndpointSlice default/v6-1) is inside fd00:3::/112",
		"Service default/v6: endpoint ff02::1 (EndpointSlice default/v6-1) is a multicast address",
	})
	for _, tc := range []struct {
		addr string
		want []string
	}{
		{"10.3.240.1:443", []string{"192.168.1.10:6443"}},
		{"10.3.240.50:80", []string{"10.0.1.2:8080"}},
		{"10.3.240.50:81", []string{"10.0.1.2:8081"}},
		{"[fd00:3::50]:80", []string{"[fd00:0:1::2]:8080"}},
	} {
		sp, ok := snap.Lookup(resolver.TCP, addrPort(t, tc.addr))
		if !ok || !slices.Equal(addrs(sp.Usable()), tc.want) {
			t.Errorf("Lookup(TCP, %s) usable = %v, want %v", tc.addr, sp, tc.want)
		}
	}

	// Without routed ranges only the ClusterIPs and the address classes are
	// known.
	_, problems = resolver.Build(services, es, nil, resolver.Topology{})
	for _, p := range problems {
		if strings.Contains(p.Reason, "routes into its TUN") {
			t.Errorf("Build without Routed: %v", p)
		}
	}
}

// TestBuildUnusable: every object Build cannot use is reported with its
// reason, once.
func TestBuildUnusable(t *testing.T) {
	tcp := corev1.ProtocolTCP
	v4 := discoveryv1.AddressTypeIPv4
	web := service("default", "web", []string{"10.3.240.10"}, servicePort("", tcp, 80, intstr.FromInt32(8080)))
	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     []string
	}{
		{
			name:     "slice port 0",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 0)}, endpoints("10.0.1.2", "10.0.1.3")...)},
			want:     []string{`EndpointSlice default/web-1: port "" (TCP) is 0, not a port number (1-65535); its endpoints do not serve Service default/web port 80`},
		},
		{
			name:     "slice port without a number",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, []discoveryv1.EndpointPort{{Name: ptr("")}}, endpoints("10.0.1.2")...)},
			want:     []string{`EndpointSlice default/web-1: port "" (TCP) has no number; its endpoints do not serve Service default/web port 80`},
		},
		{
			name:     "no slice port for the Service port",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, nil, endpoints("10.0.1.2")...)},
			want:     []string{`EndpointSlice default/web-1: has no port named "" (TCP); its endpoints do not serve Service default/web port 80`},
		},
		{
			name:     "an empty slice is not a problem",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, nil)},
		},
		{
			name:     "Service port 0",
			services: []*corev1.Service{service("default", "zero", []string{"10.3.240.11"}, servicePort("", tcp, 0, intstr.FromInt32(8080)))},
			want:     []string{"Service default/zero: port 0 is not a port number (1-65535); ignored"},
		},
		{
			name:     "Service without ports",
			services: []*corev1.Service{service("default", "none", []string{"10.3.240.12"})},
			want:     []string{"Service default/none: has no ports; nothing to serve"},
		},
		{
			name:     "FQDN slice",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", discoveryv1.AddressTypeFQDN, nil, endpoints("example.com")...)},
			want:     []string{`EndpointSlice default/web-1: addressType "FQDN" is not served`},
		},
		{
			name:     "endpoint without an address",
			services: []*corev1.Service{web},
			slices:   []*discoveryv1.EndpointSlice{slice("default", "web-1", "web", v4, []discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, discoveryv1.Endpoint{})},
			want:     []string{"EndpointSlice default/web-1: an endpoint has no address; ignored"},
		},
		{
			name:     "a Service defined twice",
			services: []*corev1.Service{web, web},
			want:     []string{"Service default/web: defined twice; using the older definition"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, problems := resolver.Build(tt.services, tt.slices, nil, resolver.Topology{})
			checkProblems(t, problems, tt.want)
		})
	}
}

// TestBuildServiceCIDRs: a ClusterIP outside every service CIDR is reported
// with its Service; nothing is reported without ServiceCIDRs (nothing routed
// yet); and the incremental build judges again when the CIDRs change.
func TestBuildServiceCIDRs(t *testing.T) {
	tcp := corev1.ProtocolTCP
	in := service("a", "in", []string{"10.3.240.40"}, servicePort("http", tcp, 80, intstr.FromInt32(8080)))
	out := service("a", "out", []string{"192.168.7.7"}, servicePort("http", tcp, 80, intstr.FromInt32(8080)))
	svcs := []*corev1.Service{in, out}
	seed := netip.MustParsePrefix("10.3.240.0/20")
	const want = "Service a/out: clusterIP 192.168.7.7 is outside every service CIDR; it is not routed to kubetun"

	_, problems := resolver.Build(svcs, nil, nil, resolver.Topology{})
	checkProblems(t, problems, nil)
	snap, problems := resolver.Build(svcs, nil, nil, resolver.Topology{}, resolver.ServiceCIDRs(seed))
	checkProblems(t, problems, []string{want})
	// Unchanged Services: the problem stays, from the cache.
	snap, problems = resolver.Build(svcs, nil, snap, resolver.Topology{}, resolver.ServiceCIDRs(seed))
	checkProblems(t, problems, []string{want})
	// Another CIDR that covers it: judged again, no problem.
	_, problems = resolver.Build(svcs, nil, snap, resolver.Topology{}, resolver.ServiceCIDRs(seed, netip.MustParsePrefix("192.168.0.0/16")))
	checkProblems(t, problems, nil)
}
