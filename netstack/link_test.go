package netstack

import (
	"sync/atomic"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestLinkDropsCounted: packets the link's queue has no room for are
// counted (gVisor's channel endpoint drops them without an error), and so
// are those a link took and reports it could not write.
func TestLinkDropsCounted(t *testing.T) {
	link := channel.New(2, 1500, "")
	defer link.Close()
	f := newLinkFilter(link, buildTable(t))
	var pkts stack.PacketBufferList
	for range 5 {
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(udpPacket(client, pod1, []byte("x")))})
		pb.NetworkProtocolNumber = header.IPv4ProtocolNumber
		pkts.PushBack(pb)
	}
	defer pkts.DecRef()
	if n, err := f.WritePackets(pkts); n != 2 || err != nil {
		t.Errorf("WritePackets of 5 on a queue of 2 = %d, %v; want 2, nil", n, err)
	}
	if got := f.dropped(); got != 3 {
		t.Errorf("dropped() = %d, want 3", got)
	}

	unwritten := &droppingLink{Endpoint: link}
	unwritten.n.Store(4)
	if got := newLinkFilter(unwritten, buildTable(t)).dropped(); got != 4 {
		t.Errorf("dropped() over a link that reports 4 packets it could not write = %d, want 4", got)
	}
}

// droppingLink is a link that reports n packets taken and not written, as
// tunnel's link counts the frames the TUN refused.
type droppingLink struct {
	*channel.Endpoint
	n atomic.Uint64
}

func (l *droppingLink) Dropped() uint64 { return l.n.Load() }
