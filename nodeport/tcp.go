package nodeport

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"

	"github.com/kubetun/kubetun/resolver"
)

// maxDialing bounds the TCP node port connections being set up at once, as
// netstack's forwarder bounds SYNs in flight.
const maxDialing = 1024

// tcpListener accepts a TCP node port on one address.
type tcpListener struct {
	l     *Listeners
	ln    *net.TCPListener
	local netip.AddrPort
	done  chan struct{}
}

func (t *tcpListener) sock() syscall.Conn { return t.ln }

func (t *tcpListener) Close() {
	t.ln.Close()
	<-t.done
}

func (t *tcpListener) serve() {
	defer t.l.wg.Done()
	defer close(t.done)
	for {
		c, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: the next Accept may work.
			t.l.log.Warn("accepting a node port connection", "addr", t.local, "err", err)
			continue
		}
		t.l.wg.Add(1)
		t.l.tcpActive.Add(1)
		go func() {
			defer t.l.wg.Done()
			defer t.l.tcpActive.Add(-1)
			t.forward(c)
		}()
	}
}

// forward looks the node port up, dials an endpoint and splices. A
// connection with no Service or no usable endpoint behind it is reset, as
// a closed port would reset it: the kernel completed the handshake already,
// so this is the nearest to kube-proxy's REJECT a socket can give.
func (t *tcpListener) forward(c *net.TCPConn) {
	client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	sp, ok := t.l.cfg.Services.Load().LookupNodePort(resolver.TCP, t.local.Addr(), t.local.Port())
	if !ok {
		reset(c)
		return
	}
	select {
	case t.l.dialing <- struct{}{}:
	default:
		t.l.log.Debug("node port connection refused: too many being set up", "service", sp, "client", client)
		reset(c)
		return
	}
	backend, ep, err := t.l.dial(sp, client)
	<-t.l.dialing
	if err != nil {
		t.l.log.Debug("node port connection refused", "service", sp, "client", client, "err", err)
		reset(c)
		return
	}
	if !t.l.track(c, backend) {
		reset(c)
		reset(backend)
		return
	}
	defer t.l.untrack(c, backend)
	t.l.log.Debug("forwarding", "service", sp, "client", client, "endpoint", ep)
	splice(c, backend)
}

// dial connects to an endpoint of sp for client; if the first fails it
// tries one other, so a pod that just died costs a retry, not an error.
func (l *Listeners) dial(sp *resolver.ServicePort, client netip.Addr) (*net.TCPConn, resolver.Endpoint, error) {
	ep, ok := sp.PickFor(client)
	if !ok {
		return nil, ep, errNoEndpoint
	}
	c, err := l.dialOne(ep)
	if err == nil {
		return c, ep, nil
	}
	other, ok := sp.PickOtherFor(client, ep)
	if !ok {
		return nil, ep, err
	}
	c, err2 := l.dialOne(other)
	if err2 != nil {
		return nil, other, errors.Join(err, err2)
	}
	return c, other, nil
}

func (l *Listeners) dialOne(ep resolver.Endpoint) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: l.cfg.DialTimeout}
	c, err := d.DialContext(l.ctx, "tcp", l.redirect(ep.Addr).String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// splice copies both ways until both directions ended. A direction that
// ends with EOF half-closes its destination, so a client that shut its
// write side still reads the whole answer; one that ends with an error
// resets both. Between two *net.TCPConn, io.Copy moves the bytes with
// splice(2), without copying them through userspace.
func splice(a, b *net.TCPConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(b, a)
	}()
	pipe(a, b)
	<-done
	a.Close()
	b.Close()
}

func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		reset(dst)
		reset(src)
		return
	}
	dst.CloseWrite()
}

// reset closes c with a RST rather than a FIN.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
