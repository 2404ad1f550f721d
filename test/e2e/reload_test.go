package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// reloadLimit is how soon a manifest change must show in the traffic: kubetun
// applies it within 1 s; the test allows 5, as a loaded machine may take
// seconds for the 20 requests pod_removed waits for.
const reloadLimit = 5 * time.Second

// TestManifestReload edits the manifest file under a running kubetun: a pod
// added to the EndpointSlice gets traffic, a pod removed gets none, and a file
// that does not parse keeps the last good state.
func TestManifestReload(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	pod3, err := c.AddPod("pod3", 4)
	if err != nil {
		t.Fatalf("AddPod(pod3): %v", err)
	}

	t.Run("pod_added", func(t *testing.T) {
		c.Manifest.Endpoints = append(c.Manifest.Endpoints, testbed.EndpointOf(pod3))
		c.writeManifest(t)
		took := waitFor(t, c, reloadLimit, func(pod string) bool { return pod == "pod3" })
		t.Logf("pod3 answered %v after the manifest was written", took)
	})

	t.Run("pod_removed", func(t *testing.T) {
		c.Manifest.Endpoints = c.Manifest.Endpoints[1:] // pod1 goes
		c.writeManifest(t)
		// Done when 20 answers in a row came from pods other than pod1.
		run := 0
		took := waitFor(t, c, reloadLimit, func(pod string) bool {
			if pod == "pod1" {
				run = 0
				return false
			}
			run++
			return run == 20
		})
		t.Logf("pod1 stopped getting traffic within %v", took)
	})

	t.Run("bad_file_keeps_last_state", func(t *testing.T) {
		if err := testbed.WriteFileAtomic(c.ManifestPath, []byte("kind: Service\nspec: [unclosed\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(reloadLimit) // past the moment kubetun has read it
		counts := countAnswers(t, c.Testbed, c.Client.Namespace, 20, 30*time.Second)
		if counts["pod2"] == 0 || counts["pod3"] == 0 || counts["pod1"] != 0 {
			t.Errorf("answers after a broken manifest = %v, want pod2 and pod3 as before", counts)
		}
		if log := c.Kubetun.Output(); !strings.Contains(log, c.ManifestPath) {
			t.Errorf("kubetun's log does not name the broken file %s:\n%s", c.ManifestPath, log)
		}
	})
}

// waitFor sends seed requests from the client until done returns true for an
// answering pod, and fails t if that takes longer than limit. It returns how
// long it took.
func waitFor(t *testing.T, c *cluster, limit time.Duration, done func(pod string) bool) time.Duration {
	t.Helper()
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), limit+5*time.Second)
	defer cancel()
	var seen []string
	for time.Since(began) < limit {
		pod, err := seedRequest(ctx, c.Testbed, c.Client.Namespace, testbed.ClusterIP, 80)
		if err != nil {
			t.Fatalf("request after the manifest change: %v", err)
		}
		seen = append(seen, pod)
		if done(pod) {
			return time.Since(began)
		}
	}
	t.Fatalf("not done %v after the manifest change; answers: %v", limit, seen)
	return 0
}
