// Package netstack terminates service traffic in a gVisor userspace TCP/IP
// stack and connects each flow to a backend pod dialled from the host network.
//
// The stack sits behind a gVisor link endpoint (fed by package tunnel) in
// promiscuous mode, so it accepts a connection to any address; a connection
// is completed only when a Service owns its destination and a backend pod
// answered the dial ("dial before accept"); otherwise the client gets a RST.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/kubetun/kubetun/resolver"
)

// Knobs.
const (
	nicID = 1

	// maxInFlight bounds the connections being dialled at once (SYNs
	// received, handshake not completed). Further SYNs are dropped, and the
	// client retransmits them, as a kernel does when its accept queue is full.
	maxInFlight = 1024
	// maxInFlightPerSource bounds the connections being dialled for one
	// client address; past it the client gets a RST, so that one client
	// cannot hold every slot of maxInFlight while its pods are slow.
	maxInFlightPerSource = 256

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

// Services is what the stack needs from the resolver: the Service port that
// owns a destination, read from an immutable snapshot without locking.
type Services interface {
	Lookup(proto resolver.Protocol, dst netip.AddrPort) (*resolver.ServicePort, bool)
	Answerer
}

var _ Services = (*resolver.Table)(nil)

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
}

// Stack is a gVisor stack forwarding service connections to pods.
type Stack struct {
	stack       *stack.Stack
	services    Services
	dialer      Dialer
	dialTimeout time.Duration
	log         *slog.Logger

	ctx    context.Context // cancelled by Close; bounds dials
	cancel context.CancelFunc

	udp udpTimers // UDP session timings: the package's constants, shortened by tests

	link  *pingFilter // between gVisor and cfg.Link
	count counters
	fast  sync.Map // flowKey -> *udpSession: the sessions DeliverUDP feeds

	mu           sync.Mutex // guards the fields below; held per connection or session, never per packet
	closed       bool
	flows        map[*flow]struct{}
	sessions     map[*udpSession]struct{}
	udpTotal     int
	udpPerSource map[netip.Addr]int
	dialing      map[netip.Addr]int // TCP dials under way per client address
	wg           sync.WaitGroup     // the TCP handler and splice goroutines, the UDP sessions
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
	pf := newPingFilter(cfg.Link, cfg.Services)
	if err := configure(s, pf); err != nil {
		s.Close()
		s.Wait()
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	ns := &Stack{
		stack:        s,
		services:     cfg.Services,
		dialer:       dialer,
		dialTimeout:  timeout,
		log:          log,
		ctx:          ctx,
		cancel:       cancel,
		udp:          udpt,
		link:         pf,
		flows:        make(map[*flow]struct{}),
		sessions:     make(map[*udpSession]struct{}),
		udpPerSource: make(map[netip.Addr]int),
		dialing:      make(map[netip.Addr]int),
	}
	fwd := tcp.NewForwarder(s, 0, maxInFlight, ns.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(s, ns.handleUDP).HandlePacket)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber4, pf.handleEcho4)
	return ns, nil
}

// configure sets the stack's options and creates its one NIC.
func configure(s *stack.Stack, link stack.LinkEndpoint) error {
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

// Close stops accepting, closes every forwarded connection, and returns when
// every goroutine the Stack started has ended.
func (s *Stack) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.cancel()
	for f := range s.flows {
		f.close()
	}
	for sess := range s.sessions {
		sess.close()
	}
	s.mu.Unlock()
	// Close the gVisor stack before waiting: it aborts the endpoints of
	// handshakes in progress, on which handleTCP blocks in CreateEndpoint
	// for up to two minutes of SYN-ACK retransmissions when the client is
	// gone (TestCloseDuringHandshake).
	s.stack.Close()
	s.wg.Wait()
	s.stack.Wait()
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
