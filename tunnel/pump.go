package tunnel

import (
	"context"
	"errors"
	"os"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// headroom is the space left before each packet in a read or write buffer:
// wireguard's tun writes its virtio-net header (10 bytes) there.
const headroom = 16

// maxPacket is the largest packet a read may return.
const maxPacket = 65535

// inbound moves packets from the TUN into gVisor until the TUN is closed.
func (d *Device) inbound() {
	defer d.wg.Done()
	batch := d.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket)
	}
	sizes := make([]int, batch)
	for {
		n, err := d.tun.Read(bufs, sizes, headroom)
		for i := range n {
			d.deliver(bufs[i][headroom : headroom+sizes[i]])
		}
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

// deliver hands one IP packet to gVisor. The bytes are copied, so the read
// buffer can be reused at once.
func (d *Device) deliver(pkt []byte) {
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
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	d.link.InjectInbound(proto, pb)
	pb.DecRef()
}

// outbound moves packets from gVisor to the TUN until ctx is done. It
// writes in batches so wireguard's tun can coalesce TCP segments (GRO)
// into fewer, larger writes.
func (d *Device) outbound(ctx context.Context) {
	defer d.wg.Done()
	batch := d.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, headroom+maxPacket)
	}
	out := make([][]byte, 0, batch)
	for {
		pkt := d.link.ReadContext(ctx)
		if pkt == nil {
			return // ctx done
		}
		out = out[:0]
		for pkt != nil {
			out = append(out, serialize(bufs[len(out)], pkt))
			pkt.DecRef()
			if len(out) == batch {
				break
			}
			pkt = d.link.Read() // nil when nothing more is queued
		}
		if _, err := d.tun.Write(out, headroom); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			d.log.Debug("TUN write", "tun", d.name, "err", err)
		}
	}
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
