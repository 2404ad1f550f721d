// Package proxy wires a source of Services to the service table, the TUN
// and its routes, the cluster DNS and the health and metrics servers. It is
// the control path every mode of kubetun shares: `kubetun run` on a node or
// in a sidecar, and `kubetun connect` on a laptop.
//
// Like kube-proxy's, it applies the whole state in one place (Proxy.Apply):
// a new immutable snapshot is built and swapped in, and the routes follow.
// With the Kubernetes API nothing is routed before the source's caches have
// synced, as kube-proxy programs nothing before: a restart never resets
// connections to Services it has not read yet. /readyz stays 503 until
// then.
package proxy

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
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/nodeport"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/health"
)

// healthTimeout is how long a change may wait to be applied before /healthz
// fails: twice kube-proxy's default sync period, as kube-proxy does.
const healthTimeout = 2 * 30 * time.Second

// Config is what a Proxy serves, and how.
type Config struct {
	// Mode is the subcommand serving, "run" or "connect", as status shows it.
	Mode string
	// DrainTimeout is how long a graceful shutdown (ctx of Run done) lets
	// the open TCP connections finish, new ones refused meanwhile, before
	// what is left is reset; 0 resets them at once.
	DrainTimeout time.Duration
	// ServiceCIDRs are routed into the TUN once the source's first whole
	// state is applied. Empty: the ranges the source reports are followed
	// (Receiver.ApplyCIDRs).
	ServiceCIDRs []netip.Prefix
	// Topology is where this kubetun runs, for internalTrafficPolicy: Local
	// and topology hints.
	Topology resolver.Topology

	TUN string
	// Persist leaves the TUN device and its routes in place when the Proxy
	// stops (or the process dies), so that service traffic waits in the
	// TUN for the next kubetun instead of leaving by another route; a
	// later Proxy on the same TUN attaches to them (tunnel.Persist).
	Persist     bool
	MTU         int
	DialTimeout time.Duration
	// Dialer reaches pods; nil dials them directly from the host network.
	Dialer netstack.Dialer
	// DataPath are the data path's limits and timeouts (its Link,
	// Services, Dialer, DialTimeout and Logger are set by the Proxy).
	DataPath netstack.Config
	// MaxAffinityClients caps each ClientIP session affinity table
	// (resolver.MaxAffinityClients); 0 keeps resolver's default.
	MaxAffinityClients int
	// PodsVia says how pods are reached, as status shows it; "" means
	// "direct".
	PodsVia string
	// RoutePods routes the pod IPs of headless Services (those whose
	// endpoint names a Pod) into the TUN too, one /32 or /128 each, and
	// lets the data path dial them as they are (netstack.Config.Pods): for
	// a laptop that reaches pods over port-forward only, where a headless
	// Service's names (db-0.db.ns.svc...) resolve to pod IPs it has no
	// route to.
	RoutePods bool
	// Map serves ranges that overlap a route of the host on mapped
	// addresses instead of refusing them (kubetun connect).
	Map MapConfig
	// OnReady, if set, is called once, when the first whole state is
	// served and routed, with the status then.
	OnReady func(Status)

	HealthAddr  string // /healthz, /livez, /readyz and /statusz; "" disables
	MetricsAddr string // /metrics; "" disables
	Profiling   bool   // /debug/pprof/ on MetricsAddr
	// StatusAllowRemote serves /statusz to every client of HealthAddr;
	// without it, to clients on this host only (see localClient).
	StatusAllowRemote bool

	DNS DNSConfig

	// StateDir holds the handover socket of this Proxy's TUN (package
	// handover): a Proxy started on a TUN another one serves takes over
	// from it, and one serving lets the next take over. "" does neither.
	StateDir string
	// Version is kubetun's, told to the other side of a handover.
	Version string

	// tunFile is the TUN a predecessor passed on; nil opens it by name.
	tunFile *os.File
	// addrs is the Proxy's mapping, with Map on: the data path looks a
	// mapped destination up at its real address (mappedServices).
	addrs *addrmap.Table

	// External serves Services from outside the cluster: node ports,
	// health check node ports, externalIPs and load-balancer IPs, as on a
	// node. nil serves ClusterIPs only (kubetun connect).
	External *ExternalConfig
}

// ExternalConfig says how Services are served from outside the cluster.
type ExternalConfig struct {
	// NodePortAddresses are the node addresses node ports listen on
	// (--nodeport-addresses).
	NodePortAddresses nodeport.Addresses
	// Primary are the node's primary addresses, for NodePortAddresses
	// "primary".
	Primary []netip.Addr
	// ExternalIPRanges limits the externalIPs served; empty serves all
	// (resolver.ExternalIPRanges).
	ExternalIPRanges []netip.Prefix
}

// DNSConfig is the cluster DNS kubetun serves inside the service range.
type DNSConfig struct {
	Off bool
	// IP is where it answers; invalid means the 10th address of the first
	// service CIDR, as kube-dns's (10.3.240.10 for 10.3.240.0/20).
	IP     netip.Addr
	Domain string
	// Aliases are more domains answered as Domain is (dns.Zone.Aliases):
	// a connection's own domain beside the cluster's.
	Aliases []string
	// Upstreams answer names outside Domain; nil means the host's.
	Upstreams []string
}

// Source feeds a Proxy the Services and EndpointSlices to serve.
type Source interface {
	// Run delivers to r until ctx ends: r.Apply with the whole state once
	// the source has it (an API source once its caches synced), and again
	// after every change; r.ApplyCIDRs with the cluster's service ranges,
	// if the source follows them; r.Changed as soon as a change arrives,
	// before its Apply. Calls come from one goroutine. Run returns nil
	// when ctx ends, an error when it cannot go on.
	Run(ctx context.Context, r Receiver) error
	// Info describes the source, for status.
	Info() SourceInfo
}

// Receiver is what a Source delivers to: a Proxy.
type Receiver interface {
	Changed()
	Apply(State)
	ApplyCIDRs([]netip.Prefix)
}

// State is what a source holds now: what changed since its last State
// (Changes), or the whole set of objects (Services and Slices, without
// Changes). Its objects may belong to an informer cache: read them, never
// modify them.
type State struct {
	// Changes, if not nil, is what changed since the source's last State,
	// as its change tracker recorded it (its first State's says All); the
	// table is updated with only those objects.
	Changes *resolver.Changes
	// Services and Slices are the whole set, when Changes is nil.
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	// Warnings are the source's own problems, reported with Build's.
	Warnings []string
}

// changes returns what st changes: Changes, or a change set that says All
// with the whole set.
func (st State) changes() *resolver.Changes {
	if st.Changes != nil {
		return st.Changes
	}
	return resolver.Everything(st.Services, st.Slices)
}

// again is st for a build that follows one of st itself, for what is
// routed now: nothing changed, the objects are in the table's snapshot.
func (st State) again() State {
	return State{Changes: &resolver.Changes{}, Warnings: st.Warnings}
}

// Dataplane is the TUN device and the userspace stack behind it.
type Dataplane interface {
	Routes
	Listener
	// Name is the TUN device's name.
	Name() string
	// Start starts moving packets between the TUN and the stack. Until
	// then they wait in the TUN's queue: a SYN that arrives before the
	// service table is loaded (a kubetun --persist restarting) is
	// retransmitted and served, not refused.
	Start()
	// EndStaleSessions ends the UDP sessions whose endpoint or Service has
	// left the current table.
	EndStaleSessions()
	Stats() netstack.Stats
	// Gone is closed when the TUN device disappeared underneath (ip link
	// del); Err then says why.
	Gone() <-chan struct{}
	Err() error
	// Close closes every connection, removes the routes and the TUN
	// (unless Config.Persist), and returns when every goroutine it started
	// has ended.
	Close() error
}

// TUNLost is why Run fails when the TUN device is gone: its routes went
// with it, and a supervisor (the DaemonSet's kubelet, systemd) restarting
// kubetun sets everything up afresh, more surely than a repair in place.
type TUNLost struct{ Err error }

func (e TUNLost) Error() string { return fmt.Sprintf("TUN device gone: %v", e.Err) }

// Routes are the host's routes into the TUN.
type Routes interface {
	// SetRoutes makes the TUN's routes exactly cidrs; safe to repeat. A
	// CIDR not routed yet is refused if it overlaps a route of the host.
	SetRoutes(cidrs []netip.Prefix) error
	// CheckOverlap returns an error naming the first host route, other
	// than the TUN's own, that overlaps one of cidrs.
	CheckOverlap(cidrs []netip.Prefix) error
}

// Listener opens sockets on service addresses inside the userspace stack,
// for the cluster DNS.
type Listener interface {
	ListenUDP(addr netip.AddrPort) (net.PacketConn, error)
	ListenTCP(addr netip.AddrPort) (net.Listener, error)
}

// Drainer is implemented by a Dataplane that can stop accepting new
// connections and wait for the open ones to end (netstack.Stack.Drain): it
// reports whether they all ended before ctx was done.
type Drainer interface {
	Drain(ctx context.Context) bool
}

// FlowCounter is implemented by a Dataplane that counts the flows being
// forwarded now per Service ("namespace/name"); status shows them, 0 for a
// Service the map leaves out. The host's data plane implements it through
// its *netstack.Stack.
type FlowCounter interface {
	ActiveFlowsByService() map[string]int
}

// env are the Proxy's dependencies on the host, replaced by fakes in tests.
type env struct {
	// checkOverlap checks CIDRs against the host's routes before the TUN
	// is opened; routes through an existing TUN named tun (one a kubetun
	// --persist left) are kubetun's own.
	checkOverlap func(tun string, cidrs []netip.Prefix) error
	// open creates the TUN and the stack that serves table.
	open func(cfg Config, table *resolver.Table, log *slog.Logger) (Dataplane, error)
	// newDNS creates the cluster DNS server.
	newDNS func(cfg dnsParams) (DNS, error)
	// hostUpstreams returns the host's DNS servers.
	hostUpstreams func() ([]string, error)
	// listen opens the health and metrics listeners.
	listen func(network, addr string) (net.Listener, error)
	// watchAddrs follows the host's addresses (nodeport.WatchAddresses),
	// calling onChange after each change; nil: they are listed on every
	// table update instead.
	watchAddrs func(onChange func()) (addressWatch, error)
}

// addressWatch is the host's addresses as a watch keeps them.
type addressWatch interface {
	Addrs() []netip.Addr
	Close()
}

// Proxy serves what a Source says through a TUN.
type Proxy struct {
	cfg     Config
	src     Source
	env     env
	log     *slog.Logger
	table   *resolver.Table
	tracker *health.Tracker

	dp      Dataplane
	dns     DNS        // nil until started, or with DNS off
	dnsIP   netip.Addr // where dns answers
	closers []func()   // what start and startDNS opened, closed in reverse by stop

	nodePorts *nodeport.Listeners // with Config.External, once started
	addrs     addressWatch        // the host's addresses, for --nodeport-addresses CIDRs; nil: listed per update

	// Owned by the goroutine running the Source's callbacks.
	problems  map[string]bool // reported by the last Build
	podRoutes []netip.Prefix  // headless Services' pod IPs routed (RoutePods)
	routed    bool            // Config.ServiceCIDRs are routed
	last      *State          // the last state, as built again when the routed ranges change
	fail      context.CancelCauseFunc
	ready     sync.Once

	mu        sync.Mutex     // guards the fields below, which status reads
	cidrs     []netip.Prefix // routed into the TUN now
	external  []netip.Prefix // externalIPs and load-balancer IPs (/32, /128) routed into the TUN
	synced    bool           // the first whole state was applied
	dnsStatus *DNSStatus     // where the cluster DNS answers; nil before it starts
	flows     FlowCounter    // the data plane, if it counts flows per Service

	tunLost atomic.Bool // the TUN is gone: /healthz fails until the process exits

	mapping addrmap.Table // real prefixes served on mapped ones (Config.Map); stored on the apply goroutine

	ho            handoverState
	httpListeners map[string]net.Listener // the health and metrics listeners by address, guarded by ho.mu
	stopSource    func()                  // ends the source's Run: handed over
}

// New returns a Proxy serving src as cfg says, on the host's TUN and routes.
func New(cfg Config, src Source, log *slog.Logger) *Proxy {
	return newProxy(cfg, src, log, hostEnv())
}

func newProxy(cfg Config, src Source, log *slog.Logger, e env) *Proxy {
	if cfg.PodsVia == "" {
		cfg.PodsVia = "direct"
	}
	return &Proxy{cfg: cfg, src: src, env: e, log: log, table: new(resolver.Table), tracker: health.NewTracker(healthTimeout),
		ho:            handoverState{closing: make(chan struct{}), retired: make(chan struct{})},
		httpListeners: make(map[string]net.Listener)}
}

// Run serves until ctx is done, then closes every connection and removes
// the routes and the TUN. It fails at once if a fixed service CIDR overlaps
// a route of the host, before anything is created.
func (p *Proxy) Run(ctx context.Context) error {
	if p.cfg.StateDir != "" {
		if err := p.dialPredecessor(); err != nil {
			return err
		}
	}
	defer p.closeHandover()
	if len(p.cfg.ServiceCIDRs) > 0 {
		check := func(c []netip.Prefix) error { return p.env.checkOverlap(p.cfg.TUN, c) }
		if p.cfg.Map.on() {
			// Mapped, not refused: only one with no free mapped range
			// fails.
			if ok := p.mapRanges(p.cfg.ServiceCIDRs, check); len(ok) != len(p.cfg.ServiceCIDRs) {
				return fmt.Errorf("service CIDRs %v: not all can be served (see the log)", p.cfg.ServiceCIDRs)
			}
		} else if err := check(p.cfg.ServiceCIDRs); err != nil {
			return err
		}
	}
	runCtx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	p.fail = fail
	stop, err := p.start()
	if err != nil {
		return err
	}
	defer stop()
	srcCtx, stopSource := context.WithCancel(runCtx)
	defer stopSource()
	p.stopSource = stopSource
	err = p.src.Run(srcCtx, p)
	if ctx.Err() != nil {
		p.waitHandover()
	}
	if p.isRetired() {
		p.drainRetired(ctx)
		return nil
	}
	if cause := context.Cause(runCtx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause // a fixed CIDR could not be routed
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	p.drain()
	if p.cfg.Persist {
		p.log.Info("shutting down: closing connections; the TUN device and its routes stay (--persist) for the next kubetun", "tun", p.cfg.TUN)
	} else {
		p.log.Info("shutting down: closing connections, removing routes and the TUN device")
	}
	return nil
}

// drain is the graceful part of a shutdown: new TCP connections, to
// ClusterIPs and node ports alike, are refused (the stack resets their SYN,
// the node port sockets close), while the open ones go on for up to
// Config.DrainTimeout; Close then resets what is left. UDP is served until
// Close. The source has stopped: the service table stays as it last was.
func (p *Proxy) drain() {
	if p.cfg.DrainTimeout <= 0 || p.dp == nil {
		return
	}
	d, ok := p.dp.(Drainer)
	if !ok && p.nodePorts == nil {
		return
	}
	start := time.Now()
	p.log.Info("draining: refusing new connections, waiting for the open ones to finish",
		"timeout", p.cfg.DrainTimeout, "open", p.dp.Stats().TCPActive)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var dpDone, npDone atomic.Bool
	dpDone.Store(true)
	npDone.Store(true)
	if ok {
		wg.Go(func() { dpDone.Store(d.Drain(ctx)) })
	}
	if p.nodePorts != nil {
		wg.Go(func() { npDone.Store(p.nodePorts.Drain(ctx)) })
	}
	wg.Wait()
	if dpDone.Load() && npDone.Load() {
		p.log.Info("drained: every connection finished", "took", time.Since(start).Round(time.Millisecond))
		return
	}
	p.log.Warn("drain timeout: resetting the connections still open",
		"timeout", p.cfg.DrainTimeout, "open", p.dp.Stats().TCPActive)
}

// start opens the health and metrics servers, the TUN and the stack. The
// returned func closes them, and whatever was opened after them, in the
// reverse order.
func (p *Proxy) start() (stop func(), err error) {
	stop = func() {
		for _, c := range slices.Backward(p.closers) {
			c()
		}
		p.closers = nil
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for _, srv := range []struct {
		flag, addr string
		h          http.Handler
	}{
		{"--health-addr", p.cfg.HealthAddr, p.healthMux()},
		{"--metrics-addr", p.cfg.MetricsAddr, metricsMux(p.tracker.MetricsHandler(), p.cfg.Profiling)},
	} {
		if srv.addr == "" {
			continue
		}
		ln, closeSrv, err := serveHTTP(p.listenHTTP, srv.flag, srv.addr, srv.h, p.log)
		if err != nil {
			return stop, err
		}
		p.closers = append(p.closers, closeSrv)
		p.ho.mu.Lock()
		p.httpListeners[srv.addr] = ln
		p.ho.httpOff = append(p.ho.httpOff, closeSrv)
		p.ho.mu.Unlock()
	}

	cfg := p.cfg
	cfg.tunFile = p.inherited(handoverTUN)
	if cfg.Map.on() {
		cfg.addrs = &p.mapping
	}
	dp, err := p.env.open(cfg, p.table, p.log)
	if err != nil {
		return stop, err
	}
	p.dp = dp
	if fc, ok := dp.(FlowCounter); ok {
		p.mu.Lock()
		p.flows = fc
		p.mu.Unlock()
	}
	p.closers = append(p.closers, func() {
		if err := dp.Close(); err != nil {
			p.log.Error("closing TUN device", "tun", dp.Name(), "err", err)
		}
	})
	done, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-dp.Gone():
			p.tunLost.Store(true)
			p.log.Error("TUN device gone; stopping", "tun", dp.Name(), "err", dp.Err())
			p.fail(TUNLost{dp.Err()})
		case <-done:
		}
	}()
	p.closers = append(p.closers, func() { close(done); <-watched })
	if err := p.tracker.Register(netstackCollector{dp.Stats}); err != nil {
		return stop, fmt.Errorf("registering the data path's metrics: %w", err)
	}
	if err := p.tracker.Register(handoverCollector{p}); err != nil {
		return stop, fmt.Errorf("registering the handover's metrics: %w", err)
	}
	if err := p.tracker.Register(affinityCollector(p.table)); err != nil {
		return stop, fmt.Errorf("registering the affinity metric: %w", err)
	}
	if p.cfg.External != nil {
		lim := p.cfg.DataPath
		p.nodePorts = nodeport.New(nodeport.Config{Services: p.table, DialTimeout: p.cfg.DialTimeout,
			Healthy: p.tracker.Healthy, Logger: p.log, Inherit: p.inherited,
			// The ClusterIPs' limits and timeouts (netstack's flags).
			MaxSetups: lim.MaxSetups, MaxFlows: lim.MaxTCPFlows, UserTimeout: lim.TCPUserTimeout, HalfClosedTimeout: lim.HalfClosedTimeout,
			MaxUDPSessions: lim.MaxUDPSessions, MaxUDPSessionsPerSource: lim.MaxUDPSessionsPerSource})
		p.closers = append(p.closers, p.nodePorts.Close)
		if !p.cfg.External.NodePortAddresses.Primary() && p.env.watchAddrs != nil {
			w, err := p.env.watchAddrs(p.nodeAddressesChanged)
			if err != nil {
				p.log.Warn("the node's addresses are listed on every table update instead", "err", err)
			} else {
				p.addrs = w
				p.closers = append(p.closers, w.Close)
			}
		}
	}
	return stop, nil
}

// Changed implements Receiver: a change arrived and waits to be applied.
func (p *Proxy) Changed() { p.tracker.Queued() }

// Apply implements Receiver: it builds and publishes a new service table.
// The first whole state also brings up the fixed service CIDRs (and the
// DNS in them): routing them earlier would reset every connection to a
// Service the table does not hold yet.
func (p *Proxy) Apply(st State) {
	if len(p.cfg.ServiceCIDRs) == 0 || p.routed {
		p.apply(st)
		if len(p.cfg.ServiceCIDRs) > 0 {
			p.ready.Do(p.serve)
		}
		return
	}
	p.routed = true
	// The DNS first, so that the first table already knows its address
	// as routed (see routedPrefixes).
	if err := p.startDNS(p.cfg.ServiceCIDRs); err != nil {
		p.fail(err)
		return
	}
	p.apply(st)
	if err := p.setRoutes(p.cfg.ServiceCIDRs); err != nil {
		p.fail(err)
		return
	}
	p.ready.Do(p.serve)
}

// ApplyCIDRs implements Receiver: it routes the cluster's service ranges,
// leaving out (with an error) any that overlaps a route the host already
// has. Fixed service CIDRs win over the source's.
func (p *Proxy) ApplyCIDRs(cidrs []netip.Prefix) {
	if len(p.cfg.ServiceCIDRs) > 0 {
		return
	}
	ok := p.mapRanges(cidrs, p.dp.CheckOverlap)
	p.mu.Lock()
	same := slices.Equal(ok, p.cidrs) && p.cidrs != nil
	p.mu.Unlock()
	if !same {
		if p.dns == nil && len(ok) > 0 {
			if err := p.startDNS(ok); err != nil {
				p.log.Error("cluster DNS not started", "err", err)
			}
		}
		if err := p.setRoutes(ok); err != nil {
			p.log.Error("routing ServiceCIDRs", "cidrs", fmt.Sprint(ok), "err", err)
			return
		}
		p.log.Info("service CIDRs routed", "cidrs", p.describeRanges(ok))
		// The table refuses endpoints inside the routed ranges: rebuild it
		// for the new ones.
		if p.last != nil {
			p.apply(*p.last)
		}
	}
	p.ready.Do(p.serve)
}

// apply builds and publishes a new service table.
func (p *Proxy) apply(st State) {
	start := time.Now()
	before := p.table.Load()
	changes := st.changes()
	snap, problems := p.build(changes, st.Warnings)
	p.table.Store(snap)
	last := st.again()
	p.last = &last
	extProblems, extChanged := p.applyExternal(snap)
	if extChanged {
		// The external addresses are routed now, and the table refuses
		// endpoints inside what is routed: build it again for them at
		// once (a change of what is routed rebuilds the whole table), so
		// that the next change, most often an endpoint's, costs only
		// itself.
		snap, problems = p.build(last.Changes, st.Warnings)
		p.table.Store(snap)
		extProblems, _ = p.applyExternal(snap)
	}
	problems = append(problems, extProblems...)
	p.reportProblems(problems)
	p.routePods(snap)
	p.warnDNSShadow(before, snap)
	if p.dp != nil {
		p.dp.EndStaleSessions()
	}
	p.tracker.Synced(start, snap.Services(), snap.Endpoints(), changes)
	p.mu.Lock()
	p.synced = true
	p.mu.Unlock()
	p.log.Info("service table updated", "services", snap.Services(), "endpoints", snap.Endpoints(),
		"took", time.Since(start).Round(time.Microsecond))
}

// build updates the service table with changes for what is routed now;
// warnings are the source's own problems.
func (p *Proxy) build(changes *resolver.Changes, warnings []string) (*resolver.Snapshot, []resolver.Problem) {
	cidrs := p.cfg.ServiceCIDRs
	if len(cidrs) == 0 {
		p.mu.Lock()
		cidrs = p.cidrs
		p.mu.Unlock()
	}
	opts := []resolver.Option{resolver.Routed(p.routedPrefixes(cidrs)...), resolver.ServiceCIDRs(cidrs...),
		resolver.MaxAffinityClients(p.cfg.MaxAffinityClients)}
	if ext := p.cfg.External; ext != nil {
		opts = append(opts, resolver.ExternalIPRanges(ext.ExternalIPRanges...), resolver.RefuseExternal(p.refuseExternalFunc()))
	}
	snap, problems := resolver.Update(p.table.Load(), changes, p.cfg.Topology, opts...)
	for _, w := range warnings {
		problems = append(problems, resolver.Problem{Object: "manifests", Reason: w})
	}
	return snap, problems
}

// reportProblems logs each problem once: when it first appears, not again
// on every rebuild while it lasts.
func (p *Proxy) reportProblems(problems []resolver.Problem) {
	now := make(map[string]bool, len(problems))
	for _, pr := range problems {
		msg := pr.String()
		if !now[msg] && !p.problems[msg] {
			p.log.Warn(msg)
		}
		now[msg] = true
	}
	p.problems = now
}

// routedPrefixes returns what is routed into the TUN with cidrs: cidrs,
// the DNS address if they do not cover it, and the external addresses.
func (p *Proxy) routedPrefixes(cidrs []netip.Prefix) []netip.Prefix {
	out := slices.Clone(cidrs)
	// A DNS address in a mapped range is covered by the real range it
	// stands for.
	if dns, _ := p.mapping.ToReal(p.dnsIP); p.dnsIP.IsValid() && !covered(dns, cidrs) {
		out = append(out, netip.PrefixFrom(p.dnsIP, p.dnsIP.BitLen()))
	}
	p.mu.Lock()
	out = append(out, p.external...)
	p.mu.Unlock()
	return out
}

// setRoutes routes cidrs, and the DNS address if they do not cover it,
// into the TUN.
func (p *Proxy) setRoutes(cidrs []netip.Prefix) error {
	// The pods' /32s are left out of routedPrefixes: a Service whose
	// endpoint is such a pod still reaches it, through the dialer.
	routes := p.routedPrefixes(cidrs)
	for _, r := range p.podRoutes {
		if !covered(r.Addr(), cidrs) {
			routes = append(routes, r)
		}
	}
	if err := p.dp.SetRoutes(p.served(routes)); err != nil {
		return err
	}
	if p.dns != nil {
		p.dns.SetServiceCIDRs(cidrs)
	}
	p.mu.Lock()
	p.cidrs = slices.Clone(cidrs)
	p.mu.Unlock()
	return nil
}

// serve starts the data plane once the service table is loaded and the
// routes are in place, and says so.
func (p *Proxy) serve() {
	if p.ho.pred != nil {
		if err := p.takeOver(); err != nil {
			p.fail(err)
			return
		}
	} else {
		p.dp.Start()
	}
	p.logReady()
	p.listenForSuccessors()
}

func (p *Proxy) logReady() {
	snap := p.table.Load()
	p.mu.Lock()
	cidrs := p.cidrs
	p.mu.Unlock()
	dnsAddr := "off"
	if p.dns != nil {
		dnsAddr = p.dnsIP.String()
	}
	p.log.Info("ready", "tun", p.dp.Name(), "mtu", p.cfg.MTU, "service-cidrs", p.describeRanges(cidrs),
		"dns", dnsAddr, "services", snap.Services(), "endpoints", snap.Endpoints())
	if p.cfg.OnReady != nil {
		p.cfg.OnReady(p.Status())
	}
}

// routePods routes the pod IPs of snap's headless Services, with
// RoutePods, once the service CIDRs are routed (setRoutes adds them).
func (p *Proxy) routePods(snap *resolver.Snapshot) {
	if !p.cfg.RoutePods {
		return
	}
	pods := podPrefixes(snap)
	if slices.Equal(pods, p.podRoutes) {
		return
	}
	p.mapPods(pods)
	p.podRoutes = pods
	p.mu.Lock()
	cidrs := p.cidrs
	p.mu.Unlock()
	if cidrs == nil {
		return // setRoutes adds them with the service CIDRs
	}
	if err := p.setRoutes(cidrs); err != nil {
		p.log.Error("routing headless Services' pod IPs", "err", err)
		return
	}
	p.log.Info("headless Services' pod IPs routed", "pods", len(pods))
}

// podPrefixes returns the addresses of the endpoints of snap's headless
// Services that name a Pod, as host prefixes, sorted.
func podPrefixes(snap *resolver.Snapshot) []netip.Prefix {
	seen := make(map[netip.Addr]bool)
	for rec := range snap.ServiceRecords() {
		if !rec.Headless {
			continue
		}
		for _, ep := range rec.Endpoints {
			if ep.Pod.Name != "" {
				seen[ep.Addr.Unmap()] = true
			}
		}
	}
	out := make([]netip.Prefix, 0, len(seen))
	for a := range seen {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func covered(ip netip.Addr, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}
