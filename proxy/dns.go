package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/dns"
)

// startDNS serves cluster DNS inside the netstack on --dns-ip, by default
// the 10th address of the first service CIDR (kube-dns's convention). The
// address is routed with the service CIDRs; see setRoutes.
func (r *runner) startDNS(ctx context.Context, cidrs []netip.Prefix) error {
	if r.cfg.dnsOff {
		return nil
	}
	ip := r.cfg.dnsIP
	if !ip.IsValid() {
		if len(cidrs) == 0 {
			return errors.New("no service CIDR to take the DNS address from; give --dns-ip")
		}
		ip = tenth(cidrs[0])
	}
	if reason := unusableDNSIP(ip); reason != "" {
		return fmt.Errorf("--dns-ip %s: %s", ip, reason)
	}
	upstreams := r.cfg.dnsUpstreams
	if upstreams == nil {
		var err error
		upstreams, err = hostUpstreams()
		if err != nil {
			r.log.Warn("no upstream DNS servers: names outside the cluster get SERVFAIL; give --dns-upstream", "err", err)
		}
	}
	srv, err := dns.New(dns.Config{
		Table:        r.table,
		Domain:       r.cfg.clusterDomain,
		ServiceCIDRs: cidrs,
		Self:         ip,
		Upstreams:    upstreams,
		Logger:       r.log,
	})
	if err != nil {
		return err
	}
	addr := netip.AddrPortFrom(ip, 53)
	pc, err := r.ns.ListenUDP(addr)
	if err != nil {
		return err
	}
	ln, err := r.ns.ListenTCP(addr)
	if err != nil {
		pc.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, pc, ln); err != nil && ctx.Err() == nil {
			r.log.Error("cluster DNS stopped", "err", err)
		}
	}()
	r.closers = append(r.closers, func() { cancel(); <-done })
	r.dns, r.dnsIP = srv, ip
	r.log.Info("cluster DNS serving", "addr", ip, "domain", r.cfg.clusterDomain, "upstreams", fmt.Sprint(upstreams))
	r.warnDNSShadow(nil, r.table.Load())
	return nil
}

// warnDNSShadow warns when a Service's port 53 comes to sit on kubetun's
// DNS address, as kube-dns's does on a node where kubetun replaces
// kube-proxy: kubetun's DNS answers there, so that Service's pods (CoreDNS,
// with whatever its Corefile adds) get no DNS traffic through this host.
// It says so once each time it starts. Called on the apply goroutine, or
// before it runs.
func (r *runner) warnDNSShadow(before, now *resolver.Snapshot) {
	if !r.dnsIP.IsValid() {
		return
	}
	svc := dnsService(now, r.dnsIP)
	if svc == "" || svc == dnsService(before, r.dnsIP) {
		return
	}
	r.log.Warn("a Service's DNS port is kubetun's DNS address: kubetun answers there itself and the Service's pods get no DNS traffic from this host; give --dns-ip=off to proxy it to them instead",
		"service", svc, "addr", netip.AddrPortFrom(r.dnsIP, 53))
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
