package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/kubetun/kubetun/resolver"
)

// UDP knobs.
const (
	// UDPIdleTimeout ends a session with no datagram either way for this
	// long: the same two minutes as a Linux conntrack entry that saw
	// replies.
	UDPIdleTimeout = 2 * time.Minute
	// DNSIdleTimeout is the idle timeout of port-53 sessions: a DNS query
	// is answered at once or never, so its session need not outlive a retry.
	DNSIdleTimeout = 30 * time.Second

	// maxUDPSessions and maxUDPSessionsPerSource bound the sessions (each is
	// two sockets and two goroutines) so that a flood of source ports
	// cannot exhaust the host; past them, new sessions' datagrams are
	// dropped.
	maxUDPSessions          = 16384
	maxUDPSessionsPerSource = 1024

	// udpTick is how often an idle session wakes to check its timeout and
	// whether its Service still exists.
	udpTick = 2 * time.Second

	maxDatagram = 65535
)

// udpTimers are a Stack's UDP session timings (see the constants above).
type udpTimers struct {
	idle    time.Duration // UDPIdleTimeout
	dnsIdle time.Duration // DNSIdleTimeout
	tick    time.Duration // udpTick
}

// udpSession is one client address talking to one Service IP:port, bound
// to one endpoint at a time.
type udpSession struct {
	s      *Stack
	src    netip.AddrPort // the client
	dst    netip.AddrPort // the Service
	client *gonet.UDPConn // gVisor's side, connected to the client
	idle   time.Duration
	last   atomic.Int64 // UnixNano of the last datagram either way

	mu  sync.Mutex // guards ep, pod; held per re-route, not per datagram
	ep  resolver.Endpoint
	pod net.Conn // the host socket connected to ep; nil before the first dial

	readers sync.WaitGroup // the pod-to-client copier(s)
}

// handleUDP is the UDP forwarder's handler, run on the packet path for the
// first datagram of every new (client, Service IP:port) pair. It must not
// block. Returning false makes gVisor answer ICMP port unreachable.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	src := addrPort(id.RemoteAddress, id.RemotePort)
	dst := addrPort(id.LocalAddress, id.LocalPort)
	sp, ok := s.services.Lookup(resolver.UDP, dst)
	if !ok || len(sp.Usable()) == 0 {
		s.log.Debug("refused: no service or no endpoint", "proto", "UDP", "src", src, "dst", dst)
		return false
	}
	if !s.reserveUDP(src.Addr()) {
		s.log.Debug("UDP session limit reached; datagram dropped", "src", src, "dst", dst)
		return true
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq) // queues the first datagram on ep
	if err != nil {
		s.releaseUDP(src.Addr())
		s.log.Debug("creating UDP endpoint", "src", src, "dst", dst, "err", err)
		return true
	}
	sess := &udpSession{s: s, src: src, dst: dst, client: gonet.NewUDPConn(&wq, ep), idle: s.udp.idle}
	if dst.Port() == 53 {
		sess.idle = s.udp.dnsIdle
	}
	sess.last.Store(time.Now().UnixNano())
	if !s.addSession(sess) {
		sess.client.Close()
		s.releaseUDP(src.Addr())
		return true
	}
	go sess.run()
	return true
}

// reserveUDP counts a new session from src, or reports that a limit is
// reached.
func (s *Stack) reserveUDP(src netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udpTotal >= maxUDPSessions || s.udpPerSource[src] >= maxUDPSessionsPerSource {
		return false
	}
	s.udpTotal++
	s.udpPerSource[src]++
	return true
}

func (s *Stack) releaseUDP(src netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.udpTotal--
	if s.udpPerSource[src]--; s.udpPerSource[src] <= 0 {
		delete(s.udpPerSource, src)
	}
}

// addSession registers a session and its goroutine with the Stack; false
// once the Stack is closing.
func (s *Stack) addSession(sess *udpSession) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	return true
}

// run copies client datagrams to the pod until the session ends: idle too
// long, its Service gone, or the Stack closing.
func (sess *udpSession) run() {
	s := sess.s
	defer s.wg.Done()
	defer func() {
		sess.close()
		sess.readers.Wait()
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.releaseUDP(sess.src.Addr())
	}()

	buf := make([]byte, maxDatagram)
	var sp *resolver.ServicePort // the port the current endpoint was picked from
	for {
		sess.client.SetReadDeadline(time.Now().Add(s.udp.tick))
		n, err := sess.client.Read(buf)
		if err != nil {
			if !isTimeout(err) {
				return // closed
			}
			if time.Since(time.Unix(0, sess.last.Load())) > sess.idle {
				s.log.Debug("UDP session idle; ended", "src", sess.src, "dst", sess.dst)
				return
			}
			if _, ok := s.services.Lookup(resolver.UDP, sess.dst); !ok {
				s.log.Debug("UDP session's service is gone; ended", "src", sess.src, "dst", sess.dst)
				return
			}
			continue
		}
		sess.last.Store(time.Now().UnixNano())

		// The snapshot decides, datagram by datagram: a session never
		// outlives its Service, and never sticks to an endpoint that left.
		cur, ok := s.services.Lookup(resolver.UDP, sess.dst)
		if !ok {
			s.log.Debug("UDP session's service is gone; ended", "src", sess.src, "dst", sess.dst)
			return
		}
		if cur != sp || sess.pod == nil {
			if !sess.route(cur) {
				continue // no endpoint now: the datagram is lost, as on a network
			}
			sp = cur
		}
		if _, err := sess.pod.Write(buf[:n]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			s.log.Debug("UDP write to endpoint", "endpoint", sess.ep, "err", err)
		}
	}
}

// route makes sure the session's endpoint is one of sp's usable endpoints,
// picking and dialling a new one if not. It returns false if there is none.
func (sess *udpSession) route(sp *resolver.ServicePort) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.pod != nil && slices.ContainsFunc(sp.Usable(), func(e resolver.Endpoint) bool { return e.Addr == sess.ep.Addr }) {
		return true
	}
	ep, ok := sp.PickFor(sess.src.Addr())
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(sess.s.ctx, sess.s.dialTimeout)
	pod, err := sess.s.dialer.DialContext(ctx, "udp", ep.Addr.String())
	cancel()
	if err != nil {
		sess.s.log.Debug("UDP dial", "endpoint", ep, "err", err)
		return false
	}
	if sess.pod != nil {
		sess.s.log.Debug("UDP session moves", "src", sess.src, "dst", sess.dst, "from", sess.ep, "to", ep)
		sess.pod.Close() // ends the old copier
	}
	sess.ep, sess.pod = ep, pod
	sess.readers.Add(1)
	go sess.copyReplies(pod)
	return true
}

// copyReplies relays the pod's datagrams to the client until pod is closed.
// They leave gVisor from the Service's address, as the client expects.
func (sess *udpSession) copyReplies(pod net.Conn) {
	defer sess.readers.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := pod.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an ICMP error for an earlier datagram
			}
			return
		}
		sess.last.Store(time.Now().UnixNano())
		if _, err := sess.client.Write(buf[:n]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// The session is closing, or the client's host refused an
			// earlier datagram (its socket closed; gVisor reports that on
			// this write). A session that cannot relay answers must not
			// go on forwarding the client's datagrams: end it, and the
			// client's next datagram starts a new one.
			sess.client.Close()
			return
		}
	}
}

// close ends the session's sockets; run's deferred cleanup does the rest.
func (sess *udpSession) close() {
	sess.client.Close()
	sess.mu.Lock()
	if sess.pod != nil {
		sess.pod.Close()
	}
	sess.mu.Unlock()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
