package resolver

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
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
// nothing.
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
			for step := range 300 {
				switch rng.IntN(6) {
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
				// Informers list in map order.
				rng.Shuffle(len(svcs), func(i, j int) { svcs[i], svcs[j] = svcs[j], svcs[i] })
				rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
				var incProblems []Problem
				inc, incProblems = Build(svcs, list, inc, topo, Routed(netip.MustParsePrefix("10.96.9.0/24")))
				scratch, problems := Build(svcs, list, nil, topo, Routed(netip.MustParsePrefix("10.96.9.0/24")))
				if !reflect.DeepEqual(incProblems, problems) {
					t.Fatalf("step %d: problems\n%v\nfrom scratch\n%v", step, incProblems, problems)
				}
				if d := snapshotDiff(inc, scratch); d != "" {
					t.Fatalf("step %d: %s", step, d)
				}
			}
		})
	}
}

// snapshotDiff describes how a and b differ, or returns "".
func snapshotDiff(a, b *Snapshot) string {
	if a.services != b.services || a.endpoints != b.endpoints {
		return fmt.Sprintf("%d services, %d endpoints; from scratch %d, %d", a.services, a.endpoints, b.services, b.endpoints)
	}
	if !reflect.DeepEqual(a.ips, b.ips) || !reflect.DeepEqual(a.namespaces, b.namespaces) {
		return fmt.Sprintf("ips %v namespaces %v; from scratch %v %v", a.ips, a.namespaces, b.ips, b.namespaces)
	}
	if len(a.ports) != len(b.ports) {
		return fmt.Sprintf("%d ports, from scratch %d", len(a.ports), len(b.ports))
	}
	for k, sp := range b.ports {
		got, ok := a.ports[k]
		if !ok {
			return fmt.Sprintf("port %v missing", k)
		}
		if got.Service != sp.Service || got.Name != sp.Name || !reflect.DeepEqual(got.Endpoints, sp.Endpoints) ||
			!reflect.DeepEqual(got.usable, sp.usable) || got.affinityTimeout != sp.affinityTimeout {
			return fmt.Sprintf("port %v: %v %v, from scratch %v %v", k, got.Service, got.usable, sp.Service, sp.usable)
		}
	}
	if len(a.names) != len(b.names) || len(a.byIP) != len(b.byIP) {
		return fmt.Sprintf("%d names %d byIP, from scratch %d %d", len(a.names), len(a.byIP), len(b.names), len(b.byIP))
	}
	for k, r := range b.names {
		if !reflect.DeepEqual(a.names[k], r) {
			return fmt.Sprintf("name %v: %+v, from scratch %+v", k, a.names[k], r)
		}
	}
	for ip, r := range b.byIP {
		if !reflect.DeepEqual(a.byIP[ip], r) {
			return fmt.Sprintf("byIP %v: %+v, from scratch %+v", ip, a.byIP[ip], r)
		}
	}
	if !reflect.DeepEqual(a.records, b.records) {
		return "records differ"
	}
	ea, eb := a.endpointIndex(), b.endpointIndex()
	if !reflect.DeepEqual(ea, eb) {
		return "endpoint index differs"
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
	for p := range 1 + g.rng.IntN(2) {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: fmt.Sprint("p", p), Port: int32(80 + g.rng.IntN(2)), Protocol: corev1.ProtocolTCP})
	}
	return svc
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
		switch g.rng.IntN(10) {
		case 0:
			addr = fmt.Sprintf("10.96.0.%d", g.rng.IntN(25)) // a ClusterIP
		case 1:
			addr = "10.96.9.7" // routed into the TUN
		}
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: new(g.rng.IntN(4) != 0)},
			Hostname:   []*string{nil, new("h")}[g.rng.IntN(2)]})
	}
	return es
}
