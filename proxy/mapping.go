package proxy

import (
	"fmt"

	"net/netip"
	"slices"
	"strings"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/resolver"
)

// When MapConfig.Mode maps a cluster's addresses onto others (package
// addrmap).
const (
	MapNever   = "never"   // an overlapping range is refused, as `kubetun run` does
	MapOverlap = "overlap" // a range that overlaps a route of the host is mapped
	MapAlways  = "always"  // every range is mapped
)

// MapConfig says when the service ranges, and with RoutePods the headless
// Services' pod IPs, are served on mapped addresses: for a laptop connected
// to several clusters, most of which use one service range (kubeadm's and
// kind's 10.96.0.0/12). The table keeps the cluster's real addresses; the
// data path translates each destination back in its lookup
// (mappedServices), the DNS answers the mapped ones.
type MapConfig struct {
	// Mode is MapNever (or ""), MapOverlap or MapAlways.
	Mode string
	// Seed picks the mapped ranges and the IPv6 pool (addrmap.Allocate,
	// addrmap.Pool6): the kubeconfig context, so that a cluster keeps its
	// mapped addresses from one connection to the next.
	Seed string
}

func (c MapConfig) on() bool { return c.Mode == MapOverlap || c.Mode == MapAlways }

// mapRanges decides which of cidrs are served on mapped ranges, as
// Config.Map says: check reports a route of the host a prefix overlaps
// (the TUN's own do not count). A range mapped already keeps its mapped
// range. It returns the ranges to serve, by their real prefixes: those
// neither free nor mappable are left out, logged.
func (p *Proxy) mapRanges(cidrs []netip.Prefix, check func([]netip.Prefix) error) []netip.Prefix {
	if !p.cfg.Map.on() {
		var ok []netip.Prefix
		for _, c := range cidrs {
			if err := check([]netip.Prefix{c}); err != nil {
				p.log.Error("ServiceCIDR not routed", "err", err)
				continue
			}
			ok = append(ok, c)
		}
		return ok
	}
	m := p.mapping.Load()
	var gone []netip.Prefix
	for _, pr := range m.Pairs() {
		if !pr.Real.IsSingleIP() && !slices.Contains(cidrs, pr.Real) {
			gone = append(gone, pr.Real)
		}
	}
	m = m.Without(gone...)
	var ok []netip.Prefix
	for _, c := range cidrs {
		if m.MappedPrefix(c) != c {
			ok = append(ok, c) // mapped already
			continue
		}
		err := check([]netip.Prefix{c})
		if err == nil && p.cfg.Map.Mode != MapAlways {
			ok = append(ok, c)
			continue
		}
		next, perr := p.mapOne(m, c, check)
		if perr != nil {
			p.log.Error("ServiceCIDR not routed: it overlaps a route and no mapped range is free", "cidr", c, "overlap", err, "err", perr)
			continue
		}
		m = next
		mapped := m.MappedPrefix(c)
		why := "--map always"
		if err != nil {
			why = err.Error()
		}
		p.log.Info("ServiceCIDR mapped", "cidr", c, "servedOn", mapped, "context", p.cfg.Map.Seed, "why", why)
		ok = append(ok, c)
	}
	p.mapping.Store(m)
	return ok
}

// mapOne returns m with real mapped onto a free prefix of its pool.
func (p *Proxy) mapOne(m *addrmap.Map, real netip.Prefix, check func([]netip.Prefix) error) (*addrmap.Map, error) {
	free := func(c netip.Prefix) bool {
		for _, pr := range m.Pairs() {
			if pr.Mapped.Overlaps(c) {
				return false
			}
		}
		return check([]netip.Prefix{c}) == nil
	}
	mapped, err := addrmap.Allocate(real, addrmap.Pool(real, p.cfg.Map.Seed), p.cfg.Map.Seed, free)
	if err != nil {
		return m, err
	}
	return m.With(addrmap.Pair{Real: real, Mapped: mapped})
}

// mapPods maps the headless Services' pod IPs (host prefixes) that
// overlap a route of the host, or all with MapAlways, and forgets those
// gone. Called on the apply goroutine.
func (p *Proxy) mapPods(pods []netip.Prefix) {
	if !p.cfg.Map.on() || p.dp == nil {
		return
	}
	m := p.mapping.Load()
	var gone []netip.Prefix
	for _, pr := range m.Pairs() {
		if pr.Real.IsSingleIP() && !slices.Contains(pods, pr.Real) {
			gone = append(gone, pr.Real)
		}
	}
	m = m.Without(gone...)
	check := p.dp.CheckOverlap
	if rs, ok := p.dp.(routeSnapshotter); ok {
		if c, err := rs.OverlapChecker(); err == nil {
			check = c
		}
	}
	n := 0
	for _, pod := range pods {
		if m.MappedPrefix(pod) != pod {
			continue
		}
		if p.cfg.Map.Mode != MapAlways && check([]netip.Prefix{pod}) == nil {
			continue
		}
		next, err := p.mapOne(m, pod, check)
		if err != nil {
			p.log.Error("headless Service's pod IP not mapped", "pod", pod, "err", err)
			continue
		}
		m, n = next, n+1
	}
	if n > 0 || len(gone) > 0 {
		p.log.Info("headless Services' pod IPs mapped", "new", n, "gone", len(gone), "context", p.cfg.Map.Seed)
	}
	p.mapping.Store(m)
}

// served returns prefixes as they are served: each mapped one replaced by
// its mapped prefix.
func (p *Proxy) served(prefixes []netip.Prefix) []netip.Prefix {
	m := p.mapping.Load()
	if m.Len() == 0 {
		return prefixes
	}
	out := make([]netip.Prefix, len(prefixes))
	for i, c := range prefixes {
		out[i] = m.MappedPrefix(c)
	}
	return out
}

// describeRanges says what cidrs are served on, each mapped one with the
// real range and the cluster (context) it stands for:
// "240.16.0.0/12 (10.96.0.0/12 of kind-b)".
func (p *Proxy) describeRanges(cidrs []netip.Prefix) string {
	m := p.mapping.Load()
	s := make([]string, len(cidrs))
	for i, c := range cidrs {
		s[i] = c.String()
		if mc := m.MappedPrefix(c); mc != c {
			s[i] = fmt.Sprintf("%s (%s of %s)", mc, c, p.cfg.Map.Seed)
		}
	}
	return strings.Join(s, ",")
}

// mappedServices is the service table as the data path sees it: a
// destination on a mapped address is looked up at the real address it
// stands for.
type mappedServices struct {
	table *resolver.Table
	addrs *addrmap.Table
}

func (s mappedServices) Lookup(proto resolver.Protocol, dst netip.AddrPort) (*resolver.ServicePort, bool) {
	if r, ok := s.addrs.ToReal(dst.Addr()); ok {
		dst = netip.AddrPortFrom(r, dst.Port())
	}
	return s.table.Lookup(proto, dst)
}

func (s mappedServices) Answers(ip netip.Addr) bool {
	ip, _ = s.addrs.ToReal(ip)
	return s.table.Answers(ip)
}

func (s mappedServices) PodByIP(ip netip.Addr) (namespace, name string, ok bool) {
	ip, _ = s.addrs.ToReal(ip)
	return s.table.PodByIP(ip)
}
