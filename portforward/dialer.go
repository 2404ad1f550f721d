// Package portforward reaches pods through the Kubernetes API server's
// pods/portforward subresource, for a machine with no route to pod IPs.
//
// It speaks what kubectl port-forward speaks (k8s.io/kubectl/pkg/cmd/portforward):
// a SPDY connection per pod, tunnelled over a WebSocket when the API server
// offers that (Kubernetes 1.30+, KEP-4006) and plain SPDY otherwise; on it,
// one pair of streams per forwarded connection, an error stream and a data
// stream with the headers streamType, port and requestID. Unlike kubectl, a
// Dialer serves any pod and port: the connection to a pod is made on the
// first flow to it and shared by every later one.
package portforward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// Defaults of Options.
const (
	// DefaultOpenTimeout bounds the opening of one flow's stream pair: past
	// it, the pod's connection is taken for dead.
	DefaultOpenTimeout = 10 * time.Second
	// DefaultConfirm is the margin DialContext waits for a refusal beyond
	// the round trip it measured; see Options.Confirm.
	DefaultConfirm = 25 * time.Millisecond
	// DefaultConnectTimeout bounds the making of a pod's connection: TCP
	// and TLS to the API server, and its answer to the upgrade, which waits
	// for the kubelet's. client-go's own dial timeout is as long.
	DefaultConnectTimeout = 30 * time.Second
)

// Pods names the pod that has an IP address; resolver.Snapshot is one.
type Pods interface {
	PodByIP(ip netip.Addr) (namespace, name string, ok bool)
}

// Options configure New. The zero value is the defaults.
type Options struct {
	// OpenTimeout bounds how long a flow waits for its stream pair to open
	// on a pod connection (making the connection is ConnectTimeout's). A
	// connection that does not answer in time is closed (a silent
	// connection, e.g. after the laptop slept, would otherwise hold every
	// flow until TCP gives up) and the flow is tried once more on a new
	// one. On a connection made before the flow, the wait is at most half
	// of what is left of the DialContext's deadline, so that the second
	// try fits in it. Zero means DefaultOpenTimeout.
	OpenTimeout time.Duration
	// Confirm is the margin DialContext waits, beyond one round trip to the
	// kubelet, for the pod to refuse the port before it returns the
	// connection. The pod side never says "connected": the kubelet writes on
	// the error stream only when its dial into the pod fails. So DialContext
	// returns at the first of: a message on the error stream (a dial error),
	// the first bytes from the pod (success), or the round trip the stream
	// pair's opening took plus Confirm (success presumed). A refusal slower
	// than that ends the returned connection instead: its Read returns the
	// RefusedError if the message was read by then, else io.EOF. For
	// protocols where the client speaks first, every successful dial costs
	// that whole wait. Zero means DefaultConfirm; negative means no wait.
	Confirm time.Duration
	// ConnectTimeout bounds the making of a pod's connection, which the
	// flows to that pod wait for (each within its own DialContext's
	// context): past it they fail, and the next flow tries anew. Zero
	// means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logf, if set, receives one line per pod connection made or lost.
	Logf func(format string, args ...any)
}

// Dialer dials pod IP:port through the API server. It is safe for
// concurrent use.
type Dialer struct {
	pods           Pods
	connect        func(ctx context.Context, namespace, name string) (httpstream.Connection, error)
	connectTimeout time.Duration
	openTimeout    time.Duration
	confirm        time.Duration
	logf           func(format string, args ...any)

	ctx      context.Context // bounds every connect; cancelled by Close
	cancel   context.CancelFunc
	done     chan struct{} // closed by Close
	wg       sync.WaitGroup
	nextID   atomic.Uint64 // requestID of the next stream pair
	mu       sync.Mutex    // guards conns and closed
	conns    map[podKey]*podConn
	isClosed bool
}

// podKey names a pod.
type podKey struct{ namespace, name string }

func (k podKey) String() string { return k.namespace + "/" + k.name }

// podConn is the connection to one pod, shared by every flow to it.
type podConn struct {
	pod   podKey
	ready chan struct{} // closed once conn or err is set
	conn  httpstream.Connection
	err   error
	// dropped is set before drop closes conn: its flows' streams then end
	// as if the pod had finished, before the connection reports itself
	// closed (conn.readErr).
	dropped atomic.Bool
}

// ErrClosed is returned by DialContext after Close.
var ErrClosed = errors.New("portforward: dialer closed")

// New returns a Dialer that reaches the API server of config and asks pods
// which pod an IP address is.
func New(config *rest.Config, pods Pods, opts Options) (*Dialer, error) {
	base, err := url.Parse(config.Host)
	if err != nil || base.Host == "" {
		base, _, err = rest.DefaultServerUrlFor(config)
		if err != nil {
			return nil, fmt.Errorf("portforward: API server URL %q: %w", config.Host, err)
		}
	}
	if _, _, err := spdy.RoundTripperFor(config); err != nil {
		return nil, fmt.Errorf("portforward: SPDY round tripper: %w", err)
	}
	connect := func(ctx context.Context, namespace, name string) (httpstream.Connection, error) {
		u := *base
		u.Path = base.JoinPath("api", "v1", "namespaces", namespace, "pods", name, "portforward").Path
		// client-go's port-forward dialers make their requests without a
		// context: the transports of this connect put ctx on them.
		config := rest.CopyConfig(config)
		config.Wrap(func(rt http.RoundTripper) http.RoundTripper { return withContext{rt, ctx} })
		transport, upgrader, err := spdy.RoundTripperFor(config)
		if err != nil {
			return nil, err
		}
		// kubectl's order: the WebSocket tunnel, then SPDY where the API
		// server or a proxy on the way refuses the WebSocket upgrade.
		spdyDialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, &u)
		wsDialer, err := portforward.NewSPDYOverWebsocketDialerForStreaming(&u, config)
		if err != nil {
			return nil, err
		}
		dialer := portforward.NewFallbackDialerForStreaming(wsDialer, spdyDialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
		conn, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		return conn, err
	}
	return newDialer(connect, pods, opts), nil
}

// withContext sends every request with ctx, for a connect's transports:
// the ones client-go's port-forward dialers make have none, and neither
// Close nor ConnectTimeout could stop them.
type withContext struct {
	rt  http.RoundTripper
	ctx context.Context
}

func (w withContext) RoundTrip(req *http.Request) (*http.Response, error) {
	return w.rt.RoundTrip(req.WithContext(w.ctx))
}

// newDialer returns a Dialer that connects to pods with connect, which
// should return when its ctx is done.
func newDialer(connect func(ctx context.Context, namespace, name string) (httpstream.Connection, error), pods Pods, opts Options) *Dialer {
	ctx, cancel := context.WithCancel(context.Background())
	d := &Dialer{
		pods:           pods,
		connect:        connect,
		connectTimeout: opts.ConnectTimeout,
		openTimeout:    opts.OpenTimeout,
		confirm:        opts.Confirm,
		logf:           opts.Logf,
		ctx:            ctx,
		cancel:         cancel,
		done:           make(chan struct{}),
		conns:          make(map[podKey]*podConn),
	}
	if d.connectTimeout <= 0 {
		d.connectTimeout = DefaultConnectTimeout
	}
	if d.openTimeout <= 0 {
		d.openTimeout = DefaultOpenTimeout
	}
	if d.confirm == 0 {
		d.confirm = DefaultConfirm
	}
	if d.logf == nil {
		d.logf = func(string, ...any) {}
	}
	return d
}

// DialContext connects to address, a pod's IP:port, through the API server.
// network must be tcp, tcp4 or tcp6: port-forward carries TCP only. It fails
// when no pod has the IP, the pod cannot be reached, or the pod refuses the
// port (see Options.Confirm for how soon that is known). The connection
// returned supports CloseWrite.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("portforward: dial %s %s: port-forward carries TCP only", network, address)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("portforward: dial %s: %w", address, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	ns, name, ok := d.pods.PodByIP(ap.Addr())
	if !ok {
		return nil, fmt.Errorf("portforward: dial %s: no pod has IP %s", address, ap.Addr())
	}
	pod := podKey{ns, name}
	// A connection that was open before this flow may have died silently
	// (a sleep, a network change): if it fails this flow, one new connection
	// gets a second try.
	for attempt := 0; ; attempt++ {
		pc, reused, err := d.podConn(ctx, pod)
		if err != nil {
			return nil, fmt.Errorf("portforward: dial %s (pod %s): %w", address, pod, err)
		}
		c, err := d.open(ctx, pc, ap, d.openLimit(ctx, reused))
		if err == nil {
			return c, nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) || ctx.Err() != nil || !reused || attempt > 0 {
			return nil, fmt.Errorf("portforward: dial %s (pod %s): %w", address, pod, err)
		}
		d.logf("portforward: pod %s: connection failed a new flow (%v); connecting again", pod, err)
		d.drop(pc)
	}
}

// RefusedError is the pod's answer, on the error stream, that it could not
// forward a flow: typically nothing listens on the port.
type RefusedError struct {
	Message string
}

func (e *RefusedError) Error() string { return "refused by the pod side: " + e.Message }

// podConn returns the connection to pod, making it if there is none, and
// whether it existed before this call.
func (d *Dialer) podConn(ctx context.Context, pod podKey) (*podConn, bool, error) {
	d.mu.Lock()
	if d.isClosed {
		d.mu.Unlock()
		return nil, false, ErrClosed
	}
	pc := d.conns[pod]
	reused := pc != nil
	if pc == nil {
		pc = &podConn{pod: pod, ready: make(chan struct{})}
		d.conns[pod] = pc
		d.wg.Add(1)
		go d.run(pc)
	}
	d.mu.Unlock()
	select {
	case <-pc.ready:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	case <-d.done:
		return nil, false, ErrClosed
	}
	if pc.err != nil {
		return nil, false, pc.err
	}
	return pc, reused, nil
}

// run connects pc and, once connected, forgets it when it closes, so that
// the next flow connects again.
func (d *Dialer) run(pc *podConn) {
	defer d.wg.Done()
	began := time.Now()
	conn, err := d.connectPod(pc.pod)
	if err != nil {
		err = fmt.Errorf("connect to pods/portforward: %w", err)
	}
	d.mu.Lock()
	if err == nil && d.isClosed {
		conn.Close()
		err = ErrClosed
	}
	pc.conn, pc.err = conn, err
	close(pc.ready)
	d.mu.Unlock()
	if err != nil {
		d.forget(pc)
		if !errors.Is(err, ErrClosed) {
			d.logf("portforward: pod %s: %v", pc.pod, err)
		}
		return
	}
	d.logf("portforward: pod %s: connected in %v", pc.pod, time.Since(began).Round(time.Millisecond))
	select {
	case <-conn.CloseChan():
		d.logf("portforward: pod %s: connection closed after %v", pc.pod, time.Since(began).Round(time.Second))
	case <-d.done:
		conn.Close()
	}
	d.forget(pc)
}

// connectPod makes the connection to pod, and returns within
// connectTimeout, and at once when Close is called. client-go's dialers
// stop at ctx's end while they dial and shake hands (TCP, TLS), and the
// WebSocket one at its deadline while it waits for the upgrade's answer; the
// SPDY one reads that answer regardless. So a connect that has not returned
// when connectPod does is left to end by itself, not waited for, and the
// connection it may still make is closed.
func (d *Dialer) connectPod(pod podKey) (httpstream.Connection, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.connectTimeout)
	defer cancel()
	type result struct {
		conn httpstream.Connection
		err  error
	}
	ch := make(chan result)
	go func() {
		conn, err := d.connect(ctx, pod.namespace, pod.name)
		select {
		case ch <- result{conn, err}:
		case <-ctx.Done(): // connectPod returned without it
			if err == nil {
				conn.Close()
			}
		}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		if d.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("no answer within %v", d.connectTimeout)
	}
}

// forget removes pc from the map unless a newer connection replaced it.
func (d *Dialer) forget(pc *podConn) {
	d.mu.Lock()
	if d.conns[pc.pod] == pc {
		delete(d.conns, pc.pod)
	}
	d.mu.Unlock()
}

// drop forgets pc and closes its connection, ending every flow on it.
func (d *Dialer) drop(pc *podConn) {
	d.forget(pc)
	pc.dropped.Store(true)
	pc.conn.Close()
}

// openLimit is how long a flow waits for its stream pair on a connection:
// the OpenTimeout, but on a connection made before this flow at most half
// of what is left of ctx. A connection cut on the far side (a kubelet
// restart, a network change) can leave the stream open unanswered while
// it still looks open here; a caller's dial timeout shorter than
// OpenTimeout would then fail every flow on it without the second try on a
// new connection, which gets the other half.
func (d *Dialer) openLimit(ctx context.Context, reused bool) time.Duration {
	limit := d.openTimeout
	if deadline, ok := ctx.Deadline(); ok && reused {
		limit = min(limit, time.Until(deadline)/2)
	}
	return limit
}

// open opens a stream pair for one flow to ap on pc, waiting up to limit
// for the kubelet's answer, and waits for the pod's refusal as
// Options.Confirm says.
func (d *Dialer) open(ctx context.Context, pc *podConn, ap netip.AddrPort, limit time.Duration) (net.Conn, error) {
	type result struct {
		errStream, data httpstream.Stream
		err             error
	}
	began := time.Now()
	ch := make(chan result, 1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		var r result
		r.errStream, r.data, r.err = createPair(pc.conn, ap.Port(), d.nextID.Add(1))
		ch <- r
	}()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	var r result
	select {
	case r = <-ch:
	case <-timer.C:
		// A connection that does not open a stream in time is dead to every
		// flow: closing it fails the pending CreateStream too.
		d.logf("portforward: pod %s: no answer to a stream open within %v; closing the connection", pc.pod, limit.Round(time.Millisecond))
		d.drop(pc)
		return nil, fmt.Errorf("open streams: no answer within %v", limit.Round(time.Millisecond))
	case <-ctx.Done():
		// The streams may still open: reset them then.
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if r := <-ch; r.err == nil {
				r.data.Reset()
				r.errStream.Reset()
				pc.conn.RemoveStreams(r.data, r.errStream)
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, fmt.Errorf("open streams: %w", r.err)
	}
	c := newConn(pc.conn, r.errStream, r.data, ap)
	c.dropped = &pc.dropped
	if d.confirm < 0 {
		return c, nil
	}
	// Opening the streams waited for the kubelet's replies: one round trip,
	// about what a refusal takes to come back.
	if err := c.confirm(ctx, time.Since(began)+d.confirm); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// createPair opens the error stream and the data stream for requestID. It
// opens them at once, where kubectl opens one after the other: the kubelet
// pairs them by requestID in any order, and each open waits for the
// kubelet's reply, so this saves a round trip per flow.
func createPair(conn httpstream.Connection, port uint16, requestID uint64) (errStream, data httpstream.Stream, err error) {
	headers := func(streamType string) http.Header {
		h := http.Header{}
		h.Set(corev1.StreamType, streamType)
		h.Set(corev1.PortHeader, strconv.Itoa(int(port)))
		h.Set(corev1.PortForwardRequestIDHeader, strconv.FormatUint(requestID, 10))
		return h
	}
	type result struct {
		s   httpstream.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := conn.CreateStream(headers(corev1.StreamTypeError))
		ch <- result{s, err}
	}()
	data, dataErr := conn.CreateStream(headers(corev1.StreamTypeData))
	r := <-ch
	errStream, err = r.s, r.err
	if err == nil && dataErr != nil {
		// The kubelet starts forwarding once both streams arrived, and resets
		// the data stream when the pod refuses: that can beat the data
		// stream's reply, with the refusal on the error stream.
		if msg := readRefusal(errStream, refusalWait); msg != "" {
			conn.RemoveStreams(errStream)
			return nil, nil, &RefusedError{Message: msg}
		}
	}
	switch {
	case err != nil || dataErr != nil:
		for _, s := range []httpstream.Stream{errStream, data} {
			if s != nil {
				s.Reset()
				conn.RemoveStreams(s)
			}
		}
		if err != nil {
			return nil, nil, fmt.Errorf("create error stream: %w", err)
		}
		return nil, nil, fmt.Errorf("create data stream: %w", dataErr)
	}
	// Nothing is ever written to the error stream.
	errStream.Close()
	return errStream, data, nil
}

// readRefusal reads what the pod side wrote on errStream, waiting up to wait
// for it to end; then it resets the stream.
func readRefusal(errStream httpstream.Stream, wait time.Duration) string {
	ch := make(chan []byte, 1)
	go func() {
		msg, _ := io.ReadAll(io.LimitReader(errStream, 64<<10))
		ch <- msg
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var msg []byte
	select {
	case msg = <-ch:
		errStream.Reset()
	case <-timer.C:
		errStream.Reset() // ends the read
		msg = <-ch
	}
	return string(msg)
}

// Close closes every pod connection, which ends every flow on them, and
// waits for the goroutines the Dialer started, but for a connect that does
// not stop when told (see connectPod): the connection that one may still
// make is closed once it is made.
func (d *Dialer) Close() error {
	d.mu.Lock()
	if d.isClosed {
		d.mu.Unlock()
		return nil
	}
	d.isClosed = true
	close(d.done)
	d.cancel()
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}
