package kube

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
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
