package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kubetun/kubetun/connection"
	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/tunnel"
	"github.com/kubetun/kubetun/tunnel/hostdns"
	"github.com/kubetun/kubetun/wake"
)

// How ConnectOptions.Via reaches pods.
const (
	ViaDirect      = "direct"      // dial pod IPs from this host (a VPN, kind, a node)
	ViaPortForward = "portforward" // the API server's pods/portforward
	ViaAuto        = "auto"        // direct if a probe dial succeeds, else port-forward
)

// DefaultProbeTimeout bounds each probe dial of ViaAuto.
const DefaultProbeTimeout = time.Second

// DefaultStallTimeout is ConnectOptions.StallTimeout's default: long enough
// for a client that is slow or briefly busy, short enough that the other
// flows to the same pod are not held up for long by one that stopped
// reading.
const DefaultStallTimeout = 15 * time.Second

// udpOverPortForward is why UDP to a Service is refused in port-forward
// mode, as the log says it once per Service.
const udpOverPortForward = "pods are reached over port-forward, which carries TCP only; cluster DNS names are still answered by kubetun itself"

// ConnectOptions are what `kubetun connect` adds to a Config.
type ConnectOptions struct {
	Kube KubeOptions
	// Via is ViaDirect, ViaPortForward or ViaAuto.
	Via string
	// ProbeTimeout bounds each probe dial of ViaAuto; zero means
	// DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// StallTimeout, in port-forward mode, resets a flow whose client takes
	// no byte for this long (netstack.Config.StalledClientTimeout): the
	// flows to one pod share one port-forward connection, which a stream
	// nobody reads would stop. Zero means DefaultStallTimeout; negative
	// waits for ever, as kubectl port-forward does.
	StallTimeout time.Duration
	// PingInterval and PingTimeout, in port-forward mode, are
	// portforward.Options': each pod connection is pinged every
	// PingInterval and replaced when a ping goes unanswered for
	// PingTimeout. Zero means portforward's defaults; a negative
	// PingInterval sends no pings.
	PingInterval, PingTimeout time.Duration
	// HostDNS sends the cluster domain, and only it, from the host's
	// systemd-resolved to kubetun's DNS (package hostdns), reverted on
	// exit; without resolved, it prints what to add by hand.
	HostDNS bool
	// Out receives the summary line once connected, and DNS instructions.
	Out io.Writer
	// RecordDirs, if set, are where connections record themselves
	// (package connection): this one writes its record into the first as
	// soon as its DNS domains are decided, again with its status address
	// once connected, for `kubetun status` to find it beside the others,
	// and removes it on exit; the others' records are read from all, to
	// learn whether one has the cluster domain already.
	RecordDirs []string
	// Domain is the connection's own DNS domain, answered beside the
	// cluster's: names read <svc>.<ns>.svc.<Domain>. "" derives it from
	// the context (connection.Domain); DomainNone gives none.
	Domain string
}

// DomainNone as ConnectOptions.Domain gives a connection no domain of its
// own.
const DomainNone = "none"

// Connect serves a cluster's Services on this host, as a laptop wants
// them: the ClusterIPs routed into the TUN, pods reached directly or
// through the API server's port-forward, the cluster domain resolved by
// kubetun. It returns when ctx ends, having removed the routes, the TUN and
// the DNS settings.
func Connect(ctx context.Context, cfg Config, opts ConnectOptions, log *slog.Logger) error {
	began := time.Now()
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = DefaultProbeTimeout
	}
	// Before anything else, so that the mistake costs no wait for the API.
	if cfg.TUN != "" {
		if err := refuseExistingTUN(cfg.TUN, tunnel.LinkKind); err != nil {
			return err
		}
	}
	opts.Kube.FollowCIDRs = len(cfg.ServiceCIDRs) == 0
	src, err := NewKubeSource(ctx, opts.Kube, log)
	if err != nil {
		if ctx.Err() != nil {
			// Interrupted while the API was asked: its error (the
			// context's) is no fault to report.
			log.Info("stopped before connecting: nothing was set up")
			return nil
		}
		return err
	}
	if cfg.TUN == "" {
		// One TUN per connection, named after its context, so that
		// several run side by side and `ip link` tells them apart.
		name, err := connection.TUNName(src.Info().Context, tunTaken)
		if err != nil {
			return err
		}
		cfg.TUN = name
		log.Info("TUN named after the context", "tun", name, "context", src.Info().Context)
	}
	via := opts.Via
	if via == ViaAuto || via == "" {
		ok, detail := src.ProbeDirect(ctx, opts.ProbeTimeout)
		via = ViaPortForward
		if ok {
			via = ViaDirect
		}
		log.Info("pods reached "+via+" (--via auto)", "probe", detail)
	}
	if ctx.Err() != nil {
		log.Info("stopped before connecting: nothing was set up")
		return nil
	}
	cfg.Mode, cfg.PodsVia = "connect", via
	info := src.Info()
	if cfg.Map.Seed == "" {
		cfg.Map.Seed = info.Context
	}
	owner, unrecord := claimDomains(&cfg, opts, info.Context, began, log)
	defer func() {
		if unrecord == nil {
			return
		}
		if err := unrecord(); err != nil {
			log.Warn("removing this connection's record", "err", err)
		}
	}()
	var revertDNS func() error
	var p *Proxy
	cfg.OnReady = func(st Status) {
		dnsText := "DNS off"
		if st.DNS != nil {
			dnsText = fmt.Sprintf("DNS %s at %s", st.DNS.Domain, st.DNS.Address)
			if opts.HostDNS {
				revertDNS = hostDNS(ctx, st, owner, info.Namespace, opts.Out, log)
			}
		}
		fmt.Fprintf(opts.Out, "connected to %s (%s): services %s, %d services, %s, pods via %s\n",
			info.Context, info.Server, DescribeServed(st), len(st.Services), dnsText, via)
		log.Info("connected", "took", time.Since(began).Round(time.Millisecond))
		if len(opts.RecordDirs) > 0 {
			rec := connection.Record{PID: os.Getpid(), Context: info.Context, TUN: st.TUN,
				StatusAddr: p.ListenAddr(cfg.HealthAddr), Started: began}
			if st.DNS != nil {
				rec.Domains = routedDomains(*st.DNS, owner)
			}
			// Our own record again, now with where status answers.
			if _, err := connection.Register(opts.RecordDirs[0], rec); err != nil {
				log.Warn("'kubetun status' will not list this connection", "err", err)
			}
		}
	}

	p = New(cfg, src, log)
	open := p.env.open
	p.env.open = func(cfg Config, table *resolver.Table, log *slog.Logger) (Dataplane, error) {
		// Again just before the TUN is made: the API and the probe took
		// time, in which a kubetun run may have started.
		if err := refuseExistingTUN(cfg.TUN, tunnel.LinkKind); err != nil {
			return nil, err
		}
		return open(cfg, table, log)
	}
	if via == ViaPortForward {
		d, err := portforward.New(src.RESTConfig(), p.table, portforward.Options{
			PingInterval: opts.PingInterval,
			PingTimeout:  opts.PingTimeout,
			Logf:         func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) },
		})
		if err != nil {
			return err
		}
		defer d.Close()
		p.cfg.Dialer = d
		p.cfg.RoutePods = true
		p.cfg.DataPath.RefuseUDP = udpOverPortForward
		switch {
		case opts.StallTimeout == 0:
			p.cfg.DataPath.StalledClientTimeout = DefaultStallTimeout
		case opts.StallTimeout > 0:
			p.cfg.DataPath.StalledClientTimeout = opts.StallTimeout
		}
	}
	// A laptop sleeps and changes networks: then the connections to the
	// API server are made again, and those to pods checked (a new network)
	// or made again (a sleep longer than a ping may go unanswered), so that
	// a flow fails fast rather than hang on a dead one.
	var pf *portforward.Dialer
	if d, ok := p.cfg.Dialer.(*portforward.Dialer); ok {
		pf = d
	}
	gap := opts.PingTimeout
	if gap <= 0 {
		gap = portforward.DefaultPingTimeout
	}
	w, werr := wake.Watch(wake.Config{Gap: gap, Network: true, Ignore: cfg.TUN, IgnorePrefix: connection.TUNPrefix, Notify: func(e wake.Event) {
		log.Warn(e.Kind.String()+": connecting to the API server again, and checking the connections to pods", "detail", e.Detail)
		if pf != nil {
			if e.Kind == wake.Resumed {
				pf.Reset(e.Kind.String() + ": " + e.Detail)
			} else {
				pf.Check()
			}
		}
		src.CloseConnections()
	}})
	if werr != nil {
		log.Warn("sleep and network changes will not be noticed", "err", werr)
	} else {
		defer w.Close()
	}
	err = p.Run(ctx)
	// The TUN is gone by now, and resolved forgot the link's settings with
	// it; revert is for a resolved that missed that.
	if revertDNS != nil {
		if rerr := revertDNS(); rerr != nil {
			log.Warn("reverting the host's DNS settings", "err", rerr)
		}
	}
	return err
}

// claimDomains decides the DNS domains of the connection to the cluster of
// context (nameDomains) and records the decision (package connection), one
// step under the records' lock, so that two connections started at one
// instant do not both take the cluster domain. It reports whether this
// connection has the cluster domain, and returns the removal of its record
// (nil without RecordDirs, or when it could not be written).
func claimDomains(cfg *Config, opts ConnectOptions, context string, began time.Time, log *slog.Logger) (owner bool, unrecord func() error) {
	if len(opts.RecordDirs) == 0 {
		return cfg.DNS.Off || nameDomains(&cfg.DNS, opts, context, log), nil
	}
	unlock, err := connection.Lock(opts.RecordDirs[0])
	if err != nil {
		log.Warn("deciding the DNS domains without the records' lock", "err", err)
	} else {
		defer unlock()
	}
	owner = true
	rec := connection.Record{PID: os.Getpid(), Context: context, TUN: cfg.TUN, Started: began}
	if !cfg.DNS.Off {
		owner = nameDomains(&cfg.DNS, opts, context, log)
		rec.Domains = routedDomains(DNSStatus{Domain: cfg.DNS.Domain, Aliases: cfg.DNS.Aliases}, owner)
	}
	unrecord, err = connection.Register(opts.RecordDirs[0], rec)
	if err != nil {
		log.Warn("'kubetun status' will not list this connection, and the next may take its domains", "err", err)
		return owner, nil
	}
	return owner, unrecord
}

// nameDomains decides the DNS domains of a connection to the cluster of
// context, in dns: the first connection keeps the cluster's own domain
// (cluster.local), searched for short names, and answers under its own
// domain too; a connection started while another has the cluster domain
// answers under its own domain first (its PTR names), and under the
// cluster's only when asked directly: the host sends it its own domain
// alone, never searched, so that a short name or a cluster.local name
// never reaches another cluster than before. It reports whether this
// connection has the cluster domain.
func nameDomains(dns *DNSConfig, opts ConnectOptions, context string, log *slog.Logger) bool {
	own := opts.Domain
	switch own {
	case "":
		own = connection.Domain(context)
	case DomainNone:
		own = ""
	}
	own = strings.ToLower(strings.TrimSuffix(own, "."))
	cluster := dns.Domain
	if cluster == "" {
		cluster = "cluster.local"
	}
	holder := ""
	if len(opts.RecordDirs) > 0 {
		recs, _ := connection.List(opts.RecordDirs...)
		for _, r := range recs {
			if slices.Contains(r.Domains, strings.ToLower(strings.TrimSuffix(cluster, "."))) {
				holder = r.Context
				break
			}
		}
	}
	if holder == "" || own == "" || own == cluster {
		if holder != "" {
			log.Warn("another connection has the cluster domain, and this one has no domain of its own: the host will send the cluster domain to both; give --domain", "domain", cluster, "holder", holder)
		}
		if own != "" && own != cluster {
			dns.Aliases = append(dns.Aliases, own)
		}
		return true
	}
	log.Info("the cluster domain is another connection's: names of this cluster read <svc>.<ns>.svc."+own,
		"domain", cluster, "holder", holder, "own", own)
	dns.Domain, dns.Aliases = own, append(dns.Aliases, cluster)
	return false
}

// routedDomains are the domains the host sends to a connection's DNS: the
// cluster domain and its own with owner, else its own (dns.Domain) alone.
func routedDomains(dns DNSStatus, owner bool) []string {
	if !owner {
		return []string{dns.Domain}
	}
	return append([]string{dns.Domain}, dns.Aliases...)
}

// DescribeServed says which ranges st serves, a mapped one with the real
// range and the cluster it stands for: "240.16.0.0/12 (10.96.0.0/12 of
// kind-b)". The start line and kubetun status both use it.
func DescribeServed(st Status) string {
	out := make([]string, len(st.ServiceCIDRs))
	for i, c := range st.ServiceCIDRs {
		out[i] = c
		if st.Mapped == nil {
			continue
		}
		for _, pr := range st.Mapped.Pairs {
			if pr.Mapped.String() == c {
				out[i] = fmt.Sprintf("%s (%s of %s)", c, pr.Real, st.Mapped.Context)
			}
		}
	}
	return strings.Join(out, ",")
}

// tunTaken reports whether a network device name exists, or cannot be
// looked up.
func tunTaken(name string) bool {
	_, exists, err := tunnel.LinkKind(name)
	return exists || err != nil
}

// refuseExistingTUN returns an error if a network device named name exists
// (kind says, as tunnel.LinkKind). connect creates its TUN and deletes it on
// exit, and tunnel.Open would attach to an existing one: the TUN a node's
// `kubetun run --persist` keeps for its restarts, or another program's,
// which connect would then take over and delete.
func refuseExistingTUN(name string, kind func(string) (string, bool, error)) error {
	k, exists, err := kind(name)
	switch {
	case err != nil:
		return fmt.Errorf("TUN %s: %w", name, err)
	case !exists:
		return nil
	case k == "tuntap":
		return fmt.Errorf("TUN %s exists already (kept by a 'kubetun run --persist' or another program): connect creates a TUN of its own and deletes it on exit, so it does not use one it did not create; "+
			"give connect another name with --tun NAME (a kubetun's leftover that nothing uses is removed by 'kubetun cleanup --tun %s')", name, name)
	default:
		return fmt.Errorf("a network device %s exists already (%s, not a TUN): give connect another name with --tun NAME", name, k)
	}
}

// hostDNS sets split DNS for the cluster domain on the TUN through
// systemd-resolved, or prints what to add by hand when resolved is not
// running. The TUN gets the first service CIDR's network address first:
// resolved ignores a link without a routable address, and no Service is
// ever given that address (the allocator hands out neither the network
// nor the broadcast address of a range). It returns the revert func, or nil.
func hostDNS(ctx context.Context, st Status, owner bool, namespace string, out io.Writer, log *slog.Logger) func() error {
	if namespace == "" {
		namespace = "default"
	}
	server, err := netip.ParseAddr(st.DNS.Address)
	if err != nil {
		return nil
	}
	link := hostdns.Link{Name: st.TUN, Server: server, ClusterDomain: st.DNS.Domain, Namespace: namespace, NoSearch: !owner}
	if owner {
		link.Aliases = st.DNS.Aliases
	}
	if len(st.ServiceCIDRs) > 0 {
		if p, err := netip.ParsePrefix(st.ServiceCIDRs[0]); err == nil {
			a := p.Masked().Addr()
			if err := tunnel.AddAddress(st.TUN, netip.PrefixFrom(a, a.BitLen())); err != nil {
				log.Warn("host DNS not set", "err", err)
				return nil
			}
		}
	}
	revert, err := hostdns.Configure(ctx, link)
	switch {
	case errors.Is(err, hostdns.ErrNoResolved):
		fmt.Fprint(out, hostdns.Instructions(link))
		return nil
	case err != nil:
		log.Warn("host DNS not set; ask kubetun's DNS directly", "server", server, "err", err)
		return nil
	}
	msg, search := "host DNS: the cluster domain goes to kubetun through systemd-resolved, on the TUN only", strings.Join(hostdns.SearchDomains(st.DNS.Domain, namespace), " ")
	if !owner {
		msg = "host DNS: this cluster's own domain goes to kubetun through systemd-resolved, on the TUN only; the cluster domain is another connection's"
		search = "none: short names stay with the connection that has them"
	}
	log.Info(msg, "link", st.TUN, "server", server, "domains", strings.Join(routedDomains(*st.DNS, owner), " "), "search", search)
	if mode, err := hostdns.ResolvConfMode(ctx); err == nil && hostdns.ResolvConfBypassed(mode) {
		log.Warn("host DNS: /etc/resolv.conf does not lead to systemd-resolved, so programs that read it will not resolve cluster names "+
			"(only those using nss-resolve will); kubetun changes no global setting: point /etc/resolv.conf at /run/systemd/resolve/stub-resolv.conf yourself, or ask kubetun's DNS directly",
			"resolvConfMode", mode, "server", server)
	}
	return revert
}
