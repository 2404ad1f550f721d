package e2e

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// faultLimit bounds how long kubetun may take to report a fault: it polls
// its manifests twice a second.
const faultLimit = 5 * time.Second

// TestManifestFaults writes manifests kubetun cannot use, one fault at a
// time, under a running kubetun: each fault is reported in its log, once,
// naming what is wrong, and the Service keeps answering from its good
// endpoints, from the last valid version of an object edited into an
// invalid one, or from the last good state.
func TestManifestFaults(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	good, err := c.Manifest.YAML()
	if err != nil {
		t.Fatal(err)
	}
	write := func(t *testing.T, data []byte) {
		t.Helper()
		if err := testbed.WriteFileAtomic(c.ManifestPath, data); err != nil {
			t.Fatal(err)
		}
	}
	// expect waits for each of msgs in kubetun's log, lets kubetun poll a
	// few more times, and checks each was logged once.
	expect := func(t *testing.T, msgs ...string) {
		t.Helper()
		for _, msg := range msgs {
			if err := c.Kubetun.WaitOutput(msg, faultLimit); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second) // four more polls
		for _, msg := range msgs {
			if n := strings.Count(c.Kubetun.Output(), msg); n != 1 {
				t.Errorf("kubetun logged %q %d times, want once", msg, n)
			}
		}
	}
	// served checks that the seed's requests are still answered by pods.
	served := func(t *testing.T) {
		t.Helper()
		counts := countAnswers(t, c.Testbed, c.Client.Namespace, 10, 30*time.Second)
		if counts["pod1"]+counts["pod2"] != 10 {
			t.Errorf("answers = %v, want pod1 and pod2 only", counts)
		}
	}
	edit := func(t *testing.T, from, to string) []byte {
		t.Helper()
		if !bytes.Contains(good, []byte(from)) {
			t.Fatalf("%q is not in the manifest:\n%s", from, good)
		}
		return bytes.Replace(good, []byte(from), []byte(to), 1)
	}

	for _, tc := range []struct {
		name     string
		from, to string
		msg      string
		http     bool // port 80 still answers
	}{
		// Invalid: the slice keeps its last valid version.
		{"slice_port_0", "  port: 9000\n", "  port: 0\n", "ports[1]: port 0 is not a port number (1-65535); keeping its last valid version", true},
		{"slice_port_without_number", "  port: 9001\n", "", "ports[2] has no port number; keeping its last valid version", true},
		// Valid, but no port of the slice serves echo: reported by the table.
		{"slice_port_missing", `- name: "echo"`, `- name: "echoes"`, "(TCP); its endpoints do not serve Service default/service-test port 7", true},
		// Invalid: the Service keeps its last valid version, and answers.
		{"service_clusterIP_not_an_IP", "clusterIP: " + testbed.ClusterIP + "\n  clusterIPs:\n  - " + testbed.ClusterIP + "\n",
			"clusterIP: 10.3.241.999\n  clusterIPs:\n  - 10.3.241.999\n", "is not an IP address; keeping its last valid version", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(t, edit(t, tc.from, tc.to))
			expect(t, tc.msg)
			served(t)
		})
	}

	t.Run("endpoints_kubetun_must_not_dial", func(t *testing.T) {
		// A listener where the loopback endpoint points, in kubetun's own
		// namespace: it must see no connection.
		var lo net.Listener
		err := testbed.InNamespace(c.Node, func() (err error) {
			lo, err = net.Listen("tcp", "127.0.0.1:8080")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer lo.Close()
		var accepted atomic.Int64
		go func() {
			for {
				conn, err := lo.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				conn.Close()
			}
		}()
		failures := dialFailures(t, c)

		m := c.Manifest
		m.Endpoints = append(append([]testbed.Endpoint(nil), m.Endpoints...),
			testbed.Endpoint{IP: mustAddr(t, testbed.ClusterIP), Pod: "loop", Node: testbed.NodeName},
			testbed.Endpoint{IP: mustAddr(t, "10.3.241.200"), Pod: "cidr", Node: testbed.NodeName},
			testbed.Endpoint{IP: mustAddr(t, "127.0.0.1"), Pod: "lo", Node: testbed.NodeName})
		if err := m.Write(c.ManifestPath); err != nil {
			t.Fatal(err)
		}
		expect(t,
			"endpoint 10.3.241.152 (EndpointSlice default/",
			"is the ClusterIP of Service default/service-test (kubetun would dial itself); refused, never dialled",
			"endpoint 10.3.241.200 (EndpointSlice default/",
			"which kubetun routes into its TUN (kubetun would dial itself); refused, never dialled",
			"endpoint 127.0.0.1 (EndpointSlice default/")
		served(t)
		// Were the refused endpoints in the rotation, about 3 of every 5
		// requests would dial one of them and fail first.
		if n := dialFailures(t, c) - failures; n != 0 {
			t.Errorf("kubetun_pod_dial_failures_total grew by %v, want 0: a refused endpoint was dialled", n)
		}
		if n := accepted.Load(); n != 0 {
			t.Errorf("the listener on 127.0.0.1:8080 in %s accepted %d connections, want none", c.Node, n)
		}
	})

	t.Run("huge_object", func(t *testing.T) {
		write(t, good)
		write(t, bytes.Repeat([]byte("x: [\n"), 5<<20/5))
		expect(t, c.ManifestPath+": document 1: larger than 1 MiB, the largest object kubetun decodes")
		served(t)
	})

	t.Run("file_became_directory", func(t *testing.T) {
		write(t, good)
		time.Sleep(time.Second) // applied
		if err := os.Remove(c.ManifestPath); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(c.ManifestPath, 0o755); err != nil {
			t.Fatal(err)
		}
		expect(t, c.ManifestPath+" was a manifest file and is now a directory")
		served(t) // the last good state
	})
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// dialFailures reads kubetun_pod_dial_failures_total from kubetun's metrics
// (on its default --metrics-addr, in the node namespace).
func dialFailures(t *testing.T, c *cluster) float64 {
	t.Helper()
	const name = "kubetun_pod_dial_failures_total"
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	out, err := c.Run(ctx, c.Node, "curl", "-sS", "--max-time", "2", "http://"+metricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("/metrics: %q: %v", line, err)
			}
			return v
		}
	}
	t.Fatalf("/metrics has no sample %s:\n%s", name, out)
	return 0
}
