package netstack

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Answerer tells which addresses answer ping: ClusterIPs with at least one
// usable endpoint. *resolver.Table is one.
type Answerer interface {
	Answers(ip netip.Addr) bool
}

// pingFilter sits between the link endpoint and the stack and answers ICMP
// echo requests itself: for a ClusterIP with a usable endpoint it sends the
// reply straight back out of the link; any other echo request is dropped.
// kube-proxy in iptables mode answers no ping at all (kubernetes issue
// 47156); kubetun answers exactly for the Services that could serve a
// connection. (gVisor would not answer either: in promiscuous mode it leaves
// echo requests to addresses it does not own to the embedder.)
type pingFilter struct {
	nested.Endpoint
	services Answerer
}

var _ stack.NetworkDispatcher = (*pingFilter)(nil)

func newPingFilter(link stack.LinkEndpoint, services Answerer) *pingFilter {
	f := &pingFilter{services: services}
	f.Init(link, f)
	return f
}

// Close implements stack.LinkEndpoint. It leaves the link open: the link
// belongs to whoever passed it in Config, and closing it here, as gVisor
// does when the stack is torn down, would drop the packets Close has just
// queued, the FINs and RSTs that tell clients their connections ended.
// Detached from the stack, the link delivers nothing to it any more.
func (f *pingFilter) Close() {}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (f *pingFilter) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	dst, ok := echoRequestTo(proto, pkt)
	if !ok {
		f.Endpoint.DeliverNetworkPacket(proto, pkt)
		return
	}
	if !f.services.Answers(dst) || isFragment(proto, pkt) {
		return
	}
	reply := echoReply(proto, pkt.ToView().AsSlice())
	if reply == nil {
		return
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(reply)})
	pb.NetworkProtocolNumber = proto
	var list stack.PacketBufferList
	list.PushBack(pb)
	f.Child().WritePackets(list)
	list.DecRef()
}

// isFragment reports whether an IPv4 packet is one fragment of several.
func isFragment(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	if proto != header.IPv4ProtocolNumber {
		return false
	}
	b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
	return ok && (header.IPv4(b).Flags()&header.IPv4FlagMoreFragments != 0 || header.IPv4(b).FragmentOffset() != 0)
}

// echoReply turns a copy of an echo request into its reply: addresses
// swapped, type changed, checksums computed anew. nil if req is malformed.
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
		if len(icmp) < header.ICMPv4MinimumSize {
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
		if len(icmp) < header.ICMPv6MinimumSize {
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

// echoRequestTo returns the destination of an ICMP or ICMPv6 echo request;
// false for any other packet. It reads only the headers.
func echoRequestTo(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) (netip.Addr, bool) {
	switch proto {
	case header.IPv4ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return netip.Addr{}, false
		}
		ip := header.IPv4(b)
		hlen := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || ip.FragmentOffset() != 0 || hlen < header.IPv4MinimumSize {
			return netip.Addr{}, false
		}
		if ip.Flags()&header.IPv4FlagMoreFragments != 0 {
			// The first fragment of a large echo request. Answering it
			// alone would send a reply whose checksum covers one fragment:
			// drop it, and the request goes unanswered (the rest of its
			// fragments expire in gVisor's reassembly).
			return netip.AddrFrom4([4]byte(ip.DestinationAddressSlice())), true
		}
		b, ok = pkt.Data().PullUp(hlen + 1)
		if !ok || header.ICMPv4Type(b[hlen]) != header.ICMPv4Echo {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(header.IPv4(b).DestinationAddressSlice())), true
	case header.IPv6ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv6MinimumSize + 1)
		if !ok {
			return netip.Addr{}, false
		}
		ip := header.IPv6(b)
		// An echo request behind extension headers passes unfiltered: no
		// client sends one.
		if ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) || header.ICMPv6Type(b[header.IPv6MinimumSize]) != header.ICMPv6EchoRequest {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(ip.DestinationAddressSlice())), true
	}
	return netip.Addr{}, false
}
