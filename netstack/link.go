package netstack

import (
	"encoding/binary"
	"slices"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkFilter sits between the link endpoint (Config.Link) and the stack,
// and every packet passes through it, both ways. Inbound, it answers ICMP
// echo requests itself (DeliverNetworkPacket, in ping.go). Outbound
// (WritePackets), it fragments the large IPv6 echo replies gVisor makes,
// and counts the packets the link drops. Its IP identification counter
// numbers the packets kubetun builds itself rather than gVisor: IPv4 echo
// replies, IPv6 fragments, and the UDP fast path's datagrams.
type linkFilter struct {
	nested.Endpoint
	services Answerer
	ipID     atomic.Uint32 // identification of the IPv4 packets and IPv6 fragments kubetun makes
	replies  atomic.Uint64 // echo requests answered
	drops    atomic.Uint64 // packets the link did not pass on
}

var _ stack.NetworkDispatcher = (*linkFilter)(nil)

func newLinkFilter(link stack.LinkEndpoint, services Answerer) *linkFilter {
	f := &linkFilter{services: services}
	f.Init(link, f)
	return f
}

// Close implements stack.LinkEndpoint. It leaves the link open: the link
// belongs to whoever passed it in Config, and closing it here, as gVisor
// does when the stack is torn down, would drop the packets Close has just
// queued, the FINs and RSTs that tell clients their connections ended.
// Detached from the stack, the link delivers nothing to it any more.
func (f *linkFilter) Close() {}

// send writes one packet straight out of the link.
func (f *linkFilter) send(proto tcpip.NetworkProtocolNumber, b []byte) {
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pb.NetworkProtocolNumber = proto
	var list stack.PacketBufferList
	list.PushBack(pb)
	n, err := f.Child().WritePackets(list)
	f.countDrops(1, n, err)
	list.DecRef()
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
func (f *linkFilter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
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
// the rest (gVisor's channel endpoint, the tests' link, when its queue is
// full; tunnel's link makes the sender wait instead).
func (f *linkFilter) countDrops(sent, written int, err tcpip.Error) {
	if err == nil && written < sent {
		f.drops.Add(uint64(sent - written))
	}
}

// dropped returns how many packets the stack sent never left: those the
// link did not take (countDrops), and those it took but could not write,
// if it counts them (tunnel's link: frames the TUN refused).
func (f *linkFilter) dropped() uint64 {
	n := f.drops.Load()
	if l, ok := f.Child().(interface{ Dropped() uint64 }); ok {
		n += l.Dropped()
	}
	return n
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
