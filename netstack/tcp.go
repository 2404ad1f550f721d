package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/kubetun/kubetun/resolver"
)

// handleTCP is the TCP forwarder's handler, run by gVisor in a goroutine of
// its own for each new SYN: look up, pick, dial, then complete the handshake
// or reset. r.Complete is called exactly once on every path.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.track() {
		r.Complete(true)
		return
	}
	defer s.wg.Done()

	id := r.ID()
	src := addrPort(id.RemoteAddress, id.RemotePort)
	dst := addrPort(id.LocalAddress, id.LocalPort)
	sp, ok := s.services.Lookup(resolver.TCP, dst)
	if !ok {
		s.log.Debug("refused: no service", "proto", "TCP", "src", src, "dst", dst)
		s.count.tcpRefused.Add(1)
		r.Complete(true)
		return
	}
	if !s.reserveDial(src.Addr()) {
		s.log.Debug("refused: too many connections being set up from this source", "src", src, "dst", dst)
		s.count.tcpLimited.Add(1)
		r.Complete(true)
		return
	}
	backend, ep, err := s.dial(sp, src.Addr())
	s.releaseDial(src.Addr())
	if err != nil {
		s.log.Debug("refused", "service", sp, "src", src, "err", err)
		if errors.Is(err, errNoEndpoint) {
			s.count.tcpRefused.Add(1)
		} else {
			s.count.tcpUnreachable.Add(1)
		}
		r.Complete(true)
		return
	}

	var wq waiter.Queue
	cep, tcpErr := r.CreateEndpoint(&wq)
	if tcpErr != nil {
		// The client went away during the dial, or never finished the
		// handshake.
		s.log.Debug("handshake failed", "service", sp, "src", src, "err", tcpErr)
		s.count.tcpAborted.Add(1)
		r.Complete(true)
		backend.Close()
		return
	}
	r.Complete(false)
	s.count.tcpForwarded.Add(1)
	setKeepalive(cep)

	f := &flow{client: gonet.NewTCPConn(&wq, cep), clientEP: cep, clientWQ: &wq, backend: backend}
	if !s.addFlow(f) {
		f.close()
		return
	}
	defer s.removeFlow(f)
	s.log.Debug("forwarding", "service", sp, "src", src, "endpoint", ep)
	f.splice()
}

// dial connects to an endpoint of sp. If the first pick fails, it tries one
// other endpoint before giving up: a pod that just died should cost its
// clients a retry, not an error.
func (s *Stack) dial(sp *resolver.ServicePort, client netip.Addr) (*net.TCPConn, resolver.Endpoint, error) {
	ep, ok := sp.PickFor(client)
	if !ok {
		return nil, ep, errNoEndpoint
	}
	c, err := s.dialOne(ep)
	if err == nil {
		return c, ep, nil
	}
	other, ok := sp.PickOtherFor(client, ep)
	if !ok {
		return nil, ep, err
	}
	s.log.Debug("dial failed, trying another endpoint", "service", sp, "endpoint", ep, "err", err, "next", other)
	c, err2 := s.dialOne(other)
	if err2 != nil {
		return nil, other, errors.Join(err, err2)
	}
	return c, other, nil
}

var errNoEndpoint = errors.New("no usable endpoint")

// reserveDial counts a dial from src, or reports that src already has
// maxInFlightPerSource of them under way. The forwarder bounds the SYNs in
// flight overall; this keeps one client from taking all of them.
func (s *Stack) reserveDial(src netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialing[src] >= maxInFlightPerSource {
		return false
	}
	s.dialing[src]++
	return true
}

func (s *Stack) releaseDial(src netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialing[src]--; s.dialing[src] <= 0 {
		delete(s.dialing, src)
	}
}

func (s *Stack) dialOne(ep resolver.Endpoint) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.dialTimeout)
	defer cancel()
	c, err := s.dialer.DialContext(ctx, "tcp", ep.Addr.String())
	if err != nil {
		s.count.dialFailures.Add(1)
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, errors.New("dialer returned a non-TCP connection")
	}
	return tc, nil
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
// backend's leg on the host.
type flow struct {
	client   *gonet.TCPConn
	clientEP tcpip.Endpoint // client's, to wait on without reading
	clientWQ *waiter.Queue  // clientEP's
	backend  *net.TCPConn
	// backendRC is backend's, to wait on without reading; set by the
	// backend-to-client pipe, the only one that uses it.
	backendRC syscall.RawConn
	once      sync.Once
}

// splice copies both ways until both directions have ended. A direction that
// ends with EOF half-closes its destination (the client that shut its write
// side still reads the whole response); one that ends with an error aborts
// the whole flow.
func (f *flow) splice() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.pipe(f.backend, f.client, f.waitClient, &toPodBufs)
	}()
	f.pipe(f.client, f.backend, f.waitBackend, &toClientBufs)
	<-done
	f.close()
}

// pipe copies src to dst until src ends. It holds a copy buffer only while
// bytes move: between them it waits with wait, which returns once a Read of
// src will not block (bytes, EOF or an error are there). An idle connection,
// the common case for pooled and long-lived ones, then costs no buffer.
func (f *flow) pipe(dst, src halfCloser, wait func() error, bufs *sync.Pool) {
	for {
		if err := wait(); err != nil {
			f.abort()
			return
		}
		bufp := bufs.Get().(*[]byte)
		n, err := src.Read(*bufp)
		if n > 0 {
			if _, werr := dst.Write((*bufp)[:n]); werr != nil {
				err = werr
			}
		}
		bufs.Put(bufp)
		switch {
		case err == io.EOF:
			dst.CloseWrite()
			return
		case err != nil:
			f.abort()
			return
		}
	}
}

// waitBackend waits until the backend socket has bytes, EOF or an error to
// read.
func (f *flow) waitBackend() error {
	if f.backendRC == nil {
		rc, err := f.backend.SyscallConn()
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
// behind it; the peek takes it, and looks again.
func waitReadable(rc syscall.RawConn) error {
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
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
			}
			return true
		}
	})
}

// waitClient waits until the client's gVisor endpoint has bytes or EOF to
// read, or has failed or closed.
func (f *flow) waitClient() error {
	const mask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if f.clientEP.Readiness(mask) != 0 {
		return nil
	}
	entry, ready := waiter.NewChannelEntry(mask)
	f.clientWQ.EventRegister(&entry)
	defer f.clientWQ.EventUnregister(&entry)
	for f.clientEP.Readiness(mask) == 0 {
		<-ready
	}
	return nil
}

// abort ends the flow at once; the backend gets a RST, as the client did or
// would from a kernel proxy.
func (f *flow) abort() {
	f.backend.SetLinger(0)
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
