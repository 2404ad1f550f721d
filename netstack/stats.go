package netstack

import "sync/atomic"

// Stats counts what a Stack has done since it started: what operators need
// to tell a Service without endpoints, a pod that does not answer and an
// overloaded kubetun apart. Every field only grows, except the Active ones.
type Stats struct {
	TCPForwarded   uint64 // connections completed and spliced to a pod
	TCPRefused     uint64 // SYNs reset at once: no Service owns the address and port, or it has no usable endpoint
	TCPUnreachable uint64 // SYNs reset because no pod answered the dial (a second endpoint tried too)
	TCPLimited     uint64 // SYNs dropped because their client had its share of connections being set up (or all clients the total), or reset because the flows were at their cap
	TCPAborted     uint64 // clients gone (a RST, no final ACK within the handshake timeout) before their handshake completed
	DialFailures   uint64 // dials to pods that failed, each endpoint tried counting once
	TCPActive      int    // connections being spliced now
	TCPSetups      int    // connections being set up now: SYN received, handshake not done
	TCPSetupsMax   int    // the most of TCPSetups from one client address

	UDPSessions uint64 // UDP sessions started
	UDPRefused  uint64 // datagrams refused with ICMP port unreachable
	UDPLimited  uint64 // datagrams dropped: a session limit reached, or a session's queue full
	UDPActive   int    // sessions now
	UDPQueued   int64  // bytes of client datagrams queued for pods now, every session together

	PingReplies uint64 // echo requests answered
	LinkDrops   uint64 // packets the stack sent that never left: the link did not take them, or could not write them
}

// counters are the Stats a Stack counts on the packet path, lock-free.
type counters struct {
	tcpForwarded, tcpRefused, tcpUnreachable, tcpLimited, tcpAborted, dialFailures atomic.Uint64
	udpSessions, udpRefused, udpLimited                                            atomic.Uint64
}

// Stats returns the Stack's counters now. It takes the Stack's lock for the
// Active counts only: cheap enough for a metrics scrape.
func (s *Stack) Stats() Stats {
	st := Stats{
		TCPForwarded:   s.count.tcpForwarded.Load(),
		TCPRefused:     s.count.tcpRefused.Load(),
		TCPUnreachable: s.count.tcpUnreachable.Load(),
		TCPLimited:     s.count.tcpLimited.Load(),
		TCPAborted:     s.count.tcpAborted.Load(),
		DialFailures:   s.count.dialFailures.Load(),
		UDPSessions:    s.count.udpSessions.Load(),
		UDPRefused:     s.count.udpRefused.Load(),
		UDPLimited:     s.count.udpLimited.Load(),
		UDPQueued:      s.udpQueued.Load(),
		PingReplies:    s.link.replies.Load(),
		LinkDrops:      s.link.dropped(),
	}
	s.mu.Lock()
	st.TCPActive, st.UDPActive = len(s.flows), len(s.sessions)
	s.mu.Unlock()
	st.TCPSetups = s.setups.Total()
	st.TCPSetupsMax, _ = s.setups.Max() // at most MaxSetups sources
	return st
}
