package netstack

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Handing over to a new kubetun without cutting a flow.
//
// A new kubetun (the successor) takes over the TUN from the running one (the
// predecessor), which keeps the flows it holds until they end. The
// successor is the TUN's only reader: it passes the predecessor the packets
// of the predecessor's flows, which inject them into their own stack and
// write the replies to their own descriptor of the same TUN.
//
// Classification costs the successor's own flows nothing: a TCP segment of
// one of them matches a gVisor endpoint and never reaches the code below,
// and a UDP datagram of one of its sessions is taken by the fast path
// (DeliverUDP) first. Only what the successor's stack would otherwise
// refuse is looked at: a TCP segment that matches no endpoint and is not a
// SYN (or is the SYN of a connection the predecessor was setting up when it
// handed over), and a UDP datagram of a session the predecessor listed.

// FlowID names a flow: the client's address and port, and the Service
// address and port it connected to.
type FlowID struct {
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
}

// Handed is what a predecessor holds when it hands over: the TCP
// connections it was setting up (a retransmitted SYN of one of them must
// reach it, not start a second connection in the successor) and its UDP
// sessions.
type Handed struct {
	TCPSetups   []FlowID `json:"tcpSetups"`
	UDPSessions []FlowID `json:"udpSessions"`
}

// Forwarder passes a packet to the predecessor: a whole IP packet whose
// checksums were checked or vouched for. It must not block, and reports
// false when the packet could not be passed (it is then dropped, as a full
// queue drops).
type Forwarder interface {
	Forward(pkt []byte) bool
}

// predecessor is a Stack's draining predecessor, while it lasts.
type predecessor struct {
	fwd    Forwarder
	setups map[FlowID]struct{} // immutable
	udp    sync.Map            // FlowID -> struct{}: sessions the predecessor may still hold
}

// handoverCounters count what was passed to the predecessor.
type handoverCounters struct {
	packets, bytes, failed atomic.Uint64
}

// SetPredecessor makes the stack pass the packets of h's flows, and of the
// TCP connections it does not know, to fwd, until ClearPredecessor.
func (s *Stack) SetPredecessor(fwd Forwarder, h Handed) {
	p := &predecessor{fwd: fwd, setups: make(map[FlowID]struct{}, len(h.TCPSetups))}
	for _, id := range h.TCPSetups {
		p.setups[id] = struct{}{}
	}
	for _, id := range h.UDPSessions {
		p.udp.Store(id, struct{}{})
	}
	s.pred.Store(p)
}

// ClearPredecessor stops passing packets on: the predecessor is gone, and
// what would have gone to it is refused as any unknown flow is.
func (s *Stack) ClearPredecessor() { s.pred.Store(nil) }

// ForgetHandedUDP is called for a datagram the predecessor sent back, as it
// has no session for it (any more): the successor serves the session from
// now on. It reports whether pkt is UDP.
func (s *Stack) ForgetHandedUDP(pkt []byte) bool {
	key, _, ok := parseUDP(pkt)
	if !ok {
		return false
	}
	if p := s.pred.Load(); p != nil {
		p.udp.Delete(FlowID{key.src, key.dst})
	}
	return true
}

// HandedStats are the packets passed to the predecessor.
type HandedStats struct {
	Packets, Bytes, Failed uint64
}

// Handed returns what was passed to the predecessor so far.
func (s *Stack) HandedStats() HandedStats {
	return HandedStats{Packets: s.handed.packets.Load(), Bytes: s.handed.bytes.Load(), Failed: s.handed.failed.Load()}
}

// forward passes pkt to the predecessor and counts it.
func (s *Stack) forward(p *predecessor, pkt []byte) bool {
	if !p.fwd.Forward(pkt) {
		s.handed.failed.Add(1)
		return false
	}
	s.handed.packets.Add(1)
	s.handed.bytes.Add(uint64(len(pkt)))
	return true
}

// forwardSegment passes a TCP segment that matched no endpoint to the
// predecessor, if there is one and the segment may be its: anything but a
// SYN, or a SYN of a connection it was setting up. It runs on the packet
// path, in gVisor's handler for unmatched segments.
func (s *Stack) forwardSegment(id stack.TransportEndpointID, flags header.TCPFlags, pkt *stack.PacketBuffer) bool {
	p := s.pred.Load()
	if p == nil {
		return false
	}
	if flags.Contains(header.TCPFlagSyn) && !flags.Contains(header.TCPFlagAck) {
		if _, ok := p.setups[FlowID{addrPort(id.RemoteAddress, id.RemotePort), addrPort(id.LocalAddress, id.LocalPort)}]; !ok {
			return false
		}
	}
	v := stack.PayloadSince(pkt.NetworkHeader())
	defer v.Release()
	return s.forward(p, v.AsSlice())
}

// forwardUDP passes a datagram no session of this stack took to the
// predecessor, if one of its sessions may be the datagram's.
func (s *Stack) forwardUDP(key flowKey, pkt []byte) bool {
	p := s.pred.Load()
	if p == nil {
		return false
	}
	if _, ok := p.udp.Load(FlowID{key.src, key.dst}); !ok {
		return false
	}
	return s.forward(p, pkt)
}

// forwarderRef holds a Forwarder for an atomic.Pointer.
type forwarderRef struct{ Forwarder }

// HandOver lists what the stack is in the middle of, for its successor:
// the TCP connections being set up and the UDP sessions. Call it once the
// TUN no longer feeds the stack (tunnel.Device.Pause); what arrives later
// comes from the successor. From then on a UDP datagram no session takes
// is not a new session's: DeliverUDP passes it back to the successor
// (back), which serves it. New TCP connections are refused.
func (s *Stack) HandOver(back Forwarder) Handed {
	s.successor.Store(&forwarderRef{back})
	s.refuseNew.Store(true)
	s.handedOver.Store(true)
	var h Handed
	s.pending.Range(func(k, _ any) bool {
		id := k.(stack.TransportEndpointID)
		h.TCPSetups = append(h.TCPSetups, FlowID{addrPort(id.RemoteAddress, id.RemotePort), addrPort(id.LocalAddress, id.LocalPort)})
		return true
	})
	s.fast.Range(func(k, _ any) bool {
		key := k.(flowKey)
		h.UDPSessions = append(h.UDPSessions, FlowID{key.src, key.dst})
		return true
	})
	return h
}

// TakeBack undoes HandOver: the successor failed before it served, and
// this stack serves new connections again.
func (s *Stack) TakeBack() {
	s.handedOver.Store(false)
	s.refuseNew.Store(false)
	s.successor.Store(nil)
}

// returnUDP passes a datagram no session took back to the successor, once
// handed over; false before.
func (s *Stack) returnUDP(pkt []byte) bool {
	if !s.handedOver.Load() {
		return false
	}
	if r := s.successor.Load(); r != nil {
		r.Forward(pkt)
	}
	return true // dropped if there is nobody to take it: not this stack's any more
}

// WaitIdle waits until every TCP connection of the stack, spliced or being
// set up, has ended, or ctx is done, and reports whether they all ended. A
// predecessor that handed over waits with it for its last connection. Its
// UDP sessions do not hold it: they end only by going idle (UDPIdleTimeout),
// and once the predecessor has exited their clients' next datagrams start
// sessions in the successor.
func (s *Stack) WaitIdle(ctx context.Context) bool {
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		s.mu.Lock()
		left := len(s.flows) + s.setups.Total()
		s.mu.Unlock()
		if left == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
