package resolver

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// trackerService is a Service for the change tracker's tests.
func trackerService(name, uid, ip string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid), ResourceVersion: "1"},
		Spec:       corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []corev1.ServicePort{{Port: 80}}},
	}
}

// wantChange is what a test expects of one key of a change set: the
// objects before and now, nil for none.
type wantChange struct {
	previous, current *corev1.Service
}

// TestChangeTracker records Service changes as a source would and checks
// each change set taken.
func TestChangeTracker(t *testing.T) {
	a := trackerService("a", "1", "10.96.0.1")
	aNoop := a.DeepCopy()
	aNoop.ResourceVersion, aNoop.Annotations = "2", map[string]string{"note": "no change to the table"}
	aMoved := a.DeepCopy()
	aMoved.ResourceVersion, aMoved.Spec.ClusterIP, aMoved.Spec.ClusterIPs = "3", "10.96.0.9", []string{"10.96.0.9"}
	aRecreated := trackerService("a", "2", "10.96.0.1")
	b := trackerService("b", "3", "10.96.0.2")

	tests := []struct {
		name   string
		record func(t *ChangeTracker)
		all    bool
		want   map[string]wantChange // nil: Take returns nil
	}{
		{
			name:   "first change set says All",
			record: func(t *ChangeTracker) { t.Service("ns/a", a) },
			all:    true,
			want:   map[string]wantChange{"ns/a": {nil, a}},
		},
		{
			name:   "no-op update",
			record: func(t *ChangeTracker) { t.Service("ns/a", aNoop) },
		},
		{
			name: "updates coalesce, from the version before them",
			record: func(t *ChangeTracker) {
				t.Service("ns/a", aNoop)
				t.Service("ns/a", aMoved)
			},
			want: map[string]wantChange{"ns/a": {aNoop, aMoved}},
		},
		{
			name: "changed and changed back",
			record: func(t *ChangeTracker) {
				t.Service("ns/a", a)
				t.Service("ns/a", aMoved)
			},
		},
		{
			name: "delete then re-add as it was",
			record: func(t *ChangeTracker) {
				t.Service("ns/a", nil)
				t.Service("ns/a", aMoved)
			},
		},
		{
			name: "delete then re-add as a new object",
			record: func(t *ChangeTracker) {
				t.Service("ns/a", nil)
				t.Service("ns/a", aRecreated)
			},
			want: map[string]wantChange{"ns/a": {aMoved, aRecreated}},
		},
		{
			name: "added then deleted",
			record: func(t *ChangeTracker) {
				t.Service("ns/b", b)
				t.Service("ns/b", nil)
			},
		},
		{
			name:   "delete of a key never seen",
			record: func(t *ChangeTracker) { t.Service("ns/zzz", nil) },
		},
		{
			name:   "added",
			record: func(t *ChangeTracker) { t.Service("ns/b", b) },
			want:   map[string]wantChange{"ns/b": {nil, b}},
		},
		{
			name:   "resync: every current object",
			record: func(t *ChangeTracker) { t.Resync() },
			all:    true,
			want:   map[string]wantChange{"ns/a": {aRecreated, aRecreated}, "ns/b": {b, b}},
		},
		{
			name:   "replaced by a whole set",
			record: func(t *ChangeTracker) { t.Replace([]*corev1.Service{b, a}, nil) },
			want:   map[string]wantChange{"ns/a": {aRecreated, a}},
		},
		{
			name:   "a whole set without b",
			record: func(t *ChangeTracker) { t.Replace([]*corev1.Service{a}, nil) },
			want:   map[string]wantChange{"ns/b": {b, nil}},
		},
	}
	tr := NewChangeTracker()
	for _, tt := range tests { // in order: each builds on the last
		tt.record(tr)
		if got := tr.Pending(); got != (tt.want != nil) {
			t.Errorf("%s: Pending() = %v, want %v", tt.name, got, tt.want != nil)
		}
		ch := tr.Take()
		if tt.want == nil {
			if ch != nil {
				t.Errorf("%s: Take() = %+v, want nil", tt.name, ch)
			}
			continue
		}
		if ch == nil {
			t.Errorf("%s: Take() = nil, want %v", tt.name, tt.want)
			continue
		}
		if ch.All != tt.all || len(ch.Slices) != 0 {
			t.Errorf("%s: All = %v with %d slices, want %v with none", tt.name, ch.All, len(ch.Slices), tt.all)
		}
		if keys, want := slices.Sorted(maps.Keys(ch.Services)), slices.Sorted(maps.Keys(tt.want)); !slices.Equal(keys, want) {
			t.Errorf("%s: changed keys %v, want %v", tt.name, keys, want)
			continue
		}
		for k, w := range tt.want {
			if c := ch.Services[k]; c.Previous != w.previous || c.Current != w.current {
				t.Errorf("%s: %s changed from %p to %p, want %p to %p", tt.name, k, c.Previous, c.Current, w.previous, w.current)
			}
		}
	}
}

// TestChangeTrackerSlices: an update of a slice that changes nothing the
// table reads (an annotation) is no change; one of its endpoints is.
func TestChangeTrackerSlices(t *testing.T) {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "a-1", Labels: map[string]string{discoveryv1.LabelServiceName: "a"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.1"}}},
	}
	annotated := es.DeepCopy()
	annotated.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: "2026-01-01T00:00:00Z"}
	moved := es.DeepCopy()
	moved.Endpoints[0].Addresses = []string{"10.244.0.2"}

	tr := NewChangeTracker()
	tr.Slice(Key(es), es)
	if ch := tr.Take(); ch == nil || !ch.All || ch.Slices["ns/a-1"].Current != es {
		t.Fatalf("first Take() = %+v, want All with ns/a-1", ch)
	}
	for _, tt := range []struct {
		name string
		es   *discoveryv1.EndpointSlice
		want bool
	}{
		{"annotation", annotated, false},
		{"endpoint", moved, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr.Slice(Key(tt.es), tt.es)
			ch := tr.Take()
			if got := ch != nil; got != tt.want {
				t.Fatalf("Take() = %+v, want a change: %v", ch, tt.want)
			}
			if ch != nil && ch.Slices["ns/a-1"].Current != tt.es {
				t.Errorf("change %+v, want ns/a-1 now %p", ch.Slices, tt.es)
			}
		})
	}
}

// TestEverything: whole lists make a change set that says All, each
// object under its key.
func TestEverything(t *testing.T) {
	a, b := trackerService("a", "1", "10.96.0.1"), trackerService("b", "2", "10.96.0.2")
	ch := Everything([]*corev1.Service{a, b}, nil)
	if !ch.All || len(ch.Services) != 2 || ch.Services["ns/a"].Current != a || ch.Services["ns/b"].Current != b || ch.Services["ns/a"].Previous != nil {
		t.Errorf("Everything = %+v, want All with ns/a and ns/b", ch)
	}
	if (*Changes)(nil).Empty() != true || (&Changes{}).Empty() != true || ch.Empty() {
		t.Error("Empty: nil and zero change sets are empty, Everything's is not")
	}
}
