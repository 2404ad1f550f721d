package netstack

import (
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
	"sync/atomic"

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
//
// As every packet the stack sends passes through it too, it also counts the
// ones the link drops (WritePackets).
type pingFilter struct {
	nested.Endpoint
	services Answerer
	ipID     atomic.Uint32 // identification of the IPv4 replies and IPv6 fragments it makes
	replies  atomic.Uint64 // echo requests answered
	drops    atomic.Uint64 // packets the link did not pass on
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

// send writes one packet straight out of the link.
func (f *pingFilter) send(proto tcpip.NetworkProtocolNumber, b []byte) {
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pb.NetworkProtocolNumber = proto
	var list stack.PacketBufferList
	list.PushBack(pb)
	n, err := f.Child().WritePackets(list)
	f.countDrops(1, n, err)
	list.DecRef()
}

// handleEcho4 is the stack's handler for ICMPv4 messages no endpoint takes.
// The only echo requests that reach it are those gVisor reassembled from
// fragments (the filter answers whole ones before the stack sees them);
// gVisor does not answer them itself, as the address is not its own. The
// reply leaves whole, without DF: the host fragments it for the client's
// link as it forwards it.
func (f *pingFilter) handleEcho4(_ stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
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

// fragment6Size is the most an IPv6 fragment of an echo reply carries after
// its headers: the IPv6 minimum MTU (1280), which every link carries, less
// the IPv6 and fragment headers, a multiple of 8 as RFC 8200 requires.
const fragment6Size = (header.IPv6MinimumMTU - header.IPv6MinimumSize - header.IPv6FragmentHeaderSize) &^ 7

// WritePackets implements stack.LinkEndpoint. gVisor answers an echo
// request it reassembled from IPv6 fragments itself, in one packet as large
// as the request; no router may fragment it on the way (IPv6), and the
// client's link is most likely smaller than the TUN's MTU. So such a reply
// leaves in fragments of the IPv6 minimum MTU. Everything else passes
// unchanged.
func (f *pingFilter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if !slices.ContainsFunc(pkts.AsSlice(), isLargeEchoReply6) {
		n, err := f.Endpoint.WritePackets(pkts)
		f.countDrops(pkts.Len(), n, err)
		return n, err
	}
	var out stack.PacketBufferList
	defer out.DecRef()
	for _, pkt := range pkts.AsSlice() {
		if !isLargeEchoReply6(pkt) {
			pkt.IncRef()
			out.PushBack(pkt)
			continue
		}
		v := stack.PayloadSince(pkt.NetworkHeader())
		frags := fragment6(v.AsSlice(), f.ipID.Add(1))
		v.Release()
		if frags == nil { // already a fragment (--mtu below its size)
			pkt.IncRef()
			out.PushBack(pkt)
			continue
		}
		f.replies.Add(1)
		for _, frag := range frags {
			pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frag)})
			pb.NetworkProtocolNumber = header.IPv6ProtocolNumber
			out.PushBack(pb)
		}
	}
	n, err := f.Endpoint.WritePackets(out)
	f.countDrops(out.Len(), n, err)
	if err != nil {
		return 0, err
	}
	return pkts.Len(), nil
}

// countDrops counts the packets of a batch of sent that the link did not
// take: a link that reports fewer written without an error has dropped
// the rest (gVisor's channel endpoint when its queue is full; tunnel's link
// makes the sender wait instead, and drops nothing).
func (f *pingFilter) countDrops(sent, written int, err tcpip.Error) {
	if err == nil && written < sent {
		f.drops.Add(uint64(sent - written))
	}
}

// isLargeEchoReply6 reports whether pkt, leaving the stack, is an ICMPv6
// echo reply larger than the IPv6 minimum MTU.
func isLargeEchoReply6(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber != header.IPv6ProtocolNumber || pkt.TransportProtocolNumber != header.ICMPv6ProtocolNumber ||
		pkt.Size() <= header.IPv6MinimumMTU {
		return false
	}
	h := pkt.TransportHeader().Slice()
	return len(h) > 0 && header.ICMPv6(h).Type() == header.ICMPv6EchoReply
}

// fragment6 splits an IPv6 packet without extension headers into fragments
// of fragment6Size bytes of its payload, each behind a copy of its header
// and a fragment header with id (RFC 8200 section 4.5). nil if b is not
// such a packet.
func fragment6(b []byte, id uint32) [][]byte {
	ip := header.IPv6(b)
	if !ip.IsValid(len(b)) || ip.NextHeader() == header.IPv6FragmentHeader {
		return nil
	}
	payload := b[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
	var frags [][]byte
	for off := 0; off < len(payload); off += fragment6Size {
		chunk := payload[off:min(off+fragment6Size, len(payload))]
		f := make([]byte, header.IPv6MinimumSize+header.IPv6FragmentHeaderSize+len(chunk))
		copy(f, b[:header.IPv6MinimumSize])
		fip := header.IPv6(f)
		fip.SetNextHeader(header.IPv6FragmentHeader)
		fip.SetPayloadLength(uint16(header.IPv6FragmentHeaderSize + len(chunk)))
		fh := f[header.IPv6MinimumSize:]
		fh[0] = ip.NextHeader()
		// The offset in 8-byte units sits above 3 flag bits: off, a
		// multiple of 8, is already in place. The lowest bit is M.
		offMore := uint16(off)
		if off+len(chunk) < len(payload) {
			offMore |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], offMore)
		binary.BigEndian.PutUint32(fh[4:], id)
		copy(fh[header.IPv6FragmentHeaderSize:], chunk)
		frags = append(frags, f)
	}
	return frags
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
