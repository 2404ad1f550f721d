package tunnel

import (
	"context"
	"errors"
	"os"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// headroom is the space left before each packet in a read or write buffer:
// wireguard's tun writes its virtio-net header (10 bytes) there.
const headroom = 16

// maxPacket is the largest packet a read may return.
const maxPacket = 65535

// inbound moves packets from the TUN into gVisor until the TUN is closed.
//
// Each batch read goes through gVisor's GRO, which coalesces consecutive
// segments of a TCP flow into one packet of up to 64 KiB before the stack
// sees them: a pod client's MSS is 1448, and gVisor's cost is per packet, not
// per byte. GRO rewrites the IP length of a coalesced packet but neither
// checksum, so the link advertises RX checksum offload (newLink) and
// checksums are checked here instead, per packet read, before GRO: without
// the offload gVisor re-checks them and drops every coalesced packet as
// malformed.
func (d *Device) inbound() {
	defer d.wg.Done()
	batch := d.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket)
	}
	sizes := make([]int, batch)
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = injector{d.link.Endpoint}
	for {
		n, err := d.tun.Read(bufs, sizes, headroom)
		for i := range n {
			enqueue(&g, bufs[i][headroom:headroom+sizes[i]])
		}
		// Hand what GRO still holds to gVisor before blocking on the
		// next read.
		g.Flush()
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// A malformed packet or a GSO type wireguard's tun cannot
			// split: that packet is lost, the device is fine.
			d.log.Debug("TUN read", "tun", d.name, "err", err)
		}
	}
}

// enqueue hands one IP packet to g, which passes it on to gVisor at once
// or holds it to coalesce with the next segments of its flow. The bytes are
// copied, so the read buffer can be reused at once. A packet with a wrong
// checksum is dropped here, as gVisor would have dropped it.
func enqueue(g *gro.GRO, pkt []byte) {
	if len(pkt) == 0 {
		return
	}
	var proto = header.IPv4ProtocolNumber
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		return
	}
	if !checksumsValid(pkt) {
		return
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pb.NetworkProtocolNumber = proto
	pb.RXChecksumValidated = true // so GRO does not check them again
	g.Enqueue(pb)
	pb.DecRef()
}

// injector is GRO's dispatcher: it injects what GRO passes on into the
// link endpoint, whose dispatcher is the stack's NIC.
type injector struct{ link *channel.Endpoint }

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (i injector) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	i.link.InjectInbound(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher. GRO never calls it.
func (injector) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// outbound moves packets from gVisor to the TUN until ctx is done. It
// writes in batches so wireguard's tun can coalesce TCP segments (GRO)
// into fewer, larger writes. TCP segments with GSO options (gsoLink) are
// written one by one with their own virtio-net header (writeGSO); plain
// packets queued before one are written first, so the order gVisor queued
// them in is kept.
func (d *Device) outbound(ctx context.Context) {
	defer d.wg.Done()
	batch := d.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket)
	}
	out := make([][]byte, 0, batch)
	tunFile := d.tun.File()
	for {
		pkt := d.link.ReadContext(ctx)
		if pkt == nil {
			return // ctx done
		}
		out = out[:0]
		for n := 0; pkt != nil; {
			if isGSO(pkt) {
				if !d.writePlain(out) {
					pkt.DecRef()
					return
				}
				out = out[:0]
				err := writeGSO(tunFile, bufs[n], pkt)
				pkt.DecRef()
				if err != nil {
					if closedErr(err) {
						return
					}
					d.log.Debug("TUN write", "tun", d.name, "err", err)
				}
			} else {
				out = append(out, serialize(bufs[n], pkt))
				pkt.DecRef()
			}
			if n++; n == batch {
				break
			}
			pkt = d.link.Read() // nil when nothing more is queued
		}
		if !d.writePlain(out) {
			return
		}
	}
}

// writePlain writes out, packets after headroom, with wireguard's
// tun.Write. It reports false once the TUN is closed.
func (d *Device) writePlain(out [][]byte) bool {
	if len(out) == 0 {
		return true
	}
	if _, err := d.tun.Write(out, headroom); err != nil {
		if closedErr(err) {
			return false
		}
		d.log.Debug("TUN write", "tun", d.name, "err", err)
	}
	return true
}

// closedErr reports whether err from a TUN write means it is closed.
func closedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADFD)
}

// serialize copies pkt into buf after the headroom and returns the slice
// from the start of buf to the end of the packet.
func serialize(buf []byte, pkt *stack.PacketBuffer) []byte {
	n := headroom
	for _, s := range pkt.AsSlices() {
		n += copy(buf[n:], s)
	}
	return buf[:n]
}
