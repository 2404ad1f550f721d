package e2e

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestRefused checks that kubetun answers a SYN that no Service can take with
// a RST at once: kubetun is never an open proxy, and a client does not hang.
func TestRefused(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	for _, tc := range []struct {
		name, addr string
	}{
		{"no_service_at_ip", "10.3.241.153:80"},
		{"unknown_port_on_cluster_ip", testbed.ClusterIP + ":81"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dialRefused(t, c.Client.Namespace, tc.addr, 100*time.Millisecond)
			curlRefused(t, c.Testbed, c.Client.Namespace, tc.addr)
		})
	}
}

// TestAllEndpointsDown stops both pods' servers: kubetun's dials are refused,
// so the client must be refused too (after kubetun tried a second endpoint).
func TestAllEndpointsDown(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	for _, pod := range []*testbed.Host{c.Pod1, c.Pod2} {
		if err := c.StopServer(pod); err != nil {
			t.Fatalf("StopServer(%s): %v", pod.Name, err)
		}
	}
	dialRefused(t, c.Client.Namespace, testbed.ClusterIP+":80", time.Second)
	curlRefused(t, c.Testbed, c.Client.Namespace, testbed.ClusterIP+":80")
}

// dialRefused dials addr from namespace ns and fails t unless the connection
// is refused within limit.
func dialRefused(t *testing.T, ns, addr string, limit time.Duration) {
	t.Helper()
	began := time.Now()
	conn, err := testbed.DialIn(ns, "tcp", addr, 3*time.Second)
	elapsed := time.Since(began)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %s from %s: connected after %v, want refused", addr, ns, elapsed)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s from %s: %v after %v, want %v", addr, ns, err, elapsed, syscall.ECONNREFUSED)
	}
	if elapsed > limit {
		t.Errorf("dial %s from %s: refused after %v, want within %v", addr, ns, elapsed, limit)
	}
	t.Logf("dial %s: refused after %v", addr, elapsed)
}

// curlRefused runs curl to addr in namespace ns and fails t unless curl
// reports exit code 7, "Failed to connect".
func curlRefused(t *testing.T, tb *testbed.Testbed, ns, addr string) {
	t.Helper()
	out, err := tb.Run(t.Context(), ns, "curl", "-sS", "--max-time", "2", "http://"+addr+"/")
	if code := testbed.ExitCode(err); code != 7 {
		t.Errorf("curl http://%s/ from %s: exit code %d (%v), output %q; want 7 (connection refused)", addr, ns, code, err, out)
	}
}
