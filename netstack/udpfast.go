package netstack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// DeliverUDP queues at most udpQueueLen datagrams and udpQueueBytes bytes
// for one session, and drops past either, as a full socket buffer does
// (gVisor's endpoint, which it passes, holds about as much).
const (
	udpQueueLen   = 512
	udpQueueBytes = 256 << 10
)

// flowKey names a UDP session: the client and the Service IP:port.
type flowKey struct{ src, dst netip.AddrPort }

// DeliverUDP hands a datagram of an established UDP session straight to the
// session, without gVisor: pkt is a whole IPv4 or IPv6 packet whose
// checksums the caller has checked or the kernel vouches for. It reports
// false for anything else — not UDP, a fragment, IPv6 extension headers,
// no session yet — which the caller passes to gVisor, where a new session
// starts (or the session's gVisor endpoint takes it). gVisor's IP and UDP demultiplexing is two fifths of the
// cost of a forwarded datagram; this is the UDP fast path. It runs on the
// packet path: no lock, no blocking; a session whose queue is full drops.
func (s *Stack) DeliverUDP(pkt []byte) bool {
	key, payload, ok := parseUDP(pkt)
	if !ok {
		return false
	}
	v, ok := s.fast.Load(key)
	if !ok {
		// Not a session of this stack: one of the predecessor's, or a
		// new one for the successor once handed over (handover.go).
		return s.forwardUDP(key, pkt) || s.returnUDP(pkt)
	}
	sess := v.(*udpSession)
	n := int64(len(payload))
	if sess.fastBytes.Add(n) > udpQueueBytes {
		sess.fastBytes.Add(-n)
		s.count.udpLimited.Add(1)
		return true
	}
	if s.udpQueued.Add(n) > s.maxUDPQueued {
		sess.dequeued(int(n))
		s.count.udpLimited.Add(1)
		return true
	}
	select {
	case sess.fastQ <- append([]byte(nil), payload...):
		if sess.ended.Load() {
			// The session ended and emptied its queue before this
			// datagram came in: take it back out, and its bytes.
			sess.drainQueue()
		}
	default:
		sess.dequeued(int(n))
		s.count.udpLimited.Add(1)
	}
	return true
}

// dequeued takes n bytes off the session's and the Stack's queued counts.
func (sess *udpSession) dequeued(n int) {
	sess.fastBytes.Add(-int64(n))
	sess.s.udpQueued.Add(-int64(n))
}

// drainQueue drops what the session's fast-path queue holds.
func (sess *udpSession) drainQueue() {
	for {
		select {
		case d := <-sess.fastQ:
			sess.dequeued(len(d))
		default:
			return
		}
	}
}

// parseUDP returns the session key and the payload of pkt, a whole IPv4
// packet (any header length) or an IPv6 packet without extension headers
// carrying a UDP datagram; false for anything else.
func parseUDP(pkt []byte) (flowKey, []byte, bool) {
	var (
		src, dst netip.Addr
		l4       []byte
	)
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		if len(pkt) < header.IPv4MinimumSize {
			return flowKey{}, nil, false
		}
		ip := header.IPv4(pkt)
		hlen, total := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.Protocol() != uint8(header.UDPProtocolNumber) || hlen < header.IPv4MinimumSize || total < hlen || total > len(pkt) ||
			ip.Flags()&header.IPv4FlagMoreFragments != 0 || ip.FragmentOffset() != 0 {
			return flowKey{}, nil, false
		}
		src, dst = netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
		l4 = pkt[hlen:total]
	case header.IPv6Version:
		if len(pkt) < header.IPv6MinimumSize {
			return flowKey{}, nil, false
		}
		ip := header.IPv6(pkt)
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		if ip.NextHeader() != uint8(header.UDPProtocolNumber) || end > len(pkt) {
			return flowKey{}, nil, false
		}
		src, dst = netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
		l4 = pkt[header.IPv6MinimumSize:end]
	default:
		return flowKey{}, nil, false
	}
	if len(l4) < header.UDPMinimumSize {
		return flowKey{}, nil, false
	}
	n := int(binary.BigEndian.Uint16(l4[4:6]))
	if n < header.UDPMinimumSize || n > len(l4) {
		return flowKey{}, nil, false
	}
	key := flowKey{
		src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:2])),
		dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:4])),
	}
	return key, l4[header.UDPMinimumSize:n], true
}

// sendUDP writes payload to the client dst as a datagram from src (the
// Service's address), straight out of the link: the IP and UDP headers are
// built here instead of by gVisor's UDP endpoint, which costs more than the
// rest of an answer's way. It reports false for a datagram that would not
// fit the link's MTU; the caller then writes it through gVisor, which
// fragments it.
func (s *Stack) sendUDP(src, dst netip.AddrPort, payload []byte) bool {
	var (
		b     []byte
		proto tcpip.NetworkProtocolNumber
	)
	udpLen := header.UDPMinimumSize + len(payload)
	switch {
	case src.Addr().Is4() && dst.Addr().Is4():
		b = make([]byte, header.IPv4MinimumSize+udpLen)
		if len(b) > int(s.link.MTU()) {
			return false
		}
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			ID:          uint16(s.link.ipID.Add(1)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(src.Addr().As4()),
			DstAddr:     tcpip.AddrFrom4(dst.Addr().As4()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		proto = header.IPv4ProtocolNumber
	case src.Addr().Is6() && dst.Addr().Is6():
		b = make([]byte, header.IPv6MinimumSize+udpLen)
		if len(b) > int(s.link.MTU()) {
			return false
		}
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(udpLen),
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16(src.Addr().As16()),
			DstAddr:           tcpip.AddrFrom16(dst.Addr().As16()),
		})
		proto = header.IPv6ProtocolNumber
	default:
		return false
	}
	u := header.UDP(b[len(b)-udpLen:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(udpLen)})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber,
		tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice()), uint16(udpLen))
	xsum = checksum.Checksum(payload, xsum)
	sum := ^u.CalculateChecksum(xsum)
	if sum == 0 {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	u.SetChecksum(sum)
	s.link.send(proto, b)
	return true
}
