package resolver_test

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
)

// topoEP is a resolver.Endpoint for the topology tables: addr is "10.0.x.y"
// (port 8080), state is one of "ready" (ready, serving), "terminating"
// (serving, terminating), "gone" (terminating, not serving), "starting"
// (serving, neither ready nor terminating) or "down" (nothing).
func topoEP(tb testing.TB, addr, state, node string, zones, nodes []string) resolver.Endpoint {
	tb.Helper()
	ep := resolver.Endpoint{Addr: addrPort(tb, addr+":8080"), NodeName: node, ForZones: zones, ForNodes: nodes}
	switch state {
	case "ready":
		ep.Ready, ep.Serving = true, true
	case "terminating":
		ep.Serving, ep.Terminating = true, true
	case "gone":
		ep.Terminating = true
	case "starting":
		ep.Serving = true
	case "down":
	default:
		tb.Fatalf("topoEP(%q): unknown state %q", addr, state)
	}
	return ep
}

// TestUsable checks Usable against kube-proxy's CategorizeEndpoints rules
// (pkg/proxy/topology.go), one rule per row.
func TestUsable(t *testing.T) {
	type e struct {
		addr, state, node string
		zones, nodes      []string
	}
	here := resolver.Topology{NodeName: "node1", Zone: "zone-a"}
	tests := []struct {
		name  string
		eps   []e
		local bool
		topo  resolver.Topology
		want  []string // addresses, without the port
	}{
		// internalTrafficPolicy: Cluster, no hints.
		{
			name: "no endpoints",
			topo: here,
		},
		{
			name: "all ready",
			eps:  []e{{addr: "10.0.1.2", state: "ready"}, {addr: "10.0.2.2", state: "ready"}},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
		{
			name: "ready ones only",
			eps: []e{
				{addr: "10.0.1.2", state: "ready"},
				{addr: "10.0.2.2", state: "terminating"},
				{addr: "10.0.3.2", state: "starting"},
				{addr: "10.0.4.2", state: "gone"},
				{addr: "10.0.5.2", state: "ready"},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.5.2"},
		},
		{
			name: "none ready: serving and terminating ones",
			eps: []e{
				{addr: "10.0.1.2", state: "terminating"},
				{addr: "10.0.2.2", state: "starting"},
				{addr: "10.0.3.2", state: "gone"},
				{addr: "10.0.4.2", state: "terminating"},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.4.2"},
		},
		{
			name: "never a non-serving one",
			eps:  []e{{addr: "10.0.1.2", state: "gone"}, {addr: "10.0.2.2", state: "down"}},
			topo: here,
		},
		{
			name: "Cluster ignores node names",
			eps:  []e{{addr: "10.0.1.2", state: "ready", node: "node2"}, {addr: "10.0.2.2", state: "ready", node: "node1"}},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},

		// internalTrafficPolicy: Local.
		{
			name:  "Local: ready ones on this node",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "ready", node: "node1"},
				{addr: "10.0.2.2", state: "ready", node: "node2"},
				{addr: "10.0.3.2", state: "ready", node: "node1"},
				{addr: "10.0.4.2", state: "terminating", node: "node1"},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.3.2"},
		},
		{
			name:  "Local: no local ready one: local serving and terminating ones, not remote ready ones",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "terminating", node: "node1"},
				{addr: "10.0.2.2", state: "ready", node: "node2"},
				{addr: "10.0.3.2", state: "starting", node: "node1"},
				{addr: "10.0.4.2", state: "gone", node: "node1"},
				{addr: "10.0.5.2", state: "terminating", node: "node2"},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},
		{
			name:  "Local: nothing on this node: none",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "ready", node: "node2"},
				{addr: "10.0.2.2", state: "terminating", node: "node3"},
			},
			topo: here,
		},
		{
			name:  "Local: only non-serving ones on this node: none",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "gone", node: "node1"},
				{addr: "10.0.2.2", state: "down", node: "node1"},
				{addr: "10.0.3.2", state: "ready", node: "node2"},
			},
			topo: here,
		},
		{
			name:  "Local: an empty node name never matches",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "ready"},
				{addr: "10.0.2.2", state: "terminating"},
			},
			topo: resolver.Topology{Zone: "zone-a"},
		},
		{
			name:  "Local: endpoints without a node name are not local",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "ready"},
				{addr: "10.0.2.2", state: "ready", node: "node1"},
			},
			topo: here,
			want: []string{"10.0.2.2"},
		},
		{
			name:  "Local: hints are ignored",
			local: true,
			eps: []e{
				{addr: "10.0.1.2", state: "ready", node: "node1", zones: []string{"zone-b"}, nodes: []string{"node2"}},
				{addr: "10.0.2.2", state: "ready", node: "node2", zones: []string{"zone-a"}, nodes: []string{"node1"}},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},

		// Zone hints.
		{
			name: "zone hints: every ready one has one and one matches",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "ready", zones: []string{"zone-b"}},
				{addr: "10.0.3.2", state: "ready", zones: []string{"zone-c", "zone-a"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.3.2"},
		},
		{
			name: "zone hints: one ready endpoint without a hint: all ready ones",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "ready"},
				{addr: "10.0.3.2", state: "ready", zones: []string{"zone-b"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2", "10.0.3.2"},
		},
		{
			name: "zone hints: none for this zone: all ready ones",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-b"}},
				{addr: "10.0.2.2", state: "ready", zones: []string{"zone-c"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
		{
			name: "zone hints: this node has no zone: all ready ones",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "ready", zones: []string{"zone-b"}},
			},
			topo: resolver.Topology{NodeName: "node1"},
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
		{
			name: "zone hints: only ready endpoints need a hint",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "terminating"},
				{addr: "10.0.3.2", state: "starting"},
				{addr: "10.0.4.2", state: "ready", zones: []string{"zone-b"}},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},
		{
			name: "zone hints: a terminating endpoint for this zone does not make the zone match",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-b"}},
				{addr: "10.0.2.2", state: "terminating", zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},
		{
			name: "zone hints: never a non-ready endpoint of this zone",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "terminating", zones: []string{"zone-a"}},
				{addr: "10.0.3.2", state: "ready", zones: []string{"zone-b"}},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},

		// Node hints, preferred over zone hints.
		{
			name: "node hints: every ready one has one and one matches",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node2"}},
				{addr: "10.0.2.2", state: "ready", nodes: []string{"node1"}},
				{addr: "10.0.3.2", state: "ready", nodes: []string{"node3", "node1"}},
			},
			topo: here,
			want: []string{"10.0.2.2", "10.0.3.2"},
		},
		{
			name: "node hints win over zone hints",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node1"}, zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "ready", nodes: []string{"node2"}, zones: []string{"zone-a"}},
				{addr: "10.0.3.2", state: "ready", nodes: []string{"node3"}, zones: []string{"zone-b"}},
			},
			topo: here,
			want: []string{"10.0.1.2"},
		},
		{
			name: "node hints: none for this node: zone hints",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node2"}, zones: []string{"zone-a"}},
				{addr: "10.0.2.2", state: "ready", nodes: []string{"node3"}, zones: []string{"zone-a"}},
				{addr: "10.0.3.2", state: "ready", nodes: []string{"node4"}, zones: []string{"zone-b"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
		{
			name: "node hints: one ready endpoint without a node hint: zone hints",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node1"}, zones: []string{"zone-b"}},
				{addr: "10.0.2.2", state: "ready", zones: []string{"zone-a"}},
				{addr: "10.0.3.2", state: "ready", nodes: []string{"node3"}, zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.2.2", "10.0.3.2"},
		},
		{
			name: "node hints: neither node nor zone hints usable: all ready ones",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node1"}},
				{addr: "10.0.2.2", state: "ready", zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
		{
			name: "node hints: this kubetun has no node name: not used",
			eps: []e{
				{addr: "10.0.1.2", state: "ready", nodes: []string{"node1"}},
				{addr: "10.0.2.2", state: "ready", nodes: []string{"node2"}},
			},
			topo: resolver.Topology{Zone: "zone-a"},
			want: []string{"10.0.1.2", "10.0.2.2"},
		},

		// No ready endpoint: hints do not apply.
		{
			name: "hints ignored when none is ready: serving and terminating ones cluster-wide",
			eps: []e{
				{addr: "10.0.1.2", state: "terminating", nodes: []string{"node2"}, zones: []string{"zone-b"}},
				{addr: "10.0.2.2", state: "terminating", nodes: []string{"node1"}, zones: []string{"zone-a"}},
				{addr: "10.0.3.2", state: "gone", zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.1.2", "10.0.2.2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var eps []resolver.Endpoint
			for _, x := range tt.eps {
				eps = append(eps, topoEP(t, x.addr, x.state, x.node, x.zones, x.nodes))
			}
			in := slices.Clone(eps)
			var want []string
			for _, a := range tt.want {
				want = append(want, a+":8080")
			}
			got := resolver.Usable(eps, tt.local, tt.topo)
			if !slices.Equal(addrs(got), want) {
				t.Errorf("Usable(%v, local=%v, %+v) = %v, want %v", addrs(eps), tt.local, tt.topo, addrs(got), want)
			}
			if !slices.EqualFunc(eps, in, endpointEqual) {
				t.Errorf("Usable modified its input: %+v, was %+v", eps, in)
			}
		})
	}
}

func endpointEqual(a, b resolver.Endpoint) bool {
	return a.Addr == b.Addr && a.NodeName == b.NodeName && a.Zone == b.Zone &&
		slices.Equal(a.ForZones, b.ForZones) && slices.Equal(a.ForNodes, b.ForNodes) &&
		a.Ready == b.Ready && a.Serving == b.Serving && a.Terminating == b.Terminating
}

// TestBuildTopology checks that Build applies internalTrafficPolicy and the
// slices' hints and node names, as the API gives them.
func TestBuildTopology(t *testing.T) {
	yes, no := ptr(true), ptr(false)
	tcp := corev1.ProtocolTCP
	type e struct {
		addr         string
		ready        *bool
		terminating  *bool
		node         string
		zones, nodes []string
	}
	endpoint := func(x e) discoveryv1.Endpoint {
		ep := discoveryv1.Endpoint{
			Addresses:  []string{x.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: x.ready, Terminating: x.terminating},
		}
		if x.node != "" {
			ep.NodeName = ptr(x.node)
		}
		if len(x.zones) > 0 || len(x.nodes) > 0 {
			ep.Hints = &discoveryv1.EndpointHints{}
			for _, z := range x.zones {
				ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range x.nodes {
				ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		return ep
	}
	here := resolver.Topology{NodeName: "node1", Zone: "zone-a"}
	cluster, local := corev1.ServiceInternalTrafficPolicyCluster, corev1.ServiceInternalTrafficPolicyLocal
	tests := []struct {
		name   string
		policy *corev1.ServiceInternalTrafficPolicy
		eps    []e
		topo   resolver.Topology
		want   []string
	}{
		{
			name:   "Local: the endpoints on this node",
			policy: &local,
			eps: []e{
				{addr: "10.0.1.2", node: "node1"},
				{addr: "10.0.2.2", node: "node2"},
				{addr: "10.0.3.2"},
			},
			topo: here,
			want: []string{"10.0.1.2:8080"},
		},
		{
			name:   "Local: a local terminating one before a remote ready one",
			policy: &local,
			eps: []e{
				{addr: "10.0.1.2", ready: no, terminating: yes, node: "node1"},
				{addr: "10.0.2.2", node: "node2"},
			},
			topo: here,
			want: []string{"10.0.1.2:8080"},
		},
		{
			name:   "Local: none on this node: refused",
			policy: &local,
			eps:    []e{{addr: "10.0.1.2", node: "node2"}, {addr: "10.0.2.2", node: "node3"}},
			topo:   here,
		},
		{
			name:   "Local on a kubetun without a node name: refused",
			policy: &local,
			eps:    []e{{addr: "10.0.1.2", node: "node1"}},
			topo:   resolver.Topology{},
		},
		{
			name:   "explicit Cluster: every node",
			policy: &cluster,
			eps:    []e{{addr: "10.0.1.2", node: "node1"}, {addr: "10.0.2.2", node: "node2"}},
			topo:   here,
			want:   []string{"10.0.1.2:8080", "10.0.2.2:8080"},
		},
		{
			name: "no policy means Cluster",
			eps:  []e{{addr: "10.0.1.2", node: "node1"}, {addr: "10.0.2.2", node: "node2"}},
			topo: here,
			want: []string{"10.0.1.2:8080", "10.0.2.2:8080"},
		},
		{
			name: "forZones",
			eps: []e{
				{addr: "10.0.1.2", zones: []string{"zone-b"}},
				{addr: "10.0.2.2", zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.2.2:8080"},
		},
		{
			name: "forZones missing on one ready endpoint",
			eps: []e{
				{addr: "10.0.1.2", zones: []string{"zone-b"}},
				{addr: "10.0.2.2"},
			},
			topo: here,
			want: []string{"10.0.1.2:8080", "10.0.2.2:8080"},
		},
		{
			name: "forNodes before forZones",
			eps: []e{
				{addr: "10.0.1.2", zones: []string{"zone-a"}, nodes: []string{"node2"}},
				{addr: "10.0.2.2", zones: []string{"zone-a"}, nodes: []string{"node1"}},
			},
			topo: here,
			want: []string{"10.0.2.2:8080"},
		},
		{
			name: "hints ignored with none ready",
			eps: []e{
				{addr: "10.0.1.2", ready: no, terminating: yes, zones: []string{"zone-b"}},
				{addr: "10.0.2.2", ready: no, terminating: yes, zones: []string{"zone-a"}},
			},
			topo: here,
			want: []string{"10.0.1.2:8080", "10.0.2.2:8080"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := service("default", "web", []string{"10.3.240.10"}, servicePort("", tcp, 80, intstr.FromInt32(8080)))
			svc.Spec.InternalTrafficPolicy = tt.policy
			var eps []discoveryv1.Endpoint
			for _, x := range tt.eps {
				eps = append(eps, endpoint(x))
			}
			es := slice("default", "web-1", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{slicePort("", tcp, 8080)}, eps...)
			snap, problems := resolver.Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{es}, nil, tt.topo)
			checkProblems(t, problems, nil)
			sp, ok := snap.Lookup(resolver.TCP, addrPort(t, "10.3.240.10:80"))
			if !ok {
				t.Fatal("Lookup(TCP, 10.3.240.10:80) not found")
			}
			if len(sp.Endpoints) != len(tt.eps) {
				t.Errorf("Endpoints = %v, want all %d", addrs(sp.Endpoints), len(tt.eps))
			}
			got := addrs(sp.Usable())
			if !slices.Equal(got, tt.want) {
				t.Errorf("Usable() = %v, want %v", got, tt.want)
			}
			if len(tt.want) == 0 {
				if ep, ok := sp.Pick(); ok {
					t.Errorf("Pick() = %v, true; want false (refused)", ep)
				}
			}
		})
	}
}
