package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestSignalCleansUp stops kubetun with SIGTERM and with SIGINT: it exits 0
// and leaves no TUN and no route in the node namespace.
func TestSignalCleansUp(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			c := startCluster(t, testbed.TestPorts)
			if _, err := seedRequest(t.Context(), c.Testbed, c.Client.Namespace, testbed.ClusterIP, 80); err != nil {
				t.Fatalf("request before the signal: %v", err)
			}
			if err := c.Kubetun.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := c.Kubetun.Wait(10 * time.Second); err != nil {
				t.Fatalf("kubetun after %v: %v, want exit 0", sig, err)
			}
			checkNoTrace(t, c.Testbed)
			dialFails(t, c.Client.Namespace, testbed.ClusterIP+":80")
		})
	}
}

// TestStartupFailures checks that kubetun refuses to start, with a non-zero
// exit, a one-line reason (the last line of stderr) and nothing left behind, when it cannot work.
func TestStartupFailures(t *testing.T) {
	needKubetun(t)
	tb, _ := newBed(t)
	manifest := tb.Dir + "/service-test.yaml"
	if err := (testbed.Manifest{Ports: testbed.SeedPorts}).Write(manifest); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the reason
	}{
		// 10.0.0.0/16 holds the node's routes to the pods (the first is pod1's).
		{"cidr_overlaps_a_route", []string{"run", "--service-cidr", "10.0.0.0/16", "--manifests", manifest, "--tun", testbed.TUN},
			[]string{"10.0.1.0/24", "v-pod1"}},
		{"manifest_path_missing", testbed.KubetunArgs(tb.Dir + "/no-such-file.yaml"), []string{"no-such-file.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cmd := append([]string{kubetunBin}, tc.args...)
			out, err := tb.Run(ctx, tb.Node, cmd...)
			if code := testbed.ExitCode(err); code <= 0 {
				t.Fatalf("%s: exit code %d (%v), want a non-zero exit; stdout %q", strings.Join(cmd, " "), code, err, out)
			}
			// Log lines may come first; the reason is the last line, in plain words.
			stderr := strings.Split(strings.TrimSpace(err.(*testbed.RunError).Stderr), "\n")
			reason := stderr[len(stderr)-1]
			for _, w := range tc.want {
				if !strings.Contains(reason, w) {
					t.Errorf("reason %q does not name %q", reason, w)
				}
			}
			if strings.Contains(reason, "level=") {
				t.Errorf("reason %q is a log record, want a plain line", reason)
			}
			t.Logf("refused: %s", reason)
			checkNoTrace(t, tb)
		})
	}
}

// checkNoTrace fails t if the node namespace still holds kubetun's TUN or a
// route into the service network.
func checkNoTrace(t *testing.T, tb *testbed.Testbed) {
	t.Helper()
	for _, argv := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
	} {
		out, err := tb.Run(t.Context(), tb.Node, argv...)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{testbed.TUN, " tun ", testbed.ServiceCIDR} {
			if strings.Contains(out, bad) {
				t.Errorf("%s in the node namespace still shows %q:\n%s", strings.Join(argv, " "), bad, out)
			}
		}
	}
}

// dialFails fails t if a connection to addr from ns succeeds.
func dialFails(t *testing.T, ns, addr string) {
	t.Helper()
	conn, err := testbed.DialIn(ns, "tcp", addr, 2*time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %s from %s succeeded after kubetun stopped", addr, ns)
	}
	t.Logf("dial %s after kubetun stopped: %v", addr, fmt.Sprint(err))
}
