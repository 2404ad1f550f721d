package resolver_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubetun/kubetun/resolver"
)

// externalSeed is the seed Service as type LoadBalancer with node port
// 30080, two externalIPs, and ingress IPs of each ipMode.
func externalSeed(policy corev1.ServiceExternalTrafficPolicy) *corev1.Service {
	svc := seedService()
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.ExternalIPs = []string{"192.0.2.10", "198.51.100.10"}
	svc.Spec.ExternalTrafficPolicy = policy
	if policy == corev1.ServiceExternalTrafficPolicyLocal {
		svc.Spec.HealthCheckNodePort = 32000
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
		{IP: "203.0.113.1"}, // ipMode unset: VIP
		{IP: "203.0.113.2", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
		{IP: "203.0.113.3", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
		{Hostname: "lb.example.com"},
	}
	return svc
}

func TestBuildExternal(t *testing.T) {
	topo := resolver.Topology{NodeName: "node1"}
	for _, tc := range []struct {
		name      string
		policy    corev1.ServiceExternalTrafficPolicy
		opts      []resolver.Option
		external  []string // served external addresses
		usable    []string // external and node port endpoints
		health    []resolver.HealthCheck
		problems  []string
		nodeLocal bool
	}{
		{
			name:     "Cluster",
			policy:   corev1.ServiceExternalTrafficPolicyCluster,
			external: []string{"192.0.2.10", "198.51.100.10", "203.0.113.1", "203.0.113.2"},
			usable:   []string{"10.0.1.2:8080", "10.0.2.2:8080"},
		},
		{
			name:     "Local",
			policy:   corev1.ServiceExternalTrafficPolicyLocal,
			external: []string{"192.0.2.10", "198.51.100.10", "203.0.113.1", "203.0.113.2"},
			usable:   []string{"10.0.1.2:8080"},
			health:   []resolver.HealthCheck{{Namespace: "default", Name: "service-test", Port: 32000, LocalEndpoints: 1}},
		},
		{
			name:     "ranges",
			policy:   corev1.ServiceExternalTrafficPolicyCluster,
			opts:     []resolver.Option{resolver.ExternalIPRanges(netip.MustParsePrefix("192.0.2.0/24"))},
			external: []string{"192.0.2.10", "203.0.113.1", "203.0.113.2"}, // ingress IPs are not limited
			usable:   []string{"10.0.1.2:8080", "10.0.2.2:8080"},
			problems: []string{"Service default/service-test: externalIP 198.51.100.10 is outside the allowed external IP ranges [192.0.2.0/24]; not served"},
		},
		{
			name:   "refused",
			policy: corev1.ServiceExternalTrafficPolicyCluster,
			opts: []resolver.Option{resolver.RefuseExternal(func(a netip.Addr) string {
				if a == netip.MustParseAddr("203.0.113.2") {
					return "an address of this node"
				}
				return ""
			})},
			external: []string{"192.0.2.10", "198.51.100.10", "203.0.113.1"},
			usable:   []string{"10.0.1.2:8080", "10.0.2.2:8080"},
			problems: []string{"load-balancer ingress IP 203.0.113.2: an address of this node; not served"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, problems := resolver.Build([]*corev1.Service{externalSeed(tc.policy)},
				[]*discoveryv1.EndpointSlice{seedSlice()}, nil, topo, tc.opts...)
			checkProblems(t, problems, tc.problems)
			var got []string
			for _, a := range snap.ExternalIPs() {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tc.external) {
				t.Errorf("ExternalIPs() = %v, want %v", got, tc.external)
			}
			for _, a := range tc.external {
				sp, ok := snap.Lookup(resolver.TCP, addrPort(t, a+":80"))
				if !ok || !sp.External || sp.Service != "default/service-test" {
					t.Fatalf("Lookup(TCP, %s:80) = %v, %v; want the Service's external port", a, sp, ok)
				}
				if got := addrs(sp.Usable()); !slices.Equal(got, tc.usable) {
					t.Errorf("Lookup(TCP, %s:80).Usable() = %v, want %v", a, got, tc.usable)
				}
			}
			if _, ok := snap.Lookup(resolver.TCP, addrPort(t, "203.0.113.3:80")); ok {
				t.Errorf("Lookup(TCP, 203.0.113.3:80) found an ipMode: Proxy address")
			}
			// The ClusterIP keeps internalTrafficPolicy's endpoints.
			sp, ok := snap.Lookup(resolver.TCP, addrPort(t, "10.3.241.152:80"))
			if !ok || sp.External || len(sp.Usable()) != 2 {
				t.Errorf("Lookup(TCP, ClusterIP) = %v, %v; want both endpoints", sp, ok)
			}

			np, ok := snap.LookupNodePort(resolver.TCP, netip.MustParseAddr("10.0.3.1"), 30080)
			if !ok || !np.External || np.NodePort != 30080 {
				t.Fatalf("LookupNodePort(TCP, 10.0.3.1, 30080) = %v, %v", np, ok)
			}
			if got := addrs(np.Usable()); !slices.Equal(got, tc.usable) {
				t.Errorf("node port Usable() = %v, want %v", got, tc.usable)
			}
			if _, ok := snap.LookupNodePort(resolver.TCP, netip.MustParseAddr("fd00::1"), 30080); ok {
				t.Errorf("LookupNodePort on an IPv6 address found an IPv4-only Service")
			}
			if _, ok := snap.LookupNodePort(resolver.UDP, netip.MustParseAddr("10.0.3.1"), 30080); ok {
				t.Errorf("LookupNodePort(UDP) found a TCP node port")
			}
			want := []resolver.NodePort{{Protocol: resolver.TCP, Port: 30080, Service: "default/service-test"}}
			if got := snap.NodePorts(); !slices.Equal(got, want) {
				t.Errorf("NodePorts() = %v, want %v", got, want)
			}
			if got := snap.HealthChecks(); !slices.Equal(got, tc.health) {
				t.Errorf("HealthChecks() = %+v, want %+v", got, tc.health)
			}
		})
	}
}

// TestBuildExternalLocalNone: with externalTrafficPolicy: Local and no
// endpoint on this node, external traffic is refused and the health check
// says 0, while the ClusterIP still serves every endpoint.
func TestBuildExternalLocalNone(t *testing.T) {
	snap, _ := resolver.Build([]*corev1.Service{externalSeed(corev1.ServiceExternalTrafficPolicyLocal)},
		[]*discoveryv1.EndpointSlice{seedSlice()}, nil, resolver.Topology{NodeName: "node3"})
	np, ok := snap.LookupNodePort(resolver.TCP, netip.MustParseAddr("10.0.3.1"), 30080)
	if !ok {
		t.Fatal("LookupNodePort: not found")
	}
	if _, ok := np.Pick(); ok {
		t.Errorf("node port Pick() found an endpoint on another node")
	}
	if sp, _ := snap.Lookup(resolver.TCP, addrPort(t, "10.3.241.152:80")); len(sp.Usable()) != 2 {
		t.Errorf("ClusterIP Usable() = %v, want both", sp.Usable())
	}
	if hc := snap.HealthChecks(); len(hc) != 1 || hc[0].LocalEndpoints != 0 {
		t.Errorf("HealthChecks() = %+v, want one with 0 local endpoints", hc)
	}
}

// TestBuildExternalProblems: addresses that can never be served, an
// endpoint on an external address, and two Services on one node port.
func TestBuildExternalProblems(t *testing.T) {
	a := externalSeed(corev1.ServiceExternalTrafficPolicyCluster)
	a.Spec.ExternalIPs = []string{"127.0.0.1", "nonsense", "fd00::10", "192.0.2.10"}
	b := created(service("default", "other", []string{"10.3.241.153"},
		corev1.ServicePort{Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080}), 1)
	b.Spec.Type = corev1.ServiceTypeNodePort
	c := created(service("default", "third", []string{"10.3.241.154"}, corev1.ServicePort{Protocol: corev1.ProtocolTCP, Port: 81}), 2)
	slices := []*discoveryv1.EndpointSlice{
		seedSlice(),
		slice("default", "third-1", "third", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("", corev1.ProtocolTCP, 80)}, endpoints("192.0.2.10")...),
	}
	snap, problems := resolver.Build([]*corev1.Service{a, b, c}, slices, nil, resolver.Topology{})
	checkProblems(t, problems, []string{
		"externalIP 127.0.0.1 is a loopback address; not served",
		`externalIP "nonsense" is not an IP address`,
		"external address fd00::10: the Service has no ClusterIP of its family; not served",
		"endpoint 192.0.2.10 (EndpointSlice default/third-1) is an external address of Service default/service-test",
		"Service default/other: TCP nodePort 30080 already served by Service default/service-test",
	})
	if np, ok := snap.LookupNodePort(resolver.TCP, netip.MustParseAddr("10.0.3.1"), 30080); !ok || np.Service != "default/service-test" {
		t.Errorf("LookupNodePort(30080) = %v, %v; want the older Service", np, ok)
	}
	for _, p := range problems {
		if strings.Contains(p.String(), "hostname") {
			t.Errorf("a hostname-only ingress was reported: %v", p)
		}
	}

	// loadBalancerSourceRanges: the ingress IPs are not served at all.
	d := externalSeed(corev1.ServiceExternalTrafficPolicyCluster)
	d.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24"}
	snap, problems = resolver.Build([]*corev1.Service{d}, nil, nil, resolver.Topology{})
	checkProblems(t, problems, []string{"loadBalancerSourceRanges are not enforced by kubetun"})
	if _, ok := snap.Lookup(resolver.TCP, addrPort(t, "203.0.113.1:80")); ok {
		t.Errorf("a load-balancer IP with loadBalancerSourceRanges is served")
	}
	if _, ok := snap.Lookup(resolver.TCP, addrPort(t, "192.0.2.10:80")); !ok {
		t.Errorf("the externalIP of a Service with loadBalancerSourceRanges is not served")
	}
}
