package resolver_test

import (
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/resolver"
)

// genScale makes n Services with one port each and a slice of eps
// endpoints, like the bench's table case (test/bench/scale.go).
func genScale(n, eps int) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, n)
	list := make([]*discoveryv1.EndpointSlice, n)
	tcp := corev1.ProtocolTCP
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		ip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String()
		svcs[i] = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name, ResourceVersion: "1"},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "rr", Port: 80, Protocol: tcp}},
			},
		}
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: name + "-x7k2p", ResourceVersion: "1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("rr"), Port: ptr(int32(8080)), Protocol: &tcp}},
		}
		for j := range eps {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{scaleEndpoint(i, j)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				NodeName:   ptr("node-a"),
			})
		}
		list[i] = es
	}
	return svcs, list
}

func scaleEndpoint(i, j int) string {
	return netip.AddrFrom4([4]byte{10, byte(200 + j%50), byte(i >> 8), byte(i)}).String()
}

// BenchmarkBuildEndpointChange is one endpoint change among many Services,
// as a source's change tracker records it: the cost of recording and
// applying it (the goal: at most 5 ms of CPU at 30 000 Services).
func BenchmarkBuildEndpointChange(b *testing.B) {
	for _, n := range []int{1000, 30000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svcs, list := genScale(n, 3)
			tracker, snap := trackedScale(svcs, list)
			k := 0
			c0 := cpuTime()
			for b.Loop() {
				i := (k * 7919) % n
				es := list[i].DeepCopy()
				es.ResourceVersion = fmt.Sprint(k + 2)
				es.Endpoints[0].Addresses[0] = scaleEndpoint(i, 40+k%10)
				list[i] = es
				k++
				tracker.Slice(resolver.Key(es), es)
				snap, _ = resolver.Update(snap, tracker.Take(), resolver.Topology{NodeName: "node-a"})
			}
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
			if snap.Services() != n {
				b.Fatalf("%d Services served, want %d", snap.Services(), n)
			}
		})
	}
}

// trackedScale records svcs and list in a new change tracker and builds
// the first snapshot from its change set.
func trackedScale(svcs []*corev1.Service, list []*discoveryv1.EndpointSlice) (*resolver.ChangeTracker, *resolver.Snapshot) {
	tracker := resolver.NewChangeTracker()
	tracker.Replace(svcs, list)
	snap, _ := resolver.Update(nil, tracker.Take(), resolver.Topology{NodeName: "node-a"})
	return tracker, snap
}

// cpuTime is this process's CPU time so far: on a loaded machine the
// benchmark's wall time says little.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBuildServiceChange is one Service changed (a new label) among
// many.
func BenchmarkBuildServiceChange(b *testing.B) {
	for _, n := range []int{1000, 30000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svcs, list := genScale(n, 3)
			tracker, snap := trackedScale(svcs, list)
			k := 0
			c0 := cpuTime()
			for b.Loop() {
				i := (k * 7919) % n
				svc := svcs[i].DeepCopy()
				svc.Labels = map[string]string{"touched": fmt.Sprint(k)}
				svcs[i] = svc
				k++
				tracker.Service(resolver.Key(svc), svc)
				snap, _ = resolver.Update(snap, tracker.Take(), resolver.Topology{NodeName: "node-a"})
			}
			b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
			if snap.Services() != n {
				b.Fatalf("%d Services served, want %d", snap.Services(), n)
			}
		})
	}
}
