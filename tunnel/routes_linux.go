package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CheckOverlap returns an error naming the first host route that overlaps
// one of cidrs. Routes through the link with index own (kubetun's own TUN;
// 0 for none) and default routes do not count: every address overlaps a
// default route, and a more specific route wins over it.
//
// An overlapping route means some of those addresses already lead somewhere
// (pods, a VPN, a LAN); routing them into the TUN would break that, or loop
// kubetun's own dials back into itself.
func CheckOverlap(cidrs []netip.Prefix, own int) error {
	t, err := ListRoutes()
	if err != nil {
		return err
	}
	return t.CheckOverlap(cidrs, own)
}

// RouteTable is the host's routes as ListRoutes found them: one dump of
// every table, for many checks (the external IPs of one table update).
type RouteTable struct{ routes []netlink.Route }

// ListRoutes dumps the host's routes, every table.
func ListRoutes() (*RouteTable, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return &RouteTable{routes}, nil
}

// CheckOverlap is the package's CheckOverlap against t's routes.
func (t *RouteTable) CheckOverlap(cidrs []netip.Prefix, own int) error {
	routes := t.routes
	for _, cidr := range cidrs {
		for _, r := range routes {
			if r.Dst == nil || (own != 0 && r.LinkIndex == own) || isFallback(r) {
				continue
			}
			dst, ok := prefixOf(r.Dst)
			if !ok || dst.Bits() == 0 || !dst.Overlaps(cidr) {
				continue
			}
			return fmt.Errorf("service CIDR %s overlaps route %s", cidr, describeRoute(r, dst))
		}
	}
	return nil
}

// describeRoute prints a route the way `ip route` does, enough to find it.
func describeRoute(r netlink.Route, dst netip.Prefix) string {
	var b strings.Builder
	switch r.Type {
	case unix.RTN_LOCAL:
		b.WriteString("local ")
	case unix.RTN_BROADCAST:
		b.WriteString("broadcast ")
	case unix.RTN_BLACKHOLE:
		b.WriteString("blackhole ")
	case unix.RTN_UNREACHABLE:
		b.WriteString("unreachable ")
	case unix.RTN_PROHIBIT:
		b.WriteString("prohibit ")
	}
	b.WriteString(dst.String())
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.LinkIndex != 0 {
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			fmt.Fprintf(&b, " dev %s", l.Attrs().Name)
		} else {
			fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
		}
	}
	if r.Table != unix.RT_TABLE_MAIN && r.Table != 0 {
		fmt.Fprintf(&b, " table %s", tableName(r.Table))
	}
	return b.String()
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return fmt.Sprint(t)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}

func ipNetOf(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// setRoutes makes the routes through link exactly want, and the fallback
// routes exactly want too if fallback is set, none otherwise (see
// fallbackRoute). It adds what is missing before it deletes what is no
// longer wanted, so an address that stays wanted is never without a route:
// routes an earlier kubetun --persist left are adopted as they are. Safe to
// repeat.
func setRoutes(link netlink.Link, want []netip.Prefix, fallback bool) error {
	have, err := linkRoutes(link)
	if err != nil {
		return err
	}
	haveFallback, err := fallbackRoutes()
	if err != nil {
		return err
	}
	var wantFallback []netip.Prefix
	if fallback {
		wantFallback = want
	}
	for _, p := range want {
		if slices.Contains(have, p) {
			continue
		}
		err := netlink.RouteReplace(&netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       ipNetOf(p),
			Scope:     netlink.SCOPE_LINK,
		})
		if err != nil {
			return fmt.Errorf("adding route %s dev %s: %w", p, link.Attrs().Name, err)
		}
	}
	for _, p := range wantFallback {
		if slices.Contains(haveFallback, p) {
			continue
		}
		if err := netlink.RouteReplace(fallbackRoute(p)); err != nil {
			return fmt.Errorf("adding route blackhole %s metric %d: %w", p, fallbackMetric, err)
		}
	}
	for _, p := range have {
		if slices.Contains(want, p) {
			continue
		}
		// The scope must match the route's: netlink would send scope
		// universe, the kernel would find no such route (ESRCH), and the
		// route would silently stay.
		err := netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNetOf(p), Scope: netlink.SCOPE_LINK})
		if err != nil && err != unix.ESRCH {
			return fmt.Errorf("deleting route %s dev %s: %w", p, link.Attrs().Name, err)
		}
	}
	for _, p := range haveFallback {
		// Only the fallbacks of prefixes this link routes or routed: those
		// of another kubetun's TUN (another --tun) are its own.
		if slices.Contains(wantFallback, p) || !(slices.Contains(have, p) || slices.Contains(want, p)) {
			continue
		}
		if err := netlink.RouteDel(fallbackRoute(p)); err != nil && err != unix.ESRCH {
			return fmt.Errorf("deleting route blackhole %s metric %d: %w", p, fallbackMetric, err)
		}
	}
	return nil
}

// linkRoutes lists the main-table unicast routes through link, except the
// IPv6 ones the kernel adds by itself (fe80::/64, multicast).
func linkRoutes(link netlink.Link) ([]netip.Prefix, error) {
	routes, err := netlink.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing routes of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// AddAddress gives the link called name the address a (a host prefix, no
// route of its own: IFA_F_NOPREFIXROUTE). It is safe to repeat. A link
// without an address is one systemd-resolved sends no unicast DNS over;
// the address goes with the link.
func AddAddress(name string, a netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	addr := &netlink.Addr{IPNet: ipNetOf(a), Flags: unix.IFA_F_NOPREFIXROUTE}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", a, name, err)
	}
	return nil
}
