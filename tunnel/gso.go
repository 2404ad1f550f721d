package tunnel

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoMaxSize is the largest TCP segment, headers included, gVisor may hand
// the link with GSO options: the most an IPv4 packet can carry. gVisor keeps
// TCPTotalHeaderMaximumSize (160) bytes under it for headers. gVisor's
// channel endpoint allows 32 KiB; twice the bytes per packet halves gVisor's
// per-packet work.
const gsoMaxSize = 1<<16 - 1

// virtioNetHdrLen is the size of the kernel's struct virtio_net_hdr, which
// precedes every frame read from or written to a TUN opened with
// IFF_VNET_HDR (as wireguard's tun opens it).
const virtioNetHdrLen = 10

// isGSO reports whether pkt carries host GSO options, and so a TCP
// checksum only the kernel completes: it must be written behind the
// virtio-net header putVirtioNetHdr makes, never as a plain packet (behind
// an all-zero one).
func isGSO(pkt *stack.PacketBuffer) bool {
	switch pkt.GSOOptions.Type {
	case stack.GSOTCPv4, stack.GSOTCPv6:
		return true
	}
	return false
}

// putVirtioNetHdr fills b[:virtioNetHdrLen] with the virtio-net header for
// pkt, a TCP segment with host GSO options, as the kernel's
// virtio_net_hdr_to_skb reads it (native byte order: wireguard's tun does
// not set TUNSETVNETLE/BE).
//
// csum_start is the IP header's length: a TUN frame has no Ethernet
// header, which gVisor's fdbased endpoint adds to it
// (pkg/tcpip/link/fdbased/endpoint.go). The length is taken from the packet rather than GSOOptions.L3HdrLen, which
// gVisor sets to the minimum header size. A segment no longer than the MSS
// is sent with the checksum request alone (GSO_NONE), as fdbased does.
func putVirtioNetHdr(b []byte, pkt *stack.PacketBuffer) {
	gso := pkt.GSOOptions
	l3 := len(pkt.NetworkHeader().Slice())
	var flags, gsoType uint8
	var gsoSize, csumStart, csumOffset uint16
	if gso.NeedsCsum {
		flags = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
		csumStart = uint16(l3)
		csumOffset = gso.CsumOffset
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case stack.GSOTCPv4:
			gsoType = unix.VIRTIO_NET_HDR_GSO_TCPV4
		case stack.GSOTCPv6:
			gsoType = unix.VIRTIO_NET_HDR_GSO_TCPV6
		}
		gsoSize = gso.MSS
	}
	b[0] = flags
	b[1] = gsoType
	binary.NativeEndian.PutUint16(b[2:], uint16(pkt.HeaderSize())) // hdr_len: IP + TCP headers
	binary.NativeEndian.PutUint16(b[4:], gsoSize)
	binary.NativeEndian.PutUint16(b[6:], csumStart)
	binary.NativeEndian.PutUint16(b[8:], csumOffset)
}
