package e2e

import (
	"bytes"
	"net/netip"
	"os"
	"strings"
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
// endpoints or from the last good state.
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
		{"slice_port_0", "  port: 9000\n", "  port: 0\n", "(TCP) is 0, not a port number (1-65535); its endpoints do not serve Service default/service-test port 7", true},
		{"slice_port_without_number", "  port: 9001\n", "", "(TCP) has no number; its endpoints do not serve Service default/service-test port 9", true},
		{"slice_port_missing", `- name: "echo"`, `- name: "echoes"`, "(TCP); its endpoints do not serve Service default/service-test port 7", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write(t, edit(t, tc.from, tc.to))
			expect(t, tc.msg)
			served(t)
		})
	}

	t.Run("endpoints_kubetun_must_not_dial", func(t *testing.T) {
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
		served(t) // no request went to the refused endpoints
	})

	t.Run("huge_file", func(t *testing.T) {
		write(t, good)
		write(t, bytes.Repeat([]byte("x: [\n"), 17<<20/5))
		expect(t, c.ManifestPath+" is larger than the 16 MiB kubetun reads from a manifest file; not read")
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
