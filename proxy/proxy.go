package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/dns"
	"github.com/kubetun/kubetun/resolver/health"
	"github.com/kubetun/kubetun/resolver/kube"
	"github.com/kubetun/kubetun/resolver/manifest"
	"github.com/kubetun/kubetun/tunnel"
)

// healthTimeout is how long a change may wait to be applied before /healthz
// fails: twice kube-proxy's default sync period, as kube-proxy does.
const healthTimeout = 2 * 30 * time.Second

// runCommand is `kubetun run`: it serves until ctx is cancelled, then removes
// its routes and TUN device.
func runCommand(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseRunFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := &runner{cfg: cfg, log: log, table: new(resolver.Table), tracker: health.NewTracker(healthTimeout), lost: cancel}
	if cfg.manifests != "" {
		err = r.serveManifests(ctx)
	} else {
		err = r.serveAPI(ctx)
	}
	// A TUN lost underneath (ip link del) ends the run with an error, and
	// the process with a non-zero status: its routes went with it, and a
	// supervisor (the DaemonSet's kubelet, systemd) restarts kubetun,
	// which sets everything up afresh, more surely than a repair in place.
	if lost := context.Cause(ctx); err == nil && errors.As(lost, new(tunLost)) {
		return lost
	}
	return err
}

// tunLost is why a run ends when its TUN device is gone.
type tunLost struct{ error }

// runner wires a source, the service table, the netstack and the TUN.
type runner struct {
	cfg     runConfig
	log     *slog.Logger
	table   *resolver.Table
	tracker *health.Tracker
	topo    resolver.Topology

	dev     *tunnel.Device
	ns      *netstack.Stack
	dns     *dns.Server // nil until started, or with --dns-ip=off
	dnsIP   netip.Addr  // where dns answers
	closers []func()    // what start and startDNS opened, closed in reverse by stop

	mu    sync.Mutex     // guards cidrs
	cidrs []netip.Prefix // routed into the TUN now

	problems map[string]bool // reported by the last Build; owned by the apply goroutine

	lost func(error) // ends the run, when the TUN is gone
}

// serveManifests serves the static manifest source.
func (r *runner) serveManifests(ctx context.Context) error {
	src, objs, err := manifest.NewSource(r.cfg.manifests, r.log)
	if err != nil {
		return err
	}
	r.topo = resolver.Topology{NodeName: r.cfg.nodeName}
	// Refuse an overlapping CIDR before creating anything. Routes through
	// a TUN an earlier kubetun --persist left are kubetun's own.
	if err := tunnel.CheckOverlap(r.cfg.serviceCIDRs, tunnel.ExistingIndex(r.cfg.tun)); err != nil {
		return err
	}
	r.cidrs = r.cfg.serviceCIDRs
	r.apply(objs.Services, objs.Slices, objs.Warnings)

	stop, err := r.start()
	if err != nil {
		return err
	}
	defer stop()
	if err := r.startDNS(ctx, r.cfg.serviceCIDRs); err != nil {
		return err
	}
	if err := r.setRoutes(r.cfg.serviceCIDRs); err != nil {
		return err
	}
	r.ready()

	src.Run(ctx, func(objs manifest.Objects) {
		r.apply(objs.Services, objs.Slices, objs.Warnings)
	})
	r.logShutdown()
	return nil
}

// serveAPI serves what the Kubernetes API says.
func (r *runner) serveAPI(ctx context.Context) error {
	reach := kube.NewReachability(r.log)
	client, from, err := kubeClient(r.cfg.kubeconfig, reach)
	if err != nil {
		return err
	}
	routeLog(r.log)
	r.log.Info("using the Kubernetes API", "config", from, "node", r.cfg.nodeName)
	followCIDRs := len(r.cfg.serviceCIDRs) == 0
	if followCIDRs {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := kube.CheckServiceCIDRAPI(cctx, client)
		cancel()
		if err != nil {
			return fmt.Errorf("no --service-cidr given, and the cluster's ServiceCIDRs (networking.k8s.io/v1 servicecidrs) cannot be read: %v; give --service-cidr", err)
		}
	} else if err := tunnel.CheckOverlap(r.cfg.serviceCIDRs, tunnel.ExistingIndex(r.cfg.tun)); err != nil {
		return err
	}
	r.topo = nodeTopology(ctx, client, r.cfg.nodeName, r.log)

	stop, err := r.start()
	if err != nil {
		return err
	}
	defer stop()

	src := kube.New(client, kube.Options{ServiceCIDRs: followCIDRs, OnChange: r.tracker.Queued, Reachability: reach}, r.log)
	readyOnce := sync.OnceFunc(r.ready)
	if !followCIDRs {
		if err := r.startDNS(ctx, r.cfg.serviceCIDRs); err != nil {
			return err
		}
		if err := r.setRoutes(r.cfg.serviceCIDRs); err != nil {
			return err
		}
	}
	err = src.Run(ctx, func(st kube.State) {
		r.apply(st.Services, st.Slices, nil)
		if !followCIDRs {
			readyOnce()
		}
	}, func(cidrs []netip.Prefix) {
		r.followCIDRs(ctx, cidrs)
		readyOnce()
	})
	if err != nil && ctx.Err() == nil {
		return err
	}
	r.logShutdown()
	return nil
}

func (r *runner) logShutdown() {
	if r.cfg.persist {
		r.log.Info("shutting down: closing connections; the TUN device and its routes stay (--persist) for the next kubetun", "tun", r.dev.Name())
		return
	}
	r.log.Info("shutting down: closing connections, removing routes and the TUN device")
}

// start opens the TUN, the netstack and the health and metrics servers.
// The returned func closes them, and whatever was opened after them, in the
// reverse order.
func (r *runner) start() (stop func(), err error) {
	stop = func() {
		for _, c := range slices.Backward(r.closers) {
			c()
		}
		r.closers = nil
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
		{"--health-addr", r.cfg.healthAddr, r.tracker.Handler()},
		{"--metrics-addr", r.cfg.metricsAddr, metricsMux(r.tracker.MetricsHandler(), r.cfg.profiling)},
	} {
		if srv.addr == "" {
			continue
		}
		closeSrv, err := serveHTTP(srv.flag, srv.addr, srv.h, r.log)
		if err != nil {
			return stop, err
		}
		r.closers = append(r.closers, closeSrv)
	}

	r.dev, err = tunnel.Open(r.cfg.tun, r.cfg.mtu, r.log)
	if err != nil {
		return stop, err
	}
	r.closers = append(r.closers, func() {
		if err := r.dev.Close(); err != nil {
			r.log.Error("closing TUN device", "tun", r.dev.Name(), "err", err)
		}
	})
	done, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-r.dev.Gone():
			r.lost(tunLost{r.dev.Err()})
		case <-done:
		}
	}()
	r.closers = append(r.closers, func() { close(done); <-watched })
	if r.cfg.persist {
		if err := r.dev.Persist(); err != nil {
			return stop, err
		}
	}
	nc := r.cfg.dataPath
	nc.Link, nc.Services, nc.DialTimeout, nc.Logger = r.dev.Link(), r.table, r.cfg.dialTimeout, r.log
	r.ns, err = netstack.New(nc)
	if err != nil {
		return stop, err
	}
	r.closers = append(r.closers, r.ns.Close)
	r.dev.SetUDPHandler(r.ns.DeliverUDP)
	if err := r.tracker.Register(netstackCollector{r.ns.Stats}); err != nil {
		return stop, fmt.Errorf("registering the data path's metrics: %w", err)
	}
	return stop, nil
}

// apply builds and publishes a new service table. warnings are the
// source's own, reported with Build's problems.
func (r *runner) apply(services []*corev1Service, slices []*discoveryv1Slice, warnings []string) {
	start := time.Now()
	r.mu.Lock()
	cidrs := r.cidrs
	r.mu.Unlock()
	snap, problems := resolver.Build(services, slices, r.table.Load(), r.topo, resolver.Routed(cidrs...))
	for _, w := range warnings {
		problems = append(problems, resolver.Problem{Object: "manifests", Reason: w})
	}
	problems = append(problems, outside(snap, cidrs)...)
	r.reportProblems(problems)
	before := r.table.Load()
	r.table.Store(snap)
	r.warnDNSShadow(before, snap)
	if r.ns != nil {
		r.ns.EndStaleSessions()
	}
	r.tracker.Synced(start, snap.Services(), snap.Endpoints(), slices)
	r.log.Info("service table updated", "services", snap.Services(), "endpoints", snap.Endpoints(),
		"took", time.Since(start).Round(time.Microsecond))
}

// reportProblems logs each problem once: when it first appears, not again
// on every rebuild while it lasts.
func (r *runner) reportProblems(problems []resolver.Problem) {
	now := make(map[string]bool, len(problems))
	for _, p := range problems {
		msg := p.String()
		if !now[msg] && !r.problems[msg] {
			r.log.Warn(msg)
		}
		now[msg] = true
	}
	r.problems = now
}

// setRoutes routes cidrs, and the DNS address if they do not cover it,
// into the TUN.
func (r *runner) setRoutes(cidrs []netip.Prefix) error {
	routes := cidrs
	if r.dnsIP.IsValid() && !covered(r.dnsIP, cidrs) {
		routes = append(slices.Clone(cidrs), netip.PrefixFrom(r.dnsIP, r.dnsIP.BitLen()))
	}
	if err := r.dev.SetRoutes(routes); err != nil {
		return err
	}
	if r.dns != nil {
		r.dns.SetServiceCIDRs(cidrs)
	}
	r.mu.Lock()
	r.cidrs = cidrs
	r.mu.Unlock()
	return nil
}

// followCIDRs routes the cluster's ServiceCIDRs, leaving out (with an
// error) any that overlaps a route the host already has.
func (r *runner) followCIDRs(ctx context.Context, cidrs []netip.Prefix) {
	var ok []netip.Prefix
	for _, c := range cidrs {
		if err := tunnel.CheckOverlap([]netip.Prefix{c}, r.dev.Index()); err != nil {
			r.log.Error("ServiceCIDR not routed", "err", err)
			continue
		}
		ok = append(ok, c)
	}
	r.mu.Lock()
	same := slices.Equal(ok, r.cidrs)
	r.mu.Unlock()
	if same {
		return
	}
	if r.dns == nil && len(ok) > 0 {
		if err := r.startDNS(ctx, ok); err != nil {
			r.log.Error("cluster DNS not started", "err", err)
		}
	}
	if err := r.setRoutes(ok); err != nil {
		r.log.Error("routing ServiceCIDRs", "cidrs", fmt.Sprint(ok), "err", err)
		return
	}
	r.log.Info("service CIDRs routed", "cidrs", fmt.Sprint(ok))
}

// ready starts serving: the TUN's packets reach the netstack only once the
// service table is loaded, so that a SYN that arrived before (say, while a
// kubetun --persist restarts) is retransmitted and served, not refused.
func (r *runner) ready() {
	r.dev.Start()
	r.logReady()
}

func (r *runner) logReady() {
	snap := r.table.Load()
	r.mu.Lock()
	cidrs := r.cidrs
	r.mu.Unlock()
	dnsAddr := "off"
	if r.dns != nil {
		dnsAddr = r.dnsIP.String()
	}
	r.log.Info("ready", "tun", r.dev.Name(), "mtu", r.cfg.mtu, "service-cidrs", fmt.Sprint(cidrs),
		"dns", dnsAddr, "services", snap.Services(), "endpoints", snap.Endpoints())
}

// serveHTTP listens on addr at once (so a taken port fails the start) and
// serves h until the returned func is called.
func serveHTTP(flag, addr string, h http.Handler, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server", "flag", flag, "addr", addr, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// metricsMux serves the metrics at /metrics and, with profiling, Go's
// profiler at /debug/pprof/ (kube-proxy serves both on its metrics address).
func metricsMux(h http.Handler, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// outside reports the ClusterIPs no service CIDR covers: the host never
// routes them into the TUN, so kubetun cannot serve them. Like every
// problem, each is logged once while it lasts (reportProblems).
func outside(snap *resolver.Snapshot, cidrs []netip.Prefix) []resolver.Problem {
	if len(cidrs) == 0 {
		return nil // not routed yet
	}
	var problems []resolver.Problem
	seen := make(map[netip.Addr]bool)
	for _, sp := range snap.Ports() {
		if seen[sp.ClusterIP] || covered(sp.ClusterIP, cidrs) {
			continue
		}
		seen[sp.ClusterIP] = true
		problems = append(problems, resolver.Problem{Object: "Service " + sp.Service,
			Reason: fmt.Sprintf("clusterIP %s is outside every service CIDR; it is not routed to kubetun", sp.ClusterIP)})
	}
	return problems
}

func covered(ip netip.Addr, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}
