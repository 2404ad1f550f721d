package e2e

// The tests that take kube-apiserver away live in files named outage_*, so
// that go test, which runs a package's tests in file-name order, runs them
// after every other test of the shared control plane: after a restart,
// kube-controller-manager's informers back off (up to 30 s between retries)
// and its EndpointSlice controller was seen to need up to a minute before it
// wrote new Services' slices again.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// outage is how long TestClusterAPIServerDown keeps kube-apiserver away:
// long enough for client-go's reflectors to retry several times (their
// backoff starts at 800 ms and doubles).
const outage = 6 * time.Second

// The log lines kubetun writes when the API goes away and comes back.
const (
	logUnreachable = "Kubernetes API unreachable"
	logReachable   = "Kubernetes API reachable again"
)

// TestClusterAPIServerDown kills kube-apiserver (SIGKILL) under a running
// kubetun: an established echo connection and new connections keep working
// on the last state, and kubetun says once that the API is away, not once
// per retry. After kube-apiserver is started again, a change made at once
// (before kubetun's reflectors have reconnected) is applied.
func TestClusterAPIServerDown(t *testing.T) {
	ct := newClusterTest(t, "outage", 0)
	ct.apply(webService("web", "outage"))
	ct.addPod(podSpec{Name: "outage-1", App: "outage"})
	ct.addPod(podSpec{Name: "outage-2", App: "outage"})
	p := ct.startKubetun()
	ip := ct.clusterIP("web")
	ct.waitServed(ip+":80", 5*time.Second, "outage-1", "outage-2")

	echo, err := testbed.DialIn(ct.Client.Namespace, "tcp", ip+":7", 2*time.Second)
	must(t, err)
	defer echo.Close()
	must(t, echoRoundTrip(echo, "before the outage\n"))

	// Registered before the restart below, so it runs after it (and after a
	// failure too): the next tests need a working EndpointSlice controller.
	t.Cleanup(func() { waitControllerCaughtUp(t, ct, "outage-2") })
	mark := len(p.Output())
	must(t, ct.cp.StopAPIServer())
	stopped := time.Now()
	restarted := false
	t.Cleanup(func() { // the next tests need it
		if !restarted {
			if err := ct.cp.StartAPIServer(context.Background()); err != nil {
				t.Errorf("StartAPIServer: %v", err)
			}
		}
	})

	t.Run("serving_while_away", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := ct.cp.Kubectl(ctx, "get", "pods", "--request-timeout", "1s")
		cancel()
		if err == nil {
			t.Fatalf("kubectl get pods succeeded with kube-apiserver stopped")
		}
		answers := map[string]int{}
		rounds := 0
		for time.Since(stopped) < outage {
			rounds++
			if err := echoRoundTrip(echo, "during the outage\n"); err != nil {
				t.Fatalf("established echo connection %v into the outage: %v", time.Since(stopped).Round(time.Millisecond), err)
			}
			pod, err := ask(ct.Client.Namespace, ip+":80", 2*time.Second)
			if err != nil {
				t.Fatalf("new connection %v into the outage: %v", time.Since(stopped).Round(time.Millisecond), err)
			}
			answers[pod]++
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%v without kube-apiserver: %d echo round trips on the established connection, %d new connections answered by %v",
			outage, rounds, rounds, answers)
		if answers["outage-1"] == 0 || answers["outage-2"] == 0 {
			t.Errorf("answers during the outage = %v, want both pods, as before it", answers)
		}
	})

	t.Run("outage_logged_once", func(t *testing.T) {
		log := p.Output()[mark:]
		lines := strings.Split(strings.TrimSpace(log), "\n")
		if n := strings.Count(log, logUnreachable); n != 1 {
			t.Errorf("kubetun logged %q %d times in %v of outage, want once; its log since the stop:\n%s", logUnreachable, n, outage, log)
		}
		// Anything else kubetun said about the outage counts too: the
		// outage is said once, never once per retry.
		var noisy []string
		for _, l := range lines {
			if l != "" && !strings.Contains(l, logUnreachable) && (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) {
				noisy = append(noisy, l)
			}
		}
		t.Logf("kubetun's log during the %v outage: %d lines, %d of them %q, %d from client-go, %d other warnings or errors",
			outage, len(lines), strings.Count(log, logUnreachable), logUnreachable, strings.Count(log, "from=client-go"), len(noisy))
		if len(noisy) > 0 {
			t.Errorf("kubetun logged %d more warnings or errors during the outage, want the one line:\n%s", len(noisy), strings.Join(noisy, "\n"))
		}
	})

	t.Run("change_after_restart_applied", func(t *testing.T) {
		began := time.Now()
		must(t, ct.cp.StartAPIServer(t.Context()))
		restarted = true
		ready := time.Now()
		t.Logf("kube-apiserver ready again %v after its start (%v after the kill)", ready.Sub(began).Round(time.Millisecond), ready.Sub(stopped).Round(time.Millisecond))
		// The change is the Service's own (port 80 becomes 8080), so that it
		// reaches kubetun straight from kube-apiserver: an endpoint change
		// would first wait for kube-controller-manager, whose informers back
		// off from the outage as well.
		changed := time.Now()
		ct.sub(t).kubectl("patch", "service", "web", "--type=json",
			"-p", `[{"op":"replace","path":"/spec/ports/0/port","value":8080}]`)
		noticed := strings.Contains(p.Output()[mark:], logReachable)
		took := eventually(t, 45*time.Second, 10*time.Millisecond, ip+":8080 served", func() (bool, string) {
			_, err := ask(ct.Client.Namespace, ip+":8080", 2*time.Second)
			return err == nil, fmt.Sprint(err)
		})
		t.Logf("port 80 → 8080 (patched %v after kube-apiserver was ready again; kubetun had logged %q by then: %v) served after %v",
			changed.Sub(ready).Round(time.Millisecond), logReachable, noticed, took.Round(time.Millisecond))
		dialRefused(t, ct.Client.Namespace, ip+":80", changeLimit)
		if err := echoRoundTrip(echo, "after the outage\n"); err != nil {
			t.Errorf("established echo connection after the restart: %v", err)
		}
		// kubetun says the API is back once per outage it reported (its probe
		// runs every 2 s); outage_logged_once checks the report itself.
		want := strings.Count(p.Output()[mark:], logUnreachable)
		eventually(t, 10*time.Second, 100*time.Millisecond, fmt.Sprintf("kubetun logs %q %d times", logReachable, want), func() (bool, string) {
			n := strings.Count(p.Output()[mark:], logReachable)
			return n == want, fmt.Sprint(n)
		})
	})
}

// waitControllerCaughtUp waits until the EndpointSlice controller acts on
// Service and Pod changes again after an outage: kube-controller-manager's
// informers back off like kubetun's (up to 30 s between retries, with
// jitter), so a test starting right after the outage could wait long for its
// slices. It creates a Service "probe" selecting the test's pods, flips pod's
// Ready to False, and waits until probe's slice lists pod as not ready. Past
// 20 s it restarts kube-controller-manager, which then lists everything
// afresh (it once took over a minute on its own on a loaded machine). This
// is the harness's recovery, not kubetun's; it is logged, and fails t only
// after a further minute.
func waitControllerCaughtUp(t *testing.T, ct *clusterTest, pod string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second+controllerRestartLimit)
	defer cancel()
	began := time.Now()
	if _, err := ct.cp.Apply(ctx, webService("probe", "outage"), "-n", ct.NS); err != nil {
		t.Errorf("creating Service probe: %v", err)
		return
	}
	if err := ct.cp.SetPodReady(ctx, ct.NS, pod, false); err != nil {
		t.Errorf("SetPodReady(%s, false): %v", pod, err)
		return
	}
	restarted := false
	for ctx.Err() == nil {
		out, err := ct.cp.Kubectl(ctx, "-n", ct.NS, "get", "endpointslices", "-l", "kubernetes.io/service-name=probe", "-o",
			`jsonpath={range .items[*].endpoints[*]}{.targetRef.name}={.conditions.ready} {end}`)
		if err == nil && strings.Contains(out, pod+"=false") {
			t.Logf("kube-controller-manager caught up %v after the restart (Service probe's EndpointSlice lists %s not ready; restarted: %v)",
				time.Since(began).Round(time.Millisecond), pod, restarted)
			return
		}
		if !restarted && time.Since(began) > 20*time.Second {
			restarted = true
			t.Logf("kube-controller-manager has not caught up after %v; restarting it", time.Since(began).Round(time.Millisecond))
			if err := ct.cp.RestartControllerManager(ctx); err != nil {
				t.Errorf("restarting kube-controller-manager: %v", err)
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("the EndpointSlice controller did not catch up within %v of kube-apiserver's restart (restarted: %v)", time.Since(began).Round(time.Second), restarted)
}

// controllerRestartLimit bounds the wait for the EndpointSlice controller
// once kube-controller-manager was restarted.
const controllerRestartLimit = time.Minute
