package portforward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/streaming/pkg/httpstream"
)

// refusalWait bounds how long a Read that hit the end of the data stream
// during Confirm waits for the refusal the kubelet writes just before it
// resets the stream: both are read by other goroutines.
const refusalWait = 100 * time.Millisecond

// conn is one flow: the data stream of a stream pair, with the error stream
// watched for the pod's refusal.
type conn struct {
	pc              httpstream.Connection
	dropped         *atomic.Bool  // the Dialer dropped pc
	flows           *atomic.Int64 // pc's flows, this one counted until Close
	onRefusal       func()        // called if the pod side refuses the flow
	errStream, data httpstream.Stream
	remote          net.Addr
	// unconfirmed: returned without waiting for a refusal (a port that
	// accepted before), which may then come with the data stream's end.
	unconfirmed bool
	gotData     bool // a Read returned bytes; guarded by readMu

	ended   chan struct{} // closed when the error stream ends; then refusal is set
	refusal string        // what the pod side wrote on the error stream

	// The first Read of the data stream, made by confirm; Read returns it
	// first.
	firstDone chan struct{} // closed once firstBuf and firstErr are set; nil: no first Read
	firstBuf  []byte
	firstErr  error

	readMu  sync.Mutex // serializes Reads; guards pending
	pending []byte     // what the first Read got beyond the caller's buffer

	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ interface {
	net.Conn
	CloseWrite() error
} = (*conn)(nil)

// newConn makes the flow of the stream pair and starts reading its error
// stream.
func newConn(pc httpstream.Connection, errStream, data httpstream.Stream, ap netip.AddrPort, dropped *atomic.Bool, flows *atomic.Int64, onRefusal func()) *conn {
	c := &conn{
		pc: pc, errStream: errStream, data: data,
		dropped: dropped, flows: flows, onRefusal: onRefusal,
		remote: net.TCPAddrFromAddrPort(ap),
		ended:  make(chan struct{}),
	}
	flows.Add(1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		// The kubelet writes one message and closes the stream when it could
		// not forward, and closes it silently when a forward ends well.
		msg, _ := io.ReadAll(io.LimitReader(errStream, 64<<10))
		c.refusal = string(msg)
		close(c.ended)
		if c.refusal != "" {
			onRefusal()
		}
	}()
	return c
}

// refused returns the pod side's refusal, if it said one by now.
func (c *conn) refused() error {
	select {
	case <-c.ended:
		if c.refusal != "" {
			return &RefusedError{Message: c.refusal}
		}
	default:
	}
	return nil
}

// confirm waits up to wait for the pod's refusal, ending early at the first
// data from the pod.
func (c *conn) confirm(ctx context.Context, wait time.Duration) error {
	c.firstDone = make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 32<<10)
		n, err := c.data.Read(buf)
		c.firstBuf, c.firstErr = buf[:n], err
		close(c.firstDone)
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-c.ended:
		if err := c.refused(); err != nil {
			return err
		}
		return nil // the forward ended already; Read will say how
	case <-c.firstDone:
		if c.firstErr == nil {
			return nil
		}
		// The kubelet writes the refusal, then resets the data stream.
		t := time.NewTimer(refusalWait)
		defer t.Stop()
		select {
		case <-c.ended:
			return c.refused()
		case <-t.C:
			return nil
		}
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *conn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.firstDone != nil {
		<-c.firstDone
		c.pending = c.firstBuf
		err := c.firstErr
		c.firstDone, c.firstBuf, c.firstErr = nil, nil, nil
		if err != nil && len(c.pending) == 0 {
			return 0, c.readErr(err)
		}
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		c.gotData = true
		return n, nil
	}
	n, err := c.data.Read(p)
	if n > 0 {
		c.gotData = true
	}
	if err != nil {
		if c.unconfirmed && !c.gotData && errors.Is(err, io.EOF) {
			// The end of a flow that never got a byte may be the pod's
			// refusal: the kubelet writes it on the error stream, then
			// resets the data stream, and another goroutine reads it.
			t := time.NewTimer(refusalWait)
			select {
			case <-c.ended:
			case <-t.C:
			}
			t.Stop()
		}
		err = c.readErr(err)
	}
	return n, err
}

// ErrConnectionLost is what a flow's Read returns when the port-forward
// connection it was on closed (cut, or dropped as dead) before the pod side
// ended the flow: the stream then ends as if the pod had finished, and a
// client must not take a cut answer for a whole one.
var ErrConnectionLost = errors.New("portforward: the connection to the pod closed under the flow")

// readErr is the error a Read returns for err of the data stream: the pod's
// refusal if it said one; ErrConnectionLost for an end that came with the
// connection's.
func (c *conn) readErr(err error) error {
	if r := c.refused(); r != nil {
		return r
	}
	if errors.Is(err, io.EOF) {
		if c.dropped.Load() {
			return ErrConnectionLost
		}
		select {
		case <-c.pc.CloseChan():
			return ErrConnectionLost
		default:
		}
	}
	return err
}

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.data.Write(p)
	if err != nil {
		if r := c.refused(); r != nil {
			err = r
		}
	}
	return n, err
}

// CloseWrite half-closes the flow: the pod reads EOF, and may still answer.
func (c *conn) CloseWrite() error {
	if err := c.data.Close(); err != nil {
		return fmt.Errorf("portforward: close the data stream to %s: %w", c.remote, err)
	}
	return nil
}

// Close resets both streams, ending the flow both ways, and waits for the
// goroutines reading them.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.data.Reset()
		c.errStream.Reset()
		c.pc.RemoveStreams(c.data, c.errStream)
		c.wg.Wait()
		c.flows.Add(-1)
	})
	return nil
}

// LocalAddr is the zero TCP address: the flow has no local socket.
func (c *conn) LocalAddr() net.Addr { return &net.TCPAddr{} }

// RemoteAddr is the pod's IP:port.
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// errNoDeadline: httpstream streams have no deadlines.
var errNoDeadline = errors.New("portforward: deadlines are not supported on a port-forward stream")

func (c *conn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *conn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *conn) SetWriteDeadline(time.Time) error { return errNoDeadline }

// laterConn is a flow returned before its streams opened (Dialer.dialLater):
// its Read, Write and CloseWrite wait for them, and fail as the open did.
type laterConn struct {
	remote net.Addr
	cancel context.CancelFunc // ends the open
	ready  chan struct{}      // closed once c or err is set
	c      *conn
	err    error
}

var _ interface {
	net.Conn
	CloseWrite() error
} = (*laterConn)(nil)

func (l *laterConn) wait() (*conn, error) {
	<-l.ready
	return l.c, l.err
}

func (l *laterConn) Read(p []byte) (int, error) {
	c, err := l.wait()
	if err != nil {
		return 0, err
	}
	return c.Read(p)
}

func (l *laterConn) Write(p []byte) (int, error) {
	c, err := l.wait()
	if err != nil {
		return 0, err
	}
	return c.Write(p)
}

func (l *laterConn) CloseWrite() error {
	c, err := l.wait()
	if err != nil {
		return err
	}
	return c.CloseWrite()
}

// Close ends the open if it is still under way, then closes the flow.
func (l *laterConn) Close() error {
	l.cancel()
	if c, _ := l.wait(); c != nil {
		return c.Close()
	}
	return nil
}

func (l *laterConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (l *laterConn) RemoteAddr() net.Addr             { return l.remote }
func (l *laterConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (l *laterConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (l *laterConn) SetWriteDeadline(time.Time) error { return errNoDeadline }
