// Package health tells how current kubetun's service table is, in kube-proxy's
// terms, so the probes and dashboards people already have for kube-proxy work
// unchanged: /healthz, /livez and /readyz on the health address, and
// Prometheus metrics with kube-proxy's names on the metrics address.
package health

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kubetun/kubetun/resolver"
)

// Tracker records when the service table was last brought up to date and
// serves that as health and metrics.
type Tracker struct {
	now     func() time.Time
	timeout time.Duration // a change may wait this long before /healthz fails
	started time.Time     // changes triggered before this are not timed

	mu          sync.Mutex // guards the fields below
	ready       bool       // the first full state has been applied
	lastUpdated time.Time
	queued      time.Time            // when the oldest unapplied change arrived; zero if none
	triggers    map[string]time.Time // EndpointSlice "ns/name" -> last-change-trigger-time observed

	registry      *prometheus.Registry
	syncDuration  prometheus.Histogram
	lastSync      prometheus.Gauge
	programming   prometheus.Histogram
	servicesGauge prometheus.Gauge
	endpointGauge prometheus.Gauge
}

// NewTracker returns a Tracker whose /healthz fails once a change has waited
// longer than timeout to be applied (kube-proxy uses twice its sync period).
func NewTracker(timeout time.Duration) *Tracker {
	return newTracker(timeout, time.Now)
}

func newTracker(timeout time.Duration, now func() time.Time) *Tracker {
	t := &Tracker{
		now:      now,
		timeout:  timeout,
		started:  now(),
		triggers: make(map[string]time.Time),
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_sync_proxy_rules_duration_seconds",
			Help:    "How long it took to rebuild the service table and program the routes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "When the service table was last brought up to date (Unix time).",
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_network_programming_duration_seconds",
			Help: "From an endpoint change in the cluster (the EndpointSlice's " +
				corev1.EndpointsLastChangeTriggerTime + ") to kubetun serving it.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300},
		}),
		servicesGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubetun_services",
			Help: "Services with at least one ClusterIP port being served.",
		}),
		endpointGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubetun_endpoints",
			Help: "Endpoints across all served Service ports.",
		}),
	}
	t.registry.MustRegister(t.syncDuration, t.lastSync, t.programming, t.servicesGauge, t.endpointGauge,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return t
}

// Queued notes that a change arrived and is waiting to be applied.
func (t *Tracker) Queued() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.queued.IsZero() {
		t.queued = t.now()
	}
}

// Synced notes that the whole state was applied: the sync began at start,
// the table now serves services and endpoints, and changes are what it
// applied (nil: nothing). Only the slices that changed can carry a new
// trigger time: a pass over every slice, parsing each one's, would cost
// more than the rebuild of the table it follows.
func (t *Tracker) Synced(start time.Time, services, endpoints int, changes *resolver.Changes) {
	now := t.now()
	t.syncDuration.Observe(now.Sub(start).Seconds())
	t.lastSync.Set(float64(now.UnixNano()) / 1e9)
	t.servicesGauge.Set(float64(services))
	t.endpointGauge.Set(float64(endpoints))

	t.mu.Lock()
	defer t.mu.Unlock()
	t.ready = true
	t.lastUpdated = now
	t.queued = time.Time{}
	if changes == nil {
		return
	}
	if changes.All {
		for key := range t.triggers {
			if _, ok := changes.Slices[key]; !ok {
				delete(t.triggers, key) // gone
			}
		}
	}
	for key, ch := range changes.Slices {
		if ch.Current == nil {
			delete(t.triggers, key)
			continue
		}
		t.observe(key, ch.Current, now)
	}
}

// observe records the last-change-trigger-time of es and how long ago it
// was, once per trigger time.
func (t *Tracker) observe(key string, es *discoveryv1.EndpointSlice, now time.Time) {
	v, ok := es.Annotations[corev1.EndpointsLastChangeTriggerTime]
	if !ok {
		return
	}
	trigger, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || trigger.Equal(t.triggers[key]) {
		return
	}
	t.triggers[key] = trigger
	if trigger.Before(t.started) {
		// Like kube-proxy: a change made before kubetun started is
		// not a programming latency, just the initial listing.
		return
	}
	t.programming.Observe(now.Sub(trigger).Seconds())
}

// status is /healthz's body, the same fields kube-proxy serves.
type status struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
}

// Healthy reports what /healthz reports: the first state is served and no
// change has waited longer than the timeout. Health check node ports say it
// as serviceProxyHealthy, as kube-proxy's do.
func (t *Tracker) Healthy() bool {
	ok, _ := t.healthy()
	return ok
}

// healthy reports whether no change has waited longer than the timeout.
func (t *Tracker) healthy() (bool, status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	st := status{LastUpdated: t.lastUpdated, CurrentTime: now}
	stale := !t.queued.IsZero() && now.Sub(t.queued) > t.timeout
	return t.ready && !stale, st
}

// Handler serves /healthz, /livez and /readyz.
//
//   - /readyz: 200 once the first full state is being served.
//   - /healthz and /livez: 200 while no change has waited longer than the
//     timeout (a kubetun that stopped applying changes is not healthy);
//     503 otherwise, and before the first state.
func (t *Tracker) Handler() http.Handler {
	mux := http.NewServeMux()
	probe := func(w http.ResponseWriter, _ *http.Request) {
		ok, st := t.healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(st)
	}
	mux.HandleFunc("/healthz", probe)
	mux.HandleFunc("/livez", probe)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		t.mu.Lock()
		ready := t.ready
		t.mu.Unlock()
		if !ready {
			http.Error(w, "service table not synced yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// Register adds c's metrics to those MetricsHandler serves, e.g. the data
// path's counters.
func (t *Tracker) Register(c prometheus.Collector) error {
	return t.registry.Register(c)
}

// MetricsHandler serves the Prometheus metrics.
func (t *Tracker) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}
