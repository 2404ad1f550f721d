// Package e2e runs kubetun for real: network namespaces built by package
// testbed, kubetun's TUN in the node namespace, and real clients (nc, curl) in
// the client namespace. It needs root and the commands of `make deps`; without
// them it skips, unless CI is set, where it fails (package prereq), so a CI
// run never passes without having run it.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/prereq"
	"github.com/kubetun/kubetun/test/testbed"
)

// binaries built once by TestMain; buildErr explains a missing one.
var (
	kubetunBin, podserverBin string
	buildErr                 error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips or fails in needRoot
	}
	dir, err := os.MkdirTemp("", "kubetun-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: MkdirTemp:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if podserverBin, err = testbed.Build(context.Background(), dir, "./test/podserver"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// A kubetun that does not build fails every test that needs it, with the
	// compiler's message, rather than the whole run.
	kubetunBin, buildErr = testbed.Build(context.Background(), dir, "./cmd/kubetun")
	// Every kubetun connect the tests start records itself here, inherited
	// through the environment, not in the host's /run/kubetun/connect: the
	// tests' connections, each in a laptop namespace of its own, must not
	// see each other's (nor a developer's own) as the same machine's.
	runtimeDir := filepath.Join(dir, "runtime")
	os.Setenv("KUBETUN_RUNTIME_DIR", runtimeDir)
	code := m.Run()
	// The TestCluster tests share one control plane, which outlives each of them.
	if err := closeSharedCluster(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: shared control plane:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// commands are the programs the e2e tests run, besides the shell and
// coreutils; `make deps` installs them (the Makefile's DEPS).
var commands = []string{"ip", "ss", "nc", "curl", "dig", "ping", "iptables-save", "nft", "unshare"}

// needRoot stops t unless it runs as root, for network namespaces and a
// TUN, and finds every one of commands: it skips t, or fails it with CI
// set (package prereq).
func needRoot(t *testing.T) {
	t.Helper()
	prereq.Root(t, "network namespaces and a TUN")
	prereq.Commands(t, commands...)
}

// needResolved returns where systemd-resolved is unpacked
// (testbed.ResolvedDir), and stops t as needRoot does when it is not, or
// when dbus-daemon, which runs its bus, is missing.
func needResolved(t *testing.T) string {
	t.Helper()
	prereq.Commands(t, "dbus-daemon")
	dir, err := testbed.ResolvedDir()
	prereq.Require(t, "systemd-resolved", err)
	return dir
}

// needKubetun stops t as needRoot does, and fails it if kubetun did not
// build.
func needKubetun(t *testing.T) {
	t.Helper()
	needRoot(t)
	if buildErr != nil {
		t.Fatalf("kubetun does not build: %v", buildErr)
	}
}

// cluster is the seed's cluster with kubetun running in the node namespace.
type cluster struct {
	*testbed.Testbed
	testbed.Seed
	// Manifest is what was last written to ManifestPath.
	Manifest     testbed.Manifest
	ManifestPath string
	Kubetun      *testbed.Process
}

// newBed builds the seed's namespaces (pod servers running) without kubetun.
func newBed(t *testing.T) (*testbed.Testbed, testbed.Seed) {
	t.Helper()
	needRoot(t)
	tb := testbed.New(t, testbed.Options{Podserver: podserverBin, Kubetun: kubetunBin})
	seed, err := tb.AddSeed()
	if err != nil {
		t.Fatalf("AddSeed: %v", err)
	}
	return tb, seed
}

// startCluster builds the seed's cluster, writes the Service with ports and
// an EndpointSlice holding pod1 and pod2, and starts kubetun with extra flags.
// When t fails, kubetun's log is printed.
func startCluster(t *testing.T, ports []testbed.ServicePort, extra ...string) *cluster {
	t.Helper()
	needKubetun(t)
	tb, seed := newBed(t)
	c := &cluster{
		Testbed:      tb,
		Seed:         seed,
		ManifestPath: filepath.Join(tb.Dir, "service-test.yaml"),
		Manifest: testbed.Manifest{
			Ports:     ports,
			Endpoints: []testbed.Endpoint{testbed.EndpointOf(seed.Pod1), testbed.EndpointOf(seed.Pod2)},
		},
	}
	c.writeManifest(t)
	p, err := tb.StartKubetun(c.ManifestPath, extra...)
	c.Kubetun = p
	t.Cleanup(func() {
		if t.Failed() && p != nil {
			t.Logf("kubetun (%s) output:\n%s", p.CommandLine(), p.Output())
		}
	})
	if err != nil {
		t.Fatalf("StartKubetun: %v", err)
	}
	return c
}

// writeManifest writes c.Manifest to c.ManifestPath atomically.
func (c *cluster) writeManifest(t *testing.T) {
	t.Helper()
	if err := c.Manifest.Write(c.ManifestPath); err != nil {
		t.Fatal(err)
	}
}

// helloRE finds the pod name in podserver's answer.
var helloRE = regexp.MustCompile(`<p>Hello from ([^<]+)</p>`)

// seedRequest sends one request from namespace ns exactly the seed's way,
// `echo 'GET / HTTP/1.1\r\n\r\n' | nc IP PORT` (sh is dash, whose echo turns
// \r\n into CR LF), and returns the name of the pod that answered.
// netcat-openbsd 1.219 exits by itself once the server closes, so the seed's
// command needs neither -N nor -q.
func seedRequest(ctx context.Context, tb *testbed.Testbed, ns, ip string, port int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := tb.Run(ctx, ns, "sh", "-c", fmt.Sprintf(`echo 'GET / HTTP/1.1\r\n\r\n' | nc %s %d`, ip, port))
	if err != nil {
		return "", err
	}
	m := helloRE.FindStringSubmatch(out)
	if m == nil || !strings.HasPrefix(out, "HTTP/1.0 200 OK\r\n") {
		return "", fmt.Errorf("nc %s %d from %s: answer is not podserver's: %q", ip, port, ns, out)
	}
	return m[1], nil
}

// countAnswers sends n seed requests from ns to ClusterIP:80 and counts the
// answering pods. It stops at the first failure, and after limit in any case.
func countAnswers(t *testing.T, tb *testbed.Testbed, ns string, n int, limit time.Duration) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	counts := make(map[string]int)
	for i := range n {
		pod, err := seedRequest(ctx, tb, ns, testbed.ClusterIP, 80)
		if err != nil {
			logSockets(t, tb, ns, tb.Node)
			t.Fatalf("request %d of %d: %v (answers so far: %v)", i+1, n, err, counts)
		}
		counts[pod]++
	}
	return counts
}

// logSockets logs the TCP sockets of the given namespaces (ss -tanoi) and the
// TUN's counters, to tell a lost packet from a stuck connection.
func logSockets(t *testing.T, tb *testbed.Testbed, namespaces ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for _, ns := range namespaces {
		if seen[ns] {
			continue
		}
		seen[ns] = true
		out, err := tb.Run(ctx, ns, "ss", "-tanoi")
		t.Logf("ss -tanoi in %s (%v):\n%s", ns, err, out)
	}
	out, err := tb.Run(ctx, tb.Node, "ip", "-s", "link", "show", testbed.TUN)
	t.Logf("ip -s link show %s in %s (%v):\n%s", testbed.TUN, tb.Node, err, out)
}
