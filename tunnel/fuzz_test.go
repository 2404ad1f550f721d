package tunnel

import (
	"bytes"
	"log/slog"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// The fuzz targets here feed the inbound pump what anyone who can send a
// packet to a routed address controls: the IP packet, and (through the
// kernel) the virtio-net header in front of it. `go test` runs their seed
// corpora; `make fuzz` fuzzes each in turn.

// icmpEchoPacket returns an ICMP (IPv4) or ICMPv6 echo request from the
// client to the Service address of its family, checksums right.
func icmpEchoPacket(v6 bool, payload []byte) []byte {
	if v6 {
		l4 := make([]byte, header.ICMPv6EchoMinimumSize+len(payload))
		h := header.ICMPv6(l4)
		h.SetType(header.ICMPv6EchoRequest)
		h.SetIdent(7)
		h.SetSequence(1)
		copy(h.Payload(), payload)
		h.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: h, Src: cli6, Dst: srv6,
		}))
		return ipv6Packet(header.ICMPv6ProtocolNumber, cli6, srv6, nil, l4)
	}
	l4 := make([]byte, header.ICMPv4MinimumSize+len(payload))
	h := header.ICMPv4(l4)
	h.SetType(header.ICMPv4Echo)
	h.SetIdent(7)
	h.SetSequence(1)
	copy(h.Payload(), payload)
	h.SetChecksum(^checksum.Checksum(h, 0))
	return ipv4Packet(header.ICMPv4ProtocolNumber, cli4, srv4, l4)
}

// seedPackets are valid IPv4 and IPv6 TCP, UDP and ICMP packets, and
// variants the parsers treat specially: IPv4 options, a UDP datagram
// without a checksum, IPv6 extension headers, fragments.
func seedPackets() [][]byte {
	data := []byte("kubetun fuzz seed")
	hopByHop := func() []byte { return []byte{0, 0, 1, 4, 0, 0, 0, 0} }
	v4opts := ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data))
	{
		// The same datagram behind a 4-byte IPv4 option (NOP x3, EOL).
		b := make([]byte, len(v4opts)+4)
		copy(b, v4opts[:header.IPv4MinimumSize])
		copy(b[header.IPv4MinimumSize:], []byte{1, 1, 1, 0})
		copy(b[header.IPv4MinimumSize+4:], v4opts[header.IPv4MinimumSize:])
		ip := header.IPv4(b)
		ip.SetHeaderLength(header.IPv4MinimumSize + 4)
		ip.SetTotalLength(uint16(len(b)))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		v4opts = b
	}
	noCsum := ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data))
	header.UDP(noCsum[header.IPv4MinimumSize:]).SetChecksum(0)
	frag4 := ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data))
	{
		ip := header.IPv4(frag4)
		ip.SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	// An IPv6 fragment header: next header (filled in below), reserved,
	// offset 0 with M set, identification.
	frag6 := ipv6Packet(header.UDPProtocolNumber, cli6, srv6, nil, udpDatagram(data))
	{
		b := make([]byte, len(frag6)+header.IPv6FragmentHeaderSize)
		copy(b, frag6[:header.IPv6MinimumSize])
		copy(b[header.IPv6MinimumSize:], []byte{uint8(header.UDPProtocolNumber), 0, 0, 1, 0, 0, 0, 42})
		copy(b[header.IPv6MinimumSize+header.IPv6FragmentHeaderSize:], frag6[header.IPv6MinimumSize:])
		ip := header.IPv6(b)
		ip.SetNextHeader(header.IPv6FragmentHeader)
		ip.SetPayloadLength(uint16(len(b) - header.IPv6MinimumSize))
		frag6 = b
	}
	return [][]byte{
		ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 0, header.TCPFlagSyn, nil)),
		ipv4Packet(header.TCPProtocolNumber, cli4, srv4, tcpSegment(1, 1, header.TCPFlagAck|header.TCPFlagPsh, data)),
		ipv4Packet(header.UDPProtocolNumber, cli4, srv4, udpDatagram(data)),
		icmpEchoPacket(false, data),
		v4opts,
		noCsum,
		frag4,
		ipv6Packet(header.TCPProtocolNumber, cli6, srv6, nil, tcpSegment(1, 0, header.TCPFlagSyn, nil)),
		ipv6Packet(header.TCPProtocolNumber, cli6, srv6, hopByHop(), tcpSegment(1, 1, header.TCPFlagAck, data)),
		ipv6Packet(header.UDPProtocolNumber, cli6, srv6, nil, udpDatagram(data)),
		ipv6Packet(header.UDPProtocolNumber, cli6, srv6, hopByHop(), udpDatagram(data)),
		icmpEchoPacket(true, data),
		frag6,
	}
}

// FuzzChecksumsValid: the pump's checksum check takes any bytes without
// panicking or writing to them, and passes every packet built valid.
func FuzzChecksumsValid(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := bytes.Clone(pkt)
		checksumsValid(pkt)
		if !bytes.Equal(pkt, orig) {
			t.Fatalf("checksumsValid(%x) changed the packet", orig)
		}
	})
}

// FuzzChecksumsOfValidPackets: a TCP or UDP packet built with right
// checksums from any payload and ports passes the check; the same packet
// with one byte of its transport header or payload changed fails it (a
// ones' complement sum catches every single-byte change), unless the byte
// is the UDP length, whose error is gVisor's to catch.
func FuzzChecksumsOfValidPackets(f *testing.F) {
	f.Add(false, true, uint16(40000), uint16(80), []byte("GET / HTTP/1.1\r\n"), uint16(3))
	f.Add(true, false, uint16(53000), uint16(53), []byte("query"), uint16(9))
	f.Add(true, true, uint16(1), uint16(2), []byte{}, uint16(0))
	f.Fuzz(func(t *testing.T, v6, isTCP bool, sport, dport uint16, payload []byte, at uint16) {
		if len(payload) > 60000 {
			return
		}
		var l4 []byte
		proto := header.UDPProtocolNumber
		if isTCP {
			proto = header.TCPProtocolNumber
			l4 = tcpSegment(1, 1, header.TCPFlagAck, payload)
			header.TCP(l4).SetSourcePort(sport)
			header.TCP(l4).SetDestinationPort(dport)
		} else {
			l4 = udpDatagram(payload)
			header.UDP(l4).SetSourcePort(sport)
			header.UDP(l4).SetDestinationPort(dport)
		}
		var pkt []byte
		if v6 {
			pkt = ipv6Packet(proto, cli6, srv6, nil, l4)
		} else {
			pkt = ipv4Packet(proto, cli4, srv4, l4)
		}
		if !checksumsValid(pkt) {
			t.Fatalf("checksumsValid(%x) = false for a packet built valid", pkt)
		}
		at %= uint16(len(l4))
		switch {
		case !isTCP && (at == 4 || at == 5):
			return // a wrong UDP length is left to gVisor, which drops it
		case !isTCP && !v6 && at < header.UDPMinimumSize:
			return // an IPv4 UDP checksum changed to 0 means none: valid
		}
		off := len(pkt) - len(l4) + int(at)
		pkt[off] ^= 0x5a
		if checksumsValid(pkt) {
			t.Fatalf("checksumsValid(%x) = true with byte %d changed", pkt, off)
		}
	})
}

// fuzzStack is a gVisor stack on the link the pump feeds, configured as
// netstack configures it (promiscuous, every transport), so that what
// receive lets through is parsed by gVisor too.
func fuzzStack(t testing.TB) (*stack.Stack, *link) {
	link := startLink(t, discard{})
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	if err := s.CreateNIC(1, link); err != nil {
		t.Fatal(err)
	}
	s.SetPromiscuousMode(1, true)
	s.SetSpoofing(1, true)
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s, link
}

// discard is a TUN file that takes every frame and keeps none.
type discard struct{}

func (discard) writeFrame(*frame) error { return nil }

// FuzzReceive pushes one TUN frame, virtio-net header and packet, through
// the inbound pump's receive (checksum check, UDP fast-path offer, GSO
// length fix-up, GRO) into gVisor. Nothing may panic; the fast path is
// offered only UDP packets whose checksums passed or were vouched for.
func FuzzReceive(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(append(make([]byte, virtioNetHdrLen), p...))
	}
	// GSO frames as the kernel hands them: IP length 0, checksum partial.
	for _, v6 := range []bool{false, true} {
		seg := tcpSegment(1, 1, header.TCPFlagAck, bytes.Repeat([]byte("kubetun "), 500))
		var pkt []byte
		gsoType := uint8(unix.VIRTIO_NET_HDR_GSO_TCPV4)
		if v6 {
			pkt = ipv6Packet(header.TCPProtocolNumber, cli6, srv6, nil, seg)
			header.IPv6(pkt).SetPayloadLength(0)
			gsoType = unix.VIRTIO_NET_HDR_GSO_TCPV6
		} else {
			pkt = ipv4Packet(header.TCPProtocolNumber, cli4, srv4, seg)
			header.IPv4(pkt).SetTotalLength(0)
		}
		hdr := []byte{unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType, 0, 0, 0xa8, 0x05, 0, 0, 16, 0}
		f.Add(append(hdr, pkt...))
	}
	// One stack for every input: making one costs more than a packet.
	s, link := fuzzStack(f)
	f.Cleanup(func() { s.Close(); s.Wait() })
	d := &Device{link: link, log: slog.New(slog.DiscardHandler)}
	var notUDP atomic.Pointer[[]byte]
	d.SetUDPHandler(func(pkt []byte) bool {
		if !IsUDP(pkt) {
			notUDP.Store(&pkt)
		}
		return false
	})
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = injector{link}
	f.Fuzz(func(t *testing.T, frame []byte) {
		notUDP.Store(nil)
		d.receive(&g, bytes.Clone(frame))
		if p := notUDP.Load(); p != nil {
			t.Fatalf("UDP handler offered a packet that is not UDP: %x", *p)
		}
		g.Flush()
	})
}

// FuzzFixGSOLength: for any bytes a GSO frame carries, fixGSOLength either
// refuses them or leaves an IP header whose length is the packet's and
// whose IPv4 checksum is right.
func FuzzFixGSOLength(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(p, uint8(unix.VIRTIO_NET_HDR_GSO_TCPV4))
		f.Add(p, uint8(unix.VIRTIO_NET_HDR_GSO_TCPV6))
	}
	f.Fuzz(func(t *testing.T, pkt []byte, gsoType uint8) {
		if len(pkt) > maxPacket {
			return // a TUN frame is never larger
		}
		proto, ok := fixGSOLength(pkt, gsoType)
		if !ok {
			return
		}
		switch proto {
		case header.IPv4ProtocolNumber:
			ip := header.IPv4(pkt)
			if int(ip.TotalLength()) != len(pkt) || !ip.IsChecksumValid() {
				t.Fatalf("fixGSOLength: IPv4 total length %d of %d bytes, checksum valid %v", ip.TotalLength(), len(pkt), ip.IsChecksumValid())
			}
		case header.IPv6ProtocolNumber:
			if n := int(header.IPv6(pkt).PayloadLength()); n+header.IPv6MinimumSize != len(pkt) {
				t.Fatalf("fixGSOLength: IPv6 payload length %d of %d bytes", n, len(pkt))
			}
		default:
			t.Fatalf("fixGSOLength: protocol %d", proto)
		}
	})
}
