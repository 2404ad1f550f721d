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

// link is the gVisor link endpoint of the TUN. Packets gVisor sends wait in
// a queue for the link's writer goroutine (write), which writes each to
// the TUN as one frame behind its virtio-net header, with writev(2), as
// gVisor's fdbased endpoint writes to its file. A sender waits while the
// queue is full: backpressure, not drops. gVisor's channel endpoint, which
// came before, dropped what did not fit in its 1024 packets, and 64
// connections moving 1 MiB answers overflowed it by hundreds to thousands
// of packets a run, which clients then waited to retransmit.
//
// Writing in the sender's goroutine instead (a TCP processor, a flow's
// copy goroutine), as fdbased does, saves a handoff per packet but cost
// more: the TUN write, which carries the kernel's forwarding to the client,
// then no longer runs beside gVisor on another core, and senders of one
// endpoint wait for each other (`go run ./test/bench --cases rr,stream`:
// 20-40 % more CPU per request and per GB downloaded; README, Performance).
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
	q          chan *stack.PacketBuffer // for write; a sender waits while it is full
	done       chan struct{}            // closed by close: ends write and the waits
	closeOnce  sync.Once
	dropped    atomic.Uint64 // packets taken that write could not write (Dropped)
}

// dispatcherRef holds the stack's dispatcher, so that it can be swapped
// atomically: the inbound pump reads it for every packet.
type dispatcherRef struct{ d stack.NetworkDispatcher }

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ stack.GSOEndpoint  = (*link)(nil)
)

// newLink returns a link of the given MTU that writes its frames to w
// once write runs, and queues up to n packets for it.
func newLink(mtu int, w frameWriter, n int) *link {
	l := &link{w: w, q: make(chan *stack.PacketBuffer, n), done: make(chan struct{})}
	l.mtu.Store(uint32(mtu))
	return l
}

// close ends write, and makes WritePackets drop what it is given from now
// on.
func (l *link) close() { l.closeOnce.Do(func() { close(l.done) }) }

// InjectInbound hands pkt, an IP packet read from the TUN, to the stack in
// the caller's goroutine. Nothing is delivered while the link is detached.
func (l *link) InjectInbound(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if r := l.dispatcher.Load(); r != nil {
		r.d.DeliverNetworkPacket(proto, pkt)
	}
}

// WritePackets implements stack.LinkWriter: it queues the packets for
// write, in order, waiting while the queue is full; several goroutines may
// call it at once. Once the link is closed it reports ErrClosedForSend.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	select {
	case <-l.done:
		return 0, &tcpip.ErrClosedForSend{}
	default:
	}
	for n, pkt := range pkts.AsSlice() {
		pkt.IncRef()
		select {
		case l.q <- pkt:
			continue
		default:
		}
		select {
		case l.q <- pkt:
		case <-l.done:
			pkt.DecRef()
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
	}
	return pkts.Len(), nil
}

// write writes the packets queued to the TUN, in order, until close; what
// is still queued then is dropped. A frame the kernel refuses is dropped
// too, and counted (Dropped): the TUN refuses no well-formed frame, so
// any is a fault to see.
func (l *link) write() {
	f := framePool.Get().(*frame)
	defer framePool.Put(f)
	for {
		select {
		case pkt := <-l.q:
			if writePacket(l.w, f, pkt) != nil {
				l.dropped.Add(1)
			}
			pkt.DecRef()
		case <-l.done:
			for {
				select {
				case pkt := <-l.q:
					pkt.DecRef()
				default:
					return
				}
			}
		}
	}
}

// NumQueued returns how many packets wait in q: netstack's Close waits
// until the RSTs it sent have left.
func (l *link) NumQueued() int { return len(l.q) }

// Dropped returns how many packets WritePackets took that never reached
// the TUN: their write failed. netstack counts them with the packets a
// link does not take (kubetun_link_dropped_packets_total).
func (l *link) Dropped() uint64 { return l.dropped.Load() }

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
