package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/resolver"
)

// TestClusterPortForward reaches pods the way a laptop without routes to
// them does: package portforward's dialer, through kube-apiserver's
// pods/portforward, to the kubelet stand-in's real port-forward server,
// into the pod. No TUN: the dialer is used directly. The pod of an IP comes
// from the resolver's snapshot of the real EndpointSlices (their targetRef).
// It also checks that the real `kubectl port-forward` works on this test
// bed, as the laptop bench compares against it.
func TestClusterPortForward(t *testing.T) {
	ct := newClusterTest(t, "pf", 0)
	ct.apply(webService("web", "pf"))
	pf1 := ct.addPod(podSpec{Name: "pf-1", App: "pf"})
	// pf-1 is forwarded to on localhost inside its namespace, as a container
	// runtime does; pf-2, not registered, by its IP from the node namespace.
	ct.cp.SetPodNetns(ct.NS, "pf-1", pf1.Namespace)
	pf2 := ct.addPod(podSpec{Name: "pf-2", App: "pf"})
	ct.waitReadyEndpoints("web", 2)
	snap := ct.snapshot()
	for _, h := range []struct {
		name string
		ip   netip.Addr
	}{{"pf-1", pf1.IP}, {"pf-2", pf2.IP}} {
		if ns, name, ok := snap.PodByIP(h.ip); !ok || ns != ct.NS || name != h.name {
			t.Fatalf("PodByIP(%s) = %q, %q, %v, want %q, %q, true", h.ip, ns, name, ok, ct.NS, h.name)
		}
	}

	cfg := ct.relayedConfig()
	var connects atomic.Int32
	newDialer := func(opts portforward.Options) *portforward.Dialer {
		opts.Logf = func(format string, args ...any) {
			line := fmt.Sprintf(format, args...)
			if strings.Contains(line, ": connected in ") {
				connects.Add(1)
			}
			t.Log(line)
		}
		d, err := portforward.New(cfg, snap, opts)
		if err != nil {
			t.Fatalf("portforward.New: %v", err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	d := newDialer(portforward.Options{})
	at := func(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }

	t.Run("hello", func(t *testing.T) {
		for _, h := range []struct {
			name string
			ip   netip.Addr
		}{{"pf-1", pf1.IP}, {"pf-2", pf2.IP}} {
			began := time.Now()
			got, err := pfHello(t.Context(), d, at(h.ip, 8080))
			if err != nil || got != h.name {
				t.Fatalf("GET / at %s through port-forward = %q, %v, want Hello from %s", h.ip, got, err, h.name)
			}
			t.Logf("Hello from %s through pods/portforward in %v", got, time.Since(began).Round(time.Millisecond))
		}
	})

	t.Run("10MiB", func(t *testing.T) {
		const size = 10 << 20
		c, err := d.DialContext(t.Context(), "tcp", at(pf1.IP, 9000))
		must(t, err)
		defer c.Close()
		began := time.Now()
		err = randomEcho(c, size, time.Minute)
		took := time.Since(began)
		if err != nil {
			t.Fatalf("10 MiB up and back through one stream: %v", err)
		}
		t.Logf("10 MiB up and 10 MiB down, byte-identical, through one stream in %v (%.1f MiB/s each way)",
			took.Round(time.Millisecond), float64(size)/(1<<20)/took.Seconds())
	})

	t.Run("parallel", func(t *testing.T) {
		const n = 50
		before := connects.Load()
		took := parallelEchoes(t, n, 64<<10, "stream", 30*time.Second, func() (net.Conn, error) {
			return d.DialContext(t.Context(), "tcp", at(pf1.IP, 9000))
		})
		t.Logf("%d parallel streams of 64 KiB each way in %v", n, took.Round(time.Millisecond))
		if got := connects.Load() - before; got != 0 {
			t.Errorf("%d new pod connections for %d streams to a pod already connected, want 0", got, n)
		}
	})

	t.Run("refused", func(t *testing.T) {
		// A generous margin, so that only the pod's refusal ends the wait.
		patient := newDialer(portforward.Options{Confirm: 10 * time.Second})
		began := time.Now()
		c, err := patient.DialContext(t.Context(), "tcp", at(pf1.IP, 9999))
		took := time.Since(began)
		var refused *portforward.RefusedError
		if !errors.As(err, &refused) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("DialContext to closed port 9999 = %v, want a RefusedError", err)
		}
		t.Logf("refused in %v (a new pod connection included): %v", took.Round(time.Millisecond), err)
		if took > 8*time.Second {
			t.Errorf("refusal took %v: the pod's error did not end DialContext", took)
		}
		// With the default margin, on the connection made already: how often
		// the refusal beats it.
		const tries = 20
		var atDial int
		var worst time.Duration
		for range tries {
			began := time.Now()
			c, err := d.DialContext(t.Context(), "tcp", at(pf1.IP, 9999))
			if errors.As(err, &refused) {
				atDial++
				worst = max(worst, time.Since(began))
				continue
			}
			if err != nil {
				t.Fatalf("DialContext to closed port 9999 (default margin) = %v", err)
			}
			_, rerr := c.Read(make([]byte, 1))
			c.Close()
			if rerr == nil {
				t.Fatalf("closed port 9999: DialContext and Read succeeded")
			}
		}
		t.Logf("default Confirm (%v + one round trip): %d of %d refusals failed DialContext (slowest %v); the rest failed the first Read",
			portforward.DefaultConfirm, atDial, tries, worst.Round(time.Millisecond))
	})

	t.Run("cut", func(t *testing.T) {
		for i := range 2 {
			before := connects.Load()
			ct.cp.CutPortForwards()
			began := time.Now()
			got, err := pfHello(t.Context(), d, at(pf1.IP, 8080))
			if err != nil || got != "pf-1" {
				t.Fatalf("GET / after cut %d = %q, %v, want Hello from pf-1", i+1, got, err)
			}
			t.Logf("after cut %d: answered in %v", i+1, time.Since(began).Round(time.Millisecond))
			if connects.Load() == before {
				t.Errorf("cut %d: no new pod connection was made", i+1)
			}
		}
	})

	t.Run("kubectl", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := ct.cp.KubectlCmd(ctx, "-n", ct.NS, "port-forward", "pod/pf-1", ":8080", "--address", "127.0.0.1")
		stdout, err := cmd.StdoutPipe()
		must(t, err)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		defer func() {
			cancel()
			cmd.Wait()
			if t.Failed() {
				t.Logf("kubectl port-forward stderr:\n%s", stderr.String())
			}
		}()
		lines := bufio.NewScanner(stdout)
		var local string
		forwarding := regexp.MustCompile(`^Forwarding from (127\.0\.0\.1:\d+) -> 8080`)
		for lines.Scan() {
			if m := forwarding.FindStringSubmatch(lines.Text()); m != nil {
				local = m[1]
				break
			}
		}
		if local == "" {
			t.Fatalf("kubectl port-forward printed no Forwarding line")
		}
		go io.Copy(io.Discard, stdout)
		for i := range 3 {
			c, err := ct.cp.DialContext(ctx, "tcp", local)
			must(t, err)
			answer, err := pfGet(c)
			c.Close()
			m := helloRE.FindStringSubmatch(answer)
			if err != nil || m == nil || m[1] != "pf-1" {
				t.Fatalf("GET / #%d through kubectl port-forward at %s = %q, %v", i+1, local, answer, err)
			}
		}
		t.Logf("kubectl port-forward pod/pf-1 at %s (in the node namespace) answers Hello from pf-1", local)
	})
}

// snapshot builds the resolver's table from the test namespace's Services
// and EndpointSlices, as kubetun would from its watch.
func (ct *clusterTest) snapshot() *resolver.Snapshot {
	ct.t.Helper()
	cs, err := kubernetes.NewForConfig(ct.cp.RESTConfig())
	must(ct.t, err)
	svcs, err := cs.CoreV1().Services(ct.NS).List(ct.t.Context(), metav1.ListOptions{})
	must(ct.t, err)
	sl, err := cs.DiscoveryV1().EndpointSlices(ct.NS).List(ct.t.Context(), metav1.ListOptions{})
	must(ct.t, err)
	var services []*corev1.Service
	for i := range svcs.Items {
		services = append(services, &svcs.Items[i])
	}
	var slices []*discoveryv1.EndpointSlice
	for i := range sl.Items {
		slices = append(slices, &sl.Items[i])
	}
	snap, _ := resolver.Build(services, slices, nil, resolver.Topology{})
	return snap
}

// relayedConfig returns a rest.Config that reaches kube-apiserver through
// a relay on 127.0.0.1 of the test's own namespace: client-go's
// port-forward dialers dial for themselves (they ignore rest.Config.Dial),
// so they cannot be pointed into the node namespace. The relay stops when
// the test ends.
func (ct *clusterTest) relayedConfig() *rest.Config {
	t := ct.t
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ct.relayAPIServer(l)
	return &rest.Config{
		Host:            "https://" + l.Addr().String(),
		BearerToken:     ct.cp.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ct.cp.CACert},
	}
}

// relayAPIServer relays every connection l accepts to kube-apiserver in
// the node namespace, until the test ends. kube-apiserver's certificate
// names 127.0.0.1, so l on a 127.0.0.1 (of any namespace) serves as the
// apiserver's address.
func (ct *clusterTest) relayAPIServer(l net.Listener) {
	stop, err := ct.cp.RelayAPIServer(l)
	must(ct.t, err)
	ct.t.Cleanup(stop)
}

// pfHello dials addr with d, sends the seed's request and returns the
// answering pod's name.
func pfHello(ctx context.Context, d *portforward.Dialer, addr string) (string, error) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	answer, err := pfGet(c)
	if err != nil {
		return "", err
	}
	m := helloRE.FindStringSubmatch(answer)
	if m == nil {
		return "", fmt.Errorf("%s: answer is not podserver's: %q", addr, answer)
	}
	return m[1], nil
}

// pfGet sends the seed's request on c, half-closes and reads the answer.
func pfGet(c net.Conn) (string, error) {
	got, err := pfRoundTrip(c, []byte("GET / HTTP/1.1\r\n\r\n"), 10*time.Second)
	return string(got), err
}

// pfRoundTrip writes msg on c while reading, half-closes, and returns what
// came back up to EOF; it gives up after limit by closing c (port-forward
// streams have no deadlines).
func pfRoundTrip(c net.Conn, msg []byte, limit time.Duration) ([]byte, error) {
	timer := time.AfterFunc(limit, func() { c.Close() })
	defer timer.Stop()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err == nil {
		err = <-werr
	}
	if !timer.Stop() {
		return got, fmt.Errorf("no EOF within %v (got %d bytes)", limit, len(got))
	}
	return got, err
}
