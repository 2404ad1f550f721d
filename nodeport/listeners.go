package nodeport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/limiter"
	"github.com/kubetun/kubetun/resolver"
)

// Config is what Listeners need.
type Config struct {
	// Services is where a connection to a node port looks its Service up,
	// on every new connection or UDP session: the packet path reads the
	// current snapshot and takes no control-plane lock.
	Services interface{ Load() *resolver.Snapshot }
	// DialTimeout bounds a dial to a pod (default 3 s); on failure one
	// other endpoint is tried.
	DialTimeout time.Duration
	// Healthy says whether the proxy as a whole is healthy, for the health
	// check node ports' serviceProxyHealthy (kube-proxy answers 503 when
	// it is not); nil means always.
	Healthy func() bool
	Logger  *slog.Logger
	// The data path's limits and timeouts, the same as for ClusterIPs
	// (netstack.Config's, which the caller passes on). A zero bound is the
	// default of the same name (netstack's); a zero timeout is none.
	//
	// MaxSetups bounds the TCP connections accepted and being dialled at
	// once: at the bound the listeners stop accepting, so the kernel's
	// accept queue holds the next ones and, once full, drops their SYNs
	// for the clients to retransmit, as for any busy server. A burst is
	// slowed, never refused.
	MaxSetups int
	// MaxFlows bounds the TCP connections spliced at once; past it a
	// connection is reset.
	MaxFlows int
	// UserTimeout is TCP_USER_TIMEOUT on both legs; HalfClosedTimeout
	// ends a connection one direction of which ended that long ago.
	UserTimeout       time.Duration
	HalfClosedTimeout time.Duration
	// MaxUDPSessions and MaxUDPSessionsPerSource bound the UDP sessions
	// over all node ports, and one client address's.
	MaxUDPSessions          int
	MaxUDPSessionsPerSource int

	// Inherit returns the socket a kubetun this one takes over from
	// passed under name (Sockets), or nil: it is used instead of opening a
	// new one, so no connection to it is refused in between. nil: none.
	Inherit func(name string) *os.File
}

// Listeners holds the node port and health check node port sockets. Create
// it with New, call Reconcile on every service table update, and Close at
// the end.
type Listeners struct {
	cfg    Config
	log    *slog.Logger
	dialer net.Dialer
	ctx    context.Context // cancelled by Close: ends dials and sessions
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine started

	// redirect maps an endpoint to the address dialled: the identity,
	// except in tests, which serve every endpoint on loopback.
	redirect func(netip.AddrPort) netip.AddrPort

	// dialing holds a slot for each TCP connection accepted and being
	// dialled (Config.MaxSetups): a listener waits for one after each
	// Accept.
	dialing chan struct{}

	// udpSessions counts the UDP sessions over all node ports, per client
	// address and in all.
	udpSessions *limiter.PerSource

	// tcpActive counts the TCP node port connections accepted and not yet
	// ended, being dialled or spliced, for Drain.
	tcpActive atomic.Int64

	mu     sync.Mutex // guards the fields below; never taken by a connection
	open   map[listenKey]socket
	closed bool
	// stopped: StopAccepting closed the TCP and health check sockets;
	// Reconcile opens and closes nothing any more.
	stopped bool
	conns   map[*net.TCPConn]struct{} // TCP legs being spliced, to close them on Close
	last    reconciled                // what the last Reconcile served
}

// socket is one open socket: Close stops it (but not the connections it
// accepted, which finish on their own, as established flows outlive a
// kube-proxy rule), and update hands it the new snapshot's health check.
type socket interface {
	Close()
	// sock is the socket itself, to pass it on (Sockets).
	sock() syscall.Conn
}

// listenKey is one socket: a node port (TCP or UDP) or a health check node
// port (health true, TCP) on one node address.
type listenKey struct {
	proto  resolver.Protocol
	health bool
	addr   netip.AddrPort
}

// handoverName names k's socket when it is passed to a successor.
func (k listenKey) handoverName() string { return "nodeport " + k.String() }

func (k listenKey) String() string {
	if k.health {
		return fmt.Sprintf("healthCheckNodePort %d on %s", k.addr.Port(), k.addr.Addr())
	}
	return fmt.Sprintf("node port %d (%s) on %s", k.addr.Port(), k.proto, k.addr.Addr())
}

// New returns Listeners with nothing open yet.
func New(cfg Config) *Listeners {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSetups <= 0 {
		cfg.MaxSetups = defaultMaxSetups
	}
	if cfg.MaxUDPSessions <= 0 {
		cfg.MaxUDPSessions = defaultMaxUDPSessions
	}
	if cfg.MaxUDPSessionsPerSource <= 0 {
		cfg.MaxUDPSessionsPerSource = defaultMaxUDPSessionsPerSource
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Listeners{
		cfg:         cfg,
		log:         cfg.Logger,
		ctx:         ctx,
		cancel:      cancel,
		open:        make(map[listenKey]socket),
		conns:       make(map[*net.TCPConn]struct{}),
		dialing:     make(chan struct{}, cfg.MaxSetups),
		udpSessions: limiter.New(cfg.MaxUDPSessionsPerSource, cfg.MaxUDPSessions),
		redirect:    func(a netip.AddrPort) netip.AddrPort { return a },
	}
}

// Reconcile opens a socket on each of addrs for each node port and health
// check node port of snap that is not open yet, and closes those snap no
// longer has. A node port is opened only on the addresses of a family its
// Service has. It returns what cannot be opened now (a port another process
// holds, most often), one Problem per Service port and address, naming the
// Service: the caller reports each once while it lasts; Reconcile tries
// again every time, and the other ports are served meanwhile.
func (l *Listeners) Reconcile(snap *resolver.Snapshot, addrs []netip.Addr) []resolver.Problem {
	want := make(map[listenKey]string) // to the Service
	for _, np := range snap.NodePorts() {
		for _, a := range addrs {
			if _, ok := snap.LookupNodePort(np.Protocol, a, np.Port); ok {
				want[listenKey{proto: np.Protocol, addr: netip.AddrPortFrom(a, np.Port)}] = np.Service
			}
		}
	}
	checks := make(map[uint16]resolver.HealthCheck)
	for _, hc := range snap.HealthChecks() {
		checks[hc.Port] = hc
		for _, a := range addrs {
			want[listenKey{proto: resolver.TCP, health: true, addr: netip.AddrPortFrom(a, hc.Port)}] = hc.Namespace + "/" + hc.Name
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.stopped {
		return nil
	}
	// Most table updates change no node port: then there is nothing to
	// open or close, unless a port could not be opened last time (tried
	// again on every update).
	if l.last.valid && !l.last.problems && slices.Equal(l.last.nodePorts, snap.NodePorts()) &&
		slices.Equal(l.last.checks, snap.HealthChecks()) && slices.Equal(l.last.addrs, addrs) {
		return nil
	}
	for k, s := range l.open {
		if _, ok := want[k]; !ok {
			s.Close()
			delete(l.open, k)
			l.log.Info("closed", "socket", k.String())
		}
	}
	var problems []resolver.Problem
	keys := make([]listenKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b listenKey) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		return int(a.proto) - int(b.proto)
	})
	for _, k := range keys {
		if s, ok := l.open[k]; ok {
			if hs, ok := s.(*healthServer); ok {
				hs.set(checks[k.addr.Port()])
			}
			continue
		}
		s, err := l.listen(k, checks[k.addr.Port()])
		if err != nil {
			problems = append(problems, resolver.Problem{Object: "Service " + want[k],
				Reason: fmt.Sprintf("%s not served: %v", k, err)})
			continue
		}
		l.open[k] = s
		l.log.Info("listening", "socket", k.String(), "service", want[k])
	}
	l.last = reconciled{valid: true, problems: len(problems) > 0, nodePorts: snap.NodePorts(),
		checks: snap.HealthChecks(), addrs: slices.Clone(addrs)}
	return problems
}

// reconciled is what the last Reconcile served, to skip the next one when
// nothing of it changed. (A Service's change of IP families that keeps its
// node ports is noticed with the next change of node ports or addresses.)
type reconciled struct {
	valid     bool
	problems  bool
	nodePorts []resolver.NodePort
	checks    []resolver.HealthCheck
	addrs     []netip.Addr
}

// listen opens the socket for k, or takes the one a predecessor passed.
func (l *Listeners) listen(k listenKey, hc resolver.HealthCheck) (socket, error) {
	switch {
	case k.health:
		ln, err := l.listenTCP(k)
		if err != nil {
			return nil, err
		}
		return l.serveHealth(ln, k.addr, hc), nil
	case k.proto == resolver.TCP:
		ln, err := l.listenTCP(k)
		if err != nil {
			return nil, err
		}
		t := &tcpListener{l: l, ln: ln, local: k.addr, stop: make(chan struct{}), done: make(chan struct{})}
		l.wg.Add(1)
		go t.serve()
		return t, nil
	case k.proto == resolver.UDP:
		conn, err := l.listenUDP(k)
		if err != nil {
			return nil, err
		}
		u := &udpListener{l: l, conn: conn, local: k.addr, sessions: make(map[netip.AddrPort]*udpSession), done: make(chan struct{})}
		l.wg.Add(1)
		go u.serve()
		return u, nil
	}
	return nil, fmt.Errorf("protocol %s is not served on node ports", k.proto)
}

// inherited returns the socket a predecessor passed for k, if any.
func (l *Listeners) inherited(k listenKey) *os.File {
	if l.cfg.Inherit == nil {
		return nil
	}
	return l.cfg.Inherit(k.handoverName())
}

func (l *Listeners) listenTCP(k listenKey) (*net.TCPListener, error) {
	if f := l.inherited(k); f != nil {
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("socket passed on: %w", err)
		}
		if tl, ok := ln.(*net.TCPListener); ok {
			return tl, nil
		}
		ln.Close()
		return nil, fmt.Errorf("socket passed on is a %T, not a TCP listener", ln)
	}
	return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(k.addr))
}

func (l *Listeners) listenUDP(k listenKey) (*net.UDPConn, error) {
	if f := l.inherited(k); f != nil {
		defer f.Close()
		c, err := net.FilePacketConn(f)
		if err != nil {
			return nil, fmt.Errorf("socket passed on: %w", err)
		}
		if uc, ok := c.(*net.UDPConn); ok {
			return uc, nil
		}
		c.Close()
		return nil, fmt.Errorf("socket passed on is a %T, not a UDP socket", c)
	}
	return net.ListenUDP("udp", net.UDPAddrFromAddrPort(k.addr))
}

// Sockets returns the sockets open now, each under the name a successor
// finds it by (Config.Inherit), to pass them on.
func (l *Listeners) Sockets() (names []string, socks []syscall.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, s := range l.open {
		names = append(names, k.handoverName())
		socks = append(socks, s.sock())
	}
	return names, socks
}

// HandOff closes every socket, UDP ones too, once a successor holds them
// (Sockets): it accepts and reads from then on. The TCP connections
// accepted already go on here until they end; the UDP sessions end, as
// their replies left by the socket (the successor starts new ones on the
// clients' next datagrams). Reconcile changes nothing from now on.
func (l *Listeners) HandOff() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	for k, s := range l.open {
		s.Close()
		delete(l.open, k)
	}
}

// Open returns the sockets open now, sorted, for tests and status.
func (l *Listeners) Open() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k := range l.open {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// StopAccepting closes the TCP node port and health check node port
// sockets: new connections are refused (the kernel resets them), and a load
// balancer's health check fails, so it sends new clients elsewhere. The
// connections accepted already go on, and so do the UDP node ports, whose
// one socket carries every session's replies. Reconcile changes nothing
// from now on. It is the first step of a graceful shutdown; Close ends what
// is left.
func (l *Listeners) StopAccepting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopped = true
	for k, s := range l.open {
		if k.proto == resolver.TCP {
			s.Close()
			delete(l.open, k)
		}
	}
}

// drainPoll is how often Drain counts the connections left.
const drainPoll = 20 * time.Millisecond

// Drain stops accepting (StopAccepting) and waits until every TCP node port
// connection accepted has ended, or ctx is done. It reports whether they
// all ended.
func (l *Listeners) Drain(ctx context.Context) bool {
	l.StopAccepting()
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for l.tcpActive.Load() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// Close closes every socket and connection and waits for every goroutine
// Listeners started.
func (l *Listeners) Close() {
	l.mu.Lock()
	l.closed = true
	for k, s := range l.open {
		s.Close()
		delete(l.open, k)
	}
	for c := range l.conns {
		c.SetLinger(0)
		c.Close()
	}
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}

// track adds a spliced connection, or says Listeners are closed.
func (l *Listeners) track(cs ...*net.TCPConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	for _, c := range cs {
		l.conns[c] = struct{}{}
	}
	return true
}

func (l *Listeners) untrack(cs ...*net.TCPConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cs {
		delete(l.conns, c)
	}
}

// errNoEndpoint: the Service port has no usable endpoint (none at all, or
// none on this node with externalTrafficPolicy: Local).
var errNoEndpoint = errors.New("no usable endpoint")

// healthServer is one health check node port on one address.
type healthServer struct {
	ln   *net.TCPListener
	srv  *http.Server
	hc   atomic.Pointer[resolver.HealthCheck]
	done chan struct{}
}

func (h *healthServer) set(hc resolver.HealthCheck) { h.hc.Store(&hc) }

func (h *healthServer) sock() syscall.Conn { return h.ln }

func (h *healthServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	h.srv.Shutdown(ctx)
	<-h.done
}
