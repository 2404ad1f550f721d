package e2e

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/proxy"
	"github.com/kubetun/kubetun/test/testbed"
)

// TestStatus runs `kubetun status` in the node namespace against the
// kubetun serving the seed from manifests: the table and -o json list
// service-test at 10.3.241.152 with both pods and its live flows (1 while the
// client holds a connection, 0 once it closed it), and a health address
// nothing answers on gives the one-line message and exit code 1.
func TestStatus(t *testing.T) {
	c := startCluster(t, testbed.SeedPorts)

	// row runs kubetun status and returns its output and service-test's row.
	row := func(t *testing.T) (string, []string) {
		t.Helper()
		out, err := c.Run(t.Context(), c.Node, kubetunBin, "status")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[1] == "service-test" {
				return out, f
			}
		}
		return out, nil
	}
	// waitFlows runs kubetun status until service-test's FLOWS is want, for
	// up to 10 s, and returns its output and that row.
	waitFlows := func(t *testing.T, want string) (string, []string) {
		t.Helper()
		var (
			out string
			r   []string
		)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if out, r = row(t); len(r) == 6 && r[5] == want {
				return out, r
			}
		}
		t.Fatalf("kubetun status row of service-test = %q after 10s, want FLOWS %s; output:\n%s", r, want, out)
		return out, r
	}

	t.Run("table", func(t *testing.T) {
		conn, err := testbed.DialIn(c.Client.Namespace, "tcp", testbed.ClusterIP+":80", 3*time.Second)
		if err != nil {
			t.Fatalf("DialIn(client, %s:80): %v", testbed.ClusterIP, err)
		}
		defer conn.Close()
		out, r := waitFlows(t, "1")
		t.Logf("kubetun status, one connection open:\n%s", out)
		for _, want := range []string{"Mode:            run", "Source:          manifests " + c.ManifestPath, "Service CIDRs:   " + testbed.ServiceCIDR, "Pods:            direct"} {
			if !strings.Contains(out, want) {
				t.Errorf("kubetun status does not say %q", want)
			}
		}
		// NAMESPACE NAME CLUSTER-IP PORT(S) ENDPOINTS FLOWS
		want := []string{"default", "service-test", testbed.ClusterIP, "80/TCP",
			c.Pod1.IP.String() + ":8080," + c.Pod2.IP.String() + ":8080", "1"}
		if !slices.Equal(r, want) {
			t.Errorf("kubetun status row of service-test = %q, want %q", r, want)
		}
		conn.Close()
		waitFlows(t, "0")
	})

	t.Run("json", func(t *testing.T) {
		out, err := c.Run(t.Context(), c.Node, kubetunBin, "status", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var st proxy.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("kubetun status -o json: %v\n%s", err, out)
		}
		if !st.Ready || st.Mode != "run" || st.Source.Kind != "manifests" || st.DNS == nil {
			t.Errorf("kubetun status -o json = %s, want ready, mode run, manifests, DNS on", out)
		}
		if len(st.Services) != 1 || st.Services[0].Name != "service-test" || len(st.Services[0].Ports) != 1 {
			t.Fatalf("services = %+v, want service-test with one port", st.Services)
		}
		if f := st.Services[0].ActiveFlows; f == nil || *f != 0 {
			t.Errorf("service-test activeFlows = %v, want 0 (counted, none open)", f)
		}
		p := st.Services[0].Ports[0]
		want := []string{c.Pod1.IP.String() + ":8080", c.Pod2.IP.String() + ":8080"}
		if p.ClusterIP != testbed.ClusterIP || p.Port != 80 || !slices.Equal(p.Endpoints, want) {
			t.Errorf("service-test port = %+v, want %s:80 to %v", p, testbed.ClusterIP, want)
		}
	})

	t.Run("no_instance", func(t *testing.T) {
		out, err := c.Run(t.Context(), c.Node, kubetunBin, "status", "--addr", "127.0.0.1:1")
		var re *testbed.RunError
		if !errors.As(err, &re) {
			t.Fatalf("kubetun status --addr 127.0.0.1:1 = %q, %v, want it to fail", out, err)
		}
		want := "kubetun status: no kubetun running at 127.0.0.1:1 (dial tcp 127.0.0.1:1: connect: connection refused)"
		if !strings.HasPrefix(re.Stderr, want) || strings.Count(re.Stderr, "\n") != 1 || !strings.Contains(re.Err.Error(), "exit status 1") {
			t.Errorf("kubetun status --addr 127.0.0.1:1: %v, stderr %q, want exit status 1 and one line starting %q", re.Err, re.Stderr, want)
		}
	})
}
