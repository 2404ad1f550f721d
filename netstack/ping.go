package netstack

import (
	"math"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Answerer tells which addresses answer ping: ClusterIPs with at least one
// usable endpoint. *resolver.Table is one.
type Answerer interface {
	Answers(ip netip.Addr) bool
}

// DeliverNetworkPacket implements stack.NetworkDispatcher: it answers ICMP
// echo requests itself, for a ClusterIP with a usable endpoint straight back
// out of the link, and drops any other echo request. kube-proxy in iptables
// mode answers no ping at all (kubernetes issue 47156); kubetun answers
// exactly for the Services that could serve a connection. (gVisor would not
// answer either: in promiscuous mode it leaves echo requests to addresses
// it does not own to the embedder.) Every other packet goes on to the stack.
func (f *linkFilter) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	dst, kind := classifyICMP(proto, pkt)
	switch kind {
	case kindEcho:
		if f.services.Answers(dst) {
			if reply := echoReply(proto, pkt.ToView().AsSlice()); reply != nil {
				f.send(proto, reply)
				f.replies.Add(1)
			}
		}
		return
	case kindFragment:
		// One fragment of a larger ICMP message, such as `ping -s 3000`
		// from a pod whose link has an MTU of 1500. gVisor reassembles
		// it; the echo request that makes is answered by handleEcho4
		// (IPv4) or by gVisor itself, fragmented by WritePackets (IPv6).
		// Either way only for an address that answers: the fragments of
		// any other stop here.
		if !f.services.Answers(dst) {
			return
		}
	}
	f.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// handleEcho4 is the stack's handler for ICMPv4 messages no endpoint takes.
// The only echo requests that reach it are those gVisor reassembled from
// fragments (the filter answers whole ones before the stack sees them);
// gVisor does not answer them itself, as the address is not its own. The
// reply leaves whole, without DF: the host fragments it for the client's
// link as it forwards it.
func (f *linkFilter) handleEcho4(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(h) < header.ICMPv4MinimumSize || h.Type() != header.ICMPv4Echo {
		return false
	}
	// gVisor passes on echo requests with a bad checksum too.
	if h.Code() != 0 || checksum.Checksum(h, pkt.Data().Checksum()) != 0xffff {
		return true
	}
	req := header.IPv4(pkt.NetworkHeader().Slice())
	if !f.services.Answers(netip.AddrFrom4(req.DestinationAddress().As4())) {
		return true
	}
	data := pkt.Data().AsRange().ToSlice()
	n := header.IPv4MinimumSize + header.ICMPv4MinimumSize + len(data)
	if n > math.MaxUint16 {
		return true
	}
	b := make([]byte, n)
	tos, _ := req.TOS()
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TOS:         tos,
		TotalLength: uint16(n),
		ID:          uint16(f.ipID.Add(1)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     req.DestinationAddress(),
		DstAddr:     req.SourceAddress(),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(ip.Payload())
	copy(icmp, h[:header.ICMPv4MinimumSize])
	copy(icmp[header.ICMPv4MinimumSize:], data)
	icmp.SetType(header.ICMPv4EchoReply)
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	f.send(header.IPv4ProtocolNumber, b)
	f.replies.Add(1)
	return true
}

// echoReply turns a copy of an echo request into its reply: addresses
// swapped, type changed, checksums computed anew. nil if req is malformed,
// its ICMP checksum wrong among that: a host answers no corrupted request
// (RFC 792, RFC 4443 section 2.3), and the pump does not check ICMP's.
func echoReply(proto tcpip.NetworkProtocolNumber, req []byte) []byte {
	b := append([]byte(nil), req...)
	switch proto {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) {
			return nil
		}
		b = b[:ip.TotalLength()]
		ip = header.IPv4(b)
		src, dst := ip.SourceAddress(), ip.DestinationAddress()
		ip.SetSourceAddress(dst)
		ip.SetDestinationAddress(src)
		ip.SetTTL(64)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(ip.Payload())
		if len(icmp) < header.ICMPv4MinimumSize || checksum.Checksum(icmp, 0) != 0xffff {
			return nil
		}
		icmp.SetType(header.ICMPv4EchoReply)
		icmp.SetChecksum(0)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return b
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) {
			return nil
		}
		b = b[:header.IPv6MinimumSize+int(ip.PayloadLength())]
		ip = header.IPv6(b)
		src, dst := ip.SourceAddress(), ip.DestinationAddress()
		ip.SetSourceAddress(dst)
		ip.SetDestinationAddress(src)
		ip.SetHopLimit(64)
		icmp := header.ICMPv6(ip.Payload())
		if len(icmp) < header.ICMPv6MinimumSize || header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header:      icmp[:header.ICMPv6MinimumSize],
			Src:         src,
			Dst:         dst,
			PayloadCsum: checksum.Checksum(icmp[header.ICMPv6MinimumSize:], 0),
			PayloadLen:  len(icmp) - header.ICMPv6MinimumSize,
		}) != icmp.Checksum() {
			return nil
		}
		icmp.SetType(header.ICMPv6EchoReply)
		icmp.SetChecksum(0)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header:      icmp[:header.ICMPv6MinimumSize],
			Src:         dst,
			Dst:         src,
			PayloadCsum: checksum.Checksum(icmp[header.ICMPv6MinimumSize:], 0),
			PayloadLen:  len(icmp) - header.ICMPv6MinimumSize,
		}))
		return b
	}
	return nil
}

// icmpKind is what the filter makes of an incoming packet.
type icmpKind int

const (
	kindOther    icmpKind = iota
	kindEcho              // a whole ICMP or ICMPv6 echo request
	kindFragment          // a fragment of an ICMP or ICMPv6 message
)

// classifyICMP tells echo requests and fragments of ICMP messages from
// everything else, and returns their destination. It reads only the
// headers. An ICMPv6 message behind extension headers other than a fragment
// header counts as another packet: no client sends one.
func classifyICMP(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) (netip.Addr, icmpKind) {
	switch proto {
	case header.IPv4ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return netip.Addr{}, kindOther
		}
		ip := header.IPv4(b)
		hlen := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || hlen < header.IPv4MinimumSize {
			return netip.Addr{}, kindOther
		}
		dst := netip.AddrFrom4([4]byte(ip.DestinationAddressSlice()))
		if ip.FragmentOffset() != 0 || ip.Flags()&header.IPv4FlagMoreFragments != 0 {
			return dst, kindFragment
		}
		b, ok = pkt.Data().PullUp(hlen + 1)
		if !ok || header.ICMPv4Type(b[hlen]) != header.ICMPv4Echo {
			return netip.Addr{}, kindOther
		}
		return dst, kindEcho
	case header.IPv6ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv6MinimumSize + 1)
		if !ok {
			return netip.Addr{}, kindOther
		}
		dst := netip.AddrFrom16([16]byte(header.IPv6(b).DestinationAddressSlice()))
		switch header.IPv6(b).NextHeader() {
		case uint8(header.ICMPv6ProtocolNumber):
			if header.ICMPv6Type(b[header.IPv6MinimumSize]) == header.ICMPv6EchoRequest {
				return dst, kindEcho
			}
		case header.IPv6FragmentHeader:
			// Every fragment's header names the protocol of the whole.
			b, ok = pkt.Data().PullUp(header.IPv6MinimumSize + header.IPv6FragmentHeaderSize)
			if ok && header.IPv6Fragment(b[header.IPv6MinimumSize:]).NextHeader() == uint8(header.ICMPv6ProtocolNumber) {
				return dst, kindFragment
			}
		}
	}
	return netip.Addr{}, kindOther
}
