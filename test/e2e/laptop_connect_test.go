package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/testbed"
)

// laptopPingTimeout is TestLaptopConnect's --portforward-ping-timeout,
// which is also how long kubetun may not run before it counts as resumed:
// short, so that the simulated sleep is.
const laptopPingTimeout = 2 * time.Second

// TestLaptopConnect is what a laptop does to `kubetun connect --via
// portforward` that a CI cluster does not: new connections one after the
// other next to kubectl port-forward, a closed pod port, a connection left
// idle past the kubelet's idle timeout, a sleep (kubetun stopped with
// SIGSTOP), and the route to the API server gone for a while. The rates and
// times are logged, for the record; the bench compares them
// (`go run ./test/bench --cases laptop`).
func TestLaptopConnect(t *testing.T) {
	ct := newClusterTest(t, "lap", 0)
	ct.apply(webService("web", "lap"))
	// closed: the pod's port 8081, where nothing listens.
	ct.apply(`apiVersion: v1
kind: Service
metadata:
  name: closed
spec:
  selector:
    app: lap
  ports:
  - name: http
    port: 81
    targetPort: 8081
`)
	ct.addPod(podSpec{Name: "lap-1", App: "lap"})
	ct.waitReadyEndpoints("web", 1)
	ct.waitReadyEndpoints("closed", 1)
	webIP, closedIP := ct.clusterIP("web"), ct.clusterIP("closed")

	lap, kubeconfig, cutAPIServer := ct.addRoutedLaptop("lap-l")
	p, summary, _ := ct.startConnect(lap, connectArgs(kubeconfig, "--via", "portforward", "--host-dns=false",
		"--dns-upstream", lap.Gateway.String(), "--portforward-ping-interval", "500ms",
		"--portforward-ping-timeout", laptopPingTimeout.String())...)
	t.Cleanup(func() { p.Signal(syscall.SIGCONT) }) // before Stop, if a subtest failed while it was stopped
	t.Logf("kubetun connect: %s", summary)
	web := hostPort(webIP, 80)

	t.Run("closed port refused on first try", func(t *testing.T) {
		_, err := ask(lap.Namespace, hostPort(closedIP, 81), 10*time.Second)
		if !refused(err) {
			t.Fatalf("first connection to the Service closed (the pod's port 8081, closed) = %v, want connection refused", err)
		}
	})

	t.Run("new connections vs kubectl port-forward", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		pf, err := ct.tb.Start(lap.Namespace, "kubectl-port-forward", ct.cp.Bins.Kubectl, "--kubeconfig", kubeconfig,
			"--cache-dir", filepath.Join(t.TempDir(), "kubectl-cache"), "port-forward", "pod/lap-1", "--address", "127.0.0.1", "18080:8080")
		must(t, err)
		defer pf.Stop(5 * time.Second)
		if err := pf.WaitOutput("Forwarding from 127.0.0.1:18080", connectReadyTimeout); err != nil {
			t.Fatalf("kubectl port-forward: %v", err)
		}
		for _, parallel := range []int{1, 64} {
			n := 100 * min(parallel, 4)
			kubectl := newConnRate(ctx, lap.Namespace, "127.0.0.1:18080", n, parallel)
			kubetun := newConnRate(ctx, lap.Namespace, web, n, parallel)
			t.Logf("%d at a time: kubectl port-forward %s; kubetun connect %s; kubetun/kubectl %.2f",
				parallel, kubectl, kubetun, kubetun.rate()/kubectl.rate())
			for _, r := range []connRateResult{kubectl, kubetun} {
				if r.failed > 0 {
					t.Errorf("%d at a time: %d of %d connections failed, the first: %v", parallel, r.failed, n, r.firstErr)
				}
			}
		}
	})

	t.Run("idle past the kubelet's idle timeout", func(t *testing.T) {
		// The kubelet stand-in closes connections made from now on that
		// carry nothing for idle; kubetun pings every 500 ms.
		const idle = 2 * time.Second
		ct.cp.SetKubeletIdleTimeout(idle)
		t.Cleanup(func() { ct.cp.SetKubeletIdleTimeout(0) })
		ct.cp.CutPortForwards() // kubetun makes its connection again, with the timeout
		eventually(t, recoveryBound, 100*time.Millisecond, "a request after the cut answered", func() (bool, string) {
			_, err := seedRequest(t.Context(), ct.tb, lap.Namespace, webIP, 80)
			return err == nil, fmt.Sprint(err)
		})
		mark := len(p.Output())
		time.Sleep(3 * idle)
		began := time.Now()
		if _, err := ask(lap.Namespace, web, 10*time.Second); err != nil {
			t.Fatalf("the first request after %v idle (kubelet idle timeout %v): %v", 3*idle, idle, err)
		}
		first := time.Since(began)
		// For comparison, the requests right after it.
		var next []time.Duration
		for range 5 {
			began := time.Now()
			if _, err := ask(lap.Namespace, web, 10*time.Second); err != nil {
				t.Fatalf("a request after the idle one: %v", err)
			}
			next = append(next, time.Since(began).Round(10*time.Microsecond))
		}
		t.Logf("first request after %v idle (kubelet idle timeout %v, pings every 500 ms) answered in %v; the 5 after it in %v",
			3*idle, idle, first.Round(10*time.Microsecond), next)
		if lost := p.Output()[mark:]; strings.Contains(lost, "connection lost") {
			t.Errorf("kubetun lost a pod connection while idle, pinged every 500 ms:\n%s", lost)
		}
		status, err := ct.tb.Run(t.Context(), lap.Namespace, kubetunBin, "status", "--addr", healthAddr)
		must(t, err)
		t.Logf("kubetun status:\n%s", status)
		if !regexp.MustCompile(`(?m)^` + ct.NS + `/lap-1\s+(WebSocket|SPDY)\s+\S+\s+\d`).MatchString(status) {
			t.Errorf("kubetun status does not list the pod connection to lap-1 with its transport and a ping round trip")
		}
	})

	t.Run("sleep", func(t *testing.T) {
		c, err := testbed.DialIn(lap.Namespace, "tcp", hostPort(webIP, 7), 10*time.Second)
		must(t, err)
		defer c.Close()
		must(t, echoRoundTrip(c, "before"))
		// Stopped for longer than a ping may go unanswered: as after a
		// laptop's sleep, kubetun cannot tell which connections lived.
		must(t, p.Signal(syscall.SIGSTOP))
		time.Sleep(2*laptopPingTimeout + time.Second)
		must(t, p.Signal(syscall.SIGCONT))
		resumed := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		took := time.Since(resumed)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a flow in flight across the sleep read %v, want a reset", err)
		}
		t.Logf("the flow in flight across the sleep was reset %v after the resume", took.Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("the flow in flight was reset %v after the resume, want within about a second", took.Round(time.Millisecond))
		}
		began := time.Now()
		if _, err := seedRequest(t.Context(), ct.tb, lap.Namespace, webIP, 80); err != nil {
			t.Fatalf("the first request after the resume: %v", err)
		}
		t.Logf("first request after the resume answered in %v", time.Since(began).Round(time.Millisecond))
		if !strings.Contains(p.Output(), "resumed") {
			t.Errorf("kubetun did not log the resume")
		}
	})

	t.Run("route to the API server gone for 20s", func(t *testing.T) {
		mark := len(p.Output())
		restore := cutAPIServer()
		cut := time.Now()
		restored := false
		defer func() {
			if !restored {
				restore()
			}
		}()
		var failed, served int
		var worst time.Duration
		for time.Since(cut) < 20*time.Second {
			a := time.Now()
			err := testbed.InNamespace(lap.Namespace, func() error { return getHello(t.Context(), web, hangBound+5*time.Second) })
			took := time.Since(a)
			if err != nil {
				failed++
				worst = max(worst, took)
				if failed <= 5 || took > 2*time.Second {
					t.Logf("request %v after the cut failed in %v: %s", a.Sub(cut).Round(time.Millisecond), took.Round(time.Millisecond), firstLine(err))
				}
			} else {
				served++
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("route to the API server gone 20s: %d requests failed (slowest %v), %d served", failed, worst.Round(time.Millisecond), served)
		// At worst a flow waits for the connection it found to miss its
		// ping; the margin is for a loaded machine.
		if bound := laptopPingTimeout + 3*time.Second; worst > bound {
			t.Errorf("a request without a route to the API server took %v to fail, want it within %v", worst.Round(time.Millisecond), bound)
		}
		restore()
		restored = true
		back := time.Now()
		var err error
		for time.Since(back) < recoveryBound {
			if _, err = seedRequest(t.Context(), ct.tb, lap.Namespace, webIP, 80); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("no request succeeded within %v of the route's return: %v", recoveryBound, err)
		}
		t.Logf("first success %v after the route to the API server was restored", time.Since(back).Round(time.Millisecond))
		for _, l := range strings.Split(p.Output()[mark:], "\n") {
			if strings.Contains(l, "portforward") || strings.Contains(l, "network changed") || strings.Contains(l, "Kubernetes API") {
				t.Logf("kubetun: %s", l)
			}
		}
	})
}

// addRoutedLaptop adds a laptop host without routes to pods whose way to
// kube-apiserver goes over its own link, so that the test can take it away:
// a relay on the laptop's 127.0.0.1 (kube-apiserver's certificate names
// 127.0.0.1) dials, from inside the laptop, a second relay on the node's
// side of the link. cut removes the laptop's route to that address (an
// unreachable route) and returns the function that restores it.
func (ct *clusterTest) addRoutedLaptop(name string) (h *testbed.Host, kubeconfig string, cut func() (restore func())) {
	t := ct.t
	t.Helper()
	h = ct.addHost(name, 0)
	_, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "route", "del", "default")
	must(t, err)
	var far, near net.Listener
	must(t, testbed.InNamespace(ct.tb.Node, func() error {
		var err error
		far, err = net.Listen("tcp", net.JoinHostPort(h.Gateway.String(), "0"))
		return err
	}))
	ct.relayAPIServer(far)
	must(t, testbed.InNamespace(h.Namespace, func() error {
		var err error
		near, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}))
	relayTCP(t, near, h.Namespace, far.Addr().String())
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	must(t, ct.cp.WriteKubeconfigFor(kubeconfig, controlplane.Kubeconfig{Server: "https://" + near.Addr().String(), Context: "laptop", Namespace: ct.NS}))
	route := h.Gateway.String() + "/32"
	cut = func() func() {
		_, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "route", "add", "unreachable", route)
		must(t, err)
		return func() {
			if _, err := ct.tb.Run(context.Background(), h.Namespace, "ip", "route", "del", "unreachable", route); err != nil {
				t.Errorf("restoring the laptop's route to %s: %v", route, err)
			}
		}
	}
	return h, kubeconfig, cut
}

// relayTCP relays every connection l accepts to addr, dialled in netns ns,
// until the test ends, when it closes l and every connection.
func relayTCP(t *testing.T, l net.Listener, ns, addr string) {
	t.Cleanup(controlplane.Relay(l, func() (net.Conn, error) { return testbed.DialIn(ns, "tcp", addr, 5*time.Second) }))
}

// connRateResult is one run of newConnRate.
type connRateResult struct {
	done, failed int
	elapsed      time.Duration
	firstErr     error
}

func (r connRateResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

func (r connRateResult) String() string {
	return fmt.Sprintf("%.0f/s (%d in %v)", r.rate(), r.done, r.elapsed.Round(time.Millisecond))
}

// newConnRate makes n connections to podserver's HTTP port at addr from
// netns ns, parallel at a time, each a request and its whole answer.
func newConnRate(ctx context.Context, ns, addr string, n, parallel int) connRateResult {
	var (
		left     atomic.Int64
		done     atomic.Int64
		failed   atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	left.Store(int64(n))
	began := time.Now()
	for range parallel {
		wg.Go(func() {
			testbed.InNamespace(ns, func() error {
				for left.Add(-1) >= 0 && ctx.Err() == nil {
					if err := getHello(ctx, addr, 10*time.Second); err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, &err)
						continue
					}
					done.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	r := connRateResult{done: int(done.Load()), failed: int(failed.Load()), elapsed: time.Since(began)}
	if e := firstErr.Load(); e != nil {
		r.firstErr = *e
	}
	return r
}

// getHello sends the seed's request on a new connection to addr and reads
// the answer to its end (podserver closes), all within limit.
func getHello(ctx context.Context, addr string, limit time.Duration) error {
	d := net.Dialer{Timeout: limit}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Contains(b, []byte("Hello from ")) {
		return fmt.Errorf("%s: not podserver's answer: %q", addr, b)
	}
	return nil
}

// TestLaptopConnectRotatingToken runs `kubetun connect --via portforward`
// with an exec credential plugin, as cloud providers' kubeconfigs have, that
// hands out a new ServiceAccount token each time it is run and says the
// last one expires within seconds: client-go runs it again as tokens
// expire, and the pod connections and watches made after that use the new
// token. Requests go on succeeding across several rotations, through
// connections made anew (kubelet cuts) with the rotated tokens.
func TestLaptopConnectRotatingToken(t *testing.T) {
	ct := newClusterTest(t, "lrot", 0)
	ct.apply(webService("web", "lrot"))
	ct.apply(fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata:
  name: laptop
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-lrot-laptop
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- kind: ServiceAccount
  name: laptop
  namespace: %s
`, ct.NS))
	t.Cleanup(func() {
		ct.cp.Kubectl(context.Background(), "delete", "clusterrolebinding", "e2e-lrot-laptop", "--ignore-not-found")
	})
	ct.addPod(podSpec{Name: "lrot-1", App: "lrot"})
	ct.waitReadyEndpoints("web", 1)
	webIP := ct.clusterIP("web")
	lap, adminKubeconfig := ct.addLaptop("lrot-l", false)

	// The plugin mints a token with the admin's kubeconfig (in the laptop,
	// through its relay) and says it expires in 3 s.
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	plugin := filepath.Join(dir, "token-plugin")
	must(t, os.WriteFile(plugin, []byte(fmt.Sprintf(`#!/bin/sh
set -e
tok=$(%s --kubeconfig %s -n %s create token laptop --duration 1h)
echo "$tok" | cut -c1-40 >> %s
exp=$(date -u -d '+3 sec' +%%Y-%%m-%%dT%%H:%%M:%%SZ)
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%%s","expirationTimestamp":"%%s"}}\n' "$tok" "$exp"
`, ct.cp.Bins.Kubectl, adminKubeconfig, ct.NS, calls)), 0o755))
	admin, err := os.ReadFile(adminKubeconfig)
	must(t, err)
	server := regexp.MustCompile(`server: (\S+)`).FindStringSubmatch(string(admin))
	if server == nil {
		t.Fatalf("no server in the laptop's kubeconfig:\n%s", admin)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	must(t, os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: laptop
  cluster:
    server: %s
    certificate-authority-data: %s
contexts:
- name: laptop
  context: {cluster: laptop, user: laptop, namespace: %s}
current-context: laptop
users:
- name: laptop
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: %s
      interactiveMode: Never
`, server[1], base64.StdEncoding.EncodeToString(ct.cp.CACert), ct.NS, plugin)), 0o600))

	_, summary, _ := ct.startConnect(lap, connectArgs(kubeconfig, "--via", "portforward", "--host-dns=false", "--dns-upstream", lap.Gateway.String())...)
	t.Logf("kubetun connect: %s", summary)
	tokens := func() int {
		b, _ := os.ReadFile(calls)
		return len(strings.Fields(string(b)))
	}
	first := tokens()
	began := time.Now()
	for round := 0; tokens() < first+3 && time.Since(began) < time.Minute; round++ {
		if _, err := seedRequest(t.Context(), ct.tb, lap.Namespace, webIP, 80); err != nil {
			t.Fatalf("request %d, after %d tokens: %v", round, tokens(), err)
		}
		if round%4 == 3 {
			// New pod connections, authenticated with the token of now.
			ct.cp.CutPortForwards()
			eventually(t, recoveryBound, 50*time.Millisecond, "a request after the cut answered", func() (bool, string) {
				_, err := seedRequest(t.Context(), ct.tb, lap.Namespace, webIP, 80)
				return err == nil, fmt.Sprint(err)
			})
		}
		time.Sleep(500 * time.Millisecond)
	}
	if n := tokens() - first; n < 3 {
		t.Fatalf("the credential plugin ran %d times in a minute after connect, want the token rotated at least 3 times", n)
	}
	t.Logf("requests and new pod connections succeeded across %d token rotations in %v", tokens()-first, time.Since(began).Round(time.Millisecond))
}
