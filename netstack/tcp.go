package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/sockopt"
)

// handleTCP is the TCP forwarder's handler, run by gVisor in a goroutine of
// its own for each new SYN: look up, pick, dial, then complete the handshake
// or reset. r.Complete is called exactly once on every path.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if s.refuseNew.Load() {
		s.count.tcpRefused.Add(1)
		r.Complete(true)
		return
	}
	if !s.track() {
		r.Complete(true)
		return
	}
	defer s.wg.Done()
	f := s.setup(r)
	if f == nil {
		return
	}
	if !s.addFlow(f) {
		f.abort()
		return
	}
	defer s.removeFlow(f)
	// Counted from here until splice returns, whatever ends the flow.
	defer s.byService.end(s.byService.start(f.service))
	f.splice()
}

// setup takes a SYN to a spliced flow, or to a RST: look up, admit, pick
// and dial, then complete the handshake. A step that ends the connection
// completes r itself (a reset, or a drop) and reports false; one that
// passes it on leaves r to the next, and completeHandshake completes it on
// success, so r is completed exactly once. From the SYN until the
// handshake completes or fails, the connection counts against its client's
// share (reserveSetup), so that a client that never sends its final ACK
// holds at most that many slots, each for at most dialTimeout (twice) and
// handshakeTimeout.
func (s *Stack) setup(r *tcp.ForwarderRequest) *flow {
	t, ok := s.lookupTarget(r)
	if !ok {
		return nil
	}
	if !s.admitSetup(r, &t) {
		return nil
	}
	defer s.releaseSetup(t.src.Addr())
	ctx, done := s.pendUntilHandshake(t.id)
	defer done()
	backend, ep, ok := s.pickAndDial(ctx, r, &t)
	if !ok {
		return nil
	}
	cep, wq, ok := s.completeHandshake(r, &t, backend)
	if !ok {
		return nil
	}
	return s.newSplicedFlow(&t, cep, wq, backend, ep)
}

// synTarget is what a SYN is for, as lookupTarget found it: a Service port,
// or a pod's own address (Config.Pods).
type synTarget struct {
	id  stack.TransportEndpointID
	src netip.AddrPort // the client
	dst netip.AddrPort // the Service IP:port, or the pod's
	sp  *resolver.ServicePort
	// pod is the pod ("namespace/name") whose own address dst is; "" for
	// a Service port.
	pod string
	// target is what the connection is for, in logs: sp, or "pod
	// namespace/name".
	target any
}

// lookupTarget finds what the SYN r is for: the Service port at its
// destination, or else the pod there if pod addresses pass. For neither it
// resets the connection and reports false.
func (s *Stack) lookupTarget(r *tcp.ForwarderRequest) (synTarget, bool) {
	id := r.ID()
	t := synTarget{id: id, src: addrPort(id.RemoteAddress, id.RemotePort), dst: addrPort(id.LocalAddress, id.LocalPort)}
	if sp, ok := s.services.Lookup(resolver.TCP, t.dst); ok {
		t.sp, t.target = sp, sp
		return t, true
	}
	pod, isPod := s.podAt(t.dst.Addr())
	if !isPod {
		s.log.Debug("refused: no service", "proto", "TCP", "src", t.src, "dst", t.dst)
		s.count.tcpRefused.Add(1)
		r.Complete(true)
		return t, false
	}
	t.pod, t.target = pod, "pod "+pod
	return t, true
}

// admitSetup reserves a setup slot for t's client (reserveSetup); the
// caller releases it once the handshake is done or failed. Over a limit it
// completes r and reports false: the SYN is dropped (the client
// retransmits) over a setup limit, and reset over the flow cap.
func (s *Stack) admitSetup(r *tcp.ForwarderRequest, t *synTarget) bool {
	if err := s.reserveSetup(t.src.Addr()); err != nil {
		s.log.Debug("SYN not served", "src", t.src, "dst", t.dst, "err", err)
		s.count.tcpLimited.Add(1)
		r.Complete(errors.Is(err, errFlowLimit))
		return false
	}
	return true
}

// pendUntilHandshake lists the connection id as pending until done is
// called, which the caller does once its handshake is done or failed, and
// returns the context its dial runs in. A RST from the client during the
// dial (handleSegment) cancels that context. A successor taking over
// meanwhile passes the client's retransmitted SYN here (HandOver lists the
// pending connections).
func (s *Stack) pendUntilHandshake(id stack.TransportEndpointID) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancel(s.ctx)
	s.pending.Store(id, cancel)
	return ctx, func() {
		s.pending.Delete(id)
		cancel()
	}
}

// pickAndDial connects to t's backend: for a Service port, an endpoint it
// picks or one other if that fails (dial); for a pod's own address, that
// address. On failure it counts why (no endpoint, the client gave up, or
// unreachable), resets the connection and reports false.
func (s *Stack) pickAndDial(ctx context.Context, r *tcp.ForwarderRequest, t *synTarget) (halfCloser, resolver.Endpoint, bool) {
	var (
		backend halfCloser
		ep      resolver.Endpoint
		err     error
	)
	if t.pod == "" {
		backend, ep, err = s.dial(ctx, t.sp, t.src.Addr())
	} else {
		// A pod's own address is dialled as it is, with no balancing
		// and no second try.
		ep = resolver.Endpoint{Addr: t.dst}
		backend, err = s.dialOne(ctx, ep)
	}
	if err == nil {
		return backend, ep, true
	}
	s.log.Debug("refused", "service", t.target, "src", t.src, "err", err)
	switch {
	case errors.Is(err, errNoEndpoint):
		s.count.tcpRefused.Add(1)
	case ctx.Err() != nil:
		s.count.tcpAborted.Add(1)
	default:
		s.count.tcpUnreachable.Add(1)
	}
	r.Complete(true)
	return nil, ep, false
}

// completeHandshake answers the client's SYN, now that its backend is
// connected, and waits for the final ACK for at most handshakeTimeout; it
// then completes r. If the client went away during the dial or did not
// finish the handshake in time, it resets the connection, closes backend
// and reports false.
func (s *Stack) completeHandshake(r *tcp.ForwarderRequest, t *synTarget, backend halfCloser) (tcpip.Endpoint, *waiter.Queue, bool) {
	// gVisor's forwarder waits for the final ACK for as long as it
	// retransmits the SYN-ACK (about two minutes, with no knob). It waits
	// for a writable event on wq; raising one after handshakeTimeout makes
	// it give up on an endpoint not yet connected, which it then closes.
	wq := new(waiter.Queue)
	deadline := time.AfterFunc(s.handshakeTimeout, func() { wq.Notify(waiter.WritableEvents) })
	cep, tcpErr := r.CreateEndpoint(wq)
	deadline.Stop()
	if tcpErr != nil {
		s.log.Debug("handshake failed", "service", t.target, "src", t.src, "err", tcpErr)
		s.count.tcpAborted.Add(1)
		r.Complete(true)
		backend.Close()
		return nil, nil, false
	}
	r.Complete(false)
	s.count.tcpForwarded.Add(1)
	return cep, wq, true
}

// newSplicedFlow sets the client's endpoint up for a long-lived connection
// (keepalive, and the TCP user timeout if one is set) and joins it and
// backend, connected to ep, in a flow ready for splice.
func (s *Stack) newSplicedFlow(t *synTarget, cep tcpip.Endpoint, wq *waiter.Queue, backend halfCloser, ep resolver.Endpoint) *flow {
	setKeepalive(cep)
	if s.userTimeout > 0 {
		ut := tcpip.TCPUserTimeoutOption(s.userTimeout)
		cep.SetSockOpt(&ut)
	}
	s.log.Debug("forwarding", "service", t.target, "src", t.src, "endpoint", ep)
	f := newFlow(gonet.NewTCPConn(wq, cep), cep, wq, backend, s.halfClosedTimeout)
	if f.backendTCP == nil && s.stalledClientTimeout > 0 {
		target, src := t.target, t.src
		f.stallTimeout = s.stalledClientTimeout
		f.stalled = func() {
			s.log.Warn("flow reset: its client took no byte for the stall timeout, and its stream shares the connection to the pod with every other flow there",
				"service", target, "src", src, "endpoint", ep, "timeout", s.stalledClientTimeout)
		}
	}
	if t.pod == "" {
		f.service = t.sp.Service
	}
	return f
}

// handleSegment is the stack's handler for TCP segments no endpoint takes:
// a SYN goes to the forwarder; a RST for a connection still being dialled
// cancels its dial, as the client has given up on it; a segment of a flow
// of the predecessor this stack took over from goes to it. Everything else
// the forwarder ignores too, and gVisor answers with a RST.
func (s *Stack) handleSegment(fwd *tcp.Forwarder) func(stack.TransportEndpointID, *stack.PacketBuffer) bool {
	return func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		h := header.TCP(pkt.TransportHeader().Slice())
		if len(h) < header.TCPMinimumSize {
			return fwd.HandlePacket(id, pkt)
		}
		if h.Flags().Contains(header.TCPFlagRst) {
			if cancel, ok := s.pending.Load(id); ok {
				cancel.(context.CancelFunc)()
				return true
			}
		}
		// A flow of the predecessor this stack took over from, if any
		// (handover.go): what gVisor would otherwise reset.
		if s.forwardSegment(id, h.Flags(), pkt) {
			return true
		}
		return fwd.HandlePacket(id, pkt)
	}
}

// dial connects to an endpoint of sp, or one other if the first pick
// fails (resolver.DialEndpoint, the policy node ports share).
func (s *Stack) dial(ctx context.Context, sp *resolver.ServicePort, client netip.Addr) (halfCloser, resolver.Endpoint, error) {
	return resolver.DialEndpoint(ctx, sp, client, s.dialOne)
}

var errNoEndpoint = resolver.ErrNoEndpoint

// podAt returns the pod ("namespace/name") whose address ip is, if pod
// addresses pass (Config.Pods).
func (s *Stack) podAt(ip netip.Addr) (string, bool) {
	if s.pods == nil {
		return "", false
	}
	ns, name, ok := s.pods.PodByIP(ip)
	return ns + "/" + name, ok
}

// reserveSetup counts a connection being set up from src. It reports
// errSetupLimit when src already has its share being set up, or all
// sources the total (Config.MaxSetupsPerSource, MaxSetups): the SYN is then
// dropped and the client retransmits it, as a kernel drops a SYN its full
// queue has no room for. Most such SYNs never get here: the pump drops them
// before gVisor (AdmitTCP). It reports errFlowLimit when the flows and
// setups together reached maxFlows: a RST, as for a full conntrack table
// the connection cannot be served for a while.
func (s *Stack) reserveSetup(src netip.Addr) error {
	s.mu.Lock()
	flows := len(s.flows)
	s.mu.Unlock()
	if flows+s.setups.Total() >= s.maxFlows {
		return errFlowLimit
	}
	if !s.setups.Reserve(src) {
		return errSetupLimit
	}
	return nil
}

var (
	errSetupLimit = errors.New("too many connections being set up from this source, or from all")
	errFlowLimit  = errors.New("too many flows")
)

func (s *Stack) releaseSetup(src netip.Addr) { s.setups.Release(src) }

// AdmitTCP reports whether the stack takes pkt, a whole IP packet, further:
// false for a SYN (not a SYN-ACK) from a client that has its share of
// connections being set up, or when all clients have the total, which
// the caller then drops before gVisor sees it, as a kernel's full SYN queue
// drops it: the client retransmits, and a flood costs one look at the
// headers per SYN, not a trip through gVisor and a RST. Anything else is
// admitted; it looks at no more than the IP and TCP headers, and locks
// only for a SYN.
func (s *Stack) AdmitTCP(pkt []byte) bool {
	src, flags, ok := parseTCPFlags(pkt)
	if !ok || flags&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) != header.TCPFlagSyn {
		return true
	}
	if s.setups.Full(src) {
		s.count.tcpLimited.Add(1)
		return false
	}
	return true
}

// parseTCPFlags returns the source address and the TCP flags of pkt, an
// IPv4 packet (any header length, first fragment) or an IPv6 packet
// without extension headers carrying TCP; false for anything else.
func parseTCPFlags(pkt []byte) (netip.Addr, header.TCPFlags, bool) {
	var (
		src netip.Addr
		l4  []byte
	)
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		if len(pkt) < header.IPv4MinimumSize {
			return src, 0, false
		}
		ip := header.IPv4(pkt)
		hlen := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || hlen < header.IPv4MinimumSize || hlen > len(pkt) || ip.FragmentOffset() != 0 {
			return src, 0, false
		}
		src, l4 = netip.AddrFrom4([4]byte(pkt[12:16])), pkt[hlen:]
	case header.IPv6Version:
		if len(pkt) < header.IPv6MinimumSize || header.IPv6(pkt).NextHeader() != uint8(header.TCPProtocolNumber) {
			return src, 0, false
		}
		src, l4 = netip.AddrFrom16([16]byte(pkt[8:24])), pkt[header.IPv6MinimumSize:]
	default:
		return src, 0, false
	}
	if len(l4) < header.TCPMinimumSize {
		return src, 0, false
	}
	return src.Unmap(), header.TCP(l4).Flags(), true
}

// dialOne dials ep within dialTimeout. The connection must half-close
// (CloseWrite), as a TCP connection or a port-forward stream does: the
// client's half-close is passed on.
func (s *Stack) dialOne(ctx context.Context, ep resolver.Endpoint) (halfCloser, error) {
	ctx, cancel := context.WithTimeout(ctx, s.dialTimeout)
	defer cancel()
	c, err := s.dialer.DialContext(ctx, "tcp", ep.Addr.String())
	if err != nil {
		s.count.dialFailures.Add(1)
		return nil, err
	}
	hc, ok := c.(halfCloser)
	if !ok {
		c.Close()
		s.count.dialFailures.Add(1)
		return nil, fmt.Errorf("dialing %s: the dialer returned a %T, which cannot half-close (no CloseWrite)", ep.Addr, c)
	}
	if tc, ok := c.(*net.TCPConn); ok && s.userTimeout > 0 {
		sockopt.SetUserTimeout(tc, s.userTimeout)
	}
	return hc, nil
}

func setKeepalive(ep tcpip.Endpoint) {
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepaliveIdle)
	ep.SetSockOpt(&idle)
	intvl := tcpip.KeepaliveIntervalOption(keepaliveInterval)
	ep.SetSockOpt(&intvl)
	ep.SetSockOptInt(tcpip.KeepaliveCountOption, keepaliveCount)
}

func (s *Stack) addFlow(f *flow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.flows[f] = struct{}{}
	return true
}

func (s *Stack) removeFlow(f *flow) {
	s.mu.Lock()
	delete(s.flows, f)
	s.mu.Unlock()
}

// halfCloser is a connection whose write side can be shut alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

var (
	_ halfCloser = (*gonet.TCPConn)(nil)
	_ halfCloser = (*net.TCPConn)(nil)
)

// flow is one forwarded TCP connection: the client's leg in gVisor and the
// backend's leg, a host TCP socket or any other connection that half-closes
// (a port-forward stream).
type flow struct {
	client   *gonet.TCPConn
	clientEP tcpip.Endpoint // client's, to wait on without reading
	clientWQ *waiter.Queue  // clientEP's, whose readable events start pumpToPod
	backend  halfCloser
	// backendTCP is backend if it is a host TCP socket: then it is waited
	// on without reading (waitReadable), and reset with SO_LINGER 0.
	backendTCP *net.TCPConn
	// backendRC is backendTCP's, set by the backend-to-client pipe, the
	// only one that uses it.
	backendRC syscall.RawConn
	// service is the Service ("namespace/name") the flow is counted
	// under; "" for a pod's own address (Config.Pods), counted under none.
	service string

	// halfClosedTimeout ends a flow one of whose directions has ended
	// (EOF) when no byte has moved the other way for that long; zero
	// never does.
	halfClosedTimeout time.Duration
	// stallTimeout, if not zero, bounds each write to the client
	// (Config.StalledClientTimeout); stalled is called when one timed out.
	stallTimeout time.Duration
	stalled      func()
	last         atomic.Int64 // UnixNano of the last bytes read either way
	idleMu       sync.Mutex   // guards idle and spliced
	idle         *time.Timer  // the half-closed timer, once a direction ended
	spliced      bool         // splice has returned: the timer must not be re-armed

	// The client-to-pod direction: pumpToPod is running (or the direction
	// has ended), the pumps started, and closed when the direction ended.
	toPodRunning atomic.Bool
	pumps        sync.WaitGroup
	toPodDone    chan struct{}

	once sync.Once
}

func newFlow(client *gonet.TCPConn, cep tcpip.Endpoint, wq *waiter.Queue, backend halfCloser, halfClosedTimeout time.Duration) *flow {
	f := &flow{client: client, clientEP: cep, clientWQ: wq, backend: backend, halfClosedTimeout: halfClosedTimeout}
	f.backendTCP, _ = backend.(*net.TCPConn)
	return f
}

// splice copies both ways until both directions have ended. A direction that
// ends with EOF half-closes its destination (the client that shut its write
// side still reads the whole response); one that ends with an error resets
// both legs (abort): a client must not take a pod's failure for the end of
// its data.
//
// The pod-to-client direction runs in splice's goroutine. The
// client-to-pod one runs only while the client's endpoint has something to
// read: gVisor's notification starts a goroutine (kickToPod) that copies
// until the endpoint is empty and then ends, so an idle flow holds one
// goroutine, not two (`go run ./test/bench --cases idle`).
func (f *flow) splice() {
	f.toPodDone = make(chan struct{})
	entry := waiter.NewFunctionEntry(clientReadable, func(waiter.EventMask) { f.kickToPod() })
	f.clientWQ.EventRegister(&entry)
	f.kickToPod() // what came before the registration
	waitBackend := f.waitBackend
	if f.backendTCP == nil {
		// Nothing to wait on without reading: the read itself waits,
		// holding its buffer.
		waitBackend = func() error { return nil }
	}
	f.pipe(f.client, f.backend, waitBackend, &toClientBufs, f.stallTimeout)
	<-f.toPodDone
	f.clientWQ.EventUnregister(&entry)
	f.pumps.Wait()
	f.idleMu.Lock()
	f.spliced = true
	if f.idle != nil {
		f.idle.Stop()
	}
	f.idleMu.Unlock()
	f.close()
}

// clientReadable are the events after which a Read of the client's
// endpoint does not block: bytes, EOF, or an error.
const clientReadable = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// kickToPod starts pumpToPod unless it runs: called by gVisor's
// notification that the client's endpoint became readable, in the
// notifying goroutine (which may hold the endpoint's locks, so it only
// starts one).
func (f *flow) kickToPod() {
	if f.toPodRunning.CompareAndSwap(false, true) {
		f.pumps.Add(1)
		go f.pumpToPod()
	}
}

// pumpToPod copies the client's bytes to the pod until the client's
// endpoint is empty, then ends. A notification that comes while it runs
// starts nothing (toPodRunning): before it ends, it clears toPodRunning and
// looks once more, so no readable event is lost between its last look and
// the end. Once the direction has ended it leaves toPodRunning set: nothing
// starts it again.
func (f *flow) pumpToPod() {
	defer f.pumps.Done()
	for {
		for f.clientEP.Readiness(clientReadable) != 0 {
			if !f.copyOnce(f.backend, f.client, &toPodBufs, 0) {
				close(f.toPodDone)
				return
			}
		}
		f.toPodRunning.Store(false)
		if f.clientEP.Readiness(clientReadable) == 0 || !f.toPodRunning.CompareAndSwap(false, true) {
			return
		}
	}
}

// pipe copies src to dst until src ends. It holds a copy buffer only while
// bytes move: between them it waits with wait, which returns once a Read of
// src will not block (bytes, EOF or an error are there). An idle connection,
// the common case for pooled and long-lived ones, then costs no buffer.
func (f *flow) pipe(dst, src halfCloser, wait func() error, bufs *sync.Pool, writeTimeout time.Duration) {
	for {
		if err := wait(); err != nil {
			f.abort()
			return
		}
		if !f.copyOnce(dst, src, bufs, writeTimeout) {
			return
		}
	}
}

// copyOnce copies what one Read of src returns to dst, with a buffer from
// bufs, the write bounded by writeTimeout unless it is zero. It reports
// false once the direction has ended: EOF half-closes dst, an error aborts
// the flow.
func (f *flow) copyOnce(dst, src halfCloser, bufs *sync.Pool, writeTimeout time.Duration) bool {
	bufp := bufs.Get().(*[]byte)
	n, err := src.Read(*bufp)
	if n > 0 {
		now := time.Now()
		f.last.Store(now.UnixNano())
		if writeTimeout > 0 {
			dst.SetWriteDeadline(now.Add(writeTimeout))
		}
		if _, werr := dst.Write((*bufp)[:n]); werr != nil {
			err = werr
			if writeTimeout > 0 && isTimeout(werr) && f.stalled != nil {
				f.stalled()
			}
		}
	}
	bufs.Put(bufp)
	switch {
	case err == io.EOF:
		dst.CloseWrite()
		f.halfClosed()
		return false
	case err != nil:
		f.abort()
		return false
	}
	return true
}

// halfClosed starts the half-closed timer when the first direction ends
// cleanly: the other may go on as long as bytes move (a client that shut
// its write side still reads its answer), but not idle for ever. The limit
// is kube-proxy's for conntrack entries in CLOSE_WAIT (an hour), so a flow
// lives as long as it would through kube-proxy.
func (f *flow) halfClosed() {
	if f.halfClosedTimeout <= 0 {
		return
	}
	f.idleMu.Lock()
	defer f.idleMu.Unlock()
	if f.idle != nil {
		return // both ended; splice returns
	}
	f.last.Store(time.Now().UnixNano())
	var check func()
	check = func() {
		idle := time.Since(time.Unix(0, f.last.Load()))
		if idle >= f.halfClosedTimeout {
			f.abort()
			return
		}
		f.idleMu.Lock()
		if !f.spliced {
			f.idle.Reset(f.halfClosedTimeout - idle)
		}
		f.idleMu.Unlock()
	}
	f.idle = time.AfterFunc(f.halfClosedTimeout, check)
}

// waitBackend waits until the backend socket has bytes, EOF or an error to
// read.
func (f *flow) waitBackend() error {
	if f.backendRC == nil {
		rc, err := f.backendTCP.SyscallConn()
		if err != nil {
			return err
		}
		f.backendRC = rc
	}
	return waitReadable(f.backendRC)
}

// waitReadable waits until a host socket has something to read (bytes, a
// datagram, EOF or an error) without reading it: a one-byte MSG_PEEK, and
// Go's poller while there is nothing yet. ECONNREFUSED, a UDP socket's ICMP
// error for an earlier datagram, is reported before any datagram queued
// behind it; the peek takes it, and looks again. Any other error the peek
// reports is returned: the kernel reports a socket's error once (a TCP
// reset's ECONNRESET), and the Read after the peek would see only EOF.
func waitReadable(rc syscall.RawConn) error {
	var (
		b       [1]byte
		peekErr error
	)
	err := rc.Read(func(fd uintptr) bool {
		for {
			// recvfrom(2) itself: unix.Recvfrom would also decode the
			// sender's address, which costs more than the call.
			_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case unix.EINTR, unix.ECONNREFUSED:
				continue
			case unix.EAGAIN:
				return false
			case 0:
			default:
				peekErr = errno
			}
			return true
		}
	})
	if err != nil {
		return err
	}
	return peekErr
}

// abort ends the flow at once, with a RST on both legs: to the client, as
// a kernel proxy's client gets when the pod reset (curl reports "connection
// reset", not a short but clean end); to the pod, as the client did or as a
// failure on the client's leg deserves.
func (f *flow) abort() {
	f.clientEP.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true, Timeout: 0})
	if l, ok := f.backend.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	f.close()
}

func (f *flow) close() {
	f.once.Do(func() {
		f.client.Close()
		f.backend.Close()
	})
}

// The copy buffers, by direction. Their sizes are measured, not derived:
// `go run ./test/bench --cases stream` costs least CPU per GB with 64 KiB
// from the pod (a read fills one of gVisor's 64 KiB GSO segments) and with
// 32 KiB from the client (the gonet reads are smaller anyway; 64 KiB cost
// 5-13 % more there).
var (
	toClientBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
	toPodBufs    = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// addrPort converts a gVisor address and port.
func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip.Unmap(), port)
}
