package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/dns"
)

// DNS is the cluster DNS server as a Proxy drives it; *dns.Server is one.
type DNS interface {
	// Serve answers on pc and ln until ctx ends.
	Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error
	// SetServiceCIDRs replaces the ranges reverse lookups answer for.
	SetServiceCIDRs(cidrs []netip.Prefix)
}

var _ DNS = (*dns.Server)(nil)

// dnsParams is what a DNS server is made of.
type dnsParams struct {
	Table        *resolver.Table
	Domain       string
	Aliases      []string
	ServiceCIDRs []netip.Prefix
	Self         netip.Addr
	Upstreams    []string
	Logger       *slog.Logger
	// Map translates addresses in answers; nil when nothing is mapped.
	Map dns.Translator
}

func newDNS(p dnsParams) (DNS, error) {
	return dns.New(dns.Config{
		Table:        p.Table,
		Domain:       p.Domain,
		Aliases:      p.Aliases,
		ServiceCIDRs: p.ServiceCIDRs,
		Self:         p.Self,
		Upstreams:    p.Upstreams,
		Logger:       p.Logger,
		Map:          p.Map,
	})
}

// startDNS serves cluster DNS inside the userspace stack on DNSConfig.IP,
// by default the 10th address of the first service CIDR (kube-dns's
// convention). The address is routed with the service CIDRs; see setRoutes.
func (p *Proxy) startDNS(cidrs []netip.Prefix) error {
	if p.cfg.DNS.Off {
		return nil
	}
	ip := p.cfg.DNS.IP
	if !ip.IsValid() {
		if len(cidrs) == 0 {
			return errors.New("no service CIDR to take the DNS address from; give --dns-ip")
		}
		ip = tenth(p.served(cidrs[:1])[0])
	}
	if reason := unusableDNSIP(ip); reason != "" {
		return fmt.Errorf("--dns-ip %s: %s", ip, reason)
	}
	upstreams := p.cfg.DNS.Upstreams
	if upstreams == nil {
		var err error
		upstreams, err = p.env.hostUpstreams()
		if err != nil {
			p.log.Warn("no upstream DNS servers: names outside the cluster get SERVFAIL; give --dns-upstream", "err", err)
		}
	}
	params := dnsParams{
		Table:        p.table,
		Domain:       p.cfg.DNS.Domain,
		Aliases:      p.cfg.DNS.Aliases,
		ServiceCIDRs: cidrs,
		Self:         ip,
		Upstreams:    upstreams,
		Logger:       p.log,
	}
	if p.cfg.Map.on() {
		params.Map = &p.mapping
	}
	srv, err := p.env.newDNS(params)
	if err != nil {
		return err
	}
	addr := netip.AddrPortFrom(ip, 53)
	pc, err := p.dp.ListenUDP(addr)
	if err != nil {
		return err
	}
	ln, err := p.dp.ListenTCP(addr)
	if err != nil {
		pc.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, pc, ln); err != nil && ctx.Err() == nil {
			p.log.Error("cluster DNS stopped", "err", err)
		}
	}()
	p.closers = append(p.closers, func() { cancel(); <-done })
	p.dns, p.dnsIP = srv, ip
	p.mu.Lock()
	p.dnsStatus = &DNSStatus{Domain: p.cfg.DNS.Domain, Aliases: p.cfg.DNS.Aliases, Address: ip.String()}
	p.mu.Unlock()
	p.log.Info("cluster DNS serving", "addr", ip, "domain", p.cfg.DNS.Domain, "aliases", fmt.Sprint(p.cfg.DNS.Aliases), "upstreams", fmt.Sprint(upstreams))
	p.warnDNSShadow(nil, p.table.Load())
	return nil
}

// warnDNSShadow warns when a Service's port 53 comes to sit on kubetun's
// DNS address, as kube-dns's does on a node where kubetun replaces
// kube-proxy: kubetun's DNS answers there, so that Service's pods (CoreDNS,
// with whatever its Corefile adds) get no DNS traffic through this host.
// It says so once each time it starts. Called on the apply goroutine, or
// before it runs.
func (p *Proxy) warnDNSShadow(before, now *resolver.Snapshot) {
	if !p.dnsIP.IsValid() {
		return
	}
	ip, _ := p.mapping.ToReal(p.dnsIP)
	svc := dnsService(now, ip)
	if svc == "" || svc == dnsService(before, ip) {
		return
	}
	p.log.Warn("a Service's DNS port is kubetun's DNS address: kubetun answers there itself and the Service's pods get no DNS traffic from this host; give --dns-ip=off to proxy it to them instead",
		"service", svc, "addr", netip.AddrPortFrom(p.dnsIP, 53))
}

// dnsService returns the Service ("namespace/name") with port 53, UDP or
// TCP, on ip in snap, or "".
func dnsService(snap *resolver.Snapshot, ip netip.Addr) string {
	if snap == nil {
		return ""
	}
	for _, proto := range []resolver.Protocol{resolver.UDP, resolver.TCP} {
		if sp, ok := snap.Lookup(proto, netip.AddrPortFrom(ip, 53)); ok {
			return sp.Service
		}
	}
	return ""
}

// tenth returns the 10th address of p (10.3.240.10 for 10.3.240.0/20).
func tenth(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	return a
}

func unusableDNSIP(ip netip.Addr) string {
	switch {
	case ip.IsLoopback():
		return "a loopback address cannot be routed into the TUN"
	case ip.IsUnspecified(), ip.IsMulticast():
		return "not a unicast address"
	}
	return ""
}

// hostUpstreams returns the host's DNS servers. On a systemd-resolved host
// /etc/resolv.conf names only the local stub, which a client in another
// network namespace or pod cannot reach: the real servers are in
// /run/systemd/resolve/resolv.conf.
func hostUpstreams() ([]string, error) {
	ups, err := dns.UpstreamsFromResolvConf("/etc/resolv.conf")
	onlyStub := err == nil && !slices.ContainsFunc(ups, func(u string) bool {
		ap, err := netip.ParseAddrPort(u)
		return err != nil || !ap.Addr().IsLoopback()
	})
	if err != nil || onlyStub {
		if _, statErr := os.Stat("/run/systemd/resolve/resolv.conf"); statErr == nil {
			return dns.UpstreamsFromResolvConf("/run/systemd/resolve/resolv.conf")
		}
	}
	return ups, err
}
