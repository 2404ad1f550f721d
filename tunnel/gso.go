package tunnel

import (
	"encoding/binary"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoMaxSize is the largest TCP segment, headers included, gVisor may hand
// the link with GSO options: the most an IPv4 packet can carry. gVisor keeps
// TCPTotalHeaderMaximumSize (160) bytes under it for headers. channel's own
// limit is 32 KiB; twice the bytes per packet halves gVisor's per-packet work.
const gsoMaxSize = 1<<16 - 1

// virtioNetHdrLen is the size of the kernel's struct virtio_net_hdr, which
// precedes every frame read from or written to a TUN opened with
// IFF_VNET_HDR (as wireguard's tun opens it).
const virtioNetHdrLen = 10

// gsoLink is the gVisor link endpoint the pump feeds: a channel endpoint
// that advertises host GSO. gVisor's TCP then hands it segments of up to
// gsoMaxSize with GSO options, its checksum left for the kernel to finish
// (the pseudo-header sum in the TCP checksum field), and the pump writes
// them to the TUN with a virtio-net header that has the kernel segment them
// into MSS-sized packets (writeGSO). gVisor's cost is per packet: the
// download direction (gVisor → TUN) otherwise carries 1448-byte segments one
// by one (DESIGN.md: Tailscale 2.15 → 10.8 Gbit/s).
type gsoLink struct {
	*channel.Endpoint
}

// GSOMaxSize implements stack.GSOEndpoint.
func (*gsoLink) GSOMaxSize() uint32 { return gsoMaxSize }

// isGSO reports whether pkt carries host GSO options, and so a TCP
// checksum only the kernel completes: it must be written with writeGSO,
// never through wireguard's tun.Write, which would coalesce it as a plain
// packet.
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
// header, which gVisor's fdbased endpoint adds to it (DESIGN.md). The
// length is taken from the packet rather than GSOOptions.L3HdrLen, which
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

// frameWriter writes one TUN frame given in parts.
type frameWriter interface {
	writeFrame(parts [][]byte) error
}

// fileWriter writes frames to the TUN's file with writev(2): the parts go
// to the kernel as they are, without being copied into one buffer first.
type fileWriter struct{ rc syscall.RawConn }

func newFileWriter(f *os.File) (fileWriter, error) {
	rc, err := f.SyscallConn()
	return fileWriter{rc}, err
}

func (w fileWriter) writeFrame(parts [][]byte) error {
	var werr error
	if err := w.rc.Write(func(fd uintptr) bool {
		for {
			_, werr = unix.Writev(int(fd), parts)
			if werr != unix.EINTR {
				return werr != unix.EAGAIN
			}
		}
	}); err != nil {
		return os.ErrClosed // the only way RawConn.Write fails once it worked
	}
	return werr
}

// writeGSO writes pkt, a TCP segment with host GSO options, to w as one
// frame: its virtio-net header, put in hdr, then the packet as gVisor
// holds it (a 64 KiB segment is not copied).
//
// Writing the TUN's file directly is safe next to wireguard's tun.Write,
// which writes the same *os.File: one write(2) or writev(2) to a TUN is one
// whole frame, and only the outbound pump writes, in the order of the
// packets gVisor queued.
func writeGSO(w frameWriter, hdr []byte, pkt *stack.PacketBuffer) error {
	putVirtioNetHdr(hdr, pkt)
	return w.writeFrame(append([][]byte{hdr[:virtioNetHdrLen]}, pkt.AsSlices()...))
}
