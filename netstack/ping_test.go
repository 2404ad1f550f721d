package netstack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	corev1 "k8s.io/api/core/v1"
)

// pingService is a Service with one TCP port on ip, served by eps.
func pingService(name string, ip netip.Addr, eps ...netip.Addr) testService {
	return testService{name: name, ip: ip, eps: eps, ports: []testPort{{corev1.ProtocolTCP, 80, 8080}}}
}

// echoRequest builds an ICMP (IPv4) or ICMPv6 (IPv6) echo request, by src's
// family, with valid checksums.
func echoRequest(src, dst netip.Addr, ident, seq uint16, payload []byte) []byte {
	return icmpEcho(src, dst, true, ident, seq, payload)
}

// icmpEcho builds an echo request or reply.
func icmpEcho(src, dst netip.Addr, request bool, ident, seq uint16, payload []byte) []byte {
	if src.Is6() {
		b, p := ipPacket(src, dst, header.ICMPv6ProtocolNumber, header.ICMPv6EchoMinimumSize+len(payload))
		icmp := header.ICMPv6(p)
		icmp.SetType(header.ICMPv6EchoReply)
		if request {
			icmp.SetType(header.ICMPv6EchoRequest)
		}
		icmp.SetIdent(ident)
		icmp.SetSequence(seq)
		copy(icmp.Payload(), payload)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header:      icmp[:header.ICMPv6EchoMinimumSize],
			Src:         gvAddr(src),
			Dst:         gvAddr(dst),
			PayloadCsum: checksum.Checksum(payload, 0),
			PayloadLen:  len(payload),
		}))
		return b
	}
	b, p := ipPacket(src, dst, header.ICMPv4ProtocolNumber, header.ICMPv4MinimumSize+len(payload))
	icmp := header.ICMPv4(p)
	icmp.SetType(header.ICMPv4EchoReply)
	if request {
		icmp.SetType(header.ICMPv4Echo)
	}
	icmp.SetIdent(ident)
	icmp.SetSequence(seq)
	copy(icmp.Payload(), payload)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return b
}

// checkEchoReply checks that b is the reply to an echo request from client
// to target with ident, seq and payload: addresses swapped, valid IP and ICMP
// checksums.
func checkEchoReply(t testing.TB, b []byte, client, target netip.Addr, ident, seq uint16, payload []byte) {
	t.Helper()
	src, dst, proto, p := parseIP(t, b) // checks the IPv4 header checksum
	if src != target || dst != client {
		t.Errorf("echo reply from %v to %v, want from %v to %v", src, dst, target, client)
	}
	var (
		typeOK      bool
		gotIdent    uint16
		gotSeq      uint16
		gotPayload  []byte
		checksumsOK bool
	)
	if client.Is4() {
		icmp := header.ICMPv4(p)
		if proto != uint8(header.ICMPv4ProtocolNumber) || len(icmp) < header.ICMPv4MinimumSize {
			t.Fatalf("stack sent protocol %d % x, want an ICMP echo reply", proto, p)
		}
		typeOK = icmp.Type() == header.ICMPv4EchoReply && icmp.Code() == 0
		gotIdent, gotSeq, gotPayload = icmp.Ident(), icmp.Sequence(), icmp.Payload()
		checksumsOK = checksum.Checksum(icmp, 0) == 0xffff
	} else {
		icmp := header.ICMPv6(p)
		if proto != uint8(header.ICMPv6ProtocolNumber) || len(icmp) < header.ICMPv6EchoMinimumSize {
			t.Fatalf("stack sent protocol %d % x, want an ICMPv6 echo reply", proto, p)
		}
		typeOK = icmp.Type() == header.ICMPv6EchoReply && icmp.Code() == 0
		gotIdent, gotSeq, gotPayload = icmp.Ident(), icmp.Sequence(), icmp.Payload()
		// The sum over the pseudo-header and the whole message, checksum
		// included, is all ones.
		pseudo := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, gvAddr(src), gvAddr(dst), uint16(len(icmp)))
		checksumsOK = checksum.Checksum(icmp, pseudo) == 0xffff
	}
	if !typeOK {
		t.Errorf("ICMP message % x is not an echo reply", p)
	}
	if gotIdent != ident || gotSeq != seq || !bytes.Equal(gotPayload, payload) {
		t.Errorf("echo reply ident %d seq %d payload %q, want %d %d %q", gotIdent, gotSeq, gotPayload, ident, seq, payload)
	}
	if !checksumsOK {
		t.Errorf("ICMP checksum of the echo reply is wrong: % x", p)
	}
}

// TestPing: an echo request to a ClusterIP is answered exactly when its
// Service has a usable endpoint; otherwise nothing comes back.
func TestPing(t *testing.T) {
	noReady := pingService("not-ready", netip.MustParseAddr("10.3.241.170"), pod2.Addr())
	noReady.notReady = noReady.eps
	noReady6 := pingService("not-ready6", netip.MustParseAddr("fd00:10:96::b:1"), pod2v6.Addr())
	noReady6.notReady = noReady6.eps
	svcs := []testService{
		pingService("served", clusterIP, pod1.Addr()),
		pingService("empty", netip.MustParseAddr("10.3.241.160"), nil...),
		noReady,
		pingService("served6", clusterIP6, pod1v6.Addr()),
		pingService("empty6", netip.MustParseAddr("fd00:10:96::a:1"), nil...),
		noReady6,
	}
	tests := []struct {
		name   string
		client netip.Addr
		target netip.Addr
		answer bool
	}{
		{"usable endpoint", client.Addr(), clusterIP, true},
		{"no endpoint", client.Addr(), netip.MustParseAddr("10.3.241.160"), false},
		{"no ready endpoint", client.Addr(), noReady.ip, false},
		{"unknown IP", client.Addr(), netip.MustParseAddr("10.3.241.153"), false},
		{"IPv6 usable endpoint", client6.Addr(), clusterIP6, true},
		{"IPv6 no endpoint", client6.Addr(), netip.MustParseAddr("fd00:10:96::a:1"), false},
		{"IPv6 no ready endpoint", client6.Addr(), noReady6.ip, false},
		{"IPv6 unknown IP", client6.Addr(), netip.MustParseAddr("fd00:10:96::a:99"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, link := newTestStack(t, buildTable(t, svcs...), new(fakeDialer))
			payload := []byte("kubetun ping 0123456789")
			inject(link, echoRequest(tt.client, tt.target, 0x1234, 7, payload))
			if !tt.answer {
				expectSilence(t, link, 200*time.Millisecond)
				return
			}
			checkEchoReply(t, readPacket(t, link), tt.client, tt.target, 0x1234, 7, payload)
			if n := ns.Stats().PingReplies; n != 1 {
				t.Errorf("Stats().PingReplies = %d, want 1", n)
			}
			// Answered by the filter, not seen by the stack.
			stats := ns.stack.Stats().ICMP
			if n := stats.V4.PacketsReceived.EchoRequest.Value() + stats.V6.PacketsReceived.EchoRequest.Value(); n != 0 {
				t.Errorf("stack received %d echo requests, want 0", n)
			}
		})
	}
}

// TestPingIPv4Options: the reply to a request with IP options is still a
// valid packet with a correct header checksum.
func TestPingIPv4Options(t *testing.T) {
	_, link := newTestStack(t, buildTable(t, pingService("served", clusterIP, pod1.Addr())), new(fakeDialer))
	payload := []byte("with options")
	req := echoRequest(client.Addr(), clusterIP, 9, 1, payload)
	// Insert a 4-byte option (NOP, NOP, NOP, EOL) after the header.
	const optLen = 4
	b := make([]byte, 0, len(req)+optLen)
	b = append(b, req[:header.IPv4MinimumSize]...)
	b = append(b, byte(header.IPv4OptionNOPType), byte(header.IPv4OptionNOPType), byte(header.IPv4OptionNOPType), byte(header.IPv4OptionListEndType))
	b = append(b, req[header.IPv4MinimumSize:]...)
	ip := header.IPv4(b)
	ip.SetHeaderLength(header.IPv4MinimumSize + optLen)
	ip.SetTotalLength(uint16(len(b)))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())

	inject(link, b)
	checkEchoReply(t, readPacket(t, link), client.Addr(), clusterIP, 9, 1, payload)
}

// TestPingPassesOtherPackets: what is not an echo request reaches the stack
// as it came: other ICMP messages to a ClusterIP, and TCP.
func TestPingPassesOtherPackets(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	tab := buildTable(t, pingService("served", clusterIP, pod1.Addr()), pingService("served6", clusterIP6, pod1v6.Addr()))
	ns, link := newTestStack(t, tab, d)
	stats := ns.stack.Stats().ICMP

	inject(link, icmpEcho(client.Addr(), clusterIP, false, 1, 1, []byte("reply")))
	inject(link, icmpEcho(client6.Addr(), clusterIP6, false, 1, 1, []byte("reply")))
	for deadline := time.Now().Add(5 * time.Second); stats.V4.PacketsReceived.EchoReply.Value() != 1 || stats.V6.PacketsReceived.EchoReply.Value() != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("stack received %d ICMP and %d ICMPv6 echo replies, want 1 each",
				stats.V4.PacketsReceived.EchoReply.Value(), stats.V6.PacketsReceived.EchoReply.Value())
		}
		time.Sleep(10 * time.Millisecond)
	}
	expectSilence(t, link, 100*time.Millisecond)

	// A SYN to a served port gets its SYN-ACK; to another port, a RST.
	const iss = 3000
	inject(link, tcpPacket(client, netip.AddrPortFrom(clusterIP, 80), iss, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck || seg.AckNumber() != iss+1 {
		t.Errorf("reply to a SYN to port 80: flags %v ack %d, want SYN|ACK ack %d", seg.Flags(), seg.AckNumber(), iss+1)
	}
	inject(link, tcpPacket(netip.AddrPortFrom(client.Addr(), 40001), netip.AddrPortFrom(clusterIP, 81), iss, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagRst|header.TCPFlagAck || seg.AckNumber() != iss+1 {
		t.Errorf("reply to a SYN to port 81: flags %v ack %d, want RST|ACK ack %d", seg.Flags(), seg.AckNumber(), iss+1)
	}
}

// TestPingFragmentNotAnswered: the first fragment of a large echo request
// alone gets no reply (gVisor holds it until the rest arrives, or drops it).
func TestPingFragmentNotAnswered(t *testing.T) {
	_, link := newTestStack(t, buildTable(t, pingService("served", clusterIP, pod1.Addr())), new(fakeDialer))
	frags := fragmentIP(t, echoRequest(client.Addr(), clusterIP, 3, 1, make([]byte, 1000)), 512, 1)
	inject(link, frags[0])
	expectSilence(t, link, 200*time.Millisecond)
}

// TestPingFragmented: an echo request larger than the client's link, sent
// in fragments, is answered in full for a ClusterIP with a usable endpoint,
// and not at all otherwise. The IPv4 reply leaves whole (the host fragments
// it as it forwards it); the IPv6 reply in fragments that fit the IPv6
// minimum MTU, since no router fragments IPv6. The link has kubetun's
// default MTU, as large as gVisor's replies.
func TestPingFragmented(t *testing.T) {
	svcs := []testService{
		pingService("served", clusterIP, pod1.Addr()),
		pingService("empty", netip.MustParseAddr("10.3.241.160"), nil...),
		pingService("served6", clusterIP6, pod1v6.Addr()),
		pingService("empty6", netip.MustParseAddr("fd00:10:96::a:1"), nil...),
	}
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i)
	}
	for _, tt := range []struct {
		name           string
		client, target netip.Addr
		answer         bool
	}{
		{"usable endpoint", client.Addr(), clusterIP, true},
		{"no endpoint", client.Addr(), netip.MustParseAddr("10.3.241.160"), false},
		{"unknown IP", client.Addr(), netip.MustParseAddr("10.3.241.153"), false},
		{"IPv6 usable endpoint", client6.Addr(), clusterIP6, true},
		{"IPv6 no endpoint", client6.Addr(), netip.MustParseAddr("fd00:10:96::a:1"), false},
		{"IPv6 unknown IP", client6.Addr(), netip.MustParseAddr("fd00:10:96::a:99"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, link := newTestStackLink(t, buildTable(t, svcs...), new(fakeDialer), nil, 65520)
			for _, f := range fragmentIP(t, echoRequest(tt.client, tt.target, 0x4321, 9, payload), 1400, 77) {
				inject(link, f)
			}
			if !tt.answer {
				expectSilence(t, link, 200*time.Millisecond)
				return
			}
			reply := readPacket(t, link)
			if tt.client.Is6() {
				reply = reassemble6(t, link, reply)
			}
			checkEchoReply(t, reply, tt.client, tt.target, 0x4321, 9, payload)
		})
	}
}

// fragmentIP splits an IPv4 or IPv6 packet without options or extension
// headers into fragments carrying at most size bytes (a multiple of 8) of
// its payload each, with identification id.
func fragmentIP(t testing.TB, b []byte, size int, id uint32) [][]byte {
	t.Helper()
	var frags [][]byte
	if header.IPVersion(b) == header.IPv4Version {
		ip := header.IPv4(b)
		hdr, payload := b[:ip.HeaderLength()], ip.Payload()
		for off := 0; off < len(payload); off += size {
			chunk := payload[off:min(off+size, len(payload))]
			f := append(append([]byte(nil), hdr...), chunk...)
			fip := header.IPv4(f)
			fip.SetTotalLength(uint16(len(f)))
			fip.SetID(uint16(id))
			var flags uint8
			if off+len(chunk) < len(payload) {
				flags = header.IPv4FlagMoreFragments
			}
			fip.SetFlagsFragmentOffset(flags, uint16(off))
			fip.SetChecksum(0)
			fip.SetChecksum(^fip.CalculateChecksum())
			frags = append(frags, f)
		}
		return frags
	}
	ip := header.IPv6(b)
	payload := ip.Payload()
	for off := 0; off < len(payload); off += size {
		chunk := payload[off:min(off+size, len(payload))]
		f := make([]byte, header.IPv6MinimumSize+header.IPv6FragmentHeaderSize+len(chunk))
		copy(f, b[:header.IPv6MinimumSize])
		header.IPv6(f).SetNextHeader(header.IPv6FragmentHeader)
		header.IPv6(f).SetPayloadLength(uint16(header.IPv6FragmentHeaderSize + len(chunk)))
		fh := f[header.IPv6MinimumSize:]
		fh[0] = ip.NextHeader()
		offMore := uint16(off/8) << 3
		if off+len(chunk) < len(payload) {
			offMore |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], offMore)
		binary.BigEndian.PutUint32(fh[4:], id)
		copy(f[header.IPv6MinimumSize+header.IPv6FragmentHeaderSize:], chunk)
		frags = append(frags, f)
	}
	return frags
}

// reassemble6 reads the IPv6 fragments that follow first from link until
// the last one, checks that each fits the IPv6 minimum MTU and that they
// share one identification, and returns the packet they make.
func reassemble6(t testing.TB, link *channel.Endpoint, first []byte) []byte {
	t.Helper()
	var (
		payload []byte
		id      uint32
		hdr     = append([]byte(nil), first[:header.IPv6MinimumSize]...)
		next    uint8
	)
	for i, f := 0, first; ; i, f = i+1, readPacket(t, link) {
		ip := header.IPv6(f)
		if len(f) > header.IPv6MinimumMTU {
			t.Errorf("fragment %d is %d bytes, more than the IPv6 minimum MTU %d", i, len(f), header.IPv6MinimumMTU)
		}
		if ip.NextHeader() != header.IPv6FragmentHeader {
			t.Fatalf("packet %d of the reply: next header %d, want a fragment header", i, ip.NextHeader())
		}
		fh := header.IPv6Fragment(ip.Payload())
		if i == 0 {
			id, next = fh.ID(), fh.NextHeader()
		} else if fh.ID() != id {
			t.Fatalf("fragment %d has id %d, the first %d", i, fh.ID(), id)
		}
		if int(fh.FragmentOffset())*8 != len(payload) {
			t.Fatalf("fragment %d at offset %d, want %d (in order, no gap)", i, int(fh.FragmentOffset())*8, len(payload))
		}
		payload = append(payload, fh.Payload()...)
		if !fh.More() {
			break
		}
	}
	header.IPv6(hdr).SetNextHeader(next)
	header.IPv6(hdr).SetPayloadLength(uint16(len(payload)))
	return append(hdr, payload...)
}

// TestPingBadChecksum: an echo request whose ICMP checksum is wrong is not
// answered, over IPv4 and IPv6.
func TestPingBadChecksum(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			ns, link := newTestStack(t, buildTable(t, pingService("served", fam.clusterIP, fam.pod.Addr())), new(fakeDialer))
			req := echoRequest(fam.client.Addr(), fam.clusterIP, 0x1234, 7, []byte("corrupted"))
			req[len(req)-1] ^= 0xff // the payload, under the ICMP checksum only
			inject(link, req)
			expectSilence(t, link, 200*time.Millisecond)
			if n := ns.Stats().PingReplies; n != 0 {
				t.Errorf("Stats().PingReplies = %d, want 0", n)
			}
		})
	}
}
