package netstack

import (
	"fmt"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestDeliverUDP: once a session exists (its first datagram went through
// gVisor), DeliverUDP takes the flow's datagrams straight to it, in order;
// it declines what has no session, and, once the session has ended, the
// flow's datagrams, which then go to gVisor (and are refused there).
func TestDeliverUDP(t *testing.T) {
	for _, tt := range families {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			pod := startUDPPod(t, d, tt.pod, "pod1")
			tab := buildTable(t, udpService(tt.clusterIP, tt.pod))
			ns, link := newTestStack(t, tab, d)
			svc := netip.AddrPortFrom(tt.clusterIP, 80)

			other := netip.AddrPortFrom(tt.client.Addr(), tt.client.Port()+1)
			if ns.DeliverUDP(udpPacket(other, svc, []byte("no session"))) {
				t.Fatal("DeliverUDP took a datagram of a flow without a session")
			}
			inject(link, udpPacket(tt.client, svc, []byte("first")))
			if dg := received(t, pod); dg.data != "first" {
				t.Fatalf("pod got %q, want %q", dg.data, "first")
			}
			readUDP(t, link) // the answer
			for i := range 20 {
				msg := fmt.Sprintf("fast %d", i)
				if !ns.DeliverUDP(udpPacket(tt.client, svc, []byte(msg))) {
					t.Fatalf("DeliverUDP declined datagram %d of an established session", i)
				}
			}
			for i := range 20 {
				if dg := received(t, pod); dg.data != fmt.Sprintf("fast %d", i) {
					t.Fatalf("pod got %q, want %q (in order)", dg.data, fmt.Sprintf("fast %d", i))
				}
			}

			tab.Store(snapshotOf(t))
			ns.EndStaleSessions()
			waitSessions(t, ns, 0)
			if ns.DeliverUDP(udpPacket(tt.client, svc, []byte("after"))) {
				t.Error("DeliverUDP took a datagram of an ended session")
			}
		})
	}
}

// TestParseUDP: what the fast path reads, and what it leaves to gVisor.
func TestParseUDP(t *testing.T) {
	svc := netip.AddrPortFrom(clusterIP, 80)
	plain := udpPacket(client, svc, []byte("payload"))
	if key, payload, ok := parseUDP(plain); !ok || key != (flowKey{client, svc}) || string(payload) != "payload" {
		t.Errorf("IPv4: %v %q %v", key, payload, ok)
	}
	svc6 := netip.AddrPortFrom(clusterIP6, 80)
	if key, payload, ok := parseUDP(udpPacket(client6, svc6, []byte("six"))); !ok || key != (flowKey{client6, svc6}) || string(payload) != "six" {
		t.Errorf("IPv6: %v %q %v", key, payload, ok)
	}
	// Trailing bytes past the IP length (Ethernet padding) are not payload.
	padded := append(append([]byte(nil), plain...), 0, 0, 0)
	if _, payload, ok := parseUDP(padded); !ok || string(payload) != "payload" {
		t.Errorf("padded: %q %v", payload, ok)
	}
	frag := append([]byte(nil), plain...)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	tcp, _ := ipPacket(client.Addr(), clusterIP, header.TCPProtocolNumber, header.TCPMinimumSize)
	for name, pkt := range map[string][]byte{
		"fragment":  frag,
		"TCP":       tcp,
		"truncated": plain[:len(plain)-3],
		"short":     plain[:10],
		"empty":     nil,
	} {
		if _, _, ok := parseUDP(pkt); ok {
			t.Errorf("%s: parsed as a UDP datagram", name)
		}
	}
}

// TestDeliverUDPQueueBound: a session whose queue is full (by bytes here)
// drops what DeliverUDP takes for it, and counts it; nothing is queued past
// the bound.
func TestDeliverUDPQueueBound(t *testing.T) {
	s := &Stack{maxUDPQueued: DefaultMaxUDPQueuedBytes}
	sess := &udpSession{s: s, fastQ: make(chan []byte, udpQueueLen)}
	s.fast.Store(flowKey{client, netip.AddrPortFrom(clusterIP, 80)}, sess)
	big := make([]byte, 60000)
	pkt := udpPacket(client, netip.AddrPortFrom(clusterIP, 80), big)
	for range 10 {
		if !s.DeliverUDP(pkt) {
			t.Fatal("DeliverUDP declined a datagram of a session")
		}
	}
	if n, want := len(sess.fastQ), udpQueueBytes/len(big); n != want {
		t.Errorf("%d datagrams of %d bytes queued, want %d (%d bytes at most)", n, len(big), want, udpQueueBytes)
	}
	if got := s.count.udpLimited.Load(); got != uint64(10-len(sess.fastQ)) {
		t.Errorf("%d counted as limited, want %d", got, 10-len(sess.fastQ))
	}
	if got := sess.fastBytes.Load(); got != int64(len(sess.fastQ)*len(big)) {
		t.Errorf("fastBytes = %d, want %d", got, len(sess.fastQ)*len(big))
	}
}

// TestDeliverUDPTotalBound: the sessions together queue no more than
// maxUDPQueued bytes; a session that ends gives its queued bytes back, also
// those DeliverUDP queued after it emptied its queue.
func TestDeliverUDPTotalBound(t *testing.T) {
	const total = 200000
	s := &Stack{maxUDPQueued: total}
	var sessions []*udpSession
	big := make([]byte, 60000)
	for i := range 3 {
		src := netip.AddrPortFrom(client.Addr(), uint16(40000+i))
		sess := &udpSession{s: s, fastQ: make(chan []byte, udpQueueLen)}
		s.fast.Store(flowKey{src, netip.AddrPortFrom(clusterIP, 80)}, sess)
		sessions = append(sessions, sess)
		for range 2 {
			s.DeliverUDP(udpPacket(src, netip.AddrPortFrom(clusterIP, 80), big))
		}
	}
	if got, want := s.udpQueued.Load(), int64(total/len(big)*len(big)); got != want {
		t.Errorf("%d bytes queued in all, want %d (%d at most)", got, want, total)
	}
	if st := s.count.udpLimited.Load(); st != 6-total/uint64(len(big)) {
		t.Errorf("%d datagrams limited, want %d", st, 6-total/len(big))
	}
	for _, sess := range sessions {
		sess.ended.Store(true)
		sess.drainQueue()
	}
	// A datagram DeliverUDP queues for a session that has ended is taken
	// back at once.
	s.DeliverUDP(udpPacket(netip.AddrPortFrom(client.Addr(), 40000), netip.AddrPortFrom(clusterIP, 80), big))
	if got := s.udpQueued.Load(); got != 0 {
		t.Errorf("%d bytes counted as queued once every session ended, want 0", got)
	}
}

// TestUDPAnswerLargerThanLink: an answer too large for the link's MTU is
// not built by kubetun but left to gVisor, which fragments it.
func TestUDPAnswerLargerThanLink(t *testing.T) {
	d := new(fakeDialer)
	startUDPPod(t, d, pod1, "pod1")
	_, link := newTestStack(t, buildTable(t, udpService(clusterIP, pod1)), d) // MTU 1500
	svc := netip.AddrPortFrom(clusterIP, 80)
	inject(link, udpPacket(client, svc, make([]byte, 3000))) // the pod echoes it, prefixed
	b := readPacket(t, link)
	ip := header.IPv4(b)
	if len(b) > 1500 || ip.Flags()&header.IPv4FlagMoreFragments == 0 || ip.FragmentOffset() != 0 {
		t.Fatalf("first packet of a 3005-byte answer on a 1500-byte link: %d bytes, flags %#x, offset %d; want gVisor's first fragment",
			len(b), ip.Flags(), ip.FragmentOffset())
	}
}
