package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestPersistRestart kills kubetun --persist with SIGKILL while a client
// opens a new connection every 20 ms, and starts it again: the TUN and its
// route stay through the gap, no packet for the service CIDR leaves the node
// by another link (the node namespace has a default route out of v-client
// for them to take), and every connection of the loop is served, those of
// the gap after a SYN retransmission. (A connection whose handshake
// completed before the kill is an open connection through the old kubetun:
// its exchange may be cut, which is counted and logged, not failed.) Then
// `kubetun cleanup` leaves nothing, and a datagram sent then, which does
// leave by v-client, shows that the capture would have seen a leak.
//
// With ignore_routes_with_linkdown=1 the kernel skips the TUN's route while
// no kubetun reads the device; kubetun's blackhole fallback route must then
// stop the packets before the default route takes them.
func TestPersistRestart(t *testing.T) {
	for _, ignore := range []string{"0", "1"} {
		t.Run("ignore_routes_with_linkdown="+ignore, func(t *testing.T) {
			testPersistRestart(t, ignore)
		})
	}
}

func testPersistRestart(t *testing.T, ignoreLinkdown string) {
	const (
		conns       = 300                   // one every interval: about 6 s
		interval    = 20 * time.Millisecond // between connection attempts
		connTimeout = 10 * time.Second      // a SYN and its retransmissions at 1 s and 3 s
		killAfter   = time.Second           // into the loop
		gap         = 1500 * time.Millisecond
	)
	c := startCluster(t, testbed.TestPorts, "--persist")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// A route for the service CIDR to fall through to: out of the node by
	// v-client, where the capture would see it.
	for _, argv := range [][]string{
		{"ip", "route", "add", "default", "via", c.Client.IP.String(), "dev", c.Client.NodeLink},
		{"sh", "-c", "echo " + ignoreLinkdown + " > /proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown"},
	} {
		if out, err := c.Run(ctx, c.Node, argv...); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, out)
		}
	}
	tunIndex := linkIndex(t, c.Testbed, testbed.TUN)
	capture := startCapture(t, c.Node, netip.MustParsePrefix(testbed.ServiceCIDR), tunIndex)

	type result struct {
		took      time.Duration // to connect
		connected time.Time     // when the handshake completed
		connErr   error         // connecting
		err       error         // the request and the answer
	}
	results := make([]result, conns)
	var wg sync.WaitGroup
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := &results[i]
				r.connected, r.took, r.connErr, r.err = servedRequest(c.Client.Namespace, testbed.ClusterIP+":80", connTimeout)
			}()
			<-tick.C
		}
	}()

	time.Sleep(killAfter)
	if err := c.Kubetun.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Kubetun.Wait(5 * time.Second)
	killed := time.Now()
	for _, argv := range [][]string{{"ip", "-d", "link", "show", testbed.TUN}, {"ip", "route", "show", "table", "main"}} {
		out, err := c.Run(ctx, c.Node, argv...)
		if err != nil {
			t.Fatalf("after kill -9, %s: %v", strings.Join(argv, " "), err)
		}
		t.Logf("after kill -9, %s:\n%s", strings.Join(argv, " "), out)
		if argv[1] == "route" && !strings.Contains(out, testbed.ServiceCIDR+" dev "+testbed.TUN) {
			t.Errorf("after kill -9 the route %s dev %s is gone:\n%s", testbed.ServiceCIDR, testbed.TUN, out)
		}
	}
	time.Sleep(gap)
	// Whatever completed its handshake before this was answered by the killed
	// kubetun, also in the moment between the signal and its death; the new
	// one reads no packet until it has started.
	restarting := time.Now()
	p, err := c.StartKubetun(c.ManifestPath, "--persist")
	t.Cleanup(func() {
		if t.Failed() && p != nil {
			t.Logf("second kubetun output:\n%s", p.Output())
		}
	})
	if err != nil {
		t.Fatalf("restarting kubetun --persist: %v", err)
	}
	t.Logf("kubetun down for %v (kill -9 to ready)", time.Since(killed).Round(time.Millisecond))
	if !strings.Contains(p.Output(), "attached to the existing TUN device") {
		t.Errorf("the second kubetun did not say it attached to the existing TUN:\n%s", p.Output())
	}
	if got := linkIndex(t, c.Testbed, testbed.TUN); got != tunIndex {
		t.Errorf("TUN index after restart = %d, want %d (the same device)", got, tunIndex)
	}
	<-loopDone
	wg.Wait()
	leaks, seen := capture.snapshot()

	var failed, cut, slow int
	var longest time.Duration
	for i, r := range results {
		switch {
		case r.connErr != nil:
			failed++
			t.Errorf("connection %d of %d: %v", i+1, conns, r.connErr)
		case r.err != nil && r.connected.Before(restarting):
			cut++
			t.Logf("connection %d of %d, open through the killed kubetun, was cut: %v", i+1, conns, r.err)
		case r.err != nil:
			failed++
			t.Errorf("connection %d of %d: %v", i+1, conns, r.err)
		}
		if r.took > longest {
			longest = r.took
		}
		if r.took > 900*time.Millisecond {
			slow++
		}
	}
	t.Logf("%d connections, one every %v, kill -9 at %v: %d failed, %d open ones cut by the kill, %d slower than 900 ms to connect (a SYN retransmission), longest connect %v",
		conns, interval, killAfter, failed, cut, slow, longest.Round(time.Millisecond))
	t.Logf("capture in the node namespace: %d packets for %s received from the client, %d sent out of a link other than %s",
		seen, testbed.ServiceCIDR, len(leaks), testbed.TUN)
	for _, l := range leaks {
		t.Errorf("packet for the service CIDR left the node: %s", l)
	}
	if seen == 0 {
		t.Errorf("the capture saw no packet for %s at all: it does not work", testbed.ServiceCIDR)
	}

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(10 * time.Second); err != nil {
		t.Fatalf("kubetun --persist after SIGTERM: %v, want exit 0", err)
	}
	out, err := c.Run(ctx, c.Node, "ip", "route", "show", testbed.ServiceCIDR)
	if err != nil || !strings.Contains(out, "dev "+testbed.TUN) {
		t.Errorf("after SIGTERM of kubetun --persist, ip route show %s = %q, %v; want the route into %s", testbed.ServiceCIDR, out, err, testbed.TUN)
	}
	for _, want := range []string{"removed TUN " + testbed.TUN, "nothing to clean"} {
		out, err := c.Run(ctx, c.Node, kubetunBin, "cleanup", "--tun", testbed.TUN)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("kubetun cleanup = %q, %v; want %q", out, err, want)
		}
		t.Logf("kubetun cleanup:\n%s", out)
	}
	checkNoTrace(t, c.Testbed)

	// The capture's control: with kubetun's routes gone, a datagram from
	// the node to the ClusterIP leaves by the default route, and the
	// capture must see it.
	err = testbed.InNamespace(c.Node, func() error {
		conn, err := net.Dial("udp", testbed.ClusterIP+":9")
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("control"))
		return err
	})
	if err != nil {
		t.Fatalf("control datagram: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if l, _ := capture.snapshot(); len(l) > 0 {
			t.Logf("control: the capture saw %s", l[0])
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the capture missed the control datagram that left by v-client: its count of leaks cannot be trusted")
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// servedRequest connects from ns to addr, sends the seed's request and
// checks that a pod answers. It returns when the connect completed, how
// long it took, and the error of the connect or else of the exchange.
func servedRequest(ns, addr string, timeout time.Duration) (connected time.Time, took time.Duration, connErr, err error) {
	start := time.Now()
	conn, connErr := testbed.DialIn(ns, "tcp", addr, timeout)
	connected = time.Now()
	took = connected.Sub(start)
	if connErr != nil {
		return connected, took, connErr, nil
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		return connected, took, nil, err
	}
	conn.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(conn)
	if err != nil {
		return connected, took, nil, fmt.Errorf("reading the answer after %d bytes: %w", len(b), err)
	}
	if !helloRE.Match(b) {
		return connected, took, nil, fmt.Errorf("answer is not podserver's: %q", b)
	}
	return connected, took, nil, nil
}

// linkIndex returns the interface index of link in the node namespace.
func linkIndex(t *testing.T, tb *testbed.Testbed, link string) int {
	t.Helper()
	out, err := tb.Run(t.Context(), tb.Node, "cat", "/sys/class/net/"+link+"/ifindex")
	if err != nil {
		t.Fatalf("ifindex of %s: %v", link, err)
	}
	var i int
	if _, err := fmt.Sscan(out, &i); err != nil {
		t.Fatalf("ifindex of %s: %q: %v", link, out, err)
	}
	return i
}

// capture is a packet socket in a namespace that watches every link for
// IPv4 packets to a prefix.
type capture struct {
	fd   int
	done atomic.Bool
	wg   sync.WaitGroup

	mu     sync.Mutex // guards leaks and seenIn
	leaks  []string   // outgoing on a link other than the TUN
	seenIn int        // received on any link (the client's SYNs)
}

// startCapture opens an AF_PACKET socket in ns (SOCK_DGRAM: the IP packet
// without a link header, the link and direction in the address) and
// records packets to prefix.
func startCapture(t *testing.T, ns string, prefix netip.Prefix, tunIndex int) *capture {
	t.Helper()
	c := &capture{fd: -1}
	err := testbed.InNamespace(ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("socket(AF_PACKET): %w", err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		t.Fatalf("SO_RCVTIMEO: %v", err)
	}
	t.Cleanup(func() { c.stop() })
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 65536)
		for !c.done.Load() {
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Protocol != htons(unix.ETH_P_IP) || n < 20 {
				continue
			}
			dst := netip.AddrFrom4([4]byte(buf[16:20]))
			if !prefix.Contains(dst) {
				continue
			}
			c.mu.Lock()
			switch {
			case ll.Pkttype == unix.PACKET_OUTGOING && ll.Ifindex != tunIndex:
				src := netip.AddrFrom4([4]byte(buf[12:16]))
				c.leaks = append(c.leaks, fmt.Sprintf("%s → %s proto %d out of ifindex %d", src, dst, buf[9], ll.Ifindex))
			case ll.Pkttype != unix.PACKET_OUTGOING:
				c.seenIn++
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// snapshot returns what the capture recorded so far.
func (c *capture) snapshot() (leaks []string, seenIn int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.leaks), c.seenIn
}

// stop ends the capture.
func (c *capture) stop() {
	if !c.done.Swap(true) {
		c.wg.Wait()
		unix.Close(c.fd)
	}
}

func htons(v uint16) uint16 { return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)) }

// TestPersistThenPlain stops kubetun --persist, which leaves the TUN and its
// routes, and runs kubetun without --persist: it attaches to them, serves,
// and removes everything when it stops, as without --persist it always does.
func TestPersistThenPlain(t *testing.T) {
	c := startCluster(t, testbed.TestPorts, "--persist")
	if err := c.Kubetun.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Kubetun.Wait(10 * time.Second); err != nil {
		t.Fatalf("kubetun --persist after SIGTERM: %v, want exit 0", err)
	}
	out, err := c.Run(t.Context(), c.Node, "ip", "route", "show", "table", "main")
	if err != nil || !strings.Contains(out, testbed.ServiceCIDR+" dev "+testbed.TUN) || !strings.Contains(out, "blackhole "+testbed.ServiceCIDR) {
		t.Fatalf("after kubetun --persist stopped, ip route = %q, %v; want the route into %s and its blackhole fallback", out, err, testbed.TUN)
	}
	p, err := c.StartKubetun(c.ManifestPath)
	if err != nil {
		t.Fatalf("kubetun without --persist: %v", err)
	}
	if got, err := seedRequest(t.Context(), c.Testbed, c.Client.Namespace, testbed.ClusterIP, 80); err != nil {
		t.Fatalf("request through the re-attached TUN = %q, %v", got, err)
	}
	// kubetun cleanup leaves a TUN a kubetun is attached to alone.
	out, err = c.Run(t.Context(), c.Node, kubetunBin, "cleanup", "--tun", testbed.TUN)
	if testbed.ExitCode(err) != 1 || !strings.Contains(fmt.Sprint(err), "in use") {
		t.Errorf("kubetun cleanup while kubetun runs = %q, %v; want exit 1, the TUN in use", out, err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(10 * time.Second); err != nil {
		t.Fatalf("kubetun after SIGTERM: %v, want exit 0", err)
	}
	checkNoTrace(t, c.Testbed)
}
