package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubetun/kubetun/portforward"
)

// recoveryBound is the generous bound on recovery after a cut or an outage.
const recoveryBound = 30 * time.Second

// hangBound is the longest a failed request may take: a flow that cannot be
// served must be refused, not held past the port-forward dialer's own
// timeout (with margin for a loaded machine).
const hangBound = portforward.DefaultOpenTimeout + 5*time.Second

// attempt is one request through the Service by name.
type attempt struct {
	at   time.Time // when it started
	took time.Duration
	pod  string
	err  error
}

// curlOnce runs curl http://web/ on the laptop with a max time beyond
// hangBound, so that a hang shows as a slow failure rather than a timeout of
// the test.
func (ct *clusterTest) curlOnce(ns string) attempt {
	a := attempt{at: time.Now()}
	ctx, cancel := context.WithTimeout(ct.t.Context(), hangBound+10*time.Second)
	defer cancel()
	out, err := ct.tb.Run(ctx, ns, "curl", "-sS", "--max-time", fmt.Sprint(int((hangBound + 5*time.Second).Seconds())), "http://web/")
	a.took = time.Since(a.at)
	if err != nil {
		a.err = err
		return a
	}
	if m := helloRE.FindStringSubmatch(out); m != nil {
		a.pod = m[1]
	} else {
		a.err = fmt.Errorf("not podserver's answer: %q", out)
	}
	return a
}

// firstLine is the first line of err, for a log.
func firstLine(err error) string {
	s := strings.TrimSpace(err.Error())
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// TestClusterConnectRecovery is the recovery of `kubetun connect --via
// portforward` on a laptop without routes to pods: the port-forward
// connections are cut at the kubelet (as a kubelet restart or a network
// change does), idle and under a bounded loop of requests, and
// kube-apiserver is stopped for a few seconds. In port-forward mode every
// flow goes through kube-apiserver, so during its outage new flows must be
// refused at once (not hang) while names still resolve from the last state;
// once it is back, requests succeed again, and kubetun says the outage once
// and its end once. The times and failure counts are logged.
func TestClusterConnectRecovery(t *testing.T) {
	ct := newClusterTest(t, "crec", 0)
	// App "outage": waitControllerCaughtUp's probe Service selects it.
	ct.apply(webService("web", "outage"))
	ct.addPod(podSpec{Name: "crec-1", App: "outage"})
	ct.addPod(podSpec{Name: "crec-2", App: "outage"})
	ct.waitReadyEndpoints("web", 2)
	lap, kubeconfig := ct.addLaptop("crec-lap", false)
	removeConf, err := ct.tb.WriteResolvConf(lap, fmt.Sprintf("nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\n", laptopDNS, ct.NS))
	must(t, err)
	t.Cleanup(func() { removeConf() })
	p, summary, _ := ct.startConnect(lap, connectArgs(kubeconfig, "--via", "portforward", "--host-dns=false", "--dns-upstream", lap.Gateway.String())...)
	t.Logf("kubetun connect: %s", summary)
	if !strings.Contains(summary, "pods via portforward") {
		t.Fatalf("summary line %q: want pods via portforward", summary)
	}
	// Both pods' connections made before the first cut.
	for range 6 {
		if a := ct.curlOnce(lap.Namespace); a.err != nil {
			t.Fatalf("curl http://web/ before any cut: %v", a.err)
		}
	}

	t.Run("cut_idle", func(t *testing.T) {
		ct.cp.CutPortForwards()
		cut := time.Now()
		failed := 0
		var a attempt
		for time.Since(cut) < recoveryBound {
			if a = ct.curlOnce(lap.Namespace); a.err == nil {
				break
			}
			failed++
			t.Logf("request %v after the cut failed in %v: %s", a.at.Sub(cut).Round(time.Millisecond), a.took.Round(time.Millisecond), firstLine(a.err))
			if a.took > hangBound {
				t.Errorf("a request after the cut took %v to fail, want at most %v", a.took.Round(time.Millisecond), hangBound)
			}
		}
		if a.err != nil {
			t.Fatalf("no request succeeded within %v of cutting the port-forward connections", recoveryBound)
		}
		// What the dialer did about the cut connections.
		for _, l := range strings.Split(p.Output(), "\n") {
			if strings.Contains(l, "portforward: pod ") {
				t.Logf("kubetun: %s", l)
			}
		}
		t.Logf("idle cut: first request after it answered by %s %v after the cut (%d failed before it)", a.pod, time.Since(cut).Round(time.Millisecond), failed)
	})

	t.Run("cut_under_load", func(t *testing.T) {
		// A bounded loop of requests; the cut comes after the fifth result.
		const maxRequests = 60
		var (
			mu      sync.Mutex
			results []attempt
			cut     time.Time
			wg      sync.WaitGroup
		)
		began := time.Now()
		cutDone := make(chan struct{})
		wg.Go(func() {
			for i := 0; i < maxRequests && time.Since(began) < recoveryBound; i++ {
				a := ct.curlOnce(lap.Namespace)
				mu.Lock()
				results = append(results, a)
				n := len(results)
				mu.Unlock()
				select {
				case <-cutDone:
					if a.err == nil && a.at.After(cut) && n >= 10 {
						// Enough successes after the cut to see it settle.
						ok := 0
						mu.Lock()
						for _, r := range results {
							if r.err == nil && r.at.After(cut) {
								ok++
							}
						}
						mu.Unlock()
						if ok >= 5 {
							return
						}
					}
				default:
				}
			}
		})
		// Cut while requests are in flight: after the fifth result.
		for {
			mu.Lock()
			n := len(results)
			mu.Unlock()
			if n >= 5 || time.Since(began) > recoveryBound {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // into the next request
		cut = time.Now()
		ct.cp.CutPortForwards()
		close(cutDone)
		wg.Wait()

		var failed, before, after int
		var recovered time.Duration = -1
		var worst time.Duration
		for _, a := range results {
			end := a.at.Add(a.took)
			switch {
			case end.Before(cut):
				before++
				if a.err != nil {
					t.Errorf("request before the cut failed: %v", a.err)
				}
				continue
			}
			after++
			if a.err != nil {
				failed++
				worst = max(worst, a.took)
				t.Logf("request started %v from the cut failed in %v: %s", a.at.Sub(cut).Round(time.Millisecond), a.took.Round(time.Millisecond), firstLine(a.err))
				continue
			}
			if recovered < 0 && a.at.After(cut) {
				recovered = end.Sub(cut)
			}
		}
		t.Logf("cut under load: %d requests before it, %d overlapping or after it, %d of those failed (slowest failure %v); first request started after the cut answered %v after it",
			before, after, failed, worst.Round(time.Millisecond), recovered.Round(time.Millisecond))
		if recovered < 0 || recovered > recoveryBound {
			t.Errorf("no request started after the cut succeeded within %v", recoveryBound)
		}
		if worst > hangBound {
			t.Errorf("a request around the cut took %v to fail, want at most %v", worst.Round(time.Millisecond), hangBound)
		}
	})

	t.Run("apiserver_outage", func(t *testing.T) {
		t.Cleanup(func() { waitControllerCaughtUp(t, ct, "crec-2") })
		mark := len(p.Output())
		must(t, ct.cp.StopAPIServer())
		stopped := time.Now()
		restarted := false
		t.Cleanup(func() {
			if !restarted {
				if err := ct.cp.StartAPIServer(context.Background()); err != nil {
					t.Errorf("StartAPIServer: %v", err)
				}
			}
		})
		// ~5 s of requests while it is away: each must end, and fast.
		var failed, served int
		var worst time.Duration
		for time.Since(stopped) < 5*time.Second {
			a := ct.curlOnce(lap.Namespace)
			worst = max(worst, a.took)
			if a.err != nil {
				failed++
				if failed <= 3 {
					t.Logf("request %v into the outage failed in %v: %s", a.at.Sub(stopped).Round(time.Millisecond), a.took.Round(time.Millisecond), firstLine(a.err))
				}
			} else {
				served++
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("kube-apiserver away %v: %d requests refused, %d served, slowest %v", time.Since(stopped).Round(time.Millisecond), failed, served, worst.Round(time.Millisecond))
		if worst > hangBound {
			t.Errorf("a request during the outage took %v, want it refused within %v", worst.Round(time.Millisecond), hangBound)
		}
		// Names still resolve from the last state: kubetun's DNS answers
		// them locally, so the requests failed past resolution.
		if failed > 0 {
			_, err := ct.tb.Run(t.Context(), lap.Namespace, "curl", "-sS", "--max-time", "10", "http://web/")
			if err != nil && strings.Contains(err.Error(), "Could not resolve host") {
				t.Errorf("curl http://web/ during the outage could not resolve web: %v", err)
			}
		}

		began := time.Now()
		must(t, ct.cp.StartAPIServer(t.Context()))
		restarted = true
		ready := time.Now()
		t.Logf("kube-apiserver ready again %v after its start (%v after the stop)", ready.Sub(began).Round(time.Millisecond), ready.Sub(stopped).Round(time.Millisecond))
		failedAfter := 0
		var a attempt
		for time.Since(ready) < recoveryBound {
			if a = ct.curlOnce(lap.Namespace); a.err == nil {
				break
			}
			failedAfter++
			if a.took > hangBound {
				t.Errorf("a request after the restart took %v to fail, want at most %v", a.took.Round(time.Millisecond), hangBound)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if a.err != nil {
			t.Fatalf("no request succeeded within %v of kube-apiserver's restart: %v", recoveryBound, a.err)
		}
		t.Logf("first request after the restart answered by %s %v after kube-apiserver was ready (%d failed before it)", a.pod, time.Since(ready).Round(time.Millisecond), failedAfter)

		want := strings.Count(p.Output()[mark:], logUnreachable)
		if want != 1 {
			t.Errorf("kubetun logged %q %d times for one outage, want once; its log since the stop:\n%s", logUnreachable, want, p.Output()[mark:])
		}
		eventually(t, 15*time.Second, 100*time.Millisecond, fmt.Sprintf("kubetun logs %q once", logReachable), func() (bool, string) {
			n := strings.Count(p.Output()[mark:], logReachable)
			return n == 1, fmt.Sprint(n)
		})
		log := p.Output()[mark:]
		t.Logf("kubetun's log since the stop: %d lines, %d %q, %d %q",
			strings.Count(log, "\n"), strings.Count(log, logUnreachable), logUnreachable, strings.Count(log, logReachable), logReachable)
	})
}
