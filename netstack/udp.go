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

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
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

	// udpEndpointBuf is the receive buffer of a session's gVisor endpoint,
	// which holds what DeliverUDP leaves to gVisor (the first datagram,
	// fragmented ones) until the session reads it: a batch's worth
	// (udpBatchBuf), less than gVisor's default, as it counts per session
	// (DefaultMaxUDPQueuedBytes).
	udpEndpointBuf = udpBatchBuf

	// udpTick is how often an idle session wakes to check its timeout and
	// whether its Service still exists.
	udpTick = 2 * time.Second

	maxDatagram = 65535

	// udpBatch is the most client datagrams a session takes at once (from
	// gVisor's endpoint and its fast-path queue) and writes to its pod with
	// one sendmmsg: under a flood the syscall, not the copy, is the cost
	// per datagram.
	udpBatch = 64
	// udpBatchBuf is the buffer a batch is read into, taken from a pool
	// only while datagrams are waiting: an idle session holds none. A
	// datagram is read only while a whole maximal one still fits.
	udpBatchBuf = 2 * maxDatagram
)

// batchBufs holds the *[]byte buffers of udpBatchBuf bytes that sessions
// read client datagrams into; replyBufs those of maxDatagram bytes they read
// the pods' answers into.
var (
	batchBufs = sync.Pool{New: func() any { b := make([]byte, udpBatchBuf); return &b }}
	replyBufs = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}
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
	cep    tcpip.Endpoint // gVisor's side, connected to the client; run reads it
	wq     *waiter.Queue  // cep's
	client *gonet.UDPConn // cep as a net.Conn; copyReplies writes it
	idle   time.Duration
	last   atomic.Int64 // UnixNano of the last datagram either way

	mu  sync.Mutex // guards ep, pod; held per re-route, not per datagram
	ep  resolver.Endpoint
	pod net.Conn // the host socket connected to ep; nil before the first dial

	readers sync.WaitGroup // the pod-to-client copier(s)

	// fastQ holds the datagrams DeliverUDP took for this session, past
	// gVisor; run reads them after what gVisor's endpoint holds.
	// fastBytes counts their bytes.
	fastQ     chan []byte
	fastBytes atomic.Int64
	// ended is set when run has stopped taking from fastQ; DeliverUDP,
	// which may still hold the session, then empties what it queued
	// (drainQueue), so that the Stack's count of queued bytes stays true.
	ended atomic.Bool
	// active is the counter of the session's Service (serviceFlows): the
	// session counts in it from its start until run ends.
	active *atomic.Int64
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
		s.count.udpRefused.Add(1)
		return false
	}
	if s.refuseUDP != "" {
		if _, said := s.udpRefusedSaid.LoadOrStore(sp.Service, true); !said {
			s.udpRefusedCount.Add(1)
			s.log.Warn("UDP to this Service is refused (ICMP port unreachable): "+s.refuseUDP, "service", sp.Service, "dst", dst)
		}
		s.count.udpRefused.Add(1)
		return false
	}
	if !s.reserveUDP(src.Addr()) {
		s.log.Debug("UDP session limit reached; datagram dropped", "src", src, "dst", dst)
		s.count.udpLimited.Add(1)
		return true
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq) // queues the first datagram on ep
	if err != nil {
		s.releaseUDP(src.Addr())
		s.log.Debug("creating UDP endpoint", "src", src, "dst", dst, "err", err)
		return true
	}
	ep.SocketOptions().SetReceiveBufferSize(udpEndpointBuf, true)
	sess := &udpSession{s: s, src: src, dst: dst, cep: ep, wq: &wq, client: gonet.NewUDPConn(&wq, ep), idle: s.udp.idle,
		fastQ: make(chan []byte, udpQueueLen)}
	if dst.Port() == 53 {
		sess.idle = s.udp.dnsIdle
	}
	sess.last.Store(time.Now().UnixNano())
	if !s.addSession(sess) {
		sess.client.Close()
		s.releaseUDP(src.Addr())
		return true
	}
	s.count.udpSessions.Add(1)
	sess.active = s.byService.start(sp.Service)
	// From the next datagram on, the pump hands this flow's datagrams to
	// the session directly (DeliverUDP). This runs on the packet path, so
	// no later datagram can pass the first, which gVisor holds.
	s.fast.Store(flowKey{src, dst}, sess)
	go sess.run()
	return true
}

// reserveUDP counts a new session from src, or reports that a limit is
// reached.
func (s *Stack) reserveUDP(src netip.Addr) bool { return s.udpSessions.Reserve(src) }

func (s *Stack) releaseUDP(src netip.Addr) { s.udpSessions.Release(src) }

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

// EndStaleSessions ends the UDP sessions whose Service port has left the
// table or has no usable endpoint now, so that the client's next datagram
// is treated as a new session's would be: refused with ICMP port
// unreachable, as kube-proxy's REJECT rule does. Without it, a session
// notices on its next datagram or tick and that datagram is lost silently.
// Call it after each table update; it never blocks on the packet path.
func (s *Stack) EndStaleSessions() {
	var stale []*udpSession
	s.mu.Lock()
	for sess := range s.sessions {
		if sp, ok := s.services.Lookup(resolver.UDP, sess.dst); !ok || len(sp.Usable()) == 0 {
			stale = append(stale, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range stale {
		s.log.Debug("UDP session's service is gone or has no endpoint; ended", "src", sess.src, "dst", sess.dst)
		sess.close()
	}
	// What is kept per Service name goes with the Services.
	s.byService.prune()
	if s.udpRefusedCount.Load() > maxUDPRefusedSaid {
		s.udpRefusedSaid.Clear()
		s.udpRefusedCount.Store(0)
	}
}

// maxUDPRefusedSaid bounds the Services whose UDP refusal was logged
// (Config.RefuseUDP): past it the memory is forgotten on the next table
// update, and each refusal is logged once more.
const maxUDPRefusedSaid = 4096

// run copies client datagrams to the pod until the session ends: idle too
// long, its Service gone, or the Stack closing. It reads every datagram
// waiting in gVisor (up to udpBatch) before it writes them to the pod with
// one sendmmsg.
func (sess *udpSession) run() {
	s := sess.s
	defer s.wg.Done()
	defer sess.end()

	// Registered before the first read, so no wake-up is lost between a
	// read that finds nothing and the wait.
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	sess.wq.EventRegister(&entry)
	defer sess.wq.EventUnregister(&entry)
	tick := time.NewTicker(s.udp.tick)
	defer tick.Stop()

	var (
		sp    *resolver.ServicePort // the port the current endpoint was picked from
		batch = make([][]byte, 0, udpBatch)
		w     = newBatchWriter()
		err   error
	)
	for {
		bp := batchBufs.Get().(*[]byte)
		batch, err = sess.readBatch(batch[:0], *bp)
		if err != nil && len(batch) == 0 {
			batchBufs.Put(bp)
			return // closed, or the client's host refused our replies
		}
		batch = sess.drainFast(batch)
		if len(batch) == 0 {
			batchBufs.Put(bp)
			bp = nil
			select {
			case <-readable:
				continue
			case d := <-sess.fastQ:
				sess.dequeued(len(d))
				batch = sess.drainFast(append(batch, d))
			case <-tick.C:
				if sess.expired() {
					return
				}
				continue
			}
		}
		ok := sess.forward(batch, &sp, w)
		if bp != nil {
			batchBufs.Put(bp)
		}
		if !ok {
			return
		}
	}
}

// expired reports, on a tick with no datagram waiting, whether the session
// ends: no datagram either way for its idle timeout, or its Service port
// gone from the table.
func (sess *udpSession) expired() bool {
	s := sess.s
	if time.Since(time.Unix(0, sess.last.Load())) > sess.idle {
		s.log.Debug("UDP session idle; ended", "src", sess.src, "dst", sess.dst)
		return true
	}
	if _, ok := s.services.Lookup(resolver.UDP, sess.dst); !ok {
		s.log.Debug("UDP session's service is gone; ended", "src", sess.src, "dst", sess.dst)
		return true
	}
	return false
}

// end undoes what handleUDP set up, once run has stopped: it closes both
// sides, drops what DeliverUDP still queued for the session (ended tells
// it to drop what it queues from now on), waits for the pod-to-client
// copier, and gives back the session's slot under its client's limit and
// its count under its Service.
func (sess *udpSession) end() {
	s := sess.s
	sess.close()
	sess.ended.Store(true)
	sess.drainQueue()
	sess.readers.Wait()
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	s.releaseUDP(sess.src.Addr())
	s.byService.end(sess.active)
}

// drainFast appends to batch the datagrams DeliverUDP queued, until none
// is left or the batch is full.
func (sess *udpSession) drainFast(batch [][]byte) [][]byte {
	for len(batch) < udpBatch {
		select {
		case d := <-sess.fastQ:
			sess.dequeued(len(d))
			batch = append(batch, d)
		default:
			return batch
		}
	}
	return batch
}

// forward sends batch to the session's endpoint, picking one first if the
// Service port changed. The snapshot decides, batch by batch (a batch is
// what arrived since the last one): a session never outlives its Service,
// and never sticks to an endpoint that left. It reports false when the
// session must end: its Service is gone or has no endpoint now, so that the
// client's next datagram is refused as a new session's would be. *sp is the
// port the current endpoint was picked from.
func (sess *udpSession) forward(batch [][]byte, sp **resolver.ServicePort, w *batchWriter) bool {
	s := sess.s
	sess.last.Store(time.Now().UnixNano())
	cur, ok := s.services.Lookup(resolver.UDP, sess.dst)
	if !ok {
		s.log.Debug("UDP session's service is gone; ended", "src", sess.src, "dst", sess.dst)
		return false
	}
	if cur != *sp || sess.pod == nil {
		if !sess.route(cur) {
			s.log.Debug("UDP session's service has no endpoint; ended", "src", sess.src, "dst", sess.dst)
			return false
		}
		*sp = cur
	}
	w.write(sess, batch)
	return true
}

// readBatch appends to batch the client datagrams waiting in gVisor, each
// read into buf after the one before, until none is waiting, udpBatch are
// read, or a maximal datagram might no longer fit. The error is nil when
// nothing more is waiting, and non-nil once the endpoint is closed or has
// failed.
func (sess *udpSession) readBatch(batch [][]byte, buf []byte) ([][]byte, error) {
	off := 0
	for len(batch) < udpBatch && len(buf)-off >= maxDatagram {
		w := tcpip.SliceWriter(buf[off:])
		res, err := sess.cep.Read(&w, tcpip.ReadOptions{})
		if err != nil {
			if _, ok := err.(*tcpip.ErrWouldBlock); ok {
				return batch, nil
			}
			return batch, errors.New(err.String())
		}
		batch = append(batch, buf[off:off+res.Count])
		off += res.Count
	}
	return batch, nil
}

// batchWriter is a session's sendmmsg state, reused from batch to batch.
type batchWriter struct {
	msgs []ipv4.Message // ipv6.Message is the same type
	bufs [][]byte       // msgs[i].Buffers is bufs[i:i+1]
}

func newBatchWriter() *batchWriter {
	w := &batchWriter{msgs: make([]ipv4.Message, udpBatch), bufs: make([][]byte, udpBatch)}
	for i := range w.msgs {
		w.msgs[i].Buffers = w.bufs[i : i+1]
	}
	return w
}

// write sends batch to the session's pod, with sendmmsg when the pod socket
// is a *net.UDPConn. An ICMP error the pod's host sent for an earlier
// datagram is reported on a send, which then sent nothing: that datagram is
// tried once more. One that fails otherwise is lost, as on a network.
func (w *batchWriter) write(sess *udpSession, batch [][]byte) {
	pc, ok := sess.pod.(*net.UDPConn)
	if !ok {
		for _, b := range batch {
			if _, err := sess.pod.Write(b); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				sess.s.log.Debug("UDP write to endpoint", "endpoint", sess.ep, "err", err)
			}
		}
		return
	}
	copy(w.bufs, batch)
	msgs := w.msgs[:len(batch)]
	// ipv4.PacketConn's WriteBatch is a plain sendmmsg on a connected
	// socket of either family: no address, no control message.
	c := ipv4.NewPacketConn(pc)
	retried := false
	for len(msgs) > 0 {
		n, err := c.WriteBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) && !retried {
				retried = true
				continue
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				sess.s.log.Debug("UDP write to endpoint", "endpoint", sess.ep, "err", err)
			}
			n = max(n, 1) // that datagram is lost; go on with the next
		}
		msgs = msgs[n:]
	}
	clear(w.bufs[:len(batch)]) // the batch's buffer goes back to the pool
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
		sess.s.count.dialFailures.Add(1)
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
// They leave gVisor from the Service's address, as the client expects. It
// holds a buffer only while datagrams are there to relay, and then relays
// every one waiting before it waits again: an idle session holds none.
func (sess *udpSession) copyReplies(pod net.Conn) {
	defer sess.readers.Done()
	sc, ok := pod.(syscall.Conn)
	if !ok {
		sess.copyRepliesBlocking(pod)
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	for {
		if err := waitReadable(rc); err != nil {
			return // closed
		}
		bp := replyBufs.Get().(*[]byte)
		ok := sess.relayWaiting(rc, *bp)
		replyBufs.Put(bp)
		if !ok {
			return
		}
	}
}

// relayWaiting reads, without waiting, each datagram the pod's socket holds
// into buf and relays it. It reports false when the session must stop
// relaying: the socket is closed, or the client's side refused (relay).
func (sess *udpSession) relayWaiting(rc syscall.RawConn, buf []byte) bool {
	for {
		var (
			n       int
			readErr error
		)
		if err := rc.Read(func(fd uintptr) bool {
			n, readErr = unix.Read(int(fd), buf)
			return true
		}); err != nil {
			return false // closed
		}
		switch readErr {
		case nil:
		case unix.EAGAIN:
			return true // all relayed
		case unix.EINTR, unix.ECONNREFUSED:
			continue // ECONNREFUSED: an ICMP error for an earlier datagram
		default:
			return false
		}
		if !sess.relay(buf[:n]) {
			return false
		}
	}
}

// copyRepliesBlocking is copyReplies for a pod connection that is not a
// socket (tests' stand-ins): a plain blocking read per datagram.
func (sess *udpSession) copyRepliesBlocking(pod net.Conn) {
	buf := make([]byte, maxDatagram)
	for {
		n, err := pod.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			return
		}
		if !sess.relay(buf[:n]) {
			return
		}
	}
}

// relay sends one of the pod's datagrams to the client, from the Service's
// address: straight out of the link (sendUDP), or, if it is too large for
// that, through gVisor.
func (sess *udpSession) relay(d []byte) bool {
	sess.last.Store(time.Now().UnixNano())
	// The client's host refused an earlier answer (an ICMP error, which
	// gVisor matched to the session's endpoint): stop, as below.
	if err := sess.cep.LastError(); err != nil {
		sess.client.Close()
		return false
	}
	if sess.s.sendUDP(sess.dst, sess.src, d) {
		return true
	}
	if _, err := sess.client.Write(d); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The session is closing, or the client's host refused an earlier
		// datagram (its socket closed; gVisor reports that on this write).
		// A session that cannot relay answers must not go on forwarding
		// the client's datagrams: end it, and the client's next datagram
		// starts a new one.
		sess.client.Close()
		return false
	}
	return true
}

// close ends the session's sockets, and takes it out of the fast path, so
// that the client's next datagram starts a new session (or is refused);
// run's deferred cleanup does the rest.
func (sess *udpSession) close() {
	sess.s.fast.CompareAndDelete(flowKey{sess.src, sess.dst}, sess)
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
