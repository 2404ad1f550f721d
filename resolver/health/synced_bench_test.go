package health_test

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/health"
)

// BenchmarkSynced is one apply at 30 000 EndpointSlices, each with a
// last-change-trigger-time, one of which changed.
func BenchmarkSynced(b *testing.B) {
	at := time.Now().Add(-time.Minute).Format(time.RFC3339Nano)
	list := make([]*discoveryv1.EndpointSlice, 30000)
	for i := range list {
		list[i] = &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%05d-x", i),
			Annotations: map[string]string{corev1.EndpointsLastChangeTriggerTime: at}}}
	}
	tr := health.NewTracker(time.Minute)
	tr.Synced(time.Now(), 30000, 90000, resolver.Everything(nil, list))
	k := 0
	for b.Loop() {
		i := (k * 7919) % len(list)
		es := list[i].DeepCopy()
		es.Annotations[corev1.EndpointsLastChangeTriggerTime] = time.Now().Format(time.RFC3339Nano)
		old := list[i]
		list[i] = es
		k++
		tr.Synced(time.Now(), 30000, 90000, &resolver.Changes{Slices: map[string]resolver.Change[*discoveryv1.EndpointSlice]{
			resolver.Key(es): {Previous: old, Current: es},
		}})
	}
}
