package resolver

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestBuildIncrementalMatchesScratch changes a small, crowded cluster at
// random (shared ClusterIPs, names replaced by other Services, endpoints
// shared between Services or on a ClusterIP) and checks after every change
// that the snapshot Update makes from the previous one and the change set
// is the snapshot built from nothing, problems included. The changes come
// as the informer source records them (object by object, no-op updates,
// deletes and re-adds, resyncs) and as the manifest source does (whole
// sets, Replace); now and then a change set says All. Services have
// external IPs, load-balancer ingress IPs, node ports and
// externalTrafficPolicy: Local, and what RefuseExternal refuses and
// ExternalIPRanges change between builds.
func TestBuildIncrementalMatchesScratch(t *testing.T) {
	for seed := range uint64(8) {
		for _, source := range []string{"informer", "manifest"} {
			t.Run(fmt.Sprint(source, "/", seed), func(t *testing.T) {
				r := newRandomCluster(seed, source)
				var inc *Snapshot
				seen := make(reached) // what the changes reached, to check they reach it
				for step := range 300 {
					opts := r.options()
					r.change()
					ch := r.tracker.Take()
					if step%23 == 7 {
						// Another build from the same prev: it cannot take
						// the cache over, and starts from prev's objects.
						Update(inc, ch, r.topo, opts...)
					}
					var incProblems []Problem
					inc, incProblems = Update(inc, ch, r.topo, opts...)
					svcs, list := r.lists()
					scratch, problems := Build(svcs, list, nil, r.topo, opts...)
					if !reflect.DeepEqual(incProblems, problems) {
						t.Fatalf("step %d: problems\n%v\nfrom scratch\n%v", step, incProblems, problems)
					}
					if d := snapshotDiff(inc, scratch); d != "" {
						t.Fatalf("step %d: %s", step, d)
					}
					if d := cacheSizeDiff(inc.cache, scratch.cache); d != "" {
						t.Fatalf("step %d: the cache holds %s", step, d)
					}
					seen.count(inc, problems)
				}
				seen.check(t)
			})
		}
	}
}

// cacheSizeDiff compares the sizes of the indexes of two caches of the
// same objects: an incremental build must leave no entry behind that one
// from nothing would not have.
func cacheSizeDiff(a, b *buildCache) string {
	for _, n := range []struct {
		what string
		a, b int
	}{
		{"Services", len(a.byID), len(b.byID)},
		{"slices", len(a.sliceDefs), len(b.sliceDefs)},
		{"Services with slices", len(a.bySvc), len(b.bySvc)},
		{"ClusterIP owners", len(a.ipOwners), len(b.ipOwners)},
		{"endpoint addresses", len(a.byEndpointAddr), len(b.byEndpointAddr)},
		{"external address owners", len(a.extIPOwners), len(b.extIPOwners)},
		{"external address holders", len(a.extHolder), len(b.extHolder)},
		{"entries with external addresses", len(a.withExternal), len(b.withExternal)},
		{"port claims", len(a.portClaims), len(b.portClaims)},
		{"node port claims", len(a.nodeClaims), len(b.nodeClaims)},
		{"ClusterIP claims", len(a.ipClaims), len(b.ipClaims)},
		{"addresses served", len(a.addrWin), len(b.addrWin)},
		{"entries with problems", len(a.withProblems), len(b.withProblems)},
		{"health checks", len(a.hcs), len(b.hcs)},
	} {
		if n.a != n.b {
			return fmt.Sprintf("%d %s, from scratch %d", n.a, n.what, n.b)
		}
	}
	return ""
}

// reached counts what the random changes made the table hold.
type reached map[string]int

var reachedWords = []string{"nodePort 300", "TCP 203.0.113.", "healthCheckNodePort", "external address of Service", "the node's address"}

func (seen reached) count(s *Snapshot, problems []Problem) {
	seen["node ports"] += len(s.NodePorts())
	seen["external IPs"] += len(s.ExternalIPs())
	seen["health checks"] += len(s.HealthChecks())
	for _, p := range problems {
		for _, w := range reachedWords {
			if strings.Contains(p.Reason, w) {
				seen[w]++
			}
		}
	}
}

func (seen reached) check(t *testing.T) {
	t.Helper()
	for _, w := range append([]string{"node ports", "external IPs", "health checks"}, reachedWords...) {
		if seen[w] == 0 {
			t.Errorf("no step had %s", w)
		}
	}
	t.Log(seen)
}

// randomCluster is a cluster changed at random, and a source's change
// tracker recording it.
type randomCluster struct {
	rng     *rand.Rand
	g       *genCluster
	source  string // "informer" or "manifest"
	svcs    map[string]*corev1.Service
	slices  map[string]*discoveryv1.EndpointSlice
	tracker *ChangeTracker
	topo    Topology
	refused netip.Addr
	ranges  []netip.Prefix
}

func newRandomCluster(seed uint64, source string) *randomCluster {
	rng := rand.New(rand.NewPCG(seed, 1))
	r := &randomCluster{rng: rng, g: &genCluster{rng: rng}, source: source, tracker: NewChangeTracker(),
		svcs: make(map[string]*corev1.Service), slices: make(map[string]*discoveryv1.EndpointSlice), topo: Topology{NodeName: "node-a"}}
	for range 30 {
		r.setService(r.g.service())
		r.setSlice(r.g.slice())
	}
	return r
}

// options are the build's options now; the node's addresses and the
// external IP ranges change now and then.
func (r *randomCluster) options() []Option {
	if r.rng.IntN(10) == 0 {
		r.refused = netip.AddrFrom4([4]byte{203, 0, 113, byte(r.rng.IntN(4))})
	}
	if r.rng.IntN(40) == 0 {
		r.ranges = [][]netip.Prefix{nil, {netip.MustParsePrefix("203.0.113.0/30")}}[r.rng.IntN(2)]
	}
	refused := r.refused
	return []Option{Routed(netip.MustParsePrefix("10.96.9.0/24")), ExternalIPRanges(r.ranges...),
		RefuseExternal(func(a netip.Addr) string {
			if a == refused {
				return "the node's address"
			}
			return ""
		})}
}

// change makes one to three changes, and has the tracker record them as
// the source would.
func (r *randomCluster) change() {
	for range 1 + r.rng.IntN(3) {
		r.changeOne()
	}
	if r.source == "manifest" {
		r.tracker.Replace(r.lists())
	}
	if r.rng.IntN(30) == 0 {
		r.tracker.Resync()
	}
}

func (r *randomCluster) changeOne() {
	switch r.rng.IntN(9) {
	case 0, 1: // a Service added, or one replaced by another of its name
		r.setService(r.g.service())
	case 2:
		if k, ok := r.anyKey(r.svcs); ok {
			r.setServiceKey(k, nil)
		}
	case 3: // an update that changes nothing the table reads
		if k, ok := r.anyKey(r.svcs); ok {
			svc := r.svcs[k].DeepCopy()
			svc.ResourceVersion += "1"
			svc.Annotations = map[string]string{"touched": "yes"}
			r.setServiceKey(k, svc)
		}
	case 4: // deleted, then added again as it was
		if k, ok := r.anyKey(r.svcs); ok {
			svc := r.svcs[k]
			r.setServiceKey(k, nil)
			r.setServiceKey(k, svc)
		}
	case 5:
		if k, ok := r.anyKey(r.slices); ok {
			r.setSliceKey(k, nil)
		}
	case 6:
		if k, ok := r.anyKey(r.slices); ok {
			es := r.slices[k].DeepCopy()
			es.Annotations = map[string]string{"touched": "yes"}
			r.setSliceKey(k, es)
		}
	default:
		r.setSlice(r.g.slice())
	}
}

func (r *randomCluster) anyKey(m any) (string, bool) {
	var keys []string
	switch m := m.(type) {
	case map[string]*corev1.Service:
		keys = slices.Sorted(maps.Keys(m))
	case map[string]*discoveryv1.EndpointSlice:
		keys = slices.Sorted(maps.Keys(m))
	}
	if len(keys) == 0 {
		return "", false
	}
	return keys[r.rng.IntN(len(keys))], true
}

func (r *randomCluster) setService(svc *corev1.Service) { r.setServiceKey(Key(svc), svc) }
func (r *randomCluster) setSlice(es *discoveryv1.EndpointSlice) {
	r.setSliceKey(Key(es), es)
}

func (r *randomCluster) setServiceKey(k string, svc *corev1.Service) {
	if svc == nil {
		delete(r.svcs, k)
	} else {
		r.svcs[k] = svc
	}
	if r.source == "informer" {
		r.tracker.Service(k, svc)
	}
}

func (r *randomCluster) setSliceKey(k string, es *discoveryv1.EndpointSlice) {
	if es == nil {
		delete(r.slices, k)
	} else {
		r.slices[k] = es
	}
	if r.source == "informer" {
		r.tracker.Slice(k, es)
	}
}

// lists returns the cluster's objects, in an order of their own.
func (r *randomCluster) lists() ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := slices.Collect(maps.Values(r.svcs))
	list := slices.Collect(maps.Values(r.slices))
	r.rng.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
	r.rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
	return svcs, list
}

// TestBuildDefinedTwiceMatchesScratch: lists with Services given twice or
// defined twice, and slices given twice, built from a previous snapshot,
// are built as from nothing.
func TestBuildDefinedTwiceMatchesScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	g := &genCluster{rng: rng}
	var svcs []*corev1.Service
	var list []*discoveryv1.EndpointSlice
	var prev *Snapshot
	twice := 0
	for step := range 100 {
		svcs = append(svcs, g.service())
		list = append(list, g.slice())
		if step%3 == 0 {
			svcs = append(svcs, svcs[rng.IntN(len(svcs))])
			list = append(list, list[rng.IntN(len(list))])
		}
		snap, problems := Build(svcs, list, prev, Topology{})
		scratch, want := Build(svcs, list, nil, Topology{})
		if !reflect.DeepEqual(problems, want) {
			t.Fatalf("step %d: problems\n%v\nfrom scratch\n%v", step, problems, want)
		}
		if d := snapshotDiff(snap, scratch); d != "" {
			t.Fatalf("step %d: %s", step, d)
		}
		for _, p := range problems {
			if strings.Contains(p.Reason, "defined twice") {
				twice++
			}
		}
		prev = snap
	}
	if twice == 0 {
		t.Error("no Service was defined twice")
	}
}

// snapshotDiff describes how a and b differ, or returns "".
func snapshotDiff(a, b *Snapshot) string {
	if a.services != b.services || a.endpoints != b.endpoints {
		return fmt.Sprintf("%d services, %d endpoints; from scratch %d, %d", a.services, a.endpoints, b.services, b.endpoints)
	}
	for _, d := range []string{
		mapDiff("ports", &a.ports, &b.ports, func(x, y *ServicePort) bool {
			return x.Service == y.Service && x.Name == y.Name && reflect.DeepEqual(x.Endpoints, y.Endpoints) &&
				reflect.DeepEqual(x.usable, y.usable) && x.affinityTimeout == y.affinityTimeout &&
				x.External == y.External && x.ClusterIP == y.ClusterIP && x.Port == y.Port
		}),
		mapDiff("nodePorts", &a.nodePorts, &b.nodePorts, func(x, y *ServicePort) bool {
			return x.Service == y.Service && x.Name == y.Name && reflect.DeepEqual(x.Endpoints, y.Endpoints) &&
				reflect.DeepEqual(x.usable, y.usable) && x.External && y.External && x.ClusterIP == y.ClusterIP &&
				x.Port == y.Port && x.NodePort == y.NodePort
		}),
		mapDiff("ips", &a.ips, &b.ips, func(x, y bool) bool { return x == y }),
		mapDiff("names", &a.names, &b.names, func(x, y nameEntry) bool { return SameService(x.svc, y.svc) && reflect.DeepEqual(x.rec, y.rec) }),
		mapDiff("byIP", &a.byIP, &b.byIP, func(x, y *ServiceRecord) bool { return reflect.DeepEqual(x, y) }),
	} {
		if d != "" {
			return d
		}
	}
	if !reflect.DeepEqual(a.namespaces, b.namespaces) {
		return fmt.Sprintf("namespaces %v, from scratch %v", a.namespaces, b.namespaces)
	}
	if !reflect.DeepEqual(a.NodePorts(), b.NodePorts()) {
		return fmt.Sprintf("node ports %v, from scratch %v", a.NodePorts(), b.NodePorts())
	}
	if !reflect.DeepEqual(a.ExternalIPs(), b.ExternalIPs()) {
		return fmt.Sprintf("external IPs %v, from scratch %v", a.ExternalIPs(), b.ExternalIPs())
	}
	if !reflect.DeepEqual(a.HealthChecks(), b.HealthChecks()) {
		return fmt.Sprintf("health checks %v, from scratch %v", a.HealthChecks(), b.HealthChecks())
	}
	if !reflect.DeepEqual(a.endpointIndex(), b.endpointIndex()) {
		return "endpoint index differs"
	}
	return ""
}

func mapDiff[K comparable, V any](what string, a, b *shardMap[K, V], eq func(x, y V) bool) string {
	ma, mb := maps.Collect(a.all()), maps.Collect(b.all())
	if len(ma) != a.len || len(mb) != b.len {
		return fmt.Sprintf("%s: len %d for %d entries, from scratch %d for %d", what, a.len, len(ma), b.len, len(mb))
	}
	if len(ma) != len(mb) {
		return fmt.Sprintf("%s: %d entries, from scratch %d", what, len(ma), len(mb))
	}
	for k, y := range mb {
		x, ok := ma[k]
		if !ok || !eq(x, y) {
			return fmt.Sprintf("%s %v: %v, from scratch %v", what, k, x, y)
		}
	}
	return ""
}

// genCluster makes Services and slices that often collide.
type genCluster struct {
	rng *rand.Rand
	n   int
}

func (g *genCluster) service() *corev1.Service {
	g.n++
	name := fmt.Sprintf("svc-%d", g.rng.IntN(20))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: []string{"a", "b"}[g.rng.IntN(2)], Name: name,
			UID:               types.UID(fmt.Sprint(g.n)),
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, g.rng.IntN(5), 0, 0, time.UTC))},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP},
	}
	switch g.rng.IntN(8) {
	case 0:
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	case 1:
		svc.Spec.Type, svc.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	default:
		ip := fmt.Sprintf("10.96.0.%d", g.rng.IntN(25))
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
	}
	if g.rng.IntN(5) == 0 {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}
	switch g.rng.IntN(3) {
	case 1:
		svc.Spec.Type = corev1.ServiceTypeNodePort
	case 2:
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		for range g.rng.IntN(3) {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: g.externalIP()})
		}
		if g.rng.IntN(6) == 0 {
			svc.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24"}
		}
	}
	if svc.Spec.ExternalName != "" {
		svc.Spec.Type = corev1.ServiceTypeExternalName
	}
	for range g.rng.IntN(3) {
		svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, g.externalIP())
	}
	if g.rng.IntN(3) == 0 {
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = int32(32000 + g.rng.IntN(3))
	}
	for p := range 1 + g.rng.IntN(2) {
		sp := corev1.ServicePort{Name: fmt.Sprint("p", p), Port: int32(80 + g.rng.IntN(2)), Protocol: corev1.ProtocolTCP}
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			sp.NodePort = int32(30000 + g.rng.IntN(6))
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	return svc
}

// externalIP returns an external address that often collides with another
// Service's, a ClusterIP or an endpoint; now and then one never served.
func (g *genCluster) externalIP() string {
	switch g.rng.IntN(12) {
	case 0:
		return fmt.Sprintf("10.96.0.%d", g.rng.IntN(25)) // a ClusterIP
	case 1:
		return "127.0.0.1"
	case 2:
		return "2001:db8::1" // no ClusterIP of its family
	case 3:
		return "not-an-ip"
	case 4:
		return fmt.Sprintf("10.244.0.%d", g.rng.IntN(12)) // an endpoint
	}
	return fmt.Sprintf("203.0.113.%d", g.rng.IntN(6))
}

func (g *genCluster) slice() *discoveryv1.EndpointSlice {
	g.n++
	svc := fmt.Sprintf("svc-%d", g.rng.IntN(20))
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: []string{"a", "b"}[g.rng.IntN(2)], Name: fmt.Sprintf("%s-%d", svc, g.rng.IntN(3)),
			UID: types.UID(fmt.Sprint(g.n)), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if g.rng.IntN(15) == 0 {
		es.Labels = nil
	}
	for p := range 2 {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: new(fmt.Sprint("p", p)), Port: new(int32(8080 + p)), Protocol: new(corev1.ProtocolTCP)})
	}
	for range g.rng.IntN(4) {
		addr := fmt.Sprintf("10.244.0.%d", g.rng.IntN(12))
		switch g.rng.IntN(12) {
		case 2:
			addr = fmt.Sprintf("203.0.113.%d", g.rng.IntN(6)) // an external IP
		case 0:
			addr = fmt.Sprintf("10.96.0.%d", g.rng.IntN(25)) // a ClusterIP
		case 1:
			addr = "10.96.9.7" // routed into the TUN
		}
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: new(g.rng.IntN(4) != 0)},
			Hostname:   []*string{nil, new("h")}[g.rng.IntN(2)],
			NodeName:   []*string{nil, new("node-a"), new("node-b")}[g.rng.IntN(3)]})
	}
	return es
}
