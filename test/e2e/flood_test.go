package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/kubetun/kubetun/test/testbed"
)

// floodShare is the flooding source's share of connections being set up
// (--max-tcp-setups-per-source) in TestSYNFlood.
const floodShare = 16

// floodTotal is the flood test's --max-tcp-setups: a lone source may borrow
// up to three quarters of it past its share.
const floodTotal = 32

// TestSYNFlood: one source floods SYNs it never completes (from a raw
// socket in the client's namespace, from an address the namespace does not
// own, so that its kernel does not answer the SYN-ACKs with RSTs) while a
// second client in its own namespace makes 100 connections: each succeeds
// promptly, and the pods never hold more than the flooding source's share
// of its connections at once.
func TestSYNFlood(t *testing.T) {
	c := startCluster(t, append(slices.Clone(testbed.TestPorts), controlPort),
		"--max-tcp-setups-per-source", strconv.Itoa(floodShare), "--max-tcp-setups", strconv.Itoa(floodTotal),
		"--tcp-handshake-timeout", "2s")
	client2, err := c.AddHost("client2", 4)
	if err != nil {
		t.Fatalf("AddHost: %v", err)
	}

	// The pods behind the flooded port count the connections they hold.
	var cur, peak atomic.Int64
	for _, pod := range []*testbed.Host{c.Pod1, c.Pod2} {
		listenIn(t, pod.Namespace, ":9100", func(conn *net.TCPConn) {
			n := cur.Add(1)
			defer cur.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			io.Copy(io.Discard, conn)
		})
	}

	const floodFor = 5 * time.Second
	flooder := netip.MustParseAddr("10.0.3.99")
	floodDone := make(chan error, 1)
	var sent atomic.Int64
	go func() {
		floodDone <- testbed.InNamespace(c.Client.Namespace, func() error {
			return synFlood(flooder, netip.MustParseAddrPort(fmt.Sprintf("%s:%d", testbed.ClusterIP, controlPort.Port)), floodFor, &sent)
		})
	}()
	time.Sleep(500 * time.Millisecond) // the flood under way

	var took []time.Duration
	err = testbed.InNamespace(client2.Namespace, func() error {
		for i := range 100 {
			start := time.Now()
			conn, err := net.DialTimeout("tcp", testbed.ClusterIP+":7", 5*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d of client2: %w", i, err)
			}
			took = append(took, time.Since(start))
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Write([]byte("x"))
			if err == nil {
				_, err = io.ReadFull(conn, make([]byte, 1))
			}
			conn.Close()
			if err != nil {
				return fmt.Errorf("connection %d of client2: echo: %w", i, err)
			}
		}
		return nil
	})
	if ferr := <-floodDone; ferr != nil {
		t.Fatalf("flood: %v", ferr)
	}
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(took)
	p99, worst := took[98], took[99]
	t.Logf("flood: %d SYNs in %v from %s; client2: 100 connections, connect p50 %v p99 %v max %v; pods held at most %d flood connections at once",
		sent.Load(), floodFor, flooder, took[49], p99, worst, peak.Load())
	// Generous: a dropped SYN costs a client one second before it retries.
	if worst > 3*time.Second {
		t.Errorf("client2's slowest connect took %v during the flood, want well under 3s", worst)
	}
	// kubetun frees a slot as it closes the pod connection; the pod
	// counts the connection until its goroutine has read the FIN, by which
	// time the next SYN's connection may have arrived: a slack of 2.
	if p, most := peak.Load(), int64(max(floodShare, floodTotal*3/4)); p > most+2 {
		t.Errorf("pods held %d of the flooding source's connections at once, want at most %d (its share %d, or what is lent to a lone source: three quarters of %d)",
			p, most, floodShare, floodTotal)
	}
	if p := peak.Load(); p == 0 {
		t.Errorf("no flood connection reached a pod: the flood proves nothing")
	}
	m := scrape(t, c)
	if limited := metric(m, `kubetun_tcp_connections_total{result="limited"}`); limited == 0 {
		t.Errorf("kubetun limited no SYN of the flood:\n%s", m)
	}
}

// synFlood sends SYNs from src (any port) to dst through a raw socket of
// the calling thread's namespace, one every 500µs, for d.
func synFlood(src netip.Addr, dst netip.AddrPort, d time.Duration, sent *atomic.Int64) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer syscall.Close(fd)
	to := &syscall.SockaddrInet4{Addr: dst.Addr().As4()}
	deadline := time.Now().Add(d)
	for port := uint16(1024); time.Now().Before(deadline); port++ {
		if port == 0 {
			port = 1024
		}
		if err := syscall.Sendto(fd, synPacket(netip.AddrPortFrom(src, port), dst), 0, to); err != nil {
			return fmt.Errorf("sendto: %w", err)
		}
		sent.Add(1)
		time.Sleep(500 * time.Microsecond)
	}
	return nil
}

// synPacket is an IPv4 TCP SYN from src to dst with valid checksums.
func synPacket(src, dst netip.AddrPort) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(b)
	srcA, dstA := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: srcA, DstAddr: dstA})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(ip.Payload())
	tcp.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: uint32(src.Port()) << 16,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, srcA, dstA, uint16(len(tcp)))
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	return b
}

// scrape returns kubetun's /metrics, fetched in the node namespace.
func scrape(t *testing.T, c *cluster) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := c.Run(ctx, c.Node, "curl", "-sS", "http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatalf("scraping kubetun's metrics: %v", err)
	}
	return out
}

// metric returns the value of the sample name (with its labels, as
// exposed) in m, or 0.
func metric(m, name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
	s := re.FindStringSubmatch(m)
	if s == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(s[1], 64)
	return v
}

// TestManyIdleConnections holds 10 000 idle connections through kubetun:
// each costs at most maxIdleRSS of kubetun's resident memory; then closes
// them: kubetun's goroutines and heap return near where they were. The
// memory each connection held is logged.
func TestManyIdleConnections(t *testing.T) {
	c := startCluster(t, testbed.TestPorts, "--profiling")
	const n = 10000
	// An idle connection measures about 20 KiB of RSS (README,
	// Performance): gVisor's endpoint, a goroutine stack, and the Go heap's
	// room to grow between collections. The bound is more than twice
	// that, for another machine's noise, and still catches a copy buffer
	// held while idle (32 KiB towards the pod, 64 KiB towards the client).
	const maxIdleRSS = 48 << 10
	// heap collects garbage first (pprof's gc=1), so that the heap in use
	// is what is live.
	heap := func() (goroutines, inuse, rss float64) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if out, err := c.Run(ctx, c.Node, "curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:10249/debug/pprof/heap?gc=1"); err != nil {
			t.Fatalf("forcing a GC through pprof: %v: %s", err, out)
		}
		m := scrape(t, c)
		return metric(m, "go_goroutines"), metric(m, "go_memstats_heap_inuse_bytes"), metric(m, "process_resident_memory_bytes")
	}
	g0, h0, r0 := heap()

	var conns []net.Conn
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	err := testbed.InNamespace(c.Client.Namespace, func() error {
		for i := range n {
			conn, err := net.DialTimeout("tcp", testbed.ClusterIP+":7", 5*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns = append(conns, conn)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %d connections: %v", len(conns), err)
	}
	waitMetric(t, c, `kubetun_active_flows{protocol="tcp"}`, n)
	g1, h1, r1 := heap()
	t.Logf("%d idle connections: goroutines %.0f -> %.0f (%.1f each); heap in use %.1f -> %.1f MiB (%.1f KiB each); RSS %.1f -> %.1f MiB (%.1f KiB each)",
		n, g0, g1, (g1-g0)/n, h0/(1<<20), h1/(1<<20), (h1-h0)/n/1024, r0/(1<<20), r1/(1<<20), (r1-r0)/n/1024)
	if perConn := (r1 - r0) / n; perConn > maxIdleRSS {
		t.Errorf("kubetun's RSS grew %.1f KiB per idle connection (%.1f -> %.1f MiB with %d open), want at most %d KiB: "+
			"something is held per connection while no byte moves (see the heap and goroutines above; go tool pprof the heap with --profiling)",
			perConn/1024, r0/(1<<20), r1/(1<<20), n, maxIdleRSS>>10)
	}

	for _, conn := range conns {
		conn.Close()
	}
	conns = nil
	waitMetric(t, c, `kubetun_active_flows{protocol="tcp"}`, 0)
	// The goroutines end at once; gVisor frees an endpoint left in
	// FIN-WAIT-2 a minute later (its TCPLingerTimeout, as Linux's
	// tcp_fin_timeout), hence the wait. Go's maps keep the size they grew
	// to, hence the slack.
	var g2, h2, r2 float64
	closed := time.Now()
	for time.Since(closed) < 120*time.Second {
		if g2, h2, r2 = heap(); g2 <= g0+10 && h2 <= h0+32<<20 {
			break
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("%v after closing: goroutines %.0f, heap in use %.1f MiB, RSS %.1f MiB",
		time.Since(closed).Round(time.Second), g2, h2/(1<<20), r2/(1<<20))
	if g2 > g0+10 {
		t.Errorf("goroutines %.0f after every connection closed, want near the %.0f before", g2, g0)
	}
	if h2 > h0+32<<20 {
		t.Errorf("heap in use %.1f MiB after every connection closed, want near the %.1f MiB before", h2/(1<<20), h0/(1<<20))
	}
}

// waitMetric waits up to 60 s for kubetun's metric name to be want.
func waitMetric(t *testing.T, c *cluster, name string, want float64) {
	t.Helper()
	var got float64
	for range 120 {
		if got = metric(scrape(t, c), name); got == want {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("%s = %v after 60s, want %v", name, got, want)
}
