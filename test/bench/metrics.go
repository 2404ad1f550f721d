package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// metricsAddr is kubetun's default --metrics-addr, inside the node namespace.
const metricsAddr = "127.0.0.1:10249"

// Series the bench reads from kubetun's /metrics.
const (
	metricLinkDrops = "kubetun_link_dropped_packets_total"
	metricHeapInuse = "go_memstats_heap_inuse_bytes"
	metricStacks    = "go_memstats_stack_inuse_bytes"
	metricRSS       = "process_resident_memory_bytes"
	metricGoroutine = "go_goroutines"
)

// nsClient is an HTTP client whose connections are made in namespace ns.
func nsClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return testbed.DialIn(ns, network, addr, 5*time.Second)
			},
			DisableKeepAlives: true,
		},
	}
}

// forceGC asks kubetun in namespace ns for a heap profile after a garbage
// collection (/debug/pprof/heap?gc=1, served with --profiling), so that
// its heap figures count live memory only. It reports whether that worked.
func forceGC(ctx context.Context, ns string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return false
	}
	resp, err := nsClient(ns).Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// scrapeMetrics reads kubetun's /metrics from inside namespace ns.
func scrapeMetrics(ctx context.Context, ns string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := nsClient(ns).Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET kubetun's /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET kubetun's /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads Prometheus' text format: each sample's name (with its
// labels, as written) and value; comments skipped.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the last space outside the labels; a
		// timestamp, if any, follows the value.
		end := strings.LastIndexByte(line, '}') + 1
		f := strings.Fields(line[end:])
		name := line[:end]
		if end == 0 {
			name, f = f[0], f[1:]
		}
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: %q: %w", line, err)
		}
		m[name] = v
	}
	return m, sc.Err()
}
