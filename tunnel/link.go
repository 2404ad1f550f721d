package tunnel

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// link is the gVisor link endpoint of the TUN. Packets gVisor sends are
// written to the TUN at once, in the sender's goroutine (a TCP processor, a
// flow's copy goroutine, a timer), each as one frame behind its virtio-net
// header, as gVisor's fdbased endpoint writes to its file: no queue, no
// pump goroutine between the stack and the TUN.
//
// That is backpressure rather than a drop-if-full queue: gVisor's channel
// endpoint, which came before, dropped what did not fit in its 1024
// packets, and 64 connections moving 1 MiB answers overflowed it by
// thousands of packets a run, which clients then waited to retransmit
// (kubetun issue 10). A write to a TUN hands the packet to the kernel's
// stack within the call (tun_get_user, netif_receive_skb), so a sender
// goes at the pace the kernel takes its packets. It also saves every reply
// a goroutine handoff.
//
// It advertises RX checksum offload, which makes gVisor trust the checksums
// of every packet injected: the inbound pump checks them itself
// (checksumsValid) before GRO, whose coalesced packets carry stale ones. It
// advertises host GSO too: gVisor's TCP then hands it segments of up to
// gsoMaxSize with GSO options, its checksum left for the kernel to finish
// (the pseudo-header sum in the TCP checksum field), and the frame's
// virtio-net header has the kernel segment them into MSS-sized packets.
// gVisor's cost is per packet: the download direction (gVisor → TUN)
// otherwise carries 1448-byte segments one by one (Tailscale measured
// 2.15 → 10.8 Gbit/s out of gVisor with it).
type link struct {
	mtu        atomic.Uint32
	dispatcher atomic.Pointer[dispatcherRef] // nil: detached
	w          frameWriter
}

// dispatcherRef holds the stack's dispatcher, so that it can be swapped
// atomically: the inbound pump reads it for every packet.
type dispatcherRef struct{ d stack.NetworkDispatcher }

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ stack.GSOEndpoint  = (*link)(nil)
)

// newLink returns a link of the given MTU that writes its frames to w.
func newLink(mtu int, w frameWriter) *link {
	l := &link{w: w}
	l.mtu.Store(uint32(mtu))
	return l
}

// InjectInbound hands pkt, an IP packet read from the TUN, to the stack in
// the caller's goroutine. Nothing is delivered while the link is detached.
func (l *link) InjectInbound(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if r := l.dispatcher.Load(); r != nil {
		r.d.DeliverNetworkPacket(proto, pkt)
	}
}

// WritePackets implements stack.LinkWriter: it writes each packet to the
// TUN as one frame, in order, before it returns; several goroutines may
// call it at once. A packet the kernel refuses is dropped (it reports
// fewer written, and the stack's link wrapper counts the drop); once the
// TUN is closed it reports ErrClosedForSend.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	f := framePool.Get().(*frame)
	defer framePool.Put(f)
	n := 0
	for _, pkt := range pkts.AsSlice() {
		err := writePacket(l.w, f, pkt)
		switch {
		case err == nil:
			n++
		case closedErr(err):
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
	}
	return n, nil
}

// MTU implements stack.LinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (l *link) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint: a TUN frame has no link
// header (the virtio-net header is written from a buffer of its own).
func (*link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint: a TUN has none.
func (*link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (*link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.
func (*link) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// GSOMaxSize implements stack.GSOEndpoint.
func (*link) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint.
func (*link) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// Attach implements stack.LinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.dispatcher.Store(nil)
		return
	}
	l.dispatcher.Store(&dispatcherRef{d})
}

// IsAttached implements stack.LinkEndpoint.
func (l *link) IsAttached() bool { return l.dispatcher.Load() != nil }

// Wait implements stack.LinkEndpoint: the link starts no goroutine.
func (*link) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (*link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.
func (*link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.
func (*link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint. The TUN belongs to the Device,
// which closes it.
func (*link) Close() {}

// SetOnCloseAction implements stack.LinkEndpoint.
func (*link) SetOnCloseAction(func()) {}

// frame is one TUN frame being written: the virtio-net header and the
// parts of the packet after it. Frames are pooled, so that a write
// allocates nothing.
type frame struct {
	hdr   [virtioNetHdrLen]byte
	parts [][]byte
	err   error
	// write is the frame's fileWriter callback, bound once: a closure made
	// per write would be allocated per write.
	write func(fd uintptr) bool
}

var framePool = sync.Pool{New: func() any {
	f := &frame{parts: make([][]byte, 0, 8)}
	f.write = f.writev
	return f
}}

// writePacket writes pkt to w as one frame: its virtio-net header (for a
// TCP segment with host GSO options, the one that has the kernel finish its
// checksum and segment it; for any other packet, all zero), then the packet
// as gVisor holds it, not copied.
func writePacket(w frameWriter, f *frame, pkt *stack.PacketBuffer) error {
	if isGSO(pkt) {
		putVirtioNetHdr(f.hdr[:], pkt)
	} else {
		f.hdr = [virtioNetHdrLen]byte{}
	}
	f.parts = append(f.parts[:0], f.hdr[:])
	views, off := pkt.AsViewList()
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		f.parts = append(f.parts, b[off:])
		off = 0
	}
	err := w.writeFrame(f)
	clear(f.parts) // keep no reference to the packet's buffers
	return err
}

// frameWriter writes one TUN frame, f.parts.
type frameWriter interface {
	writeFrame(f *frame) error
}

// fileWriter writes frames to the TUN's file with writev(2): the parts go
// to the kernel as they are, without being copied into one buffer first.
// One writev to a TUN is one whole frame, so writers need no lock of their
// own; the file's poller serializes them.
type fileWriter struct{ rc syscall.RawConn }

func newFileWriter(f *os.File) (fileWriter, error) {
	rc, err := f.SyscallConn()
	return fileWriter{rc}, err
}

func (w fileWriter) writeFrame(f *frame) error {
	f.err = nil
	if err := w.rc.Write(f.write); err != nil {
		return os.ErrClosed // the only way RawConn.Write fails once it worked
	}
	return f.err
}

// writev is fileWriter's callback for f: it reports false only when the
// TUN cannot take the frame yet (EAGAIN), and the poller waits for room.
func (f *frame) writev(fd uintptr) bool {
	for {
		_, err := unix.Writev(int(fd), f.parts)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		f.err = err
		return true
	}
}
