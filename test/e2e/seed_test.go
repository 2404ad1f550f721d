package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestSeedSplit is the seed scenario: 200 requests to 10.3.241.152:80, sent
// the seed's way, are answered by both pods, each taking 30-70 %. It runs
// from the client pod and from the node namespace itself (a node-local client),
// with the seed's exact Service (one unnamed port, targetPort http).
func TestSeedSplit(t *testing.T) {
	c := startCluster(t, testbed.SeedPorts)
	const n = 200
	for _, from := range []struct{ name, ns string }{
		{"from_client_pod", c.Client.Namespace},
		{"from_node", c.Node},
	} {
		t.Run(from.name, func(t *testing.T) {
			began := time.Now()
			counts := countAnswers(t, c.Testbed, from.ns, n, 90*time.Second)
			t.Logf("%d requests in %v: %v", n, time.Since(began).Round(time.Millisecond), counts)
			checkSplit(t, counts, n, 0.30, 0.70, "pod1", "pod2")
		})
	}
	t.Run("no_netfilter_rule", func(t *testing.T) {
		for _, argv := range [][]string{{"iptables-save"}, {"nft", "list", "ruleset"}} {
			out, err := c.Run(t.Context(), c.Node, argv...)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			if strings.TrimSpace(out) != "" {
				t.Errorf("%s in the node namespace = %q, want nothing", strings.Join(argv, " "), out)
			}
		}
	})
}

// checkSplit fails t unless counts holds exactly pods, adding up to n, each
// with a share in [lo, hi].
func checkSplit(t *testing.T, counts map[string]int, n int, lo, hi float64, pods ...string) {
	t.Helper()
	total := 0
	for _, c := range counts {
		total += c
	}
	if total != n || len(counts) != len(pods) {
		t.Fatalf("answers = %v, want %d answers from exactly %v", counts, n, pods)
	}
	for _, pod := range pods {
		share := float64(counts[pod]) / float64(n)
		if share < lo || share > hi {
			t.Errorf("%s answered %d of %d (%.0f%%), want %.0f-%.0f%%", pod, counts[pod], n, 100*share, 100*lo, 100*hi)
		}
	}
}
