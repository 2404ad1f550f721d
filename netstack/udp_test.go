package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	corev1 "k8s.io/api/core/v1"
)

// udpService is a Service with one UDP port, 80 → 8080, on ip.
func udpService(ip netip.Addr, eps ...netip.AddrPort) testService {
	ts := testService{name: "udp-test", ip: ip, ports: []testPort{{corev1.ProtocolUDP, 80, 8080}}}
	for _, ep := range eps {
		ts.eps = append(ts.eps, ep.Addr())
	}
	return ts
}

// udpClient opens an unconnected UDP socket on the client stack at src.
func udpClient(t testing.TB, cs *stack.Stack, src netip.AddrPort) *gonet.UDPConn {
	t.Helper()
	la := fullAddr(src)
	c, err := gonet.DialUDP(cs, &la, nil, netProto(src.Addr()))
	if err != nil {
		t.Fatalf("DialUDP(%v): %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends payload to dst and returns the answer and its sender, or
// fails after 5 s.
func exchange(t testing.TB, c *gonet.UDPConn, dst netip.AddrPort, payload string) (string, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteTo([]byte(payload), net.UDPAddrFromAddrPort(dst)); err != nil {
		t.Fatalf("WriteTo(%v): %v", dst, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, maxDatagram)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("reading the answer to %q sent to %v: %v", payload, dst, err)
	}
	return string(buf[:n]), from.(*net.UDPAddr).AddrPort()
}

// udpPacket builds an IPv4 or IPv6 UDP datagram, by src's family, with valid
// checksums.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	b, p := ipPacket(src.Addr(), dst.Addr(), header.UDPProtocolNumber, header.UDPMinimumSize+len(payload))
	u := header.UDP(p)
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gvAddr(src.Addr()), gvAddr(dst.Addr()), uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, xsum)))
	return b
}

// parseIP splits an IPv4 or IPv6 packet into its addresses, transport
// protocol and payload; IPv6 extension headers are not expected.
func parseIP(t testing.TB, b []byte) (src, dst netip.Addr, proto uint8, payload []byte) {
	t.Helper()
	switch header.IPVersion(b) {
	case header.IPv4Version:
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || !ip.IsChecksumValid() {
			t.Fatalf("invalid IPv4 packet from the stack: % x", b)
		}
		return netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4()), ip.Protocol(), ip.Payload()
	case header.IPv6Version:
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) {
			t.Fatalf("invalid IPv6 packet from the stack: % x", b)
		}
		return netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16()), ip.NextHeader(), ip.Payload()
	}
	t.Fatalf("stack sent a packet of IP version %d: % x", header.IPVersion(b), b)
	return
}

// readUDP returns the next packet from the stack, which must be a UDP
// datagram with a valid checksum.
func readUDP(t testing.TB, link *channel.Endpoint) (src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	s, d, proto, p := parseIP(t, readPacket(t, link))
	if proto != uint8(header.UDPProtocolNumber) {
		t.Fatalf("stack sent protocol %d from %v to %v, want UDP", proto, s, d)
	}
	u := header.UDP(p)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gvAddr(s), gvAddr(d), uint16(len(u)))
	if !u.IsChecksumValid(gvAddr(s), gvAddr(d), checksum.Checksum(u.Payload(), 0)) {
		t.Fatalf("UDP checksum of the datagram from %v to %v is wrong (pseudo-header sum %#x)", s, d, xsum)
	}
	return netip.AddrPortFrom(s, u.SourcePort()), netip.AddrPortFrom(d, u.DestinationPort()), u.Payload()
}

// received returns what pod got next, or fails after 5 s.
func received(t testing.TB, pod *udpPod) datagram {
	t.Helper()
	select {
	case dg := <-pod.got:
		return dg
	case <-time.After(5 * time.Second):
		t.Fatalf("pod %s got nothing within 5s", pod.name)
	}
	return datagram{}
}

// nothingReceived fails if pod gets a datagram within d.
func nothingReceived(t testing.TB, pod *udpPod, d time.Duration) {
	t.Helper()
	select {
	case dg := <-pod.got:
		t.Fatalf("pod %s got %q, want nothing", pod.name, dg.data)
	case <-time.After(d):
	}
}

// sessions returns the Stack's live UDP sessions.
func sessions(ns *Stack) []*udpSession {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	var out []*udpSession
	for sess := range ns.sessions {
		out = append(out, sess)
	}
	return out
}

// waitSessions waits until the Stack has n sessions and no more goroutines
// of sessions than n sessions use, or fails after 5 s.
func waitSessions(t testing.TB, ns *Stack, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, runs := len(sessions(ns)), goroutines("netstack.(*udpSession).run(")
		if got == n && runs == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, %d session goroutines after 5s; want %d", got, runs, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutines counts the goroutines whose stack mentions fn.
func goroutines(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// TestUDPForward: a client's datagrams reach the pod and the pod's answers
// come back from the ClusterIP:port the client sent to, over one session
// and one dial.
func TestUDPForward(t *testing.T) {
	for _, tt := range families {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			pod := startUDPPod(t, d, tt.pod, "pod1")
			ns, link := newTestStack(t, buildTable(t, udpService(tt.clusterIP, tt.pod)), d)
			c := udpClient(t, clientStack(t, link), tt.client)
			svc := netip.AddrPortFrom(tt.clusterIP, 80)

			var first string
			for i, msg := range []string{"hello", "again", "and again"} {
				got, from := exchange(t, c, svc, msg)
				if want := "pod1 " + msg; got != want || from != svc {
					t.Fatalf("answer to %q = %q from %v, want %q from %v", msg, got, from, want, svc)
				}
				dg := received(t, pod)
				if dg.data != msg {
					t.Fatalf("pod got %q, want %q", dg.data, msg)
				}
				if i == 0 {
					first = dg.from
				} else if dg.from != first {
					t.Fatalf("datagram %d reached the pod from %s, the first from %s: want one session", i, dg.from, first)
				}
			}
			if calls := d.calls(); len(calls) != 1 || calls[0] != tt.pod.String() {
				t.Errorf("dials = %v, want one to %v", calls, tt.pod)
			}
			if n := len(sessions(ns)); n != 1 {
				t.Errorf("%d sessions, want 1", n)
			}
		})
	}
}

// TestUDPBatch sends datagrams faster than the session forwards them, large
// ones among small ones, so that the session reads several at once (and a
// batch ends where a maximal datagram might no longer fit): each reaches the
// pod whole, once, and in order.
func TestUDPBatch(t *testing.T) {
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	_, link := newTestStack(t, buildTable(t, udpService(clusterIP, pod1)), d)
	svc := netip.AddrPortFrom(clusterIP, 80)

	var sent []string
	for i := range 3 {
		big := strings.Repeat(string(rune('a'+i)), 40000)
		sent = append(sent, big)
		for j := range 10 {
			sent = append(sent, fmt.Sprintf("small %d.%d", i, j))
		}
	}
	for _, msg := range sent {
		inject(link, udpPacket(client, svc, []byte(msg)))
	}
	for i, want := range sent {
		got := received(t, pod)
		if got.data != want {
			t.Fatalf("datagram %d at the pod: %d bytes starting %.12q, want %d bytes starting %.12q", i, len(got.data), got.data, len(want), want)
		}
	}
	nothingReceived(t, pod, 100*time.Millisecond)
}

// TestUDPAnswerFromClusterIP checks the answer on the wire: a UDP datagram
// from ClusterIP:port to the client's address and port, valid checksums.
func TestUDPAnswerFromClusterIP(t *testing.T) {
	d := new(fakeDialer)
	startUDPPod(t, d, pod1, "pod1")
	_, link := newTestStack(t, buildTable(t, udpService(clusterIP, pod1)), d)
	svc := netip.AddrPortFrom(clusterIP, 80)

	inject(link, udpPacket(client, svc, []byte("hi")))
	src, dst, payload := readUDP(t, link)
	if src != svc || dst != client || string(payload) != "pod1 hi" {
		t.Fatalf("answer %v → %v %q, want %v → %v %q", src, dst, payload, svc, client, "pod1 hi")
	}
}

// TestUDPSamePortTCPAndUDP: one Service port number on both protocols, each
// forwarded to its own pod socket (Kubernetes conformance: "should serve
// endpoints on same port and different protocols").
func TestUDPSamePortTCPAndUDP(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	startUDPPod(t, d, pod1, "udp-pod1")
	svc := testService{name: "both", ip: clusterIP, eps: []netip.Addr{pod1.Addr()}, ports: []testPort{
		{corev1.ProtocolTCP, 80, 8080},
		{corev1.ProtocolUDP, 80, 8080},
	}}
	_, link := newTestStack(t, buildTable(t, svc), d)
	cs := clientStack(t, link)
	dst := netip.AddrPortFrom(clusterIP, 80)

	tc, err := dialService(t, cs, dst)
	if err != nil {
		t.Fatalf("TCP dial %v: %v", dst, err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	tc.Write([]byte("tcp"))
	tc.CloseWrite()
	buf := make([]byte, 16)
	n, err := tc.Read(buf)
	if err != nil || string(buf[:n]) != "tcp" {
		t.Fatalf("TCP echo = %q, %v; want %q", buf[:n], err, "tcp")
	}

	got, from := exchange(t, udpClient(t, cs, client), dst, "udp")
	if want := "udp-pod1 udp"; got != want || from != dst {
		t.Fatalf("UDP answer = %q from %v, want %q from %v", got, from, want, dst)
	}
}

// TestUDPPortUnreachable: a datagram kubetun cannot forward gets ICMP port
// unreachable quoting it, as from a host with no socket on that port.
func TestUDPPortUnreachable(t *testing.T) {
	tcpOnly := testService{name: "tcp-only", ip: netip.MustParseAddr("10.3.241.160"), eps: []netip.Addr{pod1.Addr()},
		ports: []testPort{{corev1.ProtocolTCP, 80, 8080}}}
	tests := []struct {
		name   string
		svc    testService
		client netip.AddrPort
		dst    netip.AddrPort
	}{
		{"unknown port", udpService(clusterIP, pod1), client, netip.AddrPortFrom(clusterIP, 81)},
		{"unknown IP", udpService(clusterIP, pod1), client, netip.MustParseAddrPort("10.3.241.153:80")},
		{"TCP-only port", tcpOnly, client, netip.AddrPortFrom(tcpOnly.ip, 80)},
		{"no endpoint", udpService(clusterIP), client, netip.AddrPortFrom(clusterIP, 80)},
		{"no ready endpoint", func() testService {
			s := udpService(clusterIP, pod1)
			s.notReady = []netip.Addr{pod1.Addr()}
			return s
		}(), client, netip.AddrPortFrom(clusterIP, 80)},
		{"IPv6 unknown port", udpService(clusterIP6, pod1v6), client6, netip.AddrPortFrom(clusterIP6, 81)},
		{"IPv6 no endpoint", udpService(clusterIP6), client6, netip.AddrPortFrom(clusterIP6, 80)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			startUDPPod(t, d, pod1, "pod1")
			startUDPPod(t, d, pod1v6, "pod1v6")
			_, link := newTestStack(t, buildTable(t, tt.svc), d)
			sent := udpPacket(tt.client, tt.dst, []byte("anyone?"))
			inject(link, sent)

			src, dst, proto, p := parseIP(t, readPacket(t, link))
			if src != tt.dst.Addr() || dst != tt.client.Addr() {
				t.Errorf("ICMP error from %v to %v, want from %v to %v", src, dst, tt.dst.Addr(), tt.client.Addr())
			}
			var quoted []byte
			if tt.client.Addr().Is4() {
				icmp := header.ICMPv4(p)
				if proto != uint8(header.ICMPv4ProtocolNumber) || len(icmp) < header.ICMPv4MinimumSize ||
					icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4PortUnreachable {
					t.Fatalf("stack sent protocol %d % x, want ICMP port unreachable", proto, p)
				}
				if checksum.Checksum(icmp, 0) != 0xffff {
					t.Errorf("ICMP checksum is wrong: % x", icmp)
				}
				quoted = icmp.Payload()
			} else {
				icmp := header.ICMPv6(p)
				if proto != uint8(header.ICMPv6ProtocolNumber) || len(icmp) < header.ICMPv6MinimumSize ||
					icmp.Type() != header.ICMPv6DstUnreachable || icmp.Code() != header.ICMPv6PortUnreachable {
					t.Fatalf("stack sent protocol %d % x, want ICMPv6 port unreachable", proto, p)
				}
				quoted = icmp[header.ICMPv6DstUnreachableMinimumSize:]
			}
			if string(quoted) != string(sent) {
				t.Errorf("ICMP error quotes % x, want the datagram sent % x", quoted, sent)
			}
			if calls := d.calls(); len(calls) != 0 {
				t.Errorf("dials = %v, want none", calls)
			}
		})
	}
}

// TestUDPConnectedSocketRefused: a client's connected socket sees the ICMP
// error as a refused connection, as it would from any host.
func TestUDPConnectedSocketRefused(t *testing.T) {
	_, link := newTestStack(t, buildTable(t, udpService(clusterIP)), new(fakeDialer))
	cs := clientStack(t, link)
	la, ra := fullAddr(client), fullAddr(netip.AddrPortFrom(clusterIP, 80))
	c, err := gonet.DialUDP(cs, &la, &ra, netProto(client.Addr()))
	if err != nil {
		t.Fatalf("DialUDP: %v", err)
	}
	defer c.Close()
	c.Write([]byte("anyone?"))
	// gonet's Read sleeps until data arrives, not on a socket error (it
	// waits for EventIn; the ICMP error raises EventErr), so poll.
	for range 50 {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = c.Read(make([]byte, 16))
		if !isTimeout(err) {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Read = %v, want connection refused", err)
	}
}

// TestUDPReroute: when the session's endpoint stops being usable, the next
// datagram from the same client port goes to another endpoint, over the
// same session; an endpoint that stays usable keeps the session.
func TestUDPReroute(t *testing.T) {
	for _, tt := range []struct {
		name string
		next testService // replaces the Service with pod1 only
	}{
		{"endpoint removed", udpService(clusterIP, pod2)},
		{"endpoint not ready", func() testService {
			s := udpService(clusterIP, pod1, pod2)
			s.notReady = []netip.Addr{pod1.Addr()}
			return s
		}()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			startUDPPod(t, d, pod1, "pod1")
			startUDPPod(t, d, pod2, "pod2")
			tab := buildTable(t, udpService(clusterIP, pod1))
			ns, link := newTestStack(t, tab, d)
			c := udpClient(t, clientStack(t, link), client)
			svc := netip.AddrPortFrom(clusterIP, 80)

			if got, _ := exchange(t, c, svc, "a"); got != "pod1 a" {
				t.Fatalf("first answer = %q, want %q", got, "pod1 a")
			}
			// pod2 joins: the session stays with pod1, though round-robin
			// would send a new session to pod2.
			tab.Store(snapshotOf(t, udpService(clusterIP, pod1, pod2)))
			for _, msg := range []string{"b", "c", "d"} {
				if got, _ := exchange(t, c, svc, msg); got != "pod1 "+msg {
					t.Fatalf("answer with pod1 still usable = %q, want %q", got, "pod1 "+msg)
				}
			}
			tab.Store(snapshotOf(t, tt.next))
			if got, from := exchange(t, c, svc, "e"); got != "pod2 e" || from != svc {
				t.Fatalf("answer after pod1 left = %q from %v, want %q from %v", got, from, "pod2 e", svc)
			}
			if n := len(sessions(ns)); n != 1 {
				t.Errorf("%d sessions, want the one moved", n)
			}
			// The copier of pod1's socket has ended.
			for deadline := time.Now().Add(5 * time.Second); goroutines("netstack.(*udpSession).copyReplies(") != 1; {
				if time.Now().After(deadline) {
					t.Fatalf("%d reply copiers after the move, want 1", goroutines("netstack.(*udpSession).copyReplies("))
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestUDPServiceDeleted: a session ends when its Service leaves the table,
// even with no datagram to notice it; the next datagram is refused.
func TestUDPServiceDeleted(t *testing.T) {
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	tab := buildTable(t, udpService(clusterIP, pod1))
	ns, link := newTestStackTimers(t, tab, d, &udpTimers{idle: time.Hour, dnsIdle: time.Hour, tick: 20 * time.Millisecond})
	svc := netip.AddrPortFrom(clusterIP, 80)

	inject(link, udpPacket(client, svc, []byte("a")))
	received(t, pod)
	readUDP(t, link)
	waitSessions(t, ns, 1)

	tab.Store(snapshotOf(t))
	waitSessions(t, ns, 0)

	inject(link, udpPacket(client, svc, []byte("b")))
	_, _, proto, p := parseIP(t, readPacket(t, link))
	if icmp := header.ICMPv4(p); proto != uint8(header.ICMPv4ProtocolNumber) || icmp.Type() != header.ICMPv4DstUnreachable {
		t.Fatalf("after the Service was deleted, stack sent protocol %d % x; want ICMP port unreachable", proto, p)
	}
	nothingReceived(t, pod, 50*time.Millisecond)
}

// TestUDPServiceDeletedDatagram: a datagram for a session whose Service is
// gone ends the session at once and is not forwarded.
func TestUDPServiceDeletedDatagram(t *testing.T) {
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	tab := buildTable(t, udpService(clusterIP, pod1))
	ns, link := newTestStack(t, tab, d) // the tick is seconds: the datagram, not the tick, ends the session
	svc := netip.AddrPortFrom(clusterIP, 80)

	inject(link, udpPacket(client, svc, []byte("a")))
	received(t, pod)
	readUDP(t, link)

	tab.Store(snapshotOf(t))
	inject(link, udpPacket(client, svc, []byte("b")))
	waitSessions(t, ns, 0)
	nothingReceived(t, pod, 50*time.Millisecond)
}

// TestUDPEndStaleSessions: after a table update, EndStaleSessions ends at
// once the sessions of a deleted Service and of one left without a usable
// endpoint (the tick is an hour: nothing else would), and the client's next
// datagram to each is refused with ICMP port unreachable, not lost. A
// session whose Service still serves stays.
func TestUDPEndStaleSessions(t *testing.T) {
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	deleted, emptied, kept := clusterIP, netip.MustParseAddr("10.3.241.153"), netip.MustParseAddr("10.3.241.154")
	svc := func(name string, ip netip.Addr, eps ...netip.AddrPort) testService {
		ts := udpService(ip, eps...)
		ts.name = name
		return ts
	}
	tab := buildTable(t, svc("deleted", deleted, pod1), svc("emptied", emptied, pod1), svc("kept", kept, pod1))
	ns, link := newTestStackTimers(t, tab, d, &udpTimers{idle: time.Hour, dnsIdle: time.Hour, tick: time.Hour})
	for _, ip := range []netip.Addr{deleted, emptied, kept} {
		inject(link, udpPacket(client, netip.AddrPortFrom(ip, 80), []byte("a")))
		received(t, pod)
		readUDP(t, link)
	}
	waitSessions(t, ns, 3)

	tab.Store(snapshotOf(t, svc("emptied", emptied), svc("kept", kept, pod1)))
	ns.EndStaleSessions()
	waitSessions(t, ns, 1)
	for _, ip := range []netip.Addr{deleted, emptied} {
		inject(link, udpPacket(client, netip.AddrPortFrom(ip, 80), []byte("b")))
		_, _, proto, p := parseIP(t, readPacket(t, link))
		if icmp := header.ICMPv4(p); proto != uint8(header.ICMPv4ProtocolNumber) || icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4PortUnreachable {
			t.Fatalf("datagram to %v after the update: stack sent protocol %d % x; want ICMP port unreachable", ip, proto, p)
		}
	}
	nothingReceived(t, pod, 50*time.Millisecond)
	if st := ns.Stats(); st.UDPSessions != 3 || st.UDPRefused != 2 || st.UDPActive != 1 {
		t.Errorf("Stats() = %+v, want 3 UDP sessions started, 2 datagrams refused, 1 session active", st)
	}
	inject(link, udpPacket(client, netip.AddrPortFrom(kept, 80), []byte("c")))
	if dg := received(t, pod); dg.data != "c" {
		t.Fatalf("the kept Service's pod got %q, want %q", dg.data, "c")
	}
}

// TestUDPIdleTimeout: a session lives while datagrams flow, ends once none
// has flowed either way for the idle timeout, and the next datagram starts
// a new one.
func TestUDPIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	ns, link := newTestStackTimers(t, buildTable(t, udpService(clusterIP, pod1)), d, &udpTimers{idle: idle, dnsIdle: idle, tick: 20 * time.Millisecond})
	c := udpClient(t, clientStack(t, link), client)
	svc := netip.AddrPortFrom(clusterIP, 80)

	// Busy for three idle timeouts: one session, one socket towards the pod.
	var from string
	var last time.Time // when the last exchange was answered
	for start := time.Now(); time.Since(start) < 3*idle; time.Sleep(idle / 4) {
		exchange(t, c, svc, "x")
		last = time.Now()
		dg := received(t, pod)
		if from == "" {
			from = dg.from
		} else if dg.from != from {
			t.Fatalf("busy session re-dialled: pod got datagrams from %s, then %s", from, dg.from)
		}
	}
	waitSessions(t, ns, 0)
	if quiet := time.Since(last); quiet < idle/2 {
		t.Errorf("session ended %v after the last datagram, want about %v", quiet, idle)
	}

	exchange(t, c, svc, "y")
	if dg := received(t, pod); dg.from == from {
		t.Errorf("datagram after the timeout came from the old session's socket %s", from)
	}
	if n := len(d.calls()); n != 2 {
		t.Errorf("dials = %v, want 2 (one per session)", d.calls())
	}
}

// TestUDPDNSIdleTimeout: port 53 sessions get the shorter DNS timeout.
func TestUDPDNSIdleTimeout(t *testing.T) {
	d := new(fakeDialer)
	for _, port := range []uint16{53, 8080} {
		startUDPPod(t, d, netip.AddrPortFrom(pod1.Addr(), port), "pod1")
	}
	svc := testService{name: "dns", ip: clusterIP, eps: []netip.Addr{pod1.Addr()}, ports: []testPort{
		{corev1.ProtocolUDP, 53, 53},
		{corev1.ProtocolUDP, 80, 8080},
	}}
	ns, link := newTestStack(t, buildTable(t, svc), d)
	for _, port := range []uint16{53, 80} {
		inject(link, udpPacket(client, netip.AddrPortFrom(clusterIP, port), []byte("q")))
		readUDP(t, link)
	}
	want := map[uint16]time.Duration{53: DNSIdleTimeout, 80: UDPIdleTimeout}
	got := make(map[uint16]time.Duration)
	for _, sess := range sessions(ns) {
		got[sess.dst.Port()] = sess.idle
	}
	for port, w := range want {
		if got[port] != w {
			t.Errorf("idle timeout of the session to port %d = %v, want %v", port, got[port], w)
		}
	}
}

// TestUDPSessionLimits checks the session bookkeeping against both caps.
func TestUDPSessionLimits(t *testing.T) {
	ns, _ := newTestStack(t, buildTable(t), new(fakeDialer))
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }

	for i := range DefaultMaxUDPSessionsPerSource {
		if !ns.reserveUDP(src(0)) {
			t.Fatalf("reserveUDP(%v) #%d = false, want true below the per-source cap", src(0), i+1)
		}
	}
	if ns.reserveUDP(src(0)) {
		t.Fatalf("reserveUDP(%v) = true past the per-source cap %d", src(0), DefaultMaxUDPSessionsPerSource)
	}
	if !ns.reserveUDP(src(1)) {
		t.Fatalf("reserveUDP(%v) = false: another source is not limited by the first", src(1))
	}
	ns.releaseUDP(src(0))
	if !ns.reserveUDP(src(0)) {
		t.Fatalf("reserveUDP(%v) after a release = false, want true", src(0))
	}

	// Fill up to the total cap from more sources.
	total := DefaultMaxUDPSessionsPerSource + 1
	for i := 2; total < DefaultMaxUDPSessions; i++ {
		for range min(DefaultMaxUDPSessionsPerSource, DefaultMaxUDPSessions-total) {
			if !ns.reserveUDP(src(i)) {
				t.Fatalf("reserveUDP(%v) = false at %d sessions, below the cap %d", src(i), total, DefaultMaxUDPSessions)
			}
			total++
		}
	}
	fresh := src(DefaultMaxUDPSessions/DefaultMaxUDPSessionsPerSource + 10)
	if ns.reserveUDP(fresh) {
		t.Fatalf("reserveUDP(%v) = true at the total cap %d", fresh, DefaultMaxUDPSessions)
	}
	ns.releaseUDP(src(1))
	if !ns.reserveUDP(fresh) {
		t.Fatalf("reserveUDP(%v) after a release = false, want true", fresh)
	}

	// Release everything: nothing is left counted.
	ns.releaseUDP(fresh)
	for a, n := range ns.udpSessions.Counts() {
		for range n {
			ns.releaseUDP(a)
		}
	}
	if total, per := ns.udpSessions.Total(), ns.udpSessions.Counts(); total != 0 || len(per) != 0 {
		t.Errorf("after releasing all: %d sessions, per source %v; want 0 and empty", total, per)
	}
}

// TestUDPSessionLimitDrops: past a cap, a new session's datagram is dropped
// silently (no ICMP: the port exists), and served once a session ends.
func TestUDPSessionLimitDrops(t *testing.T) {
	for _, tt := range []struct {
		name  string
		other netip.AddrPort // the client refused once the cap is reached
		fill  func(ns *Stack) []netip.Addr
	}{
		{"per source", netip.AddrPortFrom(client.Addr(), 40001), func(ns *Stack) []netip.Addr {
			var held []netip.Addr
			for range DefaultMaxUDPSessionsPerSource - 1 {
				ns.reserveUDP(client.Addr())
				held = append(held, client.Addr())
			}
			return held
		}},
		{"total", netip.MustParseAddrPort("10.0.4.2:40000"), func(ns *Stack) []netip.Addr {
			var held []netip.Addr
			for i := 0; len(held) < DefaultMaxUDPSessions-1; i++ {
				a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
				for range min(DefaultMaxUDPSessionsPerSource, DefaultMaxUDPSessions-1-len(held)) {
					ns.reserveUDP(a)
					held = append(held, a)
				}
			}
			return held
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			pod := startUDPPod(t, d, pod1, "pod1")
			ns, link := newTestStack(t, buildTable(t, udpService(clusterIP, pod1)), d)
			svc := netip.AddrPortFrom(clusterIP, 80)
			held := tt.fill(ns) // all but one session taken

			inject(link, udpPacket(client, svc, []byte("last")))
			if dg := received(t, pod); dg.data != "last" {
				t.Fatalf("pod got %q, want %q", dg.data, "last")
			}
			readUDP(t, link)

			inject(link, udpPacket(tt.other, svc, []byte("one too many")))
			nothingReceived(t, pod, 100*time.Millisecond)
			expectSilence(t, link, 100*time.Millisecond)

			ns.releaseUDP(held[0])
			inject(link, udpPacket(tt.other, svc, []byte("now")))
			if dg := received(t, pod); dg.data != "now" {
				t.Fatalf("pod got %q after a session was freed, want %q", dg.data, "now")
			}
			for _, a := range held[1:] {
				ns.releaseUDP(a)
			}
		})
	}
}

// TestUDPCloseEndsSessions: Close ends every session and returns only when
// their goroutines are gone.
func TestUDPCloseEndsSessions(t *testing.T) {
	d := new(fakeDialer)
	startUDPPod(t, d, pod1, "pod1")
	ns, link := newTestStack(t, buildTable(t, udpService(clusterIP, pod1)), d)
	svc := netip.AddrPortFrom(clusterIP, 80)
	for port := range uint16(3) {
		inject(link, udpPacket(netip.AddrPortFrom(client.Addr(), 40000+port), svc, []byte("x")))
		readUDP(t, link)
	}
	if n := len(sessions(ns)); n != 3 {
		t.Fatalf("%d sessions, want 3", n)
	}

	done := make(chan struct{})
	go func() { ns.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	if n := len(sessions(ns)); n != 0 {
		t.Errorf("%d sessions after Close, want 0", n)
	}
	if total, per := ns.udpSessions.Total(), len(ns.udpSessions.Counts()); total != 0 || per != 0 {
		t.Errorf("after Close: udpTotal %d, %d sources counted; want 0", total, per)
	}
	checkNoLeaks(t)

	// A datagram after Close starts nothing.
	inject(link, udpPacket(client, svc, []byte("late")))
	if n := goroutines("netstack.(*udpSession)"); n != 0 {
		t.Errorf("%d session goroutines after a datagram past Close, want 0", n)
	}
}

// TestUDPClientRefusesReply: the client's host answers one of the pod's
// datagrams with ICMP port unreachable (the client's socket had closed), and
// the client port is then used again. The new datagrams must still be
// answered: the session either carries on or gives way to a new one, never
// forwards without relaying the answers.
func TestUDPClientRefusesReply(t *testing.T) {
	d := new(fakeDialer)
	pod, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	d.udpPods = map[string]string{pod1.String(): pod.LocalAddr().String()}
	// An hour's tick: only datagrams move the session.
	_, link := newTestStackTimers(t, buildTable(t, udpService(clusterIP, pod1)), d, &udpTimers{idle: time.Hour, dnsIdle: time.Hour, tick: time.Hour})
	svc := netip.AddrPortFrom(clusterIP, 80)
	podRead := func() (string, net.Addr) {
		t.Helper()
		pod.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, from, err := pod.ReadFrom(buf)
		if err != nil {
			t.Fatalf("pod: %v", err)
		}
		return string(buf[:n]), from
	}

	inject(link, udpPacket(client, svc, []byte("query")))
	_, host := podRead()
	pod.WriteTo([]byte("answer"), host)
	answer := readPacket(t, link)

	// The client's socket is gone: its host refuses the next answer.
	inject(link, icmpPortUnreachable4(client.Addr(), clusterIP, answer))
	pod.WriteTo([]byte("late answer"), host)
	time.Sleep(100 * time.Millisecond) // let the stack try to relay it

	// A new socket on the same client port.
	for _, msg := range []string{"query 2", "query 3"} {
		inject(link, udpPacket(client, svc, []byte(msg)))
		got, from := podRead()
		if got != msg {
			t.Fatalf("pod got %q, want %q", got, msg)
		}
		pod.WriteTo([]byte("answer to "+msg), from)
		for {
			src, dst, payload := readUDP(t, link)
			if string(payload) == "late answer" {
				continue // relayed after all: harmless
			}
			if src != svc || dst != client || string(payload) != "answer to "+msg {
				t.Fatalf("relayed %v → %v %q, want %v → %v %q", src, dst, payload, svc, client, "answer to "+msg)
			}
			break
		}
	}
}

// icmpPortUnreachable4 builds the ICMP port unreachable a host at from sends
// to to, quoting the start of pkt.
func icmpPortUnreachable4(from, to netip.Addr, pkt []byte) []byte {
	quote := pkt[:min(len(pkt), header.IPv4MinimumSize+8)]
	b, p := ipPacket(from, to, header.ICMPv4ProtocolNumber, header.ICMPv4MinimumSize+len(quote))
	icmp := header.ICMPv4(p)
	icmp.SetType(header.ICMPv4DstUnreachable)
	icmp.SetCode(header.ICMPv4PortUnreachable)
	copy(icmp.Payload(), quote)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

// TestUDPReplyAfterPodRefused: the pod's host refuses one datagram (its
// socket was gone for a moment: an ICMP error, ECONNREFUSED on the session's
// socket) and then answers from the same port: the answer queued behind the
// error still reaches the client.
func TestUDPReplyAfterPodRefused(t *testing.T) {
	d := new(fakeDialer)
	pod, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	podAddr := pod.LocalAddr().String()
	d.udpPods = map[string]string{pod1.String(): podAddr}
	_, link := newTestStackTimers(t, buildTable(t, udpService(clusterIP, pod1)), d, &udpTimers{idle: time.Hour, dnsIdle: time.Hour, tick: time.Hour})
	svc := netip.AddrPortFrom(clusterIP, 80)

	inject(link, udpPacket(client, svc, []byte("query")))
	pod.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	_, host, err := pod.ReadFrom(buf)
	if err != nil {
		t.Fatalf("pod: %v", err)
	}
	pod.Close()

	// Sent while the pod's socket is gone: refused by its host.
	inject(link, udpPacket(client, svc, []byte("refused")))
	time.Sleep(100 * time.Millisecond)

	pod, err = net.ListenPacket("udp", podAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	if _, err := pod.WriteTo([]byte("answer after the refusal"), host); err != nil {
		t.Fatal(err)
	}
	for {
		_, _, payload := readUDP(t, link)
		if string(payload) == "answer after the refusal" {
			return
		}
	}
}
