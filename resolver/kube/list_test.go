package kube

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// TestStableList checks that the list keeps every unchanged object where
// it was, and holds what the store holds.
func TestStableList(t *testing.T) {
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	l := newStableList[*corev1.Service](store)
	var objs []*corev1.Service
	for _, name := range []string{"a", "b", "c", "d"} {
		o := svc("default", name, nil)
		objs = append(objs, o)
		if err := store.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	l.reset()
	first := l.list()
	if len(first) != 4 {
		t.Fatalf("list after reset has %d objects, want 4", len(first))
	}

	b2 := svc("default", "b", nil)
	e := svc("default", "e", nil)
	for _, step := range []func() error{
		func() error { return store.Update(b2) },
		func() error { return store.Add(e) },
		func() error { return store.Delete(objs[0]) }, // a
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []*corev1.Service{b2, e, objs[0]} {
		l.changed(o)
	}
	got := l.list()
	// Pending changes apply in key order: a's place goes to the last
	// object, b2 takes b's, e goes at the end.
	want := slices.Clone(first)
	at := slices.Index(want, objs[0])
	want[at] = want[len(want)-1]
	want = want[:len(want)-1]
	want[slices.Index(want, objs[1])] = b2
	want = append(want, e)
	if !slices.Equal(got, want) {
		t.Errorf("list = %v, want %v", svcNames(got), svcNames(want))
	}
	if again := l.list(); !slices.Equal(again, got) {
		t.Errorf("list without a change = %v, want %v", svcNames(again), svcNames(got))
	}
}

func svcNames(list []*corev1.Service) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.Name)
	}
	return out
}

// TestListNotifierSkipsNoChange checks that an update changing nothing
// kubetun reads is no change, and that one changing an endpoint is one.
func TestListNotifierSkipsNoChange(t *testing.T) {
	a := endpointSlice("default", "web-1", "web", nil)
	a.ResourceVersion = "7"
	annotated := a.DeepCopy()
	annotated.ResourceVersion = "8"
	annotated.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: "2026-01-01T00:00:00Z"}
	moved := a.DeepCopy()
	moved.ResourceVersion = "9"
	moved.Endpoints = append(moved.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.9"}})
	relabelled := a.DeepCopy()
	relabelled.ResourceVersion = "10"
	relabelled.Labels = map[string]string{discoveryv1.LabelServiceName: "other"}

	for _, tt := range []struct {
		name string
		new  *discoveryv1.EndpointSlice
		want bool
	}{
		{"annotation", annotated, false},
		{"endpoint", moved, true},
		{"label", relabelled, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ch := make(chan struct{}, 1)
			var recorded []any
			listNotifier(ch, nil, func(o any) { recorded = append(recorded, o) }, sameSlice).UpdateFunc(a, tt.new)
			if got := len(ch) == 1; got != tt.want {
				t.Errorf("change pending = %v, want %v", got, tt.want)
			}
			if got := len(recorded) == 1; got != tt.want {
				t.Errorf("recorded %d objects, want a change %v", len(recorded), tt.want)
			}
		})
	}
}
