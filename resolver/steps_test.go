package resolver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The tests here check the build's steps one at a time, on a cache
// brought to a set of Services and slices by update and stopped before
// the step.

// stepService is a Service created age minutes into 2026, with a TCP port
// 80 on ip (and node port nodePort, if not 0), and externalIPs.
func stepService(name string, age int, ip string, nodePort int32, externalIPs ...string) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, age, 0, 0, time.UTC))},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, ExternalIPs: externalIPs,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, NodePort: nodePort}}},
	}
	if nodePort != 0 {
		svc.Spec.Type = corev1.ServiceTypeNodePort
	}
	return svc
}

// stepSlice is a slice of Service svc with endpoints at addrs, port 8080.
func stepSlice(name, svc string, addrs ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(8080)), Protocol: new(corev1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return es
}

// updated returns a cache brought to services and slices, before its fold.
func updated(services []*corev1.Service, list []*discoveryv1.EndpointSlice) *buildCache {
	c := newBuildCache(Topology{}, buildOptions{maxAffinity: DefaultMaxAffinityClients})
	c.update(everything(services, list), nil)
	return c
}

// claimed returns a folding of c with every touched name claimed: the
// state settlePorts and settleNodePorts start from.
func claimed(c *buildCache) *folding {
	f := c.newFolding()
	for id := range c.touched {
		f.claimName(id)
	}
	return f
}

func TestClaimNameTakesOldestDefinition(t *testing.T) {
	old, young := stepService("web", 1, "10.96.0.1", 0), stepService("web", 2, "10.96.0.2", 0)
	tests := []struct {
		name     string
		services []*corev1.Service
		active   *corev1.Service
	}{
		{"one definition", []*corev1.Service{young}, young},
		{"the older of two", []*corev1.Service{young, old}, old},
		{"given in either order", []*corev1.Service{old, young}, old},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, nil)
			f := claimed(c)
			for _, e := range c.byID["ns/web"] {
				if e.active != (e.svc == tt.active) {
					t.Errorf("definition %s active = %v", e.svc.Spec.ClusterIP, e.active)
				}
			}
			if n, _ := f.names.get(nameKey{"ns", "web"}); n.svc != tt.active {
				t.Errorf("name ns/web is %s's, want %s's", n.svc.Spec.ClusterIP, tt.active.Spec.ClusterIP)
			}
		})
	}
}

func TestSettlePortsPicksWinners(t *testing.T) {
	k := func(addr string) portKey { return portKey{TCP, netip.MustParseAddrPort(addr)} }
	tests := []struct {
		name     string
		services []*corev1.Service
		want     map[portKey]string // the Service serving each key; "" none
	}{
		{
			name:     "a ClusterIP shared: the older serves it",
			services: []*corev1.Service{stepService("young", 2, "10.96.0.1", 0), stepService("old", 1, "10.96.0.1", 0)},
			want:     map[portKey]string{k("10.96.0.1:80"): "ns/old"},
		},
		{
			name: "an external address shared: the older serves it",
			services: []*corev1.Service{stepService("young", 2, "10.96.0.2", 0, "203.0.113.1"),
				stepService("old", 1, "10.96.0.1", 0, "203.0.113.1")},
			want: map[portKey]string{k("203.0.113.1:80"): "ns/old", k("10.96.0.1:80"): "ns/old", k("10.96.0.2:80"): "ns/young"},
		},
		{
			name: "a Service that lost its ClusterIP port serves it from outside neither",
			services: []*corev1.Service{stepService("young", 2, "10.96.0.1", 0, "203.0.113.2"),
				stepService("old", 1, "10.96.0.1", 0)},
			want: map[portKey]string{k("10.96.0.1:80"): "ns/old", k("203.0.113.2:80"): ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, nil)
			f := claimed(c)
			f.settlePorts()
			for key, want := range tt.want {
				got := ""
				if w, ok := c.portWin[key]; ok {
					got = w.e.id
				}
				if sp, _ := f.ports.get(key); (sp != nil) != (want != "") {
					t.Errorf("%v in the snapshot: %v, want served: %v", key, sp, want != "")
				}
				if got != want {
					t.Errorf("%v served by %q, want %q", key, got, want)
				}
			}
		})
	}
}

func TestSettleNodePortsPicksWinners(t *testing.T) {
	np := nodePortKey{TCP, false, 30080}
	tests := []struct {
		name     string
		services []*corev1.Service
		want     string
	}{
		{"one Service", []*corev1.Service{stepService("a", 1, "10.96.0.1", 30080)}, "ns/a"},
		{"shared: the older", []*corev1.Service{stepService("young", 2, "10.96.0.2", 30080), stepService("old", 1, "10.96.0.1", 30080)}, "ns/old"},
		{"the older lost its ClusterIP port: the younger", []*corev1.Service{stepService("first", 0, "10.96.0.1", 0),
			stepService("old", 1, "10.96.0.1", 30080), stepService("young", 2, "10.96.0.2", 30080)}, "ns/young"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, nil)
			f := claimed(c)
			f.settlePorts()
			f.settleNodePorts()
			if w := c.nodeWin[np]; w.e == nil || w.e.id != tt.want {
				t.Errorf("node port 30080 served by %v, want %s", w.e, tt.want)
			}
			if !f.npDirty || len(c.npCount) != 1 {
				t.Errorf("node port list dirty %v, %d counted; want dirty, 1", f.npDirty, len(c.npCount))
			}
		})
	}
}

// TestWithdrawTakesBackClaims: a Service replaced gives back what it
// claimed, and the next fold has the new one claim it.
func TestWithdrawTakesBackClaims(t *testing.T) {
	a := stepService("a", 1, "10.96.0.1", 30080, "203.0.113.1")
	c := updated([]*corev1.Service{a}, nil)
	c.fold()
	e := c.byID["ns/a"][0]
	if !e.active || len(e.claimedPorts) != 2 || len(e.claimedNodes) != 1 || len(e.claimedIPs) != 1 {
		t.Fatalf("after the first fold: active %v, claims %v %v %v", e.active, e.claimedPorts, e.claimedNodes, e.claimedIPs)
	}
	f := c.newFolding()
	f.withdraw(e)
	if e.active || len(c.portClaims) != 0 || len(c.nodeClaims) != 0 || len(c.ipClaims) != 0 || len(c.nsCount) != 0 {
		t.Errorf("after withdraw: active %v, claims %v %v %v, namespaces %v", e.active, c.portClaims, c.nodeClaims, c.ipClaims, c.nsCount)
	}
	if !f.recheck[e] || len(f.affPorts) != 2 || len(f.affNodes) != 1 || !f.nsChanged {
		t.Errorf("after withdraw: recheck %v, affected ports %v, node ports %v, namespaces changed %v", f.recheck[e], f.affPorts, f.affNodes, f.nsChanged)
	}
}

func TestServable(t *testing.T) {
	noPorts := stepService("a", 1, "10.96.0.1", 0)
	noPorts.Spec.Ports = nil
	badIP := stepService("a", 1, "not-an-ip", 0)
	headless := stepService("a", 1, corev1.ClusterIPNone, 0)
	outside := stepService("a", 1, "192.168.0.1", 0)
	v6ext := stepService("a", 1, "10.96.0.1", 0, "2001:db8::1")
	tests := []struct {
		name     string
		svc      *corev1.Service
		servable bool
		problem  string
	}{
		{"served", stepService("a", 1, "10.96.0.1", 0), true, ""},
		{"headless", headless, false, ""},
		{"no ports", noPorts, false, "has no ports"},
		{"a clusterIP that is no address", badIP, false, "is not an IP address"},
		{"outside the service CIDRs", outside, true, "outside every service CIDR"},
		{"an external address of another family", v6ext, true, "no ClusterIP of its family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newBuildCache(Topology{}, buildOptions{serviceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
			e := c.newEntry(tt.svc, "ns/a", 0)
			if got := c.servable(e); got != tt.servable {
				t.Errorf("servable = %v, want %v", got, tt.servable)
			}
			checkStepProblems(t, e, tt.problem)
		})
	}
}

func TestCheckPort(t *testing.T) {
	tests := []struct {
		name    string
		port    corev1.ServicePort
		proto   Protocol
		problem string
	}{
		{"TCP", corev1.ServicePort{Port: 80}, TCP, ""},
		{"UDP", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}, UDP, ""},
		{"SCTP", corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolSCTP}, 0, "SCTP is not supported"},
		{"unknown protocol", corev1.ServicePort{Port: 80, Protocol: "QUIC"}, 0, `protocol "QUIC" is not supported`},
		{"port 0", corev1.ServicePort{Port: 0}, 0, "not a port number"},
		{"port 65536", corev1.ServicePort{Port: 65536}, 0, "not a port number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &svcEntry{id: "ns/a"}
			proto, ok := e.checkPort(tt.port)
			if proto != tt.proto || ok != (tt.problem == "") {
				t.Errorf("checkPort = %v, %v; want %v, %v", proto, ok, tt.proto, tt.problem == "")
			}
			checkStepProblems(t, e, tt.problem)
		})
	}
}

// checkStepProblems checks that e's steps report one problem containing
// want, or none for "".
func checkStepProblems(t *testing.T, e *svcEntry, want string) {
	t.Helper()
	var got []string
	for _, s := range e.steps {
		if s.problem != nil {
			got = append(got, s.problem.Reason)
		}
	}
	if want == "" && len(got) > 0 || want != "" && (len(got) != 1 || !strings.Contains(got[0], want)) {
		t.Errorf("problems %q, want one with %q", got, want)
	}
}

// TestReplaceSlices: a slice filed under its Service, moved to another by
// its label, or serving none, marks dirty the Services it left and joined.
func TestReplaceSlices(t *testing.T) {
	web, api := stepService("web", 1, "10.96.0.1", 0), stepService("api", 1, "10.96.0.2", 0)
	moved := stepSlice("s-1", "api", "10.244.0.1")
	unlabelled := stepSlice("s-1", "web", "10.244.0.1")
	unlabelled.Labels = nil
	tests := []struct {
		name    string
		es      *discoveryv1.EndpointSlice
		dirty   []string
		webs    int // slices filed under ns/web after it
		problem bool
	}{
		{"unchanged Service, new endpoints", stepSlice("s-1", "web", "10.244.0.2"), []string{"ns/web"}, 1, false},
		{"moved to another Service", moved, []string{"ns/api", "ns/web"}, 0, false},
		{"no Service label", unlabelled, []string{"ns/web"}, 0, true},
		{"deleted", nil, []string{"ns/web"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated([]*corev1.Service{web, api}, []*discoveryv1.EndpointSlice{stepSlice("s-1", "web", "10.244.0.1")})
			c.fold()
			var defs []*discoveryv1.EndpointSlice
			if tt.es != nil {
				defs = append(defs, tt.es)
			}
			var dirty dirtyList
			c.replaceSlices(map[string][]*discoveryv1.EndpointSlice{"ns/s-1": defs}, &dirty)
			var ids []string
			for _, e := range dirty {
				ids = append(ids, e.id)
			}
			slices.Sort(ids)
			if !slices.Equal(ids, tt.dirty) {
				t.Errorf("dirty %v, want %v", ids, tt.dirty)
			}
			if got := len(c.bySvc["ns/web"]); got != tt.webs {
				t.Errorf("%d slices under ns/web, want %d", got, tt.webs)
			}
			if got := len(c.noService) == 1; got != tt.problem {
				t.Errorf("slice serving no Service: %v, want %v", got, tt.problem)
			}
		})
	}
}

// TestSettleClusterIPs: the oldest entry with a ClusterIP owns it; when it
// goes, the next one does, and the entries whose endpoints are at that
// address are judged again.
func TestSettleClusterIPs(t *testing.T) {
	old, young := stepService("old", 1, "10.96.0.1", 0), stepService("young", 2, "10.96.0.1", 0)
	client := stepService("client", 3, "10.96.0.3", 0)
	c := updated([]*corev1.Service{old, young, client}, []*discoveryv1.EndpointSlice{stepSlice("c-1", "client", "10.96.0.1")})
	c.fold()
	if c.owners[netip.MustParseAddr("10.96.0.1")] != "ns/old" {
		t.Fatalf("10.96.0.1 owned by %q, want ns/old", c.owners[netip.MustParseAddr("10.96.0.1")])
	}
	tests := []struct {
		name    string
		changes map[string][]*corev1.Service
		owner   string
		dirty   bool // the client's entry
	}{
		{"the younger changes: owner stays", map[string][]*corev1.Service{"ns/young": {stepService("young", 2, "10.96.0.1", 0)}}, "ns/old", false},
		{"the owner goes: the younger owns it", map[string][]*corev1.Service{"ns/old": nil}, "ns/young", true},
		{"both go: none", map[string][]*corev1.Service{"ns/young": nil}, "", true},
	}
	for _, tt := range tests { // in order: each builds on the last
		var dirty dirtyList
		added := c.replaceServices(tt.changes, &dirty)
		c.settleClusterIPs(added, &dirty)
		if got := c.owners[netip.MustParseAddr("10.96.0.1")]; got != tt.owner {
			t.Errorf("%s: owner %q, want %q", tt.name, got, tt.owner)
		}
		clientDirty := slices.ContainsFunc(dirty, func(e *svcEntry) bool { return e.id == "ns/client" })
		if clientDirty != tt.dirty {
			t.Errorf("%s: the client's entry dirty %v, want %v", tt.name, clientDirty, tt.dirty)
		}
		c.rebuild(dirty, nil)
		c.fold()
	}
}

// TestEntryProblems: the problems of the entries that have some, oldest
// first: a definition that lost its name, a port lost to an older Service,
// and the endpoints refused.
func TestEntryProblems(t *testing.T) {
	tests := []struct {
		name     string
		services []*corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     []string
	}{
		{"none", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0)}, nil, nil},
		{"defined twice", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0), stepService("a", 2, "10.96.0.2", 0)}, nil,
			[]string{"Service ns/a: defined twice; using the older definition"}},
		{"a ClusterIP port lost", []*corev1.Service{stepService("b", 2, "10.96.0.1", 0), stepService("a", 1, "10.96.0.1", 0)}, nil,
			[]string{"Service ns/b: TCP 10.96.0.1:80 already served by Service ns/a (the older Service); ignored"}},
		{"a node port lost", []*corev1.Service{stepService("b", 2, "10.96.0.2", 30080), stepService("a", 1, "10.96.0.1", 30080)}, nil,
			[]string{"Service ns/b: TCP nodePort 30080 already served by Service ns/a (the older Service); ignored"}},
		{"an endpoint on a ClusterIP", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0)}, []*discoveryv1.EndpointSlice{stepSlice("a-1", "a", "10.96.0.1")},
			[]string{"Service ns/a: endpoint 10.96.0.1 (EndpointSlice ns/a-1) is the ClusterIP of Service ns/a (kubetun would dial itself); refused, never dialled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, tt.slices)
			_, problems := c.fold()
			var got []string
			for _, p := range problems {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("problems\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// TestHoldExternal: the oldest definition of a name that is neither
// headless nor ExternalName holds its external addresses; the oldest such
// entry owns each address, and a name that changes gives its addresses up.
func TestHoldExternal(t *testing.T) {
	ext := netip.MustParseAddr("203.0.113.1")
	headless := stepService("a", 0, corev1.ClusterIPNone, 0, "203.0.113.9")
	tests := []struct {
		name     string
		services []*corev1.Service
		holder   string // ClusterIP of the definition holding ns/a's addresses
		owner    string // the owner of 203.0.113.1
	}{
		{"one definition", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0, "203.0.113.1")}, "10.96.0.1", "ns/a"},
		{"the oldest that is not headless", []*corev1.Service{headless, stepService("a", 2, "10.96.0.2", 0, "203.0.113.1")}, "10.96.0.2", "ns/a"},
		{"an older name owns a shared address", []*corev1.Service{stepService("a", 2, "10.96.0.1", 0, "203.0.113.1"),
			stepService("b", 1, "10.96.0.2", 0, "203.0.113.1")}, "10.96.0.1", "ns/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, nil)
			if h := c.extHolder["ns/a"]; h == nil || h.svc.Spec.ClusterIP != tt.holder {
				t.Errorf("ns/a's addresses held by %v, want the definition on %s", h, tt.holder)
			}
			if got := c.extOwners[ext]; got != tt.owner {
				t.Errorf("203.0.113.1 owned by %q, want %q", got, tt.owner)
			}
			touched := make(map[netip.Addr]bool)
			c.releaseExternal("ns/a", touched)
			if c.extHolder["ns/a"] != nil || !touched[ext] {
				t.Errorf("after release: holder %v, touched %v; want none, 203.0.113.1", c.extHolder["ns/a"], touched)
			}
		})
	}
}

// TestSettleServedAndHealthCheck: an entry is counted as served while it
// serves a ClusterIP port, and has a health check node port then, with
// externalTrafficPolicy: Local and its ready endpoints on this node.
func TestSettleServedAndHealthCheck(t *testing.T) {
	local := func(svc *corev1.Service) *corev1.Service {
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 32000
		return svc
	}
	here := stepSlice("a-1", "a", "10.244.0.1", "10.244.0.2")
	here.Endpoints[0].NodeName = new("node-a")
	tests := []struct {
		name     string
		services []*corev1.Service
		served   bool
		hc       *HealthCheck
	}{
		{"served, no health check", []*corev1.Service{stepService("a", 1, "10.96.0.1", 30080)}, true, nil},
		{"a health check with one local endpoint", []*corev1.Service{local(stepService("a", 1, "10.96.0.1", 30080))}, true,
			&HealthCheck{Namespace: "ns", Name: "a", Port: 32000, LocalEndpoints: 1}},
		{"its ClusterIP port lost: neither", []*corev1.Service{stepService("b", 0, "10.96.0.1", 0), local(stepService("a", 1, "10.96.0.1", 30080))}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newBuildCache(Topology{NodeName: "node-a"}, buildOptions{maxAffinity: DefaultMaxAffinityClients})
			c.update(everything(tt.services, []*discoveryv1.EndpointSlice{here}), nil)
			f := claimed(c)
			f.settlePorts()
			e := c.byID["ns/a"][0]
			f.settleServed(e)
			f.settleHealthCheck(e)
			if e.served != tt.served {
				t.Errorf("served = %v, want %v", e.served, tt.served)
			}
			hc, ok := c.hcs[e]
			if ok != (tt.hc != nil) || ok && hc != *tt.hc {
				t.Errorf("health check %+v (%v), want %+v", hc, ok, tt.hc)
			}
			if f.hcDirty != (tt.hc != nil) {
				t.Errorf("health checks dirty %v, want %v", f.hcDirty, tt.hc != nil)
			}
		})
	}
}

// TestSettleAddressesAndLists: the addresses whose ports changed answer
// ping while a port on them has a usable endpoint, the oldest Service
// names a ClusterIP, and the lists of external addresses and node ports
// are made again only when they changed.
func TestSettleAddressesAndLists(t *testing.T) {
	ip, ext := netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("203.0.113.1")
	tests := []struct {
		name      string
		services  []*corev1.Service
		slices    []*discoveryv1.EndpointSlice
		answers   bool
		named     string
		externals []netip.Addr
		nodePorts int
	}{
		{"no endpoints", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0)}, nil, false, "a", nil, 0},
		{"an endpoint", []*corev1.Service{stepService("a", 1, "10.96.0.1", 0)}, []*discoveryv1.EndpointSlice{stepSlice("a-1", "a", "10.244.0.1")}, true, "a", nil, 0},
		{"shared: the older names it", []*corev1.Service{stepService("b", 2, "10.96.0.1", 0), stepService("a", 1, "10.96.0.1", 0)}, nil, false, "a", nil, 0},
		{"external address and node port", []*corev1.Service{stepService("a", 1, "10.96.0.1", 30080, "203.0.113.1")}, nil, false, "a", []netip.Addr{ext}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := updated(tt.services, tt.slices)
			f := claimed(c)
			f.settlePorts()
			f.settleNodePorts()
			f.settleAddresses()
			f.settleLists()
			if answers, ok := f.ips.get(ip); !ok || answers != tt.answers {
				t.Errorf("10.96.0.1 answers %v (%v), want %v", answers, ok, tt.answers)
			}
			if rec, _ := f.byIP.get(ip); rec == nil || rec.Name != tt.named {
				t.Errorf("10.96.0.1 named by %v, want %s", rec, tt.named)
			}
			if !slices.Equal(f.snap.externalIPs, tt.externals) || len(f.snap.nodePortList) != tt.nodePorts {
				t.Errorf("external addresses %v, node ports %v; want %v, %d", f.snap.externalIPs, f.snap.nodePortList, tt.externals, tt.nodePorts)
			}
			if _, ok := f.snap.namespaces["ns"]; !ok {
				t.Errorf("namespaces %v, want ns", f.snap.namespaces)
			}
		})
	}
}
