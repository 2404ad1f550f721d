package main

import (
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	in := `# HELP kubetun_link_dropped_packets_total Packets dropped.
# TYPE kubetun_link_dropped_packets_total counter
kubetun_link_dropped_packets_total 3042
kubetun_active_flows{protocol="tcp"} 64
go_memstats_heap_inuse_bytes 3.3554432e+07
http_requests{path="/a b"} 2 1700000000000
`
	got, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatalf("parseMetrics: %v", err)
	}
	for name, want := range map[string]float64{
		metricLinkDrops:                        3042,
		`kubetun_active_flows{protocol="tcp"}`: 64,
		metricHeapInuse:                        33554432,
		`http_requests{path="/a b"}`:           2,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("parseMetrics: %s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if _, err := parseMetrics(strings.NewReader("broken\n")); err == nil {
		t.Errorf("parseMetrics(%q): no error", "broken")
	}
}
