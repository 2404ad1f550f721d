package tunnel

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// recorder is a fake TUN file: it keeps a copy of each frame written, as
// long as it has room; what does not fit is dropped.
type recorder chan []byte

func (r recorder) writeFrame(f *frame) error {
	select {
	case r <- bytes.Join(f.parts, nil):
	default:
	}
	return nil
}

// next returns the next frame written, or nil once ctx is done.
func (r recorder) next(ctx context.Context) []byte {
	select {
	case f := <-r:
		return f
	case <-ctx.Done():
		return nil
	}
}

// startLink returns a link that writes to w, its writer running until the
// test ends.
func startLink(t testing.TB, w frameWriter) *link {
	l := newLink(DefaultMTU, w, 256)
	done := make(chan struct{})
	go func() { defer close(done); l.write() }()
	t.Cleanup(func() { l.close(); <-done })
	return l
}

// plainPacket returns an outbound packet without GSO options as gVisor
// hands it to a link, its headers pushed in front of payload.
func plainPacket(payload []byte) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(payload),
	})
	th := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	th.Encode(&header.TCPFields{SrcPort: 80, DstPort: 40000, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck})
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(pkt.Size()), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: srv4, DstAddr: cli4})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	return pkt
}

// TestLinkWritesInOrder: every packet of a batch is written in order,
// each as one frame behind an all-zero virtio-net header (or a GSO one),
// and WritePackets reports them all taken.
func TestLinkWritesInOrder(t *testing.T) {
	r := make(recorder, 8)
	l := startLink(t, r)
	var pkts stack.PacketBufferList
	var want [][]byte
	for _, p := range []string{"one", "two", "three"} {
		pkt := plainPacket([]byte(p))
		want = append(want, bytes.Clone(pkt.ToView().AsSlice()))
		pkts.PushBack(pkt)
	}
	gso := gsoSegment(false, 5000, 1448)
	want = append(want, bytes.Clone(gso.ToView().AsSlice()))
	pkts.PushBack(gso)
	n, err := l.WritePackets(pkts)
	pkts.DecRef()
	if n != 4 || err != nil {
		t.Fatalf("WritePackets of 4 = %d, %v; want 4, nil", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, w := range want {
		f := r.next(ctx)
		if f == nil {
			t.Fatalf("%d frames written, want 4", i)
		}
		hdr := f[:virtioNetHdrLen]
		if got := f[virtioNetHdrLen:]; !bytes.Equal(got, w) {
			t.Errorf("frame %d: packet % x, want % x", i, got, w)
		}
		if plain := i < 3; plain && !bytes.Equal(hdr, make([]byte, virtioNetHdrLen)) {
			t.Errorf("frame %d: virtio-net header % x, want all zero", i, hdr)
		} else if !plain && hdr[1] == 0 {
			t.Errorf("frame %d: virtio-net header % x, want a GSO type", i, hdr)
		}
	}
}

// TestLinkClosed: once the link is closed, WritePackets reports
// ErrClosedForSend, also to a sender that waited for room.
func TestLinkClosed(t *testing.T) {
	l := newLink(DefaultMTU, discard{}, 1) // no writer: the queue stays full
	write := func() (int, tcpip.Error) {
		var pkts stack.PacketBufferList
		pkts.PushBack(plainPacket([]byte("x")))
		defer pkts.DecRef()
		return l.WritePackets(pkts)
	}
	if n, err := write(); n != 1 || err != nil {
		t.Fatalf("WritePackets to an open link = %d, %v; want 1, nil", n, err)
	}
	waited := make(chan tcpip.Error, 1)
	go func() { _, err := write(); waited <- err }()
	time.Sleep(10 * time.Millisecond) // the sender waits for room (or not yet: either way it must end)
	l.close()
	if err := <-waited; err == nil {
		t.Error("WritePackets waiting on a full queue when the link closed: nil error, want ErrClosedForSend")
	}
	if n, err := write(); n != 0 || err == nil {
		t.Fatalf("WritePackets to a closed link = %d, %v; want 0, ErrClosedForSend", n, err)
	}
}

// failing is a TUN file that refuses every frame.
type failing struct{}

func (failing) writeFrame(*frame) error { return unix.EIO }

// TestLinkWriteErrorsDropped: a frame the TUN refuses is counted as
// dropped, one per packet, and the writer goes on with the next.
func TestLinkWriteErrorsDropped(t *testing.T) {
	l := startLink(t, failing{})
	var pkts stack.PacketBufferList
	for range 3 {
		pkts.PushBack(plainPacket([]byte("x")))
	}
	n, err := l.WritePackets(pkts)
	pkts.DecRef()
	if n != 3 || err != nil {
		t.Fatalf("WritePackets of 3 = %d, %v; want 3, nil (taken; the write fails later)", n, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Dropped() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := l.Dropped(); got != 3 {
		t.Errorf("Dropped() = %d after 3 failed writes, want 3", got)
	}
}

// TestLinkWriteAllocs: sending a packet and writing it to the TUN's file
// allocates nothing (a pipe stands in for the TUN).
func TestLinkWriteAllocs(t *testing.T) {
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	defer wr.Close()
	go func() {
		b := make([]byte, 1<<16)
		for {
			if _, err := rd.Read(b); err != nil {
				return
			}
		}
	}()
	w, err := newFileWriter(wr)
	if err != nil {
		t.Fatal(err)
	}
	l := newLink(DefaultMTU, w, 1)
	var pkts stack.PacketBufferList
	pkts.PushBack(plainPacket(make([]byte, 100)))
	defer pkts.DecRef()
	f := framePool.Get().(*frame)
	if n := testing.AllocsPerRun(100, func() {
		l.WritePackets(pkts)
		pkt := <-l.q
		writePacket(l.w, f, pkt)
		pkt.DecRef()
	}); n > 0 {
		t.Errorf("WritePackets allocates %.1f times per packet, want 0", n)
	}
}
