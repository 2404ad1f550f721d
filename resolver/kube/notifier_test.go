package kube

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/kubetun/kubetun/resolver"
)

// TestTrackingNotifierSkipsNoChange checks that an update changing nothing
// kubetun reads is no change, and that one changing an endpoint or a label
// is one, recorded under the slice's key.
func TestTrackingNotifierSkipsNoChange(t *testing.T) {
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
			recorded := map[string]any{}
			record := func(key string, obj any) { recorded[key] = obj }
			trackingNotifier(ch, nil, record, sameSlice).UpdateFunc(a, tt.new)
			if got := len(ch) == 1; got != tt.want {
				t.Errorf("change pending = %v, want %v", got, tt.want)
			}
			if got, ok := recorded["default/web-1"]; ok != tt.want || ok && got != tt.new {
				t.Errorf("recorded %v, want a change %v", recorded, tt.want)
			}
		})
	}
}

// TestTrackingNotifierRecordsDeletes checks that a delete, of an object or
// of a tombstone, is recorded as nil under the object's key.
func TestTrackingNotifierRecordsDeletes(t *testing.T) {
	s := svc("default", "web", nil)
	for _, tt := range []struct {
		name string
		obj  any
	}{
		{"object", s},
		{"tombstone", cache.DeletedFinalStateUnknown{Key: "default/web", Obj: s}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			recorded := map[string]any{}
			record := func(key string, obj any) { recorded[key] = obj }
			trackingNotifier(make(chan struct{}, 1), nil, record, sameService).DeleteFunc(tt.obj)
			if got, ok := recorded["default/web"]; !ok || got != nil {
				t.Errorf("recorded %v, want default/web deleted (nil)", recorded)
			}
		})
	}
}

// TestRunChangeSets checks the change sets Run hands on: the first says
// All with every object; after it, one names only what changed, an update
// that changes nothing the table reads is handed on as nothing, and a
// Service changed twice is one change.
func TestRunChangeSets(t *testing.T) {
	web, api := svc("default", "web", nil), svc("default", "api", nil)
	web.ResourceVersion, api.ResourceVersion = "1", "1"
	client := fake.NewClientset(web, api, endpointSlice("default", "web-1", "web", nil))
	log, _ := testLogger()
	src := New(client, Options{}, log)
	states := make(chan State, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(st State) { states <- st }, nil) }()
	defer func() {
		cancel()
		<-done
	}()
	next := func() *resolver.Changes {
		t.Helper()
		select {
		case st := <-states:
			return st.Changes
		case <-time.After(wait):
			t.Fatalf("no apply within %v", wait)
		}
		return nil
	}

	if ch := next(); ch == nil || !ch.All || len(ch.Services) != 2 || len(ch.Slices) != 1 {
		t.Fatalf("first change set = %+v, want All with 2 Services and 1 slice", ch)
	}

	noop := web.DeepCopy()
	noop.ResourceVersion, noop.Annotations = "2", map[string]string{"note": "nothing the table reads"}
	if _, err := client.CoreV1().Services("default").Update(ctx, noop, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	moved := api.DeepCopy()
	moved.ResourceVersion, moved.Spec.ClusterIP = "2", "10.96.0.99"
	if _, err := client.CoreV1().Services("default").Update(ctx, moved, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ch := next(); ch == nil || ch.All || len(ch.Slices) != 0 || len(ch.Services) != 1 || ch.Services["default/api"].Current.Spec.ClusterIP != "10.96.0.99" {
		t.Fatalf("change set after two updates = %+v, want default/api alone, moved", ch)
	}
}
