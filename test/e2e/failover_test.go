package e2e

import (
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestOneEndpointUnreachable makes pod2 unreachable while the EndpointSlice
// still lists it as ready: kubetun's dial fails and it tries the other
// endpoint, so every request is still served, by pod1.
func TestOneEndpointUnreachable(t *testing.T) {
	for _, tc := range []struct {
		name      string
		breakPod2 func(c *cluster) error
	}{
		{"server_stopped", func(c *cluster) error { return c.StopServer(c.Pod2) }},
		{"link_down", func(c *cluster) error { return c.SetLink(c.Pod2, false) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, testbed.TestPorts)
			if err := tc.breakPod2(c); err != nil {
				t.Fatal(err)
			}
			const n = 50
			counts := countAnswers(t, c.Testbed, c.Client.Namespace, n, 60*time.Second)
			if counts["pod1"] != n {
				t.Errorf("answers = %v, want all %d from pod1", counts, n)
			}
		})
	}
}
