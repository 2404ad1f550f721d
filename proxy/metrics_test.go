package proxy

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kubetun/kubetun/netstack"
)

func TestNetstackCollector(t *testing.T) {
	c := netstackCollector{func() netstack.Stats {
		return netstack.Stats{
			TCPForwarded: 10, TCPRefused: 2, TCPUnreachable: 1, TCPLimited: 3, TCPAborted: 4, DialFailures: 5, TCPActive: 6,
			UDPSessions: 7, UDPRefused: 8, UDPLimited: 9, UDPActive: 11, PingReplies: 12, LinkDrops: 13,
			TCPSetups: 14, TCPSetupsMax: 15, UDPQueued: 16,
		}
	}}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("CollectAndLint: %v, %v", problems, err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("Register: %v", err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"kubetun_tcp_connections_total{result=forwarded}":           10,
		"kubetun_tcp_connections_total{result=refused}":             2,
		"kubetun_tcp_connections_total{result=unreachable}":         1,
		"kubetun_tcp_connections_total{result=limited}":             3,
		"kubetun_tcp_connections_total{result=aborted}":             4,
		"kubetun_pod_dial_failures_total":                           5,
		"kubetun_active_flows{protocol=tcp}":                        6,
		"kubetun_active_flows{protocol=udp}":                        11,
		"kubetun_tcp_setups_in_flight":                              14,
		"kubetun_tcp_setups_in_flight_max_per_source":               15,
		"kubetun_udp_queued_bytes":                                  16,
		"kubetun_udp_sessions_total":                                7,
		"kubetun_udp_datagrams_not_forwarded_total{result=refused}": 8,
		"kubetun_udp_datagrams_not_forwarded_total{result=limited}": 9,
		"kubetun_ping_replies_total":                                12,
		"kubetun_link_dropped_packets_total":                        13,
	}
	if !maps.Equal(got, want) {
		t.Errorf("gathered %v\nwant %v", got, want)
	}
}

// TestMetricsMuxProfiling checks that /debug/pprof/ is served only with
// --profiling, and /metrics always.
func TestMetricsMuxProfiling(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "kubetun_services 1\n") })
	for _, profiling := range []bool{false, true} {
		mux := metricsMux(metrics, profiling)
		for path, want := range map[string]int{
			"/metrics":                       http.StatusOK,
			"/debug/pprof/":                  map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[profiling],
			"/debug/pprof/goroutine?debug=1": map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[profiling],
		} {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != want {
				t.Errorf("profiling=%v: GET %s = %d, want %d", profiling, path, rec.Code, want)
			}
		}
	}
}
