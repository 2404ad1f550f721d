package tunnel

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

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
		header.UDP(l4).SetChecksum(^checksum.Checksum(l4, sum))
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
	link := newLink(DefaultMTU)
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
	g.Dispatcher = injector{link.Endpoint}
	send := func(pkts ...[]byte) {
		for _, p := range pkts {
			enqueue(&g, p)
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
	synAck := link.ReadContext(ctx)
	if synAck == nil {
		t.Fatal("no SYN-ACK")
	}
	v := synAck.ToView()
	synAck.DecRef()
	rh := header.TCP(header.IPv4(v.AsSlice()).Payload())
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
}
