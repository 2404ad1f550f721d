package tunnel

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/kubetun/kubetun/backoff"
)

// maxPacket is the largest packet a TUN frame may carry.
const maxPacket = 65535

// readBatch is the most frames the inbound pump reads from the TUN before
// it hands what GRO holds to gVisor.
const readBatch = 64

// inbound moves packets from the TUN into gVisor until the TUN is closed,
// by Close or underneath (then it reports the loss: Gone).
//
// It reads the TUN's frames itself, each behind its virtio-net header,
// every one waiting up to readBatch, rather than through wireguard's
// tun.Read. That splits a TCP segment the kernel left unsegmented (GSO: up
// to 64 KiB from a node-local client, or from a pod when the host's GRO
// coalesced its packets) into MSS-sized copies, which gVisor's GRO then
// coalesced again: the frame now goes to gVisor whole (receive).
//
// Other packets go through gVisor's GRO, which coalesces consecutive
// segments of a TCP flow into one packet before the stack sees them:
// gVisor's cost is per packet, not per byte. GRO rewrites the IP length of a
// coalesced packet but neither checksum, so the link advertises RX checksum
// offload (newLink) and checksums are checked here instead, per packet,
// before GRO, unless the kernel vouches for them: without the offload gVisor
// re-checks them and drops every coalesced packet as malformed.
func (d *Device) inbound() {
	rc, err := d.tun.File().SyscallConn()
	if err != nil {
		d.log.Error("TUN: no access to its file descriptor; nothing will be read", "tun", d.name, "err", err)
		return
	}
	buf := make([]byte, virtioNetHdrLen+maxPacket)
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = injector{d.link}
	var readErr error
	var retry backoff.Retry
	// readFrames reads and hands on the frames waiting, and reports
	// whether it read any: false makes rc.Read wait until there are.
	readFrames := func(fd uintptr) bool {
		for n := 0; n < readBatch; {
			m, err := unix.Read(int(fd), buf)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return n > 0
			case err != nil:
				readErr = err
				return true
			}
			n++
			d.receive(&g, buf[:m])
		}
		return true
	}
	for {
		err := rc.Read(readFrames)
		// Hand what GRO still holds to gVisor before waiting for more.
		g.Flush()
		if err != nil {
			return // the TUN is closed, or Pause set a deadline
		}
		if readErr != nil {
			if errors.Is(readErr, unix.EBADF) || errors.Is(readErr, unix.EBADFD) {
				// Closed by Close, or the device was deleted underneath
				// (ip link del): the kernel detached the file from it.
				d.lost(readErr)
				return
			}
			// Any other error is retried, after a wait that grows while it
			// persists, and said once per run of them.
			if retry.Failures() == 0 {
				d.log.Warn("TUN read failing; retrying, less often while it fails", "tun", d.name, "err", readErr)
			}
			readErr = nil
			select {
			case <-time.After(retry.Failed()):
			case <-d.link.done:
				return // Close: the TUN is being closed too
			}
		} else if n, took := retry.Succeeded(); n > 0 {
			d.log.Info("TUN read works again", "tun", d.name, "errors", n, "after", took.Round(time.Millisecond))
		}
	}
}

// receive hands one frame read from the TUN to gVisor. A TCP segment the
// kernel left for the receiver to segment (GSO) goes in as it is, one large
// segment like those GRO makes; anything else goes through GRO. The kernel
// vouches for the checksums of both when its header says so (a checksum
// left partial is the receiver's to complete, and gVisor, which terminates
// every packet, need not).
func (d *Device) receive(g *gro.GRO, frame []byte) {
	if len(frame) <= virtioNetHdrLen {
		return
	}
	flags, gsoType := frame[0], frame[1]&^unix.VIRTIO_NET_HDR_GSO_ECN
	pkt := frame[virtioNetHdrLen:]
	trusted := flags&(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM|unix.VIRTIO_NET_HDR_F_DATA_VALID) != 0
	switch gsoType {
	case unix.VIRTIO_NET_HDR_GSO_NONE:
		if !trusted && !checksumsValid(pkt) {
			return // as gVisor would drop it
		}
		if IsUDP(pkt) {
			if h := d.udp.Load(); h != nil && (*h)(pkt) {
				return
			}
		} else if f := d.tcp.Load(); f != nil && !(*f)(pkt) {
			return // a SYN over a limit: dropped, the client retransmits
		}
		enqueue(g, pkt, true)
	case unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6:
		g.Flush() // what GRO holds of the same flow goes first
		if proto, ok := fixGSOLength(pkt, gsoType); ok {
			inject(d.link, proto, pkt)
		}
	default:
		// Only TCP offloads are enabled on the TUN (Open).
		d.log.Debug("TUN read: GSO type not handled; frame dropped", "tun", d.name, "gso_type", gsoType)
	}
}

// SetUDPHandler makes the inbound pump offer every UDP datagram it reads to
// h before gVisor (netstack's DeliverUDP, the UDP fast path). h runs on the
// pump's goroutine and must not block; a datagram it declines goes on to
// gVisor.
func (d *Device) SetUDPHandler(h func(pkt []byte) bool) {
	d.udp.Store(&h)
}

// SetTCPFilter makes the inbound pump ask f about every packet it reads
// that is not UDP and not a GSO frame (a SYN never is one), before GRO and
// gVisor: a packet f declines is dropped (netstack's AdmitTCP drops SYNs
// over the setup limits). f runs on the pump's goroutine and must not
// block.
func (d *Device) SetTCPFilter(f func(pkt []byte) bool) {
	d.tcp.Store(&f)
}

// IsUDP reports whether pkt is an IPv4 packet carrying UDP, or an IPv6
// packet whose first next header is UDP: the test by which the inbound pump
// (and Inject) offer a packet to the UDP handler before gVisor. It is
// exported for the netstack's fuzz target, which feeds the stack as the
// pump does.
func IsUDP(pkt []byte) bool {
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		return len(pkt) >= header.IPv4MinimumSize && pkt[9] == uint8(header.UDPProtocolNumber)
	case header.IPv6Version:
		return len(pkt) >= header.IPv6MinimumSize && pkt[6] == uint8(header.UDPProtocolNumber)
	}
	return false
}

// fixGSOLength makes the IP length of a GSO frame's packet its real length
// (a kernel GSO packet need not carry it), and returns its network
// protocol; false if the packet is not of the family gsoType says.
func fixGSOLength(pkt []byte, gsoType uint8) (tcpip.NetworkProtocolNumber, bool) {
	switch {
	case gsoType == unix.VIRTIO_NET_HDR_GSO_TCPV4 && len(pkt) >= header.IPv4MinimumSize && header.IPVersion(pkt) == header.IPv4Version:
		ip := header.IPv4(pkt)
		if int(ip.HeaderLength()) < header.IPv4MinimumSize || int(ip.HeaderLength()) > len(pkt) {
			return 0, false
		}
		ip.SetTotalLength(uint16(len(pkt)))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		return header.IPv4ProtocolNumber, true
	case gsoType == unix.VIRTIO_NET_HDR_GSO_TCPV6 && len(pkt) >= header.IPv6MinimumSize && header.IPVersion(pkt) == header.IPv6Version:
		header.IPv6(pkt).SetPayloadLength(uint16(len(pkt) - header.IPv6MinimumSize))
		return header.IPv6ProtocolNumber, true
	}
	return 0, false
}

// enqueue hands one IP packet to g, which passes it on to gVisor at once
// or holds it to coalesce with the next segments of its flow. The bytes are
// copied, so the read buffer can be reused at once. A packet with a wrong
// checksum is dropped here, as gVisor would have dropped it, unless trusted
// (the kernel vouches for it).
func enqueue(g *gro.GRO, pkt []byte, trusted bool) {
	proto, ok := networkProtocol(pkt)
	if !ok || (!trusted && !checksumsValid(pkt)) {
		return
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = proto
	pb.RXChecksumValidated = true // so GRO does not check them again
	g.Enqueue(pb)
	pb.DecRef()
}

// inject hands pkt, a copy of it, to gVisor without GRO.
func inject(link *link, proto tcpip.NetworkProtocolNumber, pkt []byte) {
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = proto
	pb.RXChecksumValidated = true
	link.InjectInbound(proto, pb)
	pb.DecRef()
}

// networkProtocol returns pkt's network protocol by its IP version.
func networkProtocol(pkt []byte) (tcpip.NetworkProtocolNumber, bool) {
	if len(pkt) == 0 {
		return 0, false
	}
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		return header.IPv4ProtocolNumber, true
	case header.IPv6Version:
		return header.IPv6ProtocolNumber, true
	}
	return 0, false
}

// injector is GRO's dispatcher: it injects what GRO passes on into the
// link endpoint, whose dispatcher is the stack's NIC.
type injector struct{ link *link }

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (i injector) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	i.link.InjectInbound(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher. GRO never calls it.
func (injector) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
