package e2e

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// programmingCount and programmingSum are the samples of kube-proxy's
// network programming latency histogram.
const (
	programmingCount = "kubeproxy_network_programming_duration_seconds_count"
	programmingSum   = "kubeproxy_network_programming_duration_seconds_sum"
)

// triggerResolution: the EndpointSlice controller's
// endpoints.kubernetes.io/last-change-trigger-time comes from the Pod's Ready
// condition's lastTransitionTime, which the API keeps to the second.
const triggerResolution = time.Second

// TestClusterProgrammingMetric checks kubetun's health endpoints, and that
// kubeproxy_network_programming_duration_seconds observes an endpoint change.
func TestClusterProgrammingMetric(t *testing.T) {
	ct := newClusterTest(t, "metric", 0)
	ct.apply(webService("web", "metric"))
	ct.addPod(podSpec{Name: "metric-1", App: "metric"})
	ct.addPod(podSpec{Name: "metric-2", App: "metric"})
	ct.startKubetun()
	ct.waitServed(ct.clusterIP("web")+":80", 5*time.Second, "metric-1", "metric-2")

	t.Run("health", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/livez", "/readyz"} {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			out, err := ct.tb.Run(ctx, ct.tb.Node, "curl", "-sS", "--fail", "--max-time", "2", "http://"+healthAddr+path)
			cancel()
			if err != nil {
				t.Errorf("GET %s: %v", path, err)
				continue
			}
			t.Logf("GET http://%s%s: %s", healthAddr, path, strings.TrimSpace(out))
		}
	})

	t.Run("programming_latency", func(t *testing.T) {
		ct := ct.sub(t)
		// A change whose trigger time, cut to the second, falls before
		// kubetun started is not a programming latency (kube-proxy's rule
		// too): make the change a whole second after the start.
		if wait := triggerResolution + 100*time.Millisecond - time.Since(ct.KubetunStarted); wait > 0 {
			time.Sleep(wait)
		}
		count, sum := ct.scrape(programmingCount), ct.scrape(programmingSum)
		endpoints := ct.scrape("kubetun_endpoints")
		ct.setReady("metric-1", false)
		var after float64
		took := eventually(t, 10*time.Second, 50*time.Millisecond, programmingCount+" grows", func() (bool, string) {
			after = ct.scrape(programmingCount)
			return after > count, fmt.Sprint(after)
		})
		sumAfter, endpointsAfter := ct.scrape(programmingSum), ct.scrape("kubetun_endpoints")
		t.Logf("after metric-1's Ready=False: %s %v → %v (within %v), %s grew by %.3f s, kubetun_endpoints %v → %v",
			programmingCount, count, after, took.Round(time.Millisecond), programmingSum, sumAfter-sum, endpoints, endpointsAfter)
	})
}

// latencyChanges and latencyBudget bound TestClusterChangeLatency.
const (
	latencyChanges = 50
	latencyBudget  = 60 * time.Second
)

// TestClusterChangeLatency measures, without asserting a speed, how long an
// endpoint change takes to show in the traffic. A Service has one Pod, whose
// Ready condition is flipped 50 times through the API (the kubelet stand-in's
// status patch). Each sample is the time from just before the patch to the
// first connection from the client that shows the change: refused (RST from
// kubetun) after Ready=False, connected after Ready=True (kubetun completes a
// handshake only once the pod accepted). The path measured: kube-apiserver,
// the EndpointSlice controller, kubetun's watch, its table swap.
func TestClusterChangeLatency(t *testing.T) {
	ct := newClusterTest(t, "latency", 0)
	ct.apply(webService("web", "latency"))
	ct.addPod(podSpec{Name: "latency-1", App: "latency"})
	ct.startKubetun()
	addr := ct.clusterIP("web") + ":80"
	ct.waitServed(addr, 5*time.Second, "latency-1")
	if wait := triggerResolution + 100*time.Millisecond - time.Since(ct.KubetunStarted); wait > 0 {
		time.Sleep(wait) // see TestClusterProgrammingMetric
	}
	count, sum := ct.scrape(programmingCount), ct.scrape(programmingSum)

	began := time.Now()
	var up, down []time.Duration
	polls := 0
	for i := range latencyChanges {
		if time.Since(began) > latencyBudget {
			t.Fatalf("only %d of %d changes within %v", i, latencyChanges, latencyBudget)
		}
		ready := i%2 == 1 // the pod starts ready: down first
		changed := time.Now()
		ct.setReady("latency-1", ready)
		for {
			polls++
			c, err := testbed.DialIn(ct.Client.Namespace, "tcp", addr, time.Second)
			if c != nil {
				c.Close()
			}
			if ready && err == nil || !ready && refused(err) {
				break
			}
			if err != nil && !refused(err) {
				t.Fatalf("change %d (Ready=%v): dial %s: %v", i+1, ready, addr, err)
			}
			if time.Since(changed) > 5*time.Second {
				t.Fatalf("change %d (Ready=%v) not visible after 5 s", i+1, ready)
			}
			time.Sleep(time.Millisecond)
		}
		if took := time.Since(changed); ready {
			up = append(up, took)
		} else {
			down = append(down, took)
		}
	}
	total := time.Since(began)
	all := append(slices.Clone(up), down...)
	t.Logf("change-to-served latency: how measured: one Pod behind Service web, its Ready condition flipped %d times "+
		"by a status PATCH to kube-apiserver; each sample runs from just before the PATCH until the first TCP connect from the client pod "+
		"(a new connect every ~1 ms) that shows the change (refused after Ready=False, connected after Ready=True); %d connects in %v",
		latencyChanges, polls, total.Round(time.Millisecond))
	t.Logf("change-to-served latency over %d endpoint changes: p50 %v, p99 %v, max %v, mean %v",
		len(all), percentile(all, 0.50), percentile(all, 0.99), percentile(all, 1), mean(all))
	t.Logf("  Ready=False → refused  (%d): p50 %v, p99 %v", len(down), percentile(down, 0.50), percentile(down, 0.99))
	t.Logf("  Ready=True  → served   (%d): p50 %v, p99 %v", len(up), percentile(up, 0.50), percentile(up, 0.99))
	n, s := ct.scrape(programmingCount)-count, ct.scrape(programmingSum)-sum
	if n > 0 {
		t.Logf("kubetun's own %s: %v observations during the run, mean %.3f s "+
			"(trigger times have %v resolution, so each observation is late by up to that, and changes within one second of each other count once)",
			strings.TrimSuffix(programmingCount, "_count"), n, s/n, triggerResolution)
	} else {
		t.Logf("kubetun's own %s: no observation during the run", strings.TrimSuffix(programmingCount, "_count"))
	}
}

// percentile returns the nearest-rank p-quantile of d (p in (0, 1]).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)].Round(100 * time.Microsecond)
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return (sum / time.Duration(len(d))).Round(100 * time.Microsecond)
}
