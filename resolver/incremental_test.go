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
// random (shared ClusterIPs, Services defined twice, endpoints shared
// between Services or on a ClusterIP) and checks after every change that
// the snapshot built from the previous one is the snapshot built from
// nothing. Services have external IPs, load-balancer ingress IPs, node
// ports and externalTrafficPolicy: Local, and what RefuseExternal refuses
// and ExternalIPRanges change between Builds.
func TestBuildIncrementalMatchesScratch(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			g := &genCluster{rng: rng}
			var svcs []*corev1.Service
			var list []*discoveryv1.EndpointSlice
			for range 30 {
				svcs = append(svcs, g.service())
				list = append(list, g.slice())
			}
			var inc *Snapshot
			topo := Topology{NodeName: "node-a"}
			refused := netip.Addr{}
			var ranges []netip.Prefix
			seen := make(map[string]int) // what the changes reached, to check they reach it
			for step := range 300 {
				if rng.IntN(10) == 0 { // the node's addresses changed
					refused = netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(4))})
				}
				if rng.IntN(40) == 0 {
					ranges = [][]netip.Prefix{nil, {netip.MustParsePrefix("203.0.113.0/30")}}[rng.IntN(2)]
				}
				r := refused
				opts := []Option{Routed(netip.MustParsePrefix("10.96.9.0/24")), ExternalIPRanges(ranges...),
					RefuseExternal(func(a netip.Addr) string {
						if a == r {
							return "the node's address"
						}
						return ""
					})}
				switch rng.IntN(8) {
				case 6: // one object given twice
					svcs = append(svcs, svcs[rng.IntN(len(svcs))])
				case 7:
					list = append(list, list[rng.IntN(len(list))])
				case 0:
					svcs[rng.IntN(len(svcs))] = g.service()
				case 1:
					if len(svcs) > 1 {
						i := rng.IntN(len(svcs))
						svcs = slices.Delete(svcs, i, i+1)
					}
				case 2:
					svcs = append(svcs, g.service())
				case 3:
					list = append(list, g.slice())
				case 4:
					if len(list) > 1 {
						i := rng.IntN(len(list))
						list = slices.Delete(list, i, i+1)
					}
				default:
					list[rng.IntN(len(list))] = g.slice()
				}
				// Informers list in map order; resolver/kube keeps its
				// lists in place.
				if rng.IntN(4) == 0 {
					rng.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
					rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
				}
				var incProblems []Problem
				inc, incProblems = Build(svcs, list, inc, topo, opts...)
				scratch, problems := Build(svcs, list, nil, topo, opts...)
				if !reflect.DeepEqual(incProblems, problems) {
					t.Fatalf("step %d: problems\n%v\nfrom scratch\n%v", step, incProblems, problems)
				}
				if d := snapshotDiff(inc, scratch); d != "" {
					t.Fatalf("step %d: %s", step, d)
				}
				seen["node ports"] += len(inc.NodePorts())
				seen["external IPs"] += len(inc.ExternalIPs())
				seen["health checks"] += len(inc.HealthChecks())
				for _, p := range problems {
					for _, w := range []string{"nodePort 300", "TCP 203.0.113.", "healthCheckNodePort", "external address of Service", "the node's address"} {
						if strings.Contains(p.Reason, w) {
							seen[w]++
						}
					}
				}
			}
			for _, w := range []string{"node ports", "external IPs", "health checks", "nodePort 300", "TCP 203.0.113.", "healthCheckNodePort", "external address of Service", "the node's address"} {
				if seen[w] == 0 {
					t.Errorf("no step had %s", w)
				}
			}
			t.Log(seen)
		})
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
		mapDiff("names", &a.names, &b.names, func(x, y nameEntry) bool { return x.svc == y.svc && reflect.DeepEqual(x.rec, y.rec) }),
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
