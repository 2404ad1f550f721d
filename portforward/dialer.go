// Package portforward reaches pods through the Kubernetes API server's
// pods/portforward subresource, for a machine with no route to pod IPs.
//
// It speaks what kubectl port-forward speaks (k8s.io/kubectl/pkg/cmd/portforward):
// a SPDY connection per pod, tunnelled over a WebSocket when the API server
// offers that (Kubernetes 1.30+, KEP-4006) and plain SPDY otherwise; on it,
// one pair of streams per forwarded connection, an error stream and a data
// stream with the headers streamType, port and requestID. Unlike kubectl, a
// Dialer serves any pod and port: the connection to a pod is made on the
// first flow to it and shared by every later one, and kept alive with
// pings.
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/streaming/pkg/httpstream"
)

// Defaults of Options.
const (
	// DefaultOpenTimeout bounds the opening of one flow's stream pair: past
	// it, the pod's connection is taken for dead.
	DefaultOpenTimeout = 10 * time.Second
	// DefaultConfirm is the margin DialContext waits for a refusal beyond
	// the round trip it measured; see Options.Confirm. Only the first flow
	// to a pod port (and the first after a refusal) waits, so the margin
	// is generous: a refusal later than it completes the client's
	// handshake before resetting it, where a closed port in the cluster
	// refuses the connection.
	DefaultConfirm = 100 * time.Millisecond
	// DefaultConnectTimeout bounds the making of a pod's connection: TCP
	// and TLS to the API server, and its answer to the upgrade, which waits
	// for the kubelet's. client-go's own dial timeout is as long.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultPingInterval is how often an open pod connection is pinged:
	// well below the kubelet's --streaming-connection-idle-timeout, which
	// some providers set to minutes (https://github.com/txn2/kubefwd/issues/70),
	// and as often as client-go's own pings in the WebSocket tunnel.
	DefaultPingInterval = 10 * time.Second
	// DefaultPingTimeout is how long a ping may go unanswered before its
	// connection is taken for dead and replaced.
	DefaultPingTimeout = 5 * time.Second
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
	// protocols where the client speaks first, a successful dial costs
	// that whole wait, but only on the first flow to a pod port: once the
	// port accepted, DialContext returns at once (see DialContext). Zero
	// means DefaultConfirm; negative means no wait.
	Confirm time.Duration
	// ConnectTimeout bounds the making of a pod's connection, which the
	// flows to that pod wait for (each within its own DialContext's
	// context): past it they fail, and the next flow tries anew. Zero
	// means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// PingInterval is how often each pod connection is pinged (a SPDY
	// PING, through the API server to the kubelet), whether flows use it or
	// not: an idle connection is then never closed for idleness on the way,
	// and one that died silently is found and replaced before a flow needs
	// it. Zero means DefaultPingInterval; negative means no pings.
	PingInterval time.Duration
	// PingTimeout is how long a ping may go unanswered: past it, the
	// connection is closed, its flows are reset, and a new one is made.
	// Zero means DefaultPingTimeout.
	PingTimeout time.Duration
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
	pingInterval   time.Duration
	pingTimeout    time.Duration
	logf           func(format string, args ...any)

	ctx      context.Context // bounds every connect; cancelled by Close
	cancel   context.CancelFunc
	done     chan struct{} // closed by Close
	wg       sync.WaitGroup
	nextID   atomic.Uint64 // requestID of the next stream pair
	mu       sync.Mutex    // guards the fields below
	conns    map[podKey]*podConn
	accepted map[podPort]struct{} // ports that accepted a flow, until one refuses
	last     *Reconnect           // the last pod connection lost
	failures map[podKey]int       // failed connects in a row, by pod
	isClosed bool
}

// podPort is a port of a pod.
type podPort struct {
	pod  podKey
	port uint16
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
	// used is set once a flow opened streams on it: lost, it is made
	// again ahead of need.
	used  atomic.Bool
	flows atomic.Int64  // flows open on it now
	check chan struct{} // a send asks run to ping now (Check)
	// suspect: Check asked for a ping not answered yet; meanwhile new
	// flows wait for their streams rather than be returned at once.
	suspect atomic.Bool

	mu        sync.Mutex // guards the fields below
	cause     string     // why it was dropped
	connected time.Time
	pinged    time.Time     // the last ping answered
	rtt       time.Duration // its round trip
}

// Reconnect is a pod connection lost, and why.
type Reconnect struct {
	At    time.Time `json:"at"`
	Pod   string    `json:"pod"`
	Cause string    `json:"cause"`
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
	if _, err := rest.TLSConfigFor(config); err != nil {
		return nil, fmt.Errorf("portforward: TLS config: %w", err)
	}
	connect := func(ctx context.Context, namespace, name string) (httpstream.Connection, error) {
		u := *base
		u.Path = base.JoinPath("api", "v1", "namespaces", namespace, "pods", name, "portforward").Path
		return connectPingConn(ctx, config, &u)
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
		pingInterval:   opts.PingInterval,
		pingTimeout:    opts.PingTimeout,
		logf:           opts.Logf,
		ctx:            ctx,
		cancel:         cancel,
		done:           make(chan struct{}),
		conns:          make(map[podKey]*podConn),
		accepted:       make(map[podPort]struct{}),
		failures:       make(map[podKey]int),
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
	if d.pingInterval == 0 {
		d.pingInterval = DefaultPingInterval
	}
	if d.pingTimeout <= 0 {
		d.pingTimeout = DefaultPingTimeout
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
//
// A port of the pod that accepted a flow before is not waited for again
// while the pod's connection is up: DialContext returns at once, as
// kubectl port-forward accepts at once, and the streams open behind the
// returned connection, whose Read and Write wait for them. Should the pod
// refuse after all, the connection's Read returns the RefusedError (a
// reset for a proxied client, not a clean end) and the port is forgotten:
// its next flow waits for the pod's answer again, so that a closed port is
// refused before a client's handshake completes.
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
	known := d.isAccepted(podPort{pod, ap.Port()})
	if known && d.readyConn(pod) {
		return d.dialLater(pod, ap), nil
	}
	c, err := d.dial(ctx, pod, ap, !known)
	if err != nil {
		return nil, fmt.Errorf("portforward: dial %s (pod %s): %w", address, pod, err)
	}
	return c, nil
}

// dial opens a flow to ap on pod's connection, waiting for the pod's
// refusal if confirm (Options.Confirm). A connection that was open before
// this flow may have died silently (a sleep, a network change): if it fails
// this flow, one new connection gets a second try.
func (d *Dialer) dial(ctx context.Context, pod podKey, ap netip.AddrPort, confirm bool) (*conn, error) {
	for attempt := 0; ; attempt++ {
		pc, reused, err := d.podConn(ctx, pod)
		if err != nil {
			return nil, err
		}
		c, err := d.open(ctx, pc, ap, d.openLimit(ctx, reused), confirm)
		if err == nil {
			return c, nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) {
			d.forgetPort(podPort{pod, ap.Port()})
			return nil, err
		}
		if ctx.Err() != nil || !reused || attempt > 0 {
			return nil, err
		}
		d.drop(pc, fmt.Sprintf("a new flow could not open streams on it (%v)", err))
	}
}

// dialLater returns the flow to ap at once and opens it behind: see
// DialContext. The open has OpenTimeout, twice if the connection found
// open fails it, as a dial with that deadline would.
func (d *Dialer) dialLater(pod podKey, ap netip.AddrPort) net.Conn {
	ctx, cancel := context.WithTimeout(d.ctx, 2*d.openTimeout)
	l := &laterConn{remote: net.TCPAddrFromAddrPort(ap), cancel: cancel, ready: make(chan struct{})}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer cancel()
		c, err := d.dial(ctx, pod, ap, false)
		if err != nil {
			err = fmt.Errorf("portforward: dial %s (pod %s): %w", ap, pod, err)
			d.logf("portforward: %v", err)
		}
		l.c, l.err = c, err
		close(l.ready)
	}()
	return l
}

// isAccepted reports whether port accepted a flow and refused none since.
func (d *Dialer) isAccepted(pp podPort) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.accepted[pp]
	return ok
}

func (d *Dialer) acceptedPort(pp podPort) {
	d.mu.Lock()
	d.accepted[pp] = struct{}{}
	d.mu.Unlock()
}

// forgetPort is called when pp refused a flow.
func (d *Dialer) forgetPort(pp podPort) {
	d.mu.Lock()
	delete(d.accepted, pp)
	d.mu.Unlock()
}

// readyConn reports whether pod has a connection up.
func (d *Dialer) readyConn(pod podKey) bool {
	d.mu.Lock()
	pc := d.conns[pod]
	d.mu.Unlock()
	if pc == nil || pc.dropped.Load() || pc.suspect.Load() {
		return false
	}
	select {
	case <-pc.ready:
		return pc.err == nil
	default:
		return false
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
		pc = d.startLocked(pod)
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

// startLocked starts making a connection to pod; d.mu is held and d is not
// closed.
func (d *Dialer) startLocked(pod podKey) *podConn {
	pc := &podConn{pod: pod, ready: make(chan struct{}), check: make(chan struct{}, 1)}
	d.conns[pod] = pc
	d.wg.Add(1)
	go d.run(pc)
	return pc
}

// run connects pc and, once connected, pings it every PingInterval and
// forgets it when it closes, so that the next flow connects again. A
// connection lost other than by Close is made again at once if a flow had
// used it, so that the next flow finds one ready.
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
	if err != nil && d.conns[pc.pod] == pc {
		// Forgotten before ready closes, so that a flow after the failure
		// connects again rather than find it.
		delete(d.conns, pc.pod)
	}
	pc.mu.Lock()
	pc.connected = time.Now()
	pc.mu.Unlock()
	close(pc.ready)
	d.mu.Unlock()
	if err != nil {
		d.forget(pc)
		if !errors.Is(err, ErrClosed) && d.failing(pc.pod, true) == 1 {
			// Once per run of failures: during an outage every flow
			// tries, and fails, anew.
			d.logf("portforward: pod %s: %v (said once until a connection is made)", pc.pod, err)
		}
		return
	}
	again := ""
	if n := d.failing(pc.pod, false); n > 0 {
		again = fmt.Sprintf(" after %d failed tries", n)
	}
	d.logf("portforward: pod %s: connected in %v over %s%s", pc.pod, time.Since(began).Round(time.Millisecond), transportOf(conn), again)
	cause := d.watch(pc)
	d.forget(pc)
	if cause == "" {
		return // Close
	}
	d.logf("portforward: pod %s: connection lost after %v: %s", pc.pod, time.Since(began).Round(time.Second), cause)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.last = &Reconnect{At: time.Now(), Pod: pc.pod.String(), Cause: cause}
	if !d.isClosed && d.conns[pc.pod] == nil && pc.used.Load() {
		d.startLocked(pc.pod)
	}
}

// failing counts a failed connect to pod (failed) and returns the failures
// in a row, or ends such a run and returns how long it was.
func (d *Dialer) failing(pod podKey, failed bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.failures[pod]
	if !failed {
		delete(d.failures, pod)
		return n
	}
	n++
	d.failures[pod] = n
	return n
}

// watch pings pc's connection until it closes, and returns why it did:
// "" for Close.
func (d *Dialer) watch(pc *podConn) string {
	p, canPing := pc.conn.(pinger)
	var tick <-chan time.Time
	if canPing && d.pingInterval > 0 {
		t := time.NewTicker(d.pingInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-pc.conn.CloseChan():
			select {
			case <-d.done: // Close closed it
				return ""
			default:
			}
			pc.mu.Lock()
			defer pc.mu.Unlock()
			if pc.cause == "" {
				return "closed by the far side"
			}
			return pc.cause
		case <-d.done:
			pc.conn.Close()
			return ""
		case <-pc.check:
			if canPing {
				d.ping(pc, p)
			} else {
				pc.suspect.Store(false)
			}
		case <-tick:
			d.ping(pc, p)
		}
	}
}

// pinger is a pod connection that pings: pingConn.
type pinger interface {
	Ping(timeout time.Duration) (time.Duration, error)
}

// ping pings pc, and drops it if the ping fails.
func (d *Dialer) ping(pc *podConn, p pinger) {
	rtt, err := p.Ping(d.pingTimeout)
	if err != nil {
		select {
		case <-d.done: // Close closed the connection under the ping
			return
		default:
		}
		d.drop(pc, fmt.Sprintf("ping: %v", err))
		return
	}
	pc.mu.Lock()
	pc.pinged, pc.rtt = time.Now(), rtt
	pc.mu.Unlock()
	pc.suspect.Store(false)
}

// Check pings every pod connection now, and replaces those that do not
// answer within PingTimeout: after the host's network changed, for one.
// Until its ping is answered, new flows on a connection wait for their
// streams, so that a dead connection fails them instead of holding them.
func (d *Dialer) Check() {
	for _, pc := range d.readyConns() {
		pc.suspect.Store(true)
		select {
		case pc.check <- struct{}{}:
		default: // one is pending
		}
	}
}

// Reset closes every pod connection, resetting its flows, and makes again
// those that flows used: after the host resumed from a sleep longer than
// PingTimeout, say, when a connection may be dead without a sign, or alive
// but behind the kubelet's idle timeout or a NAT that forgot it; a flow
// must get a reset then, never hang (https://github.com/kubernetes/kubectl/issues/1525).
func (d *Dialer) Reset(cause string) {
	for _, pc := range d.readyConns() {
		d.drop(pc, cause)
	}
}

// readyConns returns the pod connections that are up.
func (d *Dialer) readyConns() []*podConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*podConn
	for _, pc := range d.conns {
		select {
		case <-pc.ready:
			if pc.err == nil {
				out = append(out, pc)
			}
		default:
		}
	}
	return out
}

// transportOf names the transport of conn, for logs and Status.
func transportOf(conn httpstream.Connection) string {
	if t, ok := conn.(interface{ Transport() string }); ok {
		return t.Transport()
	}
	return "unknown"
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

// drop forgets pc and closes its connection, ending every flow on it; cause
// says why, for the log and Status.
func (d *Dialer) drop(pc *podConn, cause string) {
	d.forget(pc)
	pc.mu.Lock()
	if pc.cause == "" {
		pc.cause = cause
	}
	pc.mu.Unlock()
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
// for the kubelet's answer, and, if confirm, waits for the pod's refusal as
// Options.Confirm says; a port that passed is remembered as accepted.
func (d *Dialer) open(ctx context.Context, pc *podConn, ap netip.AddrPort, limit time.Duration, confirm bool) (*conn, error) {
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
		err := fmt.Errorf("open streams: no answer within %v", limit.Round(time.Millisecond))
		d.drop(pc, err.Error())
		return nil, err
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
	pc.used.Store(true)
	pp := podPort{pc.pod, ap.Port()}
	c := newConn(pc.conn, r.errStream, r.data, ap, &pc.dropped, &pc.flows, func() { d.forgetPort(pp) })
	if !confirm {
		c.unconfirmed = true
		return c, nil
	}
	if d.confirm >= 0 {
		// Opening the streams waited for the kubelet's replies: one round
		// trip, about what a refusal takes to come back.
		if err := c.confirm(ctx, time.Since(began)+d.confirm); err != nil {
			c.Close()
			return nil, err
		}
	}
	d.acceptedPort(pp)
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
	// Closing the connections also ends the pings waiting on them.
	for _, pc := range d.conns {
		select {
		case <-pc.ready:
			if pc.err == nil {
				pc.conn.Close()
			}
		default:
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}

// Status is what a Dialer has: its pod connections and the last one lost.
type Status struct {
	Conns []ConnStatus `json:"conns"`
	// LastReconnect is the last pod connection lost other than by Close,
	// and why; nil if none was.
	LastReconnect *Reconnect `json:"lastReconnect,omitempty"`
}

// ConnStatus is one pod connection that is up.
type ConnStatus struct {
	Pod       string `json:"pod"`
	Transport string `json:"transport"` // TransportWebSocket or TransportSPDY
	// Connected is when it was made.
	Connected time.Time `json:"connected"`
	// PingRTT is the round trip of the last ping answered, at Pinged; zero
	// before the first.
	PingRTT time.Duration `json:"pingRTT"`
	Pinged  time.Time     `json:"pinged,omitzero"`
	// Flows are open on it now.
	Flows int `json:"flows"`
}

// Status returns the pod connections that are up, by pod.
func (d *Dialer) Status() Status {
	d.mu.Lock()
	var st Status
	if d.last != nil {
		r := *d.last
		st.LastReconnect = &r
	}
	pcs := make([]*podConn, 0, len(d.conns))
	for _, pc := range d.conns {
		pcs = append(pcs, pc)
	}
	d.mu.Unlock()
	for _, pc := range pcs {
		select {
		case <-pc.ready:
		default:
			continue
		}
		if pc.err != nil || pc.dropped.Load() {
			continue
		}
		pc.mu.Lock()
		cs := ConnStatus{Pod: pc.pod.String(), Transport: transportOf(pc.conn), Connected: pc.connected,
			PingRTT: pc.rtt, Pinged: pc.pinged, Flows: int(pc.flows.Load())}
		pc.mu.Unlock()
		st.Conns = append(st.Conns, cs)
	}
	slices.SortFunc(st.Conns, func(a, b ConnStatus) int { return strings.Compare(a.Pod, b.Pod) })
	return st
}
