package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestLinkDropsCounted: packets the link's queue has no room for are
// counted (gVisor's channel endpoint drops them without an error).
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
	if got := f.drops.Load(); got != 3 {
		t.Errorf("drops = %d, want 3", got)
	}
}
