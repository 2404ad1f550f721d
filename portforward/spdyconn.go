package portforward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
	constants "k8s.io/apimachinery/pkg/util/portforward"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/websocket"
	"k8s.io/streaming/pkg/httpstream"
	streamspdy "k8s.io/streaming/pkg/httpstream/spdy"
)

// The transports a pod connection runs on, as Status names them.
const (
	TransportWebSocket = "WebSocket" // SPDY tunnelled in a WebSocket (KEP-4006)
	TransportSPDY      = "SPDY"      // the SPDY upgrade itself
)

// pingConn is the connection to one pod: SPDY on a net.Conn, as
// k8s.io/streaming's own client connection, which it replaces only to be
// able to Ping. That one sends its pings blind (client-go pings every 5 s
// on SPDY, every 10 s in the WebSocket tunnel) and never tells whether
// they were answered, so a connection that died silently (a laptop's
// sleep, a new network) looks alive until a flow finds it dead. A SPDY PING
// travels the whole way, through kube-apiserver to the kubelet and back
// (in the tunnel too: the API server relays the SPDY bytes), and any frame
// resets the kubelet's --streaming-connection-idle-timeout
// (https://github.com/moby/spdystream, connection.go, idleAwareFramer).
type pingConn struct {
	conn      *spdystream.Connection
	transport string

	mu      sync.Mutex // guards streams
	streams map[uint32]*spdystream.Stream
}

var _ httpstream.Connection = (*pingConn)(nil)

// newPingConn starts SPDY, as a client, on nc.
func newPingConn(nc net.Conn, transport string) (*pingConn, error) {
	sc, err := spdystream.NewConnection(nc, false)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("start SPDY on %s: %w", transport, err)
	}
	c := &pingConn{conn: sc, transport: transport, streams: make(map[uint32]*spdystream.Stream)}
	// The kubelet opens no stream towards a client: refuse any.
	go sc.Serve(func(s *spdystream.Stream) { s.Reset() })
	return c, nil
}

// createStreamTimeout bounds the wait for the kubelet's reply to a stream
// open, as k8s.io/streaming's connection does; the Dialer's open limit is
// shorter and closes the connection first.
const createStreamTimeout = 30 * time.Second

// createStreamPoll is how often a stream open looks whether its connection
// closed: spdystream's wait for the reply does not end when it does.
const createStreamPoll = 50 * time.Millisecond

// errConnClosed is CreateStream's error when the connection closed first.
var errConnClosed = errors.New("the connection closed")

// CreateStream opens a stream and waits for the kubelet's reply, ending
// when the connection closes: a connection found dead (a ping unanswered)
// then fails its pending opens at once, and they try a new one.
func (c *pingConn) CreateStream(headers http.Header) (httpstream.Stream, error) {
	s, err := c.conn.CreateStream(headers, nil, false)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(createStreamTimeout)
	for {
		err := s.WaitTimeout(createStreamPoll)
		if err == nil {
			break
		}
		if !errors.Is(err, spdystream.ErrTimeout) {
			return nil, err
		}
		select {
		case <-c.conn.CloseChan():
			return nil, errConnClosed
		default:
		}
		if time.Now().After(deadline) {
			return nil, err
		}
	}
	c.mu.Lock()
	c.streams[s.Identifier()] = s
	c.mu.Unlock()
	return s, nil
}

func (c *pingConn) RemoveStreams(streams ...httpstream.Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range streams {
		if s != nil {
			delete(c.streams, s.Identifier())
		}
	}
}

// Close resets every stream, then closes the connection: spdystream's Close
// alone would wait for the streams to finish.
func (c *pingConn) Close() error {
	c.mu.Lock()
	streams := c.streams
	c.streams = make(map[uint32]*spdystream.Stream)
	c.mu.Unlock()
	for _, s := range streams {
		s.Reset()
	}
	return c.conn.Close()
}

func (c *pingConn) CloseChan() <-chan bool { return c.conn.CloseChan() }

// Transport is TransportWebSocket or TransportSPDY.
func (c *pingConn) Transport() string { return c.transport }

func (c *pingConn) SetIdleTimeout(d time.Duration) { c.conn.SetIdleTimeout(d) }

// errPingTimeout is Ping's error when no answer came in time.
var errPingTimeout = errors.New("ping unanswered")

// Ping sends a SPDY PING and waits up to timeout for its answer; it returns
// the round trip.
func (c *pingConn) Ping(timeout time.Duration) (time.Duration, error) {
	type result struct {
		rtt time.Duration
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// spdystream's Ping returns when answered or when the connection
		// closes: a timed-out one ends with the Close that follows it.
		rtt, err := c.conn.Ping()
		ch <- result{rtt, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.rtt, r.err
	case <-timer.C:
		return 0, fmt.Errorf("%w within %v", errPingTimeout, timeout)
	}
}

// connectPingConn makes the connection to a pod's pods/portforward at u,
// as kubectl does: the WebSocket tunnel first, then SPDY where the API
// server or a proxy on the way refuses the WebSocket upgrade. Every request
// goes with ctx.
func connectPingConn(ctx context.Context, config *rest.Config, u *url.URL) (*pingConn, error) {
	config = rest.CopyConfig(config)
	config.Wrap(func(rt http.RoundTripper) http.RoundTripper { return withContext{rt, ctx} })
	c, err := connectWebSocket(ctx, config, u)
	if err == nil || !(httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)) {
		return c, err
	}
	return connectSPDY(config, u)
}

// connectWebSocket is client-go's SPDY-over-WebSocket dialer
// (k8s.io/client-go/tools/portforward, tunneling_dialer.go), keeping the
// tunnel for a pingConn.
func connectWebSocket(ctx context.Context, config *rest.Config, u *url.URL) (*pingConn, error) {
	transport, holder, err := websocket.RoundTripperFor(config)
	if err != nil {
		return nil, err
	}
	// WebSocket needs GET (RFC 6455, 4.1).
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	ws, err := websocket.Negotiate(transport, holder, req, constants.WebsocketsSPDYTunnelingPrefix+portforward.PortForwardProtocolV1Name)
	if err != nil {
		return nil, err
	}
	if ws == nil {
		return nil, errors.New("WebSocket upgrade: no connection")
	}
	return newPingConn(portforward.NewTunnelingConnection("client", ws), TransportWebSocket)
}

// connectSPDY is client-go's SPDY dialer (k8s.io/client-go/transport/spdy)
// with an upgrader that keeps the upgraded net.Conn for a pingConn.
func connectSPDY(config *rest.Config, u *url.URL) (*pingConn, error) {
	tlsConfig, err := rest.TLSConfigFor(config)
	if err != nil {
		return nil, err
	}
	proxy := http.ProxyFromEnvironment
	if config.Proxy != nil {
		proxy = config.Proxy
	}
	rt, err := streamspdy.NewRoundTripperWithConfig(streamspdy.RoundTripperConfig{TLS: tlsConfig, Proxier: proxy})
	if err != nil {
		return nil, err
	}
	up := &spdyUpgrader{rt: rt}
	wrapped, err := rest.HTTPWrappersForConfig(config, up)
	if err != nil {
		return nil, err
	}
	// spdy.Negotiate's request, with the pingConn kept.
	req, err := http.NewRequest(http.MethodPost, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Add(httpstream.HeaderProtocolVersion, portforward.PortForwardProtocolV1Name)
	resp, err := (&http.Client{Transport: wrapped}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("error sending request: %w", err)
	}
	defer resp.Body.Close()
	return up.newConnection(resp)
}

// spdyUpgrader is streamspdy.SpdyRoundTripper's RoundTrip and
// NewConnection, with the upgraded connection made a pingConn.
type spdyUpgrader struct {
	rt   *streamspdy.SpdyRoundTripper // dials: TLS, proxies
	conn net.Conn
}

func (u *spdyUpgrader) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header = req.Header.Clone()
	req.Header.Add(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	req.Header.Add(httpstream.HeaderUpgrade, streamspdy.HeaderSpdy31)
	conn, err := u.rt.Dial(req)
	if err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	u.conn = conn
	return resp, nil
}

// newConnection checks the answer to the upgrade, as streamspdy's
// NewConnection does, and starts SPDY on the upgraded connection.
func (u *spdyUpgrader) newConnection(resp *http.Response) (*pingConn, error) {
	connection := strings.ToLower(resp.Header.Get(httpstream.HeaderConnection))
	upgrade := strings.ToLower(resp.Header.Get(httpstream.HeaderUpgrade))
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.Contains(connection, "upgrade") || !strings.Contains(upgrade, strings.ToLower(streamspdy.HeaderSpdy31)) {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if u.conn != nil {
			u.conn.Close()
		}
		msg := strings.TrimSpace(string(body))
		if msg == "" {
			msg = resp.Status
		}
		return nil, fmt.Errorf("unable to upgrade connection: %s", msg)
	}
	return newPingConn(u.conn, TransportSPDY)
}
