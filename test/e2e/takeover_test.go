package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// takeoverBed is the seed Service as a NodePort, with TCP and UDP echo
// ports, served by a kubetun with a handover socket of its own.
type takeoverBed struct {
	*testbed.Testbed
	seed     testbed.Seed
	path     string   // the manifest
	args     []string // every kubetun's flags after the manifest
	node     string   // the node's address the client reaches node ports at
	stateDir string
}

const (
	takeoverNodePortHTTP = 30180
	takeoverNodePortEcho = 30107
)

func newTakeoverBed(t *testing.T) *takeoverBed {
	t.Helper()
	needKubetun(t)
	tb, seed := newBed(t)
	b := &takeoverBed{Testbed: tb, seed: seed, path: filepath.Join(tb.Dir, "services.yaml"),
		node: seed.Client.Gateway.String(), stateDir: filepath.Join(tb.Dir, "state")}
	svc := testbed.Service{
		Name:       "service-test",
		ClusterIPs: []netip.Addr{netip.MustParseAddr(testbed.ClusterIP)},
		Selector:   "service_test_pod",
		Type:       "NodePort",
		Ports: []testbed.ServicePort{
			{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080, NodePort: takeoverNodePortHTTP},
			{Name: "echo", Port: 7, TargetPort: "9000", EndpointPort: 9000, NodePort: takeoverNodePortEcho},
			{Name: "echo-udp", Port: 7, TargetPort: "9002", EndpointPort: 9002, Protocol: "UDP"},
		},
		Endpoints: []testbed.Endpoint{testbed.EndpointOf(seed.Pod1), testbed.EndpointOf(seed.Pod2)},
	}
	if err := testbed.WriteServices(b.path, svc); err != nil {
		t.Fatal(err)
	}
	b.args = []string{"--node-name", testbed.NodeName, "--nodeport-addresses", b.node + "/24",
		"--state-dir", b.stateDir, "--drain-timeout", "30s"}
	return b
}

// start runs a kubetun and waits until it is ready; its output is logged
// if the test fails.
func (b *takeoverBed) start(t *testing.T, name string, extra ...string) *testbed.Process {
	t.Helper()
	p, err := b.StartKubetun(b.path, append(append([]string(nil), b.args...), extra...)...)
	t.Cleanup(func() {
		if t.Failed() && p != nil {
			t.Logf("kubetun %s (%s) output:\n%s", name, p.CommandLine(), p.Output())
		}
	})
	if err != nil {
		t.Fatalf("starting kubetun %s: %v", name, err)
	}
	return p
}

// echoConn is a long-lived connection that sends a numbered line every
// interval and checks that the same bytes come back.
type echoConn struct {
	addr   string
	rounds atomic.Int64
	err    atomic.Pointer[error]
}

func (e *echoConn) fail(err error) { e.err.CompareAndSwap(nil, &err) }

// run exchanges lines until stop is closed, then closes the connection.
func (e *echoConn) run(ns string, id int, interval time.Duration, stop <-chan struct{}) {
	conn, err := testbed.DialIn(ns, "tcp", e.addr, 5*time.Second)
	if err != nil {
		e.fail(err)
		return
	}
	defer conn.Close()
	t := time.NewTicker(interval)
	defer t.Stop()
	buf := make([]byte, 256)
	for i := 0; ; i++ {
		line := fmt.Appendf(nil, "connection %d line %d %s\n", id, i, strings.Repeat("x", i%97))
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(line); err != nil {
			e.fail(fmt.Errorf("line %d: write: %w", i, err))
			return
		}
		got := buf[:len(line)]
		if _, err := readFull(conn, got); err != nil {
			e.fail(fmt.Errorf("line %d: read: %w", i, err))
			return
		}
		if !bytes.Equal(got, line) {
			e.fail(fmt.Errorf("line %d: echoed %q, want %q", i, got, line))
			return
		}
		e.rounds.Add(1)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// udpSession is a client socket that sends a numbered datagram every
// interval to the UDP echo and counts the answers.
type udpSession struct {
	sent, answered atomic.Int64
	longestGap     atomic.Int64 // nanoseconds between two answers
}

func (u *udpSession) run(ns, addr string, id int, interval time.Duration, stop <-chan struct{}) error {
	var conn net.Conn
	err := testbed.InNamespace(ns, func() error {
		var err error
		conn, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	last := time.Now()
	buf := make([]byte, 512)
	for i := 0; ; i++ {
		msg := fmt.Sprintf("session %d datagram %d", id, i)
		conn.Write([]byte(msg))
		u.sent.Add(1)
		conn.SetReadDeadline(time.Now().Add(interval))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				break
			}
			if strings.HasSuffix(string(buf[:n]), ": "+msg) {
				u.answered.Add(1)
				if gap := time.Since(last); int64(gap) > u.longestGap.Load() {
					u.longestGap.Store(int64(gap))
				}
				last = time.Now()
				time.Sleep(time.Until(last.Add(interval)))
				break
			}
		}
		select {
		case <-stop:
			return nil
		default:
		}
	}
}

// TestTakeover replaces a running kubetun with a new one under load, as a
// rolling update does: the new one starts and takes over, then the old one
// gets SIGTERM. Twenty long-lived TCP connections (ClusterIP and node port)
// keep echoing byte-identical through it all and until they close, when
// the old kubetun exits; a new connection every 50 ms is answered, whoever
// serves it; UDP sessions keep their answers; every DNS question is
// answered.
func TestTakeover(t *testing.T) {
	b := newTakeoverBed(t)
	ns := b.seed.Client.Namespace
	old := b.start(t, "old")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var long []*echoConn
	for i := range 20 {
		addr := testbed.ClusterIP + ":7"
		if i%4 == 3 {
			addr = fmt.Sprintf("%s:%d", b.node, takeoverNodePortEcho)
		}
		e := &echoConn{addr: addr}
		long = append(long, e)
		wg.Go(func() { e.run(ns, i, 100*time.Millisecond, stop) })
	}
	var sessions []*udpSession
	var udpErrs sync.Map
	for i := range 5 {
		u := &udpSession{}
		sessions = append(sessions, u)
		wg.Go(func() {
			if err := u.run(ns, testbed.ClusterIP+":7", i, 100*time.Millisecond, stop); err != nil {
				udpErrs.Store(i, err)
			}
		})
	}
	// New connections, one every 50 ms, in turn to the ClusterIP and the
	// node port; DNS questions, one every 50 ms.
	type newConn struct {
		took time.Duration
		err  error
	}
	var (
		connMu  sync.Mutex
		conns   []newConn
		dnsOK   atomic.Int64
		dnsErrs []error
	)
	loops := make(chan struct{})
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var inner sync.WaitGroup
		defer inner.Wait()
		for i := 0; ; i++ {
			addr := testbed.ClusterIP + ":80"
			if i%2 == 1 {
				addr = fmt.Sprintf("%s:%d", b.node, takeoverNodePortHTTP)
			}
			inner.Go(func() {
				_, took, connErr, err := servedRequest(ns, addr, 10*time.Second)
				connMu.Lock()
				conns = append(conns, newConn{took, cmpErr(connErr, err, addr)})
				connMu.Unlock()
			})
			inner.Go(func() {
				// As a resolver asks (glibc: 5 s, 2 attempts): a question
				// lost on a loaded machine is asked again.
				r, err := dig(context.Background(), b.Testbed, ns, dnsIP, "+time=5", "+tries=2", "service-test.default.svc.cluster.local", "A")
				if err == nil && (r.Status != "NOERROR" || len(r.Answer) != 1 || r.Answer[0] != "A "+testbed.ClusterIP) {
					err = fmt.Errorf("dig service-test.default.svc.cluster.local = %s %q, want NOERROR A %s", r.Status, r.Answer, testbed.ClusterIP)
				}
				connMu.Lock()
				if err != nil {
					dnsErrs = append(dnsErrs, err)
				} else {
					dnsOK.Add(1)
				}
				connMu.Unlock()
			})
			select {
			case <-loops:
				return
			case <-tick.C:
			}
		}
	})

	time.Sleep(time.Second)
	started := time.Now()
	next := b.start(t, "new")
	t.Logf("new kubetun: start to ready %v", time.Since(started).Round(time.Millisecond))
	if !strings.Contains(next.Output(), "took over") {
		t.Errorf("the new kubetun did not say it took over:\n%s", next.Output())
	}
	if err := old.WaitOutput("handed over", 5*time.Second); err != nil {
		t.Errorf("the old kubetun did not say it handed over: %v", err)
	}
	time.Sleep(time.Second)
	if err := old.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if old.Exited() {
		t.Errorf("the old kubetun exited on SIGTERM with its connections open")
	}
	close(loops)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	if err := old.Wait(15 * time.Second); err != nil {
		t.Errorf("the old kubetun, its last flow ended: %v, want exit 0", err)
	}
	if !strings.Contains(old.Output(), "drained") {
		t.Errorf("the old kubetun did not say it drained:\n%s", old.Output())
	}

	cut := 0
	for i, e := range long {
		if p := e.err.Load(); p != nil {
			cut++
			t.Errorf("long-lived connection %d (%s) after %d rounds: %v", i, e.addr, e.rounds.Load(), *p)
		}
	}
	var failed int
	var longest time.Duration
	for _, c := range conns {
		if c.err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("new connection: %v", c.err)
			}
		}
		longest = max(longest, c.took)
	}
	for _, err := range dnsErrs {
		t.Errorf("DNS question: %v", err)
	}
	udpErrs.Range(func(k, v any) bool {
		t.Errorf("UDP session %v: %v", k, v)
		return true
	})
	for i, u := range sessions {
		gap := time.Duration(u.longestGap.Load())
		t.Logf("UDP session %d: %d of %d datagrams answered, longest gap %v", i, u.answered.Load(), u.sent.Load(), gap.Round(time.Millisecond))
		// Functional, with slack for a loaded machine: the session is
		// answered through the takeover, not cut.
		if u.answered.Load() < u.sent.Load()/2 || gap > 10*time.Second {
			t.Errorf("UDP session %d lost its answers: %d of %d, longest gap %v", i, u.answered.Load(), u.sent.Load(), gap)
		}
	}
	passed := regexp.MustCompile(`packets-passed=(\d+) bytes-passed=(\d+)`).FindStringSubmatch(next.Output())
	t.Logf("takeover under load: long-lived connections kept %d, cut %d; new connections %d, failed %d, longest connect %v; DNS questions answered %d, failed %d; passed to the old kubetun: %v",
		len(long)-cut, cut, len(conns), failed, longest.Round(time.Millisecond), dnsOK.Load(), len(dnsErrs), passed)

	// The new one serves on, alone.
	if got, err := seedRequest(t.Context(), b.Testbed, ns, testbed.ClusterIP, 80); err != nil {
		t.Errorf("after the old kubetun exited: %q, %v", got, err)
	}
	if err := next.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := next.Wait(15 * time.Second); err != nil {
		t.Errorf("new kubetun after SIGTERM: %v", err)
	}
	checkNoTrace(t, b.Testbed)
}

func cmpErr(connErr, err error, addr string) error {
	switch {
	case connErr != nil:
		return fmt.Errorf("%s: connect: %w", addr, connErr)
	case err != nil:
		return fmt.Errorf("%s: %w", addr, err)
	}
	return nil
}

// holdEcho opens a long-lived echo connection from ns to addr and returns
// a check that it still echoes, and its close.
func holdEcho(t *testing.T, ns, addr string) (check func(what string), closeConn func()) {
	t.Helper()
	conn, err := testbed.DialIn(ns, "tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	i := 0
	check = func(what string) {
		t.Helper()
		i++
		line := fmt.Appendf(nil, "%s %d\n", what, i)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(line))
		if _, err := conn.Write(line); err != nil {
			t.Errorf("%s: echo connection to %s: write: %v", what, addr, err)
			return
		}
		if _, err := readFull(conn, got); err != nil || !bytes.Equal(got, line) {
			t.Errorf("%s: echo connection to %s: read %q, %v; want %q", what, addr, got, err, line)
		}
	}
	return check, func() { conn.Close() }
}

// TestTakeoverFailures: what goes wrong around a takeover costs only what
// must be lost, and a takeover that cannot happen changes nothing.
func TestTakeoverFailures(t *testing.T) {
	t.Run("old_killed_mid_drain", func(t *testing.T) {
		// The old kubetun dies while it drains: its own flows are lost,
		// the new one's go on.
		b := newTakeoverBed(t)
		ns := b.seed.Client.Namespace
		old := b.start(t, "old")
		oldCheck, oldClose := holdEcho(t, ns, testbed.ClusterIP+":7")
		defer oldClose()
		next := b.start(t, "new")
		newCheck, newClose := holdEcho(t, ns, testbed.ClusterIP+":7")
		defer newClose()
		oldCheck("through the old kubetun after the takeover")
		newCheck("through the new kubetun")
		if err := old.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		old.Wait(5 * time.Second)
		if err := next.WaitOutput("the predecessor has exited", 5*time.Second); err != nil {
			t.Errorf("the new kubetun did not notice its predecessor's death: %v", err)
		}
		newCheck("through the new kubetun after the old one's kill -9")
		if got, err := seedRequest(t.Context(), b.Testbed, ns, testbed.ClusterIP, 80); err != nil {
			t.Errorf("a new connection after the old kubetun's kill -9: %q, %v", got, err)
		}
	})

	t.Run("new_killed_during_takeover", func(t *testing.T) {
		// The new kubetun gets the descriptors, then dies before it is
		// ready (its apiserver never answers): the old one serves on.
		b := newTakeoverBed(t)
		ns := b.seed.Client.Namespace
		old := b.start(t, "old")
		check, closeConn := holdEcho(t, ns, testbed.ClusterIP+":7")
		defer closeConn()
		kubeconfig := filepath.Join(b.Dir, "nowhere.kubeconfig")
		writeFile(t, kubeconfig, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\ncurrent-context: c\n")
		next, err := b.Start(b.Node, "kubetun-new", append([]string{kubetunBin, "run", "--service-cidr", testbed.ServiceCIDR,
			"--kubeconfig", kubeconfig, "--tun", testbed.TUN}, b.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("new kubetun output:\n%s", next.Output())
			}
		})
		if err := next.WaitOutput("taking over from the running kubetun", 20*time.Second); err != nil {
			t.Fatalf("the new kubetun did not start taking over: %v", err)
		}
		if err := next.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		next.Wait(5 * time.Second)
		if err := old.WaitOutput("did not take over", 5*time.Second); err != nil {
			t.Errorf("the old kubetun did not notice the failed takeover: %v", err)
		}
		check("through the old kubetun after the failed takeover")
		if got, err := seedRequest(t.Context(), b.Testbed, ns, testbed.ClusterIP, 80); err != nil {
			t.Errorf("a new connection after the failed takeover: %q, %v", got, err)
		}
		if got, err := seedRequest(t.Context(), b.Testbed, ns, b.node, takeoverNodePortHTTP); err != nil {
			t.Errorf("a new node port connection after the failed takeover: %q, %v", got, err)
		}
		// And a later takeover still works.
		b.start(t, "third")
		check("through the old kubetun after a later takeover")
	})

	t.Run("two_in_a_row", func(t *testing.T) {
		// A → B while A drains: C is refused, naming why; B serves on.
		b := newTakeoverBed(t)
		ns := b.seed.Client.Namespace
		b.start(t, "A")
		check, closeConn := holdEcho(t, ns, testbed.ClusterIP+":7")
		defer closeConn()
		b.start(t, "B")
		out, err := b.Run(t.Context(), b.Node, append([]string{kubetunBin}, append(testbed.KubetunArgs(b.path, b.args...), "--health-addr", "", "--metrics-addr", "")...)...)
		if testbed.ExitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), "still taking over") {
			t.Errorf("kubetun C while A drains = %q, %v; want exit 1, still taking over", out, err)
		}
		t.Logf("kubetun C: %v", err)
		check("through A after C was refused")
		if got, err := seedRequest(t.Context(), b.Testbed, ns, testbed.ClusterIP, 80); err != nil {
			t.Errorf("a new connection after C was refused: %q, %v", got, err)
		}
	})

	t.Run("predecessor_cannot_hand_over", func(t *testing.T) {
		// A kubetun without a handover socket (an older one, or one run
		// with --state-dir "") holds the TUN: the new one says so, and
		// nothing changes.
		b := newTakeoverBed(t)
		ns := b.seed.Client.Namespace
		b.start(t, "old", "--state-dir", "")
		out, err := b.Run(t.Context(), b.Node, append([]string{kubetunBin}, append(testbed.KubetunArgs(b.path, b.args...), "--health-addr", "", "--metrics-addr", "")...)...)
		if testbed.ExitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), "cannot hand it over") {
			t.Errorf("kubetun beside one that cannot hand over = %q, %v; want exit 1, cannot hand it over", out, err)
		}
		t.Logf("kubetun: %v", err)
		if got, err := seedRequest(t.Context(), b.Testbed, ns, testbed.ClusterIP, 80); err != nil {
			t.Errorf("after the refused start: %q, %v", got, err)
		}
	})
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
