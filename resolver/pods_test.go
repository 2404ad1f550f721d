package resolver_test

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
)

func podEndpoint(addr, namespace, name string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: name},
	}
}

// TestPodByIP: every endpoint of every Service names its Pod, ready or not,
// headless included; other targetRefs and missing ones name none.
func TestPodByIP(t *testing.T) {
	headless := service("db", "db", nil, servicePort("pg", corev1.ProtocolTCP, 5432, intstr.FromInt32(5432)))
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	dbSlice := slice("db", "db-abc", "db", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{slicePort("pg", corev1.ProtocolTCP, 5432)},
		podEndpoint("10.0.5.2", "db", "db-0", true))
	web := slice("default", "web-xyz", "web", discoveryv1.AddressTypeIPv6,
		[]discoveryv1.EndpointPort{slicePort("", corev1.ProtocolTCP, 8080)},
		podEndpoint("fd00::2", "", "web-1", false), // no namespace: the slice's
		discoveryv1.Endpoint{Addresses: []string{"fd00::3"}, TargetRef: &corev1.ObjectReference{Kind: "Node", Name: "n1"}},
		discoveryv1.Endpoint{Addresses: []string{"fd00::4"}})
	snap, _ := resolver.Build(
		[]*corev1.Service{headless, service("default", "web", []string{"fd01::10"}, servicePort("", corev1.ProtocolTCP, 80, intstr.FromInt32(8080)))},
		[]*discoveryv1.EndpointSlice{dbSlice, web}, nil, resolver.Topology{})

	for _, tc := range []struct {
		ip       string
		ns, name string
		ok       bool
	}{
		{"10.0.5.2", "db", "db-0", true},
		{"fd00::2", "default", "web-1", true},
		{"fd00::3", "", "", false},
		{"fd00::4", "", "", false},
		{"10.9.9.9", "", "", false},
	} {
		ns, name, ok := snap.PodByIP(netip.MustParseAddr(tc.ip))
		if ns != tc.ns || name != tc.name || ok != tc.ok {
			t.Errorf("PodByIP(%s) = %q, %q, %v, want %q, %q, %v", tc.ip, ns, name, ok, tc.ns, tc.name, tc.ok)
		}
	}
	rec, ok := snap.Service("db", "db")
	if !ok || len(rec.Endpoints) != 1 || rec.Endpoints[0].Pod != (resolver.PodRef{Namespace: "db", Name: "db-0"}) {
		t.Errorf("Service(db, db) endpoints = %+v, want one with Pod db/db-0", rec)
	}
	var nilSnap *resolver.Snapshot
	if _, _, ok := nilSnap.PodByIP(netip.MustParseAddr("10.0.5.2")); ok {
		t.Errorf("nil Snapshot: PodByIP found a pod")
	}
}
