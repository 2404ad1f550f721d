package nodeport

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// UDP knobs.
const (
	// udpIdleTimeout ends a session with no datagram either way for this
	// long: the two minutes of a Linux conntrack entry that saw replies,
	// as for ClusterIPs.
	udpIdleTimeout = 2 * time.Minute
	// defaultMaxUDPSessions and defaultMaxUDPSessionsPerSource are
	// Config's defaults, netstack's: the sessions over all node ports
	// (each is a socket and a goroutine), so that a flood of source ports
	// cannot exhaust the host; past them, new sessions' datagrams are
	// dropped.
	defaultMaxUDPSessions          = 4096
	defaultMaxUDPSessionsPerSource = 1024
	maxDatagram                    = 65535
)

// udpListener serves a UDP node port on one address: each client address
// gets a session, a socket connected to one endpoint, whose replies go back
// to the client from the node port.
type udpListener struct {
	l     *Listeners
	conn  *net.UDPConn
	local netip.AddrPort
	done  chan struct{}

	mu       sync.Mutex // guards sessions
	sessions map[netip.AddrPort]*udpSession
	wg       sync.WaitGroup // the sessions' reply goroutines
}

// udpSession is one client of a UDP node port, bound to one endpoint.
type udpSession struct {
	u       *udpListener
	client  netip.AddrPort
	ep      resolver.Endpoint
	backend *net.UDPConn
	last    atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (u *udpListener) sock() syscall.Conn { return u.conn }

func (u *udpListener) Close() {
	u.conn.Close()
	<-u.done
}

// serve reads client datagrams until the socket is closed, then ends every
// session.
func (u *udpListener) serve() {
	defer u.l.wg.Done()
	defer close(u.done)
	defer func() {
		u.mu.Lock()
		for _, s := range u.sessions {
			s.backend.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, client, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error for an earlier reply, and the like
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		s := u.session(client)
		if s == nil {
			continue
		}
		s.last.Store(time.Now().UnixNano())
		s.backend.Write(buf[:n]) // a lost datagram is UDP's to lose
	}
}

// session returns client's session, starting one (or a new one, when its
// endpoint is no longer usable) as needed; nil drops the datagram.
func (u *udpListener) session(client netip.AddrPort) *udpSession {
	sp, ok := u.l.cfg.Services.Load().LookupNodePort(resolver.UDP, u.local.Addr(), u.local.Port())
	u.mu.Lock()
	s := u.sessions[client]
	u.mu.Unlock()
	if s != nil {
		if ok && stillUsable(sp, s.ep) {
			return s
		}
		// The endpoint left the Service (or the Service went): the next
		// datagram goes to a live one, not into a stale flow.
		s.backend.Close()
		u.remove(s)
	}
	if !ok {
		return nil
	}
	if !u.l.udpSessions.Reserve(client.Addr()) {
		return nil
	}
	ep, ok := sp.PickFor(client.Addr())
	if !ok {
		u.l.udpSessions.Release(client.Addr())
		return nil
	}
	backend, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(u.l.redirect(ep.Addr)))
	if err != nil {
		u.l.udpSessions.Release(client.Addr())
		u.l.log.Debug("node port UDP session not started", "service", sp, "endpoint", ep, "err", err)
		return nil
	}
	s = &udpSession{u: u, client: client, ep: ep, backend: backend}
	s.last.Store(time.Now().UnixNano())
	u.mu.Lock()
	u.sessions[client] = s
	u.mu.Unlock()
	u.wg.Add(1)
	go s.replies()
	return s
}

// stillUsable reports whether ep still takes new traffic of sp.
func stillUsable(sp *resolver.ServicePort, ep resolver.Endpoint) bool {
	for _, e := range sp.Usable() {
		if e.Addr == ep.Addr {
			return true
		}
	}
	return false
}

func (u *udpListener) remove(s *udpSession) {
	u.mu.Lock()
	if u.sessions[s.client] == s {
		delete(u.sessions, s.client)
	}
	u.mu.Unlock()
}

// replies copies the endpoint's datagrams to the client until the session
// is idle for udpIdleTimeout or its socket is closed.
func (s *udpSession) replies() {
	defer s.u.wg.Done()
	defer s.u.l.udpSessions.Release(s.client.Addr())
	defer s.u.remove(s)
	defer s.backend.Close()
	buf := make([]byte, maxDatagram)
	for {
		s.backend.SetReadDeadline(time.Unix(0, s.last.Load()).Add(udpIdleTimeout))
		n, err := s.backend.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				if time.Since(time.Unix(0, s.last.Load())) >= udpIdleTimeout {
					return
				}
				continue
			case errors.Is(err, syscall.ECONNREFUSED):
				continue // the pod's port was closed for an earlier datagram
			}
			return
		}
		s.last.Store(time.Now().UnixNano())
		s.u.conn.WriteToUDPAddrPort(buf[:n], s.client)
	}
}
