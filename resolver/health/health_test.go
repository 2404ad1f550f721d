package health

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/resolver"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

var epoch = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func newTestTracker(timeout time.Duration) (*Tracker, *fakeClock) {
	clock := &fakeClock{now: epoch}
	return newTracker(timeout, clock.Now), clock
}

// get serves path from h and returns the status code and body.
func get(tb testing.TB, h http.Handler, path string) (int, string) {
	tb.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// metric scrapes h and returns the value of the sample named name (with
// its labels, if any, as they appear in the text format).
func metric(tb testing.TB, h http.Handler, name string) float64 {
	tb.Helper()
	code, body := get(tb, h, "/metrics")
	if code != http.StatusOK {
		tb.Fatalf("GET /metrics = %d, want 200", code)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		v, ok := strings.CutPrefix(line, name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			tb.Fatalf("metric %s: %q: %v", name, line, err)
		}
		return f
	}
	tb.Fatalf("GET /metrics has no %s:\n%s", name, body)
	return 0
}

func TestReadyz(t *testing.T) {
	tr, clock := newTestTracker(time.Minute)
	h := tr.Handler()
	if code, _ := get(t, h, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz before the first sync = %d, want 503", code)
	}
	tr.Queued()
	if code, _ := get(t, h, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz with a change queued before the first sync = %d, want 503", code)
	}
	tr.Synced(epoch, 0, 0, nil)
	if code, body := get(t, h, "/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz after the first sync = %d %q, want 200", code, body)
	}
	// Readiness is about having served a first state; a stale one is a
	// matter for /healthz.
	tr.Queued()
	clock.Advance(time.Hour)
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz with a change waiting an hour = %d, want 200", code)
	}
}

// TestHealthz walks a tracker through a sequence of events, checking
// /healthz and /livez after each.
func TestHealthz(t *testing.T) {
	const timeout = 30 * time.Second
	type step struct {
		do      string        // "queued", "synced" or ""
		advance time.Duration // before do
		want    int
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "unhealthy until the first sync",
			steps: []step{
				{want: 503},
				{advance: time.Hour, want: 503},
				{do: "synced", want: 200},
			},
		},
		{
			name: "a change queued before the first sync",
			steps: []step{
				{do: "queued", want: 503},
				{do: "synced", advance: time.Second, want: 200},
			},
		},
		{
			name: "idle is healthy",
			steps: []step{
				{do: "synced", want: 200},
				{advance: 100 * timeout, want: 200},
			},
		},
		{
			name: "a change waiting longer than the timeout",
			steps: []step{
				{do: "synced", want: 200},
				{do: "queued", advance: time.Minute, want: 200},
				{advance: timeout - time.Second, want: 200},
				{advance: time.Second, want: 200}, // exactly the timeout
				{advance: time.Second, want: 503},
				{advance: time.Hour, want: 503},
				{do: "synced", want: 200},
				{advance: time.Hour, want: 200},
			},
		},
		{
			name: "the oldest waiting change counts",
			steps: []step{
				{do: "synced", want: 200},
				{do: "queued", want: 200},
				{do: "queued", advance: timeout / 2, want: 200},
				{do: "queued", advance: timeout/2 + time.Second, want: 503},
				{do: "synced", want: 200},
				{do: "queued", want: 200},
				{advance: timeout, want: 200},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, clock := newTestTracker(timeout)
			h := tr.Handler()
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				switch s.do {
				case "queued":
					tr.Queued()
				case "synced":
					tr.Synced(clock.Now(), 1, 2, nil)
				case "":
				default:
					t.Fatalf("step %d: unknown action %q", i, s.do)
				}
				for _, path := range []string{"/healthz", "/livez"} {
					if code, body := get(t, h, path); code != s.want {
						t.Errorf("step %d (%q after %v, at %v): GET %s = %d %s, want %d",
							i, s.do, s.advance, clock.Now().Sub(epoch), path, code, body, s.want)
					}
				}
			}
		})
	}
}

func TestHealthzBody(t *testing.T) {
	tr, clock := newTestTracker(time.Minute)
	h := tr.Handler()
	type body struct {
		LastUpdated *time.Time `json:"lastUpdated"`
		CurrentTime *time.Time `json:"currentTime"`
	}
	check := func(wantLast, wantNow time.Time) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET /healthz: Content-Type %q, want application/json", ct)
		}
		var b body
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
			t.Fatalf("GET /healthz: body %q: %v", rec.Body, err)
		}
		if b.LastUpdated == nil || b.CurrentTime == nil {
			t.Fatalf("GET /healthz: body %q, want lastUpdated and currentTime", rec.Body)
		}
		if !b.LastUpdated.Equal(wantLast) || !b.CurrentTime.Equal(wantNow) {
			t.Errorf("GET /healthz: lastUpdated %v, currentTime %v; want %v, %v", b.LastUpdated, b.CurrentTime, wantLast, wantNow)
		}
	}
	check(time.Time{}, epoch)
	clock.Advance(time.Second)
	tr.Synced(epoch, 0, 0, nil)
	synced := clock.Now()
	clock.Advance(5 * time.Second)
	check(synced, clock.Now())
	tr.Queued()
	clock.Advance(2 * time.Minute)
	check(synced, clock.Now()) // the body is the same when unhealthy
}

func TestMetrics(t *testing.T) {
	tr, clock := newTestTracker(time.Minute)
	m := tr.MetricsHandler()
	for _, name := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"kubeproxy_network_programming_duration_seconds_count",
		"kubetun_services",
		"kubetun_endpoints",
	} {
		if got := metric(t, m, name); got != 0 {
			t.Errorf("%s before any sync = %v, want 0", name, got)
		}
	}

	start := clock.Now()
	clock.Advance(250 * time.Millisecond)
	tr.Synced(start, 3, 7, nil)
	clock.Advance(time.Second)
	start = clock.Now()
	clock.Advance(500 * time.Millisecond)
	tr.Synced(start, 4, 9, nil)

	tests := []struct {
		name string
		want float64
	}{
		{"kubeproxy_sync_proxy_rules_duration_seconds_count", 2},
		{"kubeproxy_sync_proxy_rules_duration_seconds_sum", 0.75},
		{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", float64(clock.Now().UnixNano()) / 1e9},
		{"kubeproxy_network_programming_duration_seconds_count", 0},
		{"kubetun_services", 4},
		{"kubetun_endpoints", 9},
	}
	for _, tt := range tests {
		if got := metric(t, m, tt.name); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
	// And they have kube-proxy's types.
	_, body := get(t, m, "/metrics")
	for _, want := range []string{
		"# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
		"# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
		"# TYPE kubeproxy_network_programming_duration_seconds histogram",
		"# TYPE kubetun_services gauge",
		"# TYPE kubetun_endpoints gauge",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics has no %q", want)
		}
	}
}

// triggered returns an EndpointSlice default/name whose
// last-change-trigger-time annotation is at; no annotation if at is "".
func triggered(name, at string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}
	if at != "" {
		es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: at}
	}
	return es
}

// TestProgrammingLatency checks kubeproxy_network_programming_duration_seconds:
// each new trigger time after the tracker started is observed once, from the
// trigger to the sync that served it.
func TestProgrammingLatency(t *testing.T) {
	at := func(d time.Duration) string { return epoch.Add(d).Format(time.RFC3339Nano) }
	type sync struct {
		at     time.Duration // since the tracker started
		slices []*discoveryv1.EndpointSlice
		count  float64 // want the histogram's count after it
		sum    float64 // and its sum, in seconds
	}
	tests := []struct {
		name  string
		syncs []sync
	}{
		{
			name: "a change after the start is observed once",
			syncs: []sync{
				{at: 3 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(time.Second))}, count: 1, sum: 2},
				{at: 4 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(time.Second))}, count: 1, sum: 2},
				{at: 9 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(time.Second))}, count: 1, sum: 2},
			},
		},
		{
			name: "a new trigger time is observed",
			syncs: []sync{
				{at: 3 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(time.Second))}, count: 1, sum: 2},
				{at: 5500 * time.Millisecond, slices: []*discoveryv1.EndpointSlice{triggered("a", at(5*time.Second))}, count: 2, sum: 2.5},
				{at: 6 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(5*time.Second))}, count: 2, sum: 2.5},
			},
		},
		{
			name: "a change before the start is not observed",
			syncs: []sync{
				{at: time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(-time.Hour))}},
				{at: 2 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(-time.Hour))}},
				{at: 4 * time.Second, slices: []*discoveryv1.EndpointSlice{triggered("a", at(3*time.Second))}, count: 1, sum: 1},
			},
		},
		{
			name: "each slice counts",
			syncs: []sync{
				{at: 2 * time.Second, slices: []*discoveryv1.EndpointSlice{
					triggered("a", at(time.Second)),
					triggered("b", at(time.Second)),
					triggered("c", at(-time.Second)),
				}, count: 2, sum: 2},
				{at: 3 * time.Second, slices: []*discoveryv1.EndpointSlice{
					triggered("a", at(time.Second)),
					triggered("b", at(2500*time.Millisecond)),
					triggered("c", at(-time.Second)),
				}, count: 3, sum: 2.5},
			},
		},
		{
			name: "slices without a trigger time or with a bad one are not observed",
			syncs: []sync{
				{at: 2 * time.Second, slices: []*discoveryv1.EndpointSlice{
					triggered("a", ""),
					triggered("b", "yesterday"),
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, clock := newTestTracker(time.Minute)
			m := tr.MetricsHandler()
			for i, s := range tt.syncs {
				clock.now = epoch.Add(s.at)
				tr.Synced(clock.Now(), 1, 1, resolver.Everything(nil, s.slices))
				if got := metric(t, m, "kubeproxy_network_programming_duration_seconds_count"); got != s.count {
					t.Errorf("sync %d at %v: programming duration count = %v, want %v", i, s.at, got, s.count)
				}
				if got := metric(t, m, "kubeproxy_network_programming_duration_seconds_sum"); got != s.sum {
					t.Errorf("sync %d at %v: programming duration sum = %v, want %v", i, s.at, got, s.sum)
				}
			}
		})
	}
}

// TestNewTracker checks the exported constructor, which reads the real clock.
func TestNewTracker(t *testing.T) {
	tr := NewTracker(time.Minute)
	h := tr.Handler()
	if code, _ := get(t, h, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /healthz before the first sync = %d, want 503", code)
	}
	tr.Synced(time.Now(), 1, 1, resolver.Everything(nil, []*discoveryv1.EndpointSlice{
		triggered("a", time.Now().Add(-time.Hour).Format(time.RFC3339Nano)),
	}))
	for _, path := range []string{"/healthz", "/livez", "/readyz"} {
		if code, _ := get(t, h, path); code != http.StatusOK {
			t.Errorf("GET %s after the first sync = %d, want 200", path, code)
		}
	}
	if got := metric(t, tr.MetricsHandler(), "kubeproxy_network_programming_duration_seconds_count"); got != 0 {
		t.Errorf("programming duration count after listing an old change = %v, want 0", got)
	}
}

// TestSyncedChanges: a change set's slices are observed, those it does not
// name are not looked at, a deleted slice's trigger time is forgotten, and
// a change set that says All forgets the slices it lacks.
func TestSyncedChanges(t *testing.T) {
	tr, clock := newTestTracker(time.Minute)
	m := tr.MetricsHandler()
	at := func(d time.Duration) string { return epoch.Add(d).Format(time.RFC3339Nano) }
	change := func(es *discoveryv1.EndpointSlice) resolver.Change[*discoveryv1.EndpointSlice] {
		return resolver.Change[*discoveryv1.EndpointSlice]{Current: es}
	}
	steps := []struct {
		name    string
		changes *resolver.Changes
		count   float64 // want the histogram's count after it
	}{
		{"first sync", resolver.Everything(nil, []*discoveryv1.EndpointSlice{triggered("a", at(time.Second)), triggered("b", at(time.Second))}), 2},
		{"nothing changed", nil, 2},
		{"b changed", &resolver.Changes{Slices: map[string]resolver.Change[*discoveryv1.EndpointSlice]{"default/b": change(triggered("b", at(2*time.Second)))}}, 3},
		{"a deleted", &resolver.Changes{Slices: map[string]resolver.Change[*discoveryv1.EndpointSlice]{"default/a": {}}}, 3},
		{"a back with its old trigger time", &resolver.Changes{Slices: map[string]resolver.Change[*discoveryv1.EndpointSlice]{"default/a": change(triggered("a", at(time.Second)))}}, 4},
		{"resync without b", resolver.Everything(nil, []*discoveryv1.EndpointSlice{triggered("a", at(time.Second))}), 4},
		{"b back", &resolver.Changes{Slices: map[string]resolver.Change[*discoveryv1.EndpointSlice]{"default/b": change(triggered("b", at(2*time.Second)))}}, 5},
	}
	for i, s := range steps {
		clock.now = epoch.Add(time.Duration(3+i) * time.Second)
		tr.Synced(clock.Now(), 1, 1, s.changes)
		if got := metric(t, m, "kubeproxy_network_programming_duration_seconds_count"); got != s.count {
			t.Errorf("%s: programming duration count = %v, want %v", s.name, got, s.count)
		}
	}
}
