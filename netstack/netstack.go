// Package netstack terminates service traffic in a gVisor userspace TCP/IP
// stack and connects each flow to a backend pod dialled from the host network.
//
// The stack sits behind a gVisor link endpoint (Config.Link: package
// tunnel's, on the TUN) in promiscuous mode, so it accepts a connection to
// any address; a connection is completed only when a Service owns its
// destination and a backend pod answered the dial ("dial before accept");
// otherwise the client gets a RST. Between the two, a linkFilter answers
// ping and counts what the link drops. Datagrams of an established UDP
// session skip gVisor both ways (DeliverUDP, the UDP fast path).
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/kubetun/kubetun/limiter"
	"github.com/kubetun/kubetun/resolver"
)

// Knobs.
const (
	nicID = 1

	// TCP buffer ranges. gVisor's defaults (1 MiB max) cap a single stream
	// well below what a TUN can carry; Tailscale measured the same and sets
	// these explicitly. Auto-tuning (moderate receive buffer) grows a
	// buffer up to the maximum only for connections that need it.
	tcpBufMin = 4 << 10
	tcpBufDef = 1 << 20
	tcpBufMax = 8 << 20

	// Keepalive on both legs of every connection, so a vanished client or
	// pod is noticed and its goroutines and buffers freed.
	keepaliveIdle     = 30 * time.Second
	keepaliveInterval = 15 * time.Second
	keepaliveCount    = 4

	// DefaultDialTimeout bounds a dial to a backend pod.
	DefaultDialTimeout = 3 * time.Second
)

// The defaults of Config's limits, sized for a node of 2 cores, the smallest
// that runs a kubelet, kube-proxy's usual neighbours and kubetun.
const (
	// DefaultMaxSetups bounds the connections being set up at once, from
	// the SYN until the handshake completes or fails: each holds a
	// goroutine, a pod connection and a half-open gVisor endpoint. A
	// kernel's SYN backlog (net.ipv4.tcp_max_syn_backlog) is of the same
	// order. Past it, SYNs are dropped and clients retransmit them.
	DefaultMaxSetups = 1024
	// DefaultMaxSetupsPerSource is one client address's share of them:
	// past it, that client's SYNs are dropped (it retransmits them) once
	// three quarters of DefaultMaxSetups are taken; below that, capacity
	// nobody uses is lent to a burst (limiter.NewLending). Eight clients at
	// their share still leave room for others. A well-behaved client has a
	// handful under way (each takes a dial, well under a second); a
	// connection pool warming up or a load test has thousands at once.
	DefaultMaxSetupsPerSource = 128
	// DefaultHandshakeTimeout is how long a client may take to send its
	// final ACK after the SYN-ACK: gVisor retransmits the SYN-ACK after
	// 1, 2 and 4 s, so two retransmissions fit. gVisor alone would wait
	// about two minutes, Linux (tcp_synack_retries = 5) about one.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxTCPFlows bounds the flows spliced at once, and with them
	// the host sockets and gVisor endpoints: an idle flow costs about
	// 20 KiB of resident memory and one goroutine (test/e2e
	// TestManyIdleConnections measured 19.4 KiB at 10 000), so 32768 of
	// them take about 650 MiB, and a busy flow's buffers grow to up to
	// tcpBufMax each way. kube-proxy's conntrack table allows 32768
	// entries per core and at least 131072, but an entry holds no
	// buffers. Past it, SYNs get a RST.
	DefaultMaxTCPFlows = 32768
	// DefaultTCPUserTimeout ends a connection whose sent data stays
	// unacknowledged for this long, on both legs (TCP_USER_TIMEOUT, RFC
	// 5482): a vanished peer that keepalive does not probe because data
	// is outstanding. Linux would retransmit for about 15 minutes.
	DefaultTCPUserTimeout = 2 * time.Minute
	// DefaultHalfClosedTimeout ends a flow one direction of which has ended
	// and the other idle for this long: kube-proxy's conntrack timeout for
	// CLOSE_WAIT (--conntrack-tcp-timeout-close-wait), so a flow lives as
	// long as it would through kube-proxy.
	DefaultHalfClosedTimeout = time.Hour
	// DefaultMaxUDPSessions and DefaultMaxUDPSessionsPerSource bound the
	// UDP sessions (each two sockets, two goroutines and up to 128 KiB in
	// gVisor, udpEndpointBuf) so that a flood of source ports cannot
	// exhaust the host: 4096 hold at most 512 MiB in gVisor. Past them,
	// new sessions' datagrams are dropped. Cluster DNS, the busiest UDP,
	// is answered by kubetun itself, without sessions.
	DefaultMaxUDPSessions          = 4096
	DefaultMaxUDPSessionsPerSource = 1024
	// DefaultTCPAckDelay is how long gVisor may hold the ACK of a small
	// request for the answer to carry it (one TUN write per request
	// instead of two). A pod on the node answers in tens of microseconds;
	// 1 ms is far below a Linux client's RTO (200 ms at least) and its own
	// delayed ACK (40 ms at least), and bounds what a client that waits for
	// the ACK (Nagle's algorithm, RFC 896, writing twice before it reads)
	// can lose per exchange.
	DefaultTCPAckDelay = time.Millisecond
	// DefaultMaxUDPQueuedBytes bounds the client datagrams queued on the
	// fast path for every UDP session together, past a session's own bound
	// (udpQueueBytes, 256 KiB): without it, every session's queue full
	// would be 1 GiB.
	DefaultMaxUDPQueuedBytes = 64 << 20
)

// Services is what the stack needs from the resolver: the Service port that
// owns a destination, read from an immutable snapshot without locking.
type Services interface {
	Lookup(proto resolver.Protocol, dst netip.AddrPort) (*resolver.ServicePort, bool)
	Answerer
}

var _ Services = (*resolver.Table)(nil)

// Pods names the pod that has an address; *resolver.Table is one.
type Pods interface {
	PodByIP(ip netip.Addr) (namespace, name string, ok bool)
}

var _ Pods = (*resolver.Table)(nil)

// Dialer dials backend pods. *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config is what New needs.
type Config struct {
	// Link is the gVisor link endpoint packets arrive on and leave by. Its
	// owner closes it, after Close.
	Link stack.LinkEndpoint
	// Services resolves destinations to Service ports.
	Services Services
	// Dialer dials pods; nil means a net.Dialer with keepalive.
	Dialer Dialer
	// DialTimeout bounds each dial; zero means DefaultDialTimeout.
	DialTimeout time.Duration
	Logger      *slog.Logger

	// Pods, if set, lets a TCP connection to an address that is no
	// Service's through when Pods knows a pod of that address: it is dialled
	// at that same address and port. A laptop that reaches pods over
	// port-forward routes the pod IPs of headless Services into the TUN, as
	// their DNS names resolve to them; Pods keeps every other address out.
	Pods Pods
	// RefuseUDP, if not empty, refuses every UDP flow to a Service with
	// ICMP port unreachable at once, and logs once per Service that it does
	// and why: this text. Port-forward, for one, carries TCP only. Sockets
	// of the stack itself (ListenUDP: the cluster DNS) still answer.
	RefuseUDP string

	// Limits and timeouts; zero means the Default of the same name.
	// Negative TCPUserTimeout or HalfClosedTimeout turn them off.
	MaxSetups               int // connections being set up (SYN to handshake done), all clients
	MaxSetupsPerSource      int // the same for one client address; past it, RST
	HandshakeTimeout        time.Duration
	MaxTCPFlows             int // flows spliced at once; past it, RST
	TCPUserTimeout          time.Duration
	HalfClosedTimeout       time.Duration
	MaxUDPSessions          int
	MaxUDPSessionsPerSource int
	MaxUDPQueuedBytes       int64

	// TCPAckDelay, if positive, lets gVisor hold the ACK of a small
	// request this long for the answer to carry it; zero means
	// DefaultTCPAckDelay, negative sends every ACK at once, as gVisor
	// does unpatched. Below 500 ms (RFC 9293).
	TCPAckDelay time.Duration
	// TCPInlineDelivery processes a segment of an established flow in the
	// goroutine that read it from the link instead of handing it to one of
	// gVisor's processor goroutines. Off by default: it measured no gain
	// (make bench's levers group says how it fares).
	TCPInlineDelivery bool

	// StalledClientTimeout applies to flows whose backend is not a host
	// TCP socket (a port-forward stream): a write to a client that takes no
	// byte for this long resets the flow. The streams of a port-forward
	// connection share it without flow control of their own (SPDY as
	// github.com/moby/spdystream speaks it): one stream whose data nobody
	// reads stops the connection's reader, and with it every other flow to
	// that pod. Zero waits for ever, as kubectl port-forward does.
	StalledClientTimeout time.Duration
}

// orDefault returns v, or def if v is zero.
func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Stack is a gVisor stack forwarding service connections to pods.
type Stack struct {
	stack       *stack.Stack
	services    Services
	dialer      Dialer
	dialTimeout time.Duration
	log         *slog.Logger
	pods        Pods   // nil: no pod address passes (Config.Pods)
	refuseUDP   string // Config.RefuseUDP

	udpRefusedSaid  sync.Map     // Service name -> true: its UDP refusal was logged
	udpRefusedCount atomic.Int64 // its entries, bounded by maxUDPRefusedSaid

	ctx    context.Context // cancelled by Close; bounds dials
	cancel context.CancelFunc

	// Config's limits, defaults applied.
	maxFlows             int
	handshakeTimeout     time.Duration
	userTimeout          time.Duration // <= 0: not set
	halfClosedTimeout    time.Duration // <= 0: never
	stalledClientTimeout time.Duration // 0: never
	maxUDPQueued         int64
	udpQueued            atomic.Int64 // bytes in every session's fastQ

	pending sync.Map // stack.TransportEndpointID -> context.CancelFunc of its dial

	// setups counts the TCP connections being set up (SYN to handshake
	// done) per client address and in all; sessions the UDP sessions.
	setups      *limiter.PerSource
	udpSessions *limiter.PerSource

	refuseNew atomic.Bool // StopAccepting was called: new SYNs are reset

	// Handing over (handover.go).
	pred       atomic.Pointer[predecessor]  // the draining predecessor packets of its flows go to; nil: none
	handed     handoverCounters             // what was passed to it
	handedOver atomic.Bool                  // HandOver was called: datagrams no session takes go back
	successor  atomic.Pointer[forwarderRef] // where they go back to

	udp udpTimers // UDP session timings: the package's constants, shortened by tests

	link  *linkFilter // between gVisor and cfg.Link
	count counters
	fast  sync.Map // flowKey -> *udpSession: the sessions DeliverUDP feeds

	byService serviceFlows // TCP flows spliced and UDP sessions open now, per Service

	mu       sync.Mutex // guards the fields below; held per connection or session, never per packet
	closed   bool
	flows    map[*flow]struct{}
	sessions map[*udpSession]struct{}
	wg       sync.WaitGroup // the TCP handler and splice goroutines, the UDP sessions
}

// New creates the stack on cfg.Link and starts forwarding.
func New(cfg Config) (*Stack, error) {
	return newStack(cfg, udpTimers{idle: UDPIdleTimeout, dnsIdle: DNSIdleTimeout, tick: udpTick})
}

// newStack is New with the UDP session timings given, so that tests can see
// a session expire in milliseconds.
func newStack(cfg Config, udpt udpTimers) (*Stack, error) {
	if cfg.Link == nil || cfg.Services == nil {
		return nil, errors.New("netstack.New: Link and Services are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dialer := cfg.Dialer
	if dialer == nil {
		dialer = &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: keepaliveIdle, Interval: keepaliveInterval, Count: keepaliveCount,
		}}
	}

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	pf := newLinkFilter(cfg.Link, cfg.Services)
	ackDelay := orDefault(cfg.TCPAckDelay, DefaultTCPAckDelay)
	if ackDelay >= 500*time.Millisecond {
		return nil, fmt.Errorf("netstack.New: TCP ACK delay %v: want less than 500ms (RFC 9293)", ackDelay)
	}
	if err := configure(s, pf, max(ackDelay, 0), cfg.TCPInlineDelivery); err != nil {
		s.Close()
		s.Wait()
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	ns := &Stack{
		stack:       s,
		services:    cfg.Services,
		dialer:      dialer,
		dialTimeout: timeout,
		log:         log,
		pods:        cfg.Pods,
		refuseUDP:   cfg.RefuseUDP,
		ctx:         ctx,
		cancel:      cancel,
		udp:         udpt,
		link:        pf,
		flows:       make(map[*flow]struct{}),
		sessions:    make(map[*udpSession]struct{}),

		setups:               limiter.NewLending(orDefault(cfg.MaxSetupsPerSource, DefaultMaxSetupsPerSource), orDefault(cfg.MaxSetups, DefaultMaxSetups)),
		udpSessions:          limiter.New(orDefault(cfg.MaxUDPSessionsPerSource, DefaultMaxUDPSessionsPerSource), orDefault(cfg.MaxUDPSessions, DefaultMaxUDPSessions)),
		maxFlows:             orDefault(cfg.MaxTCPFlows, DefaultMaxTCPFlows),
		handshakeTimeout:     orDefault(cfg.HandshakeTimeout, DefaultHandshakeTimeout),
		userTimeout:          orDefault(cfg.TCPUserTimeout, DefaultTCPUserTimeout),
		halfClosedTimeout:    orDefault(cfg.HalfClosedTimeout, DefaultHalfClosedTimeout),
		stalledClientTimeout: max(cfg.StalledClientTimeout, 0),
		maxUDPQueued:         orDefault(cfg.MaxUDPQueuedBytes, DefaultMaxUDPQueuedBytes),
	}
	fwd := tcp.NewForwarder(s, 0, orDefault(cfg.MaxSetups, DefaultMaxSetups), ns.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, ns.handleSegment(fwd))
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(s, ns.handleUDP).HandlePacket)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber4, pf.handleEcho4)
	return ns, nil
}

// configure sets the stack's options and creates its one NIC.
func configure(s *stack.Stack, link stack.LinkEndpoint, ackDelay time.Duration, inline bool) error {
	tcpOpts := []tcpip.SettableTransportProtocolOption{
		// SACK recovers from several losses in one window; Linux clients
		// always offer it.
		ptr(tcpip.TCPSACKEnabled(true)),
		// RACK off: gVisor's RACK implementation has been seen to stall
		// throughput under loss (tailscale/tailscale#9707); classic
		// SACK-based recovery does better.
		ptr(tcpip.TCPRecovery(0)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDef, Max: tcpBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcpBufMin, Default: tcpBufDef, Max: tcpBufMax},
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		// No TIME_WAIT. When the pod closes first, gVisor closes first
		// towards the client and would hold the 4-tuple for 60 s; a new
		// SYN on it is then passed only to a listening endpoint, never to
		// the forwarder, and is dropped. Linux clients reuse ephemeral
		// ports within seconds under load, so such a SYN is common: it
		// hung connections for a minute (test/e2e TestSourcePortReuse).
		// The client's kernel keeps its own TIME_WAIT where it closed first.
		ptr(tcpip.TCPTimeWaitTimeoutOption(0)),
		// If asked, process a segment of an established connection in the
		// goroutine that read it from the TUN, not in one of gVisor's
		// processor goroutines: one goroutine wake-up less per segment (a
		// patch of ours, third_party/patches/gvisor/0001-tcp-inline-delivery.patch),
		// but no measured gain: off by default.
		ptr(tcpip.TCPInlineDeliveryOption(inline)),
		// Hold the ACK of a small request up to ackDelay for the answer to
		// carry it: one TUN write per request instead of two (a patch of
		// ours, third_party/patches/gvisor/0002-tcp-ack-delay.patch).
		ptr(tcpip.TCPAckDelayOption(ackDelay)),
	}
	for _, opt := range tcpOpts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("SetTransportProtocolOption(tcp, %T): %s", opt, err)
		}
	}
	if err := s.CreateNIC(nicID, link); err != nil {
		return fmt.Errorf("CreateNIC(%d): %s", nicID, err)
	}
	// Promiscuous: accept packets for any destination address, not only the
	// NIC's own; spoofing: reply from that address (the ClusterIP).
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("SetPromiscuousMode(%d): %s", nicID, err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("SetSpoofing(%d): %s", nicID, err)
	}
	// Every reply goes back out of the one NIC.
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return nil
}

func ptr[T any](v T) *T { return &v }

// Close stops accepting, resets every forwarded connection, and returns
// when every goroutine the Stack started has ended and the link has passed
// on what the stack queued: each client gets its RST before the link's owner
// closes it. A RST, not a FIN: a client that reads to the end of the stream
// must not take the cut for the end of its data.
//
// What to end is collected under s.mu, and ended and waited for without it:
// the packet path (a new flow or session) and Stats, which metric scrapes
// call, take s.mu too, and must not wait seconds for a link nobody reads.
// Once closed is set no flow or session is added, so the lists are whole.
func (s *Stack) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.cancel()
	// Wait for the link only if there is something to tell a client: a
	// link nobody reads (tests) would cost drainWait.
	draining := len(s.flows) > 0 || s.setups.Total() > 0
	flows := make([]*flow, 0, len(s.flows))
	for f := range s.flows {
		flows = append(flows, f)
	}
	sessions := make([]*udpSession, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, f := range flows {
		f.abort()
		draining = draining && s.drainLink(linkRoom)
	}
	for _, sess := range sessions {
		sess.close()
	}
	// Close the gVisor stack before waiting: it aborts the endpoints of
	// handshakes in progress, on which handleTCP blocks in CreateEndpoint
	// (TestCloseDuringHandshake).
	s.stack.Close()
	s.wg.Wait()
	s.stack.Wait()
	if draining {
		s.drainLink(0)
	}
}

// linkRoom is how many packets Close lets wait in the link's queue before
// it waits for them to leave: a link that drops what does not fit (gVisor's
// channel endpoint, the tests' link) would lose some of the RSTs of many
// flows. tunnel's link makes a sender wait while its queue is full instead.
const linkRoom = 256

// drainWait bounds each wait of drainLink: the link's reader normally
// empties its queue in microseconds, and may be gone.
const drainWait = 2 * time.Second

// drainLink waits, within drainWait, until the link holds at most n queued
// packets, if it tells (NumQueued: tunnel's link and gVisor's channel
// endpoint do). It reports false if the wait ran out: nobody reads the link,
// and waiting again is pointless.
func (s *Stack) drainLink(n int) bool {
	q, ok := s.link.Child().(interface{ NumQueued() int })
	if !ok {
		return true
	}
	deadline := time.Now().Add(drainWait)
	for q.NumQueued() > n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// track registers a goroutine about to start; false once the Stack is
// closing, and then the goroutine must not start.
func (s *Stack) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}
