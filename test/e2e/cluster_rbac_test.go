package e2e

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestClusterForbidden runs kubetun with --service-cidr as a ServiceAccount
// that may not read Services or EndpointSlices: its caches never sync, so
// it must route nothing into its TUN and stay unready (/readyz 503), and say
// once that it is not allowed to list them, naming the verb and resource,
// rather than that the API is unreachable.
func TestClusterForbidden(t *testing.T) {
	ct := newClusterTest(t, "forbidden", 0)
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	if _, err := ct.cp.Kubectl(ctx, "-n", ct.NS, "create", "serviceaccount", "nobody"); err != nil {
		t.Fatal(err)
	}
	out, err := ct.cp.Kubectl(ctx, "create", "token", "nobody", "-n", ct.NS, "--duration", "1h")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := ct.cp.WriteKubeconfig(kubeconfig, strings.TrimSpace(out)); err != nil {
		t.Fatal(err)
	}

	argv := []string{kubetunBin, "run", "--kubeconfig", kubeconfig, "--service-cidr", testbed.ServiceCIDR,
		"--node-name", testbed.NodeName, "--tun", testbed.TUN, "--health-addr", healthAddr, "--metrics-addr", metricsAddr}
	p, err := ct.tb.Start(ct.tb.Node, "kubetun", argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stopping kubetun: %v", err)
		}
		if t.Failed() {
			t.Logf("kubetun (%s) output:\n%s", p.CommandLine(), p.Output())
		}
	})
	const denied = "not allowed to list endpointslices.discovery.k8s.io at the cluster scope (403"
	if err := p.WaitOutput(denied, 15*time.Second); err != nil {
		t.Fatalf("kubetun did not report the refused list: %v", err)
	}
	// The reflector retries with backoff (about 1 s, doubling); let a few
	// retries pass before counting.
	time.Sleep(5 * time.Second)
	log := p.Output()
	for _, want := range []string{denied, "not allowed to list services at the cluster scope (403"} {
		if n := strings.Count(log, want); n != 1 {
			t.Errorf("log has %d lines with %q, want 1", n, want)
		}
	}
	if strings.Contains(log, "unreachable") || strings.Contains(log, "msg=ready") {
		t.Errorf("log says unreachable or ready; want only the permission problem")
	}
	routes, err := ct.tb.Run(t.Context(), ct.tb.Node, "ip", "route", "show", "dev", testbed.TUN)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(routes) != "" {
		t.Errorf("ip route show dev %s = %q, want no route before the caches synced", testbed.TUN, routes)
	}
	code, err := ct.tb.Run(t.Context(), ct.tb.Node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "http://"+healthAddr+"/readyz")
	if err != nil {
		t.Fatal(err)
	}
	if code != "503" {
		t.Errorf("GET /readyz = %s, want %d", code, http.StatusServiceUnavailable)
	}
}
