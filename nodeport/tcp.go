package nodeport

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/backoff"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/sockopt"
)

// defaultMaxSetups is Config.MaxSetups's default, netstack's: the TCP
// node port connections accepted and being dialled at once.
const defaultMaxSetups = 1024

// tcpListener accepts a TCP node port on one address.
type tcpListener struct {
	l     *Listeners
	ln    *net.TCPListener
	local netip.AddrPort
	stop  chan struct{} // closed by Close: serve waits for nothing more
	done  chan struct{} // closed when serve has returned
}

func (t *tcpListener) sock() syscall.Conn { return t.ln }

func (t *tcpListener) Close() {
	close(t.stop)
	t.ln.Close()
	<-t.done
}

// serve accepts until the socket is closed. Each connection accepted
// takes a setup slot (Config.MaxSetups) until its dial is done; while they
// are all taken, serve waits for one before it accepts again, and the
// kernel's accept queue, then SYN retransmissions, hold the next clients.
// An Accept error other than the socket's close (EMFILE, ENFILE, ENOBUFS)
// is retried after a wait that grows while it persists, and said once per
// run of them.
func (t *tcpListener) serve() {
	defer t.l.wg.Done()
	defer close(t.done)
	var retry backoff.Retry
	for {
		c, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if retry.Failures() == 0 {
				t.l.log.Warn("accepting node port connections fails; retrying, less often while it fails", "addr", t.local, "err", err)
			}
			select {
			case <-time.After(retry.Failed()):
			case <-t.stop:
				return
			}
			continue
		}
		if n, took := retry.Succeeded(); n > 0 {
			t.l.log.Info("accepting node port connections works again", "addr", t.local, "errors", n, "after", took.Round(time.Millisecond))
		}
		select {
		case t.l.dialing <- struct{}{}:
		case <-t.stop:
			reset(c)
			return
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

// forward looks the node port up, dials an endpoint and splices; it holds
// a setup slot (dialing) until the dial is done. A connection with no
// Service or no usable endpoint behind it is reset, as a closed port would
// reset it: the kernel completed the handshake already, so this is the
// nearest to kube-proxy's REJECT a socket can give. So is one past
// Config.MaxFlows.
func (t *tcpListener) forward(c *net.TCPConn) {
	client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	sp, ok := t.l.cfg.Services.Load().LookupNodePort(resolver.TCP, t.local.Addr(), t.local.Port())
	if !ok {
		<-t.l.dialing
		reset(c)
		return
	}
	if max := t.l.cfg.MaxFlows; max > 0 && t.l.tcpActive.Load() > int64(max) {
		<-t.l.dialing
		t.l.log.Debug("node port connection refused: too many flows", "service", sp, "client", client)
		reset(c)
		return
	}
	backend, ep, err := resolver.DialEndpoint(t.l.ctx, sp, client, t.l.dialOne)
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
	if ut := t.l.cfg.UserTimeout; ut > 0 {
		sockopt.SetUserTimeout(c, ut)
		sockopt.SetUserTimeout(backend, ut)
	}
	t.l.log.Debug("forwarding", "service", sp, "client", client, "endpoint", ep)
	splice(c, backend, t.l.cfg.HalfClosedTimeout)
}

// dialOne dials ep within Config.DialTimeout.
func (l *Listeners) dialOne(ctx context.Context, ep resolver.Endpoint) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: l.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", l.redirect(ep.Addr).String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// splice copies both ways until both directions ended. A direction that
// ends with EOF half-closes its destination, so a client that shut its
// write side still reads the whole answer; one that ends with an error
// resets both. Between two *net.TCPConn, io.Copy moves the bytes with
// splice(2), without copying them through userspace. Once one direction
// has ended, the other may go on for halfClosed (0: for ever), as
// kube-proxy's conntrack keeps a connection in CLOSE_WAIT; then both are
// reset. (The ClusterIP path counts that time from the last byte moved;
// splice(2) does not say when bytes move, so here it counts from the end
// of the first direction.)
func splice(a, b *net.TCPConn, halfClosed time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if pipe(b, a) && halfClosed > 0 {
			b.SetReadDeadline(time.Now().Add(halfClosed))
		}
	}()
	if pipe(a, b) && halfClosed > 0 {
		a.SetReadDeadline(time.Now().Add(halfClosed))
	}
	<-done
	a.Close()
	b.Close()
}

// pipe copies src to dst until src ends, and reports whether it ended
// cleanly (EOF: dst is half-closed); an error resets both.
func pipe(dst, src *net.TCPConn) bool {
	if _, err := io.Copy(dst, src); err != nil {
		reset(dst)
		reset(src)
		return false
	}
	dst.CloseWrite()
	return true
}

// reset closes c with a RST rather than a FIN.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
