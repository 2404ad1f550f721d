package tunnel

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

var (
	cli4 = tcpip.AddrFrom4([4]byte{10, 0, 3, 2})
	srv4 = tcpip.AddrFrom4([4]byte{10, 3, 241, 200})
	cli6 = tcpip.AddrFrom16([16]byte{0xfd, 0, 15: 2})
	srv6 = tcpip.AddrFrom16([16]byte{0xfd, 1, 15: 1})
)

// ipv4Packet returns an IPv4 packet carrying l4 (a TCP or UDP header and
// payload, its checksum not yet set), with every checksum right.
func ipv4Packet(proto tcpip.TransportProtocolNumber, src, dst tcpip.Address, l4 []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(l4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto),
		SrcAddr: src, DstAddr: dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], l4)
	setL4Checksum(proto, src, dst, b[header.IPv4MinimumSize:])
	return b
}

// ipv6Packet is ipv4Packet for IPv6, with the extension headers ext (whose
// first byte, the next header, it fills in) before l4.
func ipv6Packet(proto tcpip.TransportProtocolNumber, src, dst tcpip.Address, ext []byte, l4 []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+len(ext)+len(l4))
	next := uint8(proto)
	if len(ext) > 0 {
		ext[0], next = next, uint8(header.IPv6HopByHopOptionsExtHdrIdentifier)
	}
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(ext) + len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(next),
		HopLimit: 64, SrcAddr: src, DstAddr: dst,
	})
	copy(b[header.IPv6MinimumSize:], ext)
	off := header.IPv6MinimumSize + len(ext)
	copy(b[off:], l4)
	setL4Checksum(proto, src, dst, b[off:])
	return b
}

func setL4Checksum(proto tcpip.TransportProtocolNumber, src, dst tcpip.Address, l4 []byte) {
	sum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(l4)))
	switch proto {
	case header.TCPProtocolNumber:
		header.TCP(l4).SetChecksum(0)
		header.TCP(l4).SetChecksum(^checksum.Checksum(l4, sum))
	case header.UDPProtocolNumber:
		header.UDP(l4).SetChecksum(0)
		c := ^checksum.Checksum(l4, sum)
		if c == 0 {
			c = 0xffff // 0 would mean no checksum (RFC 768)
		}
		header.UDP(l4).SetChecksum(c)
	}
}

func tcpSegment(seq, ack uint32, flags header.TCPFlags, payload []byte) []byte {
	b := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(b).Encode(&header.TCPFields{
		SrcPort: 40000, DstPort: 5201, SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535,
	})
	copy(b[header.TCPMinimumSize:], payload)
	return b
}

func udpDatagram(payload []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(b).Encode(&header.UDPFields{SrcPort: 40000, DstPort: 53, Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], payload)
	return b
}

func TestChecksumsValid(t *testing.T) {
	data := bytes.Repeat([]byte("kubetun"), 100)
	hopByHop := []byte{0, 0, 1, 4, 0, 0, 0, 0} // next header, length 0, PadN
	cases := []struct {
		name string
		pkt  []byte
		// corrupt is the offset of a byte to flip, from the end; 0: none.
		corrupt int
		want    bool
	}{
		{"ipv4 tcp", ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 1, header.TCPFlagAck, data)), 0, true},
		{"ipv4 tcp payload corrupted", ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 1, header.TCPFlagAck, data)), 1, false},
		{"ipv4 header corrupted", ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 1, header.TCPFlagAck, nil)), header.TCPMinimumSize + 1, false},
		{"ipv4 udp", ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data)), 0, true},
		{"ipv4 udp corrupted", ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data)), 10, false},
		{"ipv6 tcp", ipv6Packet(header.TCPProtocolNumber, cli6, srv6, nil, tcpSegment(1, 1, header.TCPFlagAck, data)), 0, true},
		{"ipv6 tcp corrupted", ipv6Packet(header.TCPProtocolNumber, cli6, srv6, nil, tcpSegment(1, 1, header.TCPFlagAck, data)), 3, false},
		{"ipv6 hop-by-hop udp", ipv6Packet(header.UDPProtocolNumber, cli6, srv6, bytes.Clone(hopByHop), udpDatagram(data)), 0, true},
		{"ipv6 hop-by-hop udp corrupted", ipv6Packet(header.UDPProtocolNumber, cli6, srv6, bytes.Clone(hopByHop), udpDatagram(data)), 7, false},
	}
	for _, c := range cases {
		if c.corrupt > 0 {
			c.pkt[len(c.pkt)-c.corrupt] ^= 0x40
		}
		if got := checksumsValid(c.pkt); got != c.want {
			t.Errorf("%s: checksumsValid = %v, want %v", c.name, got, c.want)
		}
	}

	// An IPv4 UDP datagram without a checksum is valid; its header must be.
	p := ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data))
	header.UDP(p[header.IPv4MinimumSize:]).SetChecksum(0)
	if !checksumsValid(p) {
		t.Error("ipv4 udp without checksum: not valid")
	}
}

// TestGROIntoStack feeds a burst of TCP segments through enqueue into a
// gVisor stack on the link Open uses, as inbound does with one batch, and
// checks that they arrive coalesced and intact, and that a segment with a
// wrong checksum is dropped before gVisor.
func TestGROIntoStack(t *testing.T) {
	r := make(recorder, 16)
	link := startLink(t, r)
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer func() { s.Close(); s.Wait() }()
	if err := s.CreateNIC(1, link); err != nil {
		t.Fatal(err)
	}
	if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber, AddressWithPrefix: srv4.WithPrefix(),
	}, stack.AddressProperties{}); err != nil {
		t.Fatal(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	ln, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: srv4, Port: 5201}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	var g gro.GRO
	g.Init(true)
	g.Dispatcher = injector{link}
	send := func(pkts ...[]byte) {
		for _, p := range pkts {
			enqueue(&g, p, false)
		}
		g.Flush()
	}
	seg := func(seq, ack uint32, flags header.TCPFlags, payload []byte) []byte {
		return ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(seq, ack, flags, payload))
	}

	// Handshake.
	const iss = 1000
	send(seg(iss, 0, header.TCPFlagSyn, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	synAck := r.next(ctx)
	if synAck == nil {
		t.Fatal("no SYN-ACK")
	}
	rh := header.TCP(header.IPv4(synAck[virtioNetHdrLen:]).Payload())
	if rh.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("reply flags %v, want SYN-ACK", rh.Flags())
	}
	ack := rh.SequenceNumber() + 1
	send(seg(iss+1, ack, header.TCPFlagAck, nil))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// One batch of MSS-sized segments, as a 1500-byte link delivers them.
	const nseg, mss = 40, 1448
	want := make([]byte, nseg*mss)
	for i := range want {
		want[i] = byte(i * 7)
	}
	before := s.Stats().TCP.ValidSegmentsReceived.Value()
	var batch [][]byte
	for i := range nseg {
		batch = append(batch, seg(iss+1+uint32(i*mss), ack, header.TCPFlagAck, want[i*mss:(i+1)*mss]))
	}
	send(batch...)
	got := make([]byte, len(want))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("reading the burst: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the burst arrived altered")
	}
	st := s.Stats()
	if n := st.IP.MalformedPacketsReceived.Value(); n != 0 {
		t.Errorf("%d malformed packets", n)
	}
	if n := st.TCP.ValidSegmentsReceived.Value() - before; n >= nseg/4 {
		t.Errorf("%d segments reached TCP for %d sent: not coalesced", n, nseg)
	}

	// A segment with a wrong checksum never reaches the stack.
	bad := seg(iss+1+nseg*mss, ack, header.TCPFlagAck, []byte("corrupted"))
	bad[len(bad)-1] ^= 1
	rx := st.NICs.Rx.Packets.Value()
	send(bad)
	if n := s.Stats().NICs.Rx.Packets.Value(); n != rx {
		t.Errorf("a segment with a wrong checksum reached the NIC")
	}

	// Frames as the TUN hands them to receive, behind a virtio-net header.
	d := &Device{link: link, log: slog.New(slog.DiscardHandler)}
	frame := func(flags, gsoType uint8, pkt []byte) []byte {
		h := make([]byte, virtioNetHdrLen)
		h[0], h[1] = flags, gsoType
		return append(h, pkt...)
	}
	readN := func(what string, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("reading %s: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s arrived altered", what)
		}
	}

	// A GSO frame: one 30000-byte segment with its checksum left partial and
	// no IP length, as the kernel hands a TSO or GRO'd packet to a TUN
	// reader. It reaches TCP as one segment.
	seq := uint32(iss + 1 + nseg*mss)
	large := bytes.Repeat([]byte("kubetun "), 30000/8)
	pkt := seg(seq, ack, header.TCPFlagAck|header.TCPFlagPsh, large)
	header.TCP(pkt[header.IPv4MinimumSize:]).SetChecksum(0x1234)
	header.IPv4(pkt).SetTotalLength(0)
	before = s.Stats().TCP.ValidSegmentsReceived.Value()
	d.receive(&g, frame(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_TCPV4, pkt))
	g.Flush()
	readN("the GSO frame", large)
	if n := s.Stats().TCP.ValidSegmentsReceived.Value() - before; n != 1 {
		t.Errorf("the GSO frame reached TCP as %d segments, want 1", n)
	}
	seq += uint32(len(large))

	// A plain frame whose checksum the kernel left partial is trusted; the
	// same without the flag is checked, and dropped.
	partial := seg(seq, ack, header.TCPFlagAck, []byte("partial"))
	header.TCP(partial[header.IPv4MinimumSize:]).SetChecksum(0x1234)
	rx = s.Stats().NICs.Rx.Packets.Value()
	d.receive(&g, frame(0, unix.VIRTIO_NET_HDR_GSO_NONE, partial))
	g.Flush()
	if n := s.Stats().NICs.Rx.Packets.Value(); n != rx {
		t.Errorf("a frame with a wrong checksum and no NEEDS_CSUM reached the NIC")
	}
	d.receive(&g, frame(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_NONE, partial))
	g.Flush()
	readN("the NEEDS_CSUM frame", []byte("partial"))
}

// TestFixGSOLength: the IP length of a GSO frame's packet becomes its real
// length (with a valid IPv4 header checksum); a packet of the other family
// than the GSO type says is refused.
func TestFixGSOLength(t *testing.T) {
	v4 := ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 1, header.TCPFlagAck, make([]byte, 3000)))
	header.IPv4(v4).SetTotalLength(0)
	if proto, ok := fixGSOLength(v4, unix.VIRTIO_NET_HDR_GSO_TCPV4); !ok || proto != header.IPv4ProtocolNumber {
		t.Fatalf("IPv4: %v, %v", proto, ok)
	}
	if ip := header.IPv4(v4); int(ip.TotalLength()) != len(v4) || !ip.IsChecksumValid() {
		t.Errorf("IPv4 total length %d (want %d), header checksum valid %v", ip.TotalLength(), len(v4), ip.IsChecksumValid())
	}
	v6 := ipv6Packet(header.TCPProtocolNumber, cli6, srv6, nil, tcpSegment(1, 1, header.TCPFlagAck, make([]byte, 3000)))
	header.IPv6(v6).SetPayloadLength(0)
	if proto, ok := fixGSOLength(v6, unix.VIRTIO_NET_HDR_GSO_TCPV6); !ok || proto != header.IPv6ProtocolNumber {
		t.Fatalf("IPv6: %v, %v", proto, ok)
	}
	if n := header.IPv6(v6).PayloadLength(); int(n) != len(v6)-header.IPv6MinimumSize {
		t.Errorf("IPv6 payload length %d, want %d", n, len(v6)-header.IPv6MinimumSize)
	}
	if _, ok := fixGSOLength(v6, unix.VIRTIO_NET_HDR_GSO_TCPV4); ok {
		t.Error("an IPv6 packet in a TCPV4 GSO frame was accepted")
	}
	if _, ok := fixGSOLength(v4[:10], unix.VIRTIO_NET_HDR_GSO_TCPV4); ok {
		t.Error("a truncated packet was accepted")
	}
}

// TestUDPHandler: receive offers UDP datagrams to the handler SetUDPHandler
// installed, after the checksum check; what the handler declines, and every
// other packet, goes on to gVisor.
func TestUDPHandler(t *testing.T) {
	link := startLink(t, make(recorder, 16))
	d := &Device{link: link, log: slog.New(slog.DiscardHandler)}
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = injector{link}
	var offered [][]byte
	take := true
	d.SetUDPHandler(func(pkt []byte) bool {
		offered = append(offered, bytes.Clone(pkt))
		return take
	})
	frame := func(pkt []byte) []byte { return append(make([]byte, virtioNetHdrLen), pkt...) }
	udp := ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram([]byte("query")))
	bad := bytes.Clone(udp)
	bad[len(bad)-1] ^= 1
	tcp := ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 0, header.TCPFlagSyn, nil))

	d.receive(&g, frame(udp))
	d.receive(&g, frame(bad))
	d.receive(&g, frame(tcp))
	if len(offered) != 1 || !bytes.Equal(offered[0], udp) {
		t.Errorf("handler offered %d packets, want only the good UDP datagram", len(offered))
	}
	take = false
	d.receive(&g, frame(udp))
	if len(offered) != 2 {
		t.Errorf("handler offered %d packets, want 2", len(offered))
	}
}
