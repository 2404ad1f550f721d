package tunnel

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// checksumsValid reports whether the checksums gVisor checks on a packet
// from a link without RX checksum offload are right in pkt: the IPv4 header
// checksum, and the TCP or UDP checksum. ICMP checksums gVisor checks
// always. Malformed lengths pass: gVisor checks them always and drops the
// packet. The TCP or UDP checksum of a fragment cannot be checked before
// reassembly, and gVisor does not check it after (the reassembled packet
// inherits the offload): only the IPv4 header of a fragment is checked.
func checksumsValid(pkt []byte) bool {
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			return true // malformed: gVisor drops it
		}
		if !ip.IsChecksumValid() {
			return false
		}
		if ip.More() || ip.FragmentOffset() != 0 {
			return true
		}
		l4 := pkt[ip.HeaderLength():ip.TotalLength()]
		return l4Valid(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), l4, true)
	case header.IPv6Version:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) {
			return true
		}
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		next, off := tcpip.TransportProtocolNumber(ip.NextHeader()), header.IPv6MinimumSize
		// Step over the extension headers gVisor steps over to reach a
		// TCP or UDP header; each is at least 8 bytes, so this ends.
		for {
			switch next {
			case header.TCPProtocolNumber, header.UDPProtocolNumber:
				return l4Valid(next, ip.SourceAddress(), ip.DestinationAddress(), pkt[off:end], false)
			case tcpip.TransportProtocolNumber(header.IPv6HopByHopOptionsExtHdrIdentifier),
				tcpip.TransportProtocolNumber(header.IPv6RoutingExtHdrIdentifier),
				tcpip.TransportProtocolNumber(header.IPv6DestinationOptionsExtHdrIdentifier):
				if end-off < 8 {
					return true
				}
				next, off = tcpip.TransportProtocolNumber(pkt[off]), off+(int(pkt[off+1])+1)*8
			case tcpip.TransportProtocolNumber(header.IPv6FragmentExtHdrIdentifier):
				if end-off < 8 {
					return true
				}
				frag := header.IPv6Fragment(pkt[off : off+8])
				if frag.More() || frag.FragmentOffset() != 0 {
					return true
				}
				// An atomic fragment is a whole packet.
				next, off = tcpip.TransportProtocolNumber(pkt[off]), off+8
			default:
				return true // ICMPv6, which gVisor checks, or nothing gVisor checks
			}
			if off > end {
				return true
			}
		}
	}
	return true
}

// l4Valid reports whether the TCP or UDP checksum of l4, the IP payload,
// is right.
func l4Valid(proto tcpip.TransportProtocolNumber, src, dst tcpip.Address, l4 []byte, v4 bool) bool {
	switch proto {
	case header.TCPProtocolNumber:
		if len(l4) < header.TCPMinimumSize {
			return true // gVisor drops it
		}
	case header.UDPProtocolNumber:
		if len(l4) < header.UDPMinimumSize {
			return true
		}
		u := header.UDP(l4)
		if v4 && u.Checksum() == 0 {
			return true // no checksum, allowed on IPv4
		}
		if n := int(u.Length()); n >= header.UDPMinimumSize && n <= len(l4) {
			l4 = l4[:n] // the UDP length, not the IP payload's, bounds the checksum
		} else {
			return true // gVisor drops it
		}
	default:
		return true
	}
	sum := header.PseudoHeaderChecksum(proto, src, dst, uint16(len(l4)))
	return checksum.Checksum(l4, sum) == 0xffff
}
