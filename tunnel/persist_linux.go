package tunnel

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Restarts without a gap (kubetun run --persist).
//
// A persistent TUN (TUNSETPERSIST) outlives the process that opened it: when
// kubetun exits or is killed, the kernel detaches the queue, turns the
// carrier off and keeps the device with its routes. The next kubetun opens
// the same name with the same flags (TUNSETIFF attaches to the existing
// device) and serves again.
//
// Meanwhile a packet for a service address still takes the route into the
// TUN, whose nexthop the kernel marks linkdown, and is dropped there: the
// device has no reader (tun_net_xmit drops without a queue, and with the
// carrier off the qdisc is noop). A client's SYN is lost, not refused, and
// its retransmission reaches the new kubetun. That holds while
// ignore_routes_with_linkdown is 0, the default. With it set (IPv4: the
// device's value or "all"; IPv6: the device's value, which "all" writes
// through), the lookup skips a linkdown nexthop and falls through to the
// next route that matches, a default route out of the node: exactly what
// must not happen. See ignore_routes_with_linkdown in
// https://docs.kernel.org/networking/ip-sysctl.html.
//
// So with Persist every service route gets a fallback: a blackhole route of
// the same prefix at a metric no other route uses (2^31-1). The route into the TUN wins whenever
// it is usable; when the lookup skips it, the blackhole is the next match of
// that prefix, before any less specific route, and drops the packet.
// Forwarded packets are dropped silently (the client retransmits); a
// node-local connect(2) fails at once with EINVAL instead of waiting.

// fallbackMetric marks kubetun's fallback routes and makes them lose to
// any other route of the same prefix. Routes of this type and metric are
// kubetun's: CheckOverlap ignores them and Cleanup removes them.
const fallbackMetric = math.MaxInt32

// fallbackRoute is the fallback for p, as added and deleted.
func fallbackRoute(p netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: ipNetOf(p), Type: unix.RTN_BLACKHOLE, Priority: fallbackMetric, Table: unix.RT_TABLE_MAIN}
}

func isFallback(r netlink.Route) bool {
	return r.Type == unix.RTN_BLACKHOLE && r.Priority == fallbackMetric
}

// fallbackRoutes lists the fallback routes on the host.
func fallbackRoutes() ([]netip.Prefix, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || !isFallback(r) {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Persist makes the device and its routes outlive the process: Close (and
// a crash) leaves them, and the routes get their fallbacks (see above).
// Cleanup removes them for good.
func (d *Device) Persist() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("tunnel: device closed")
	}
	if err := setPersist(d.tun.File(), true); err != nil {
		return fmt.Errorf("making TUN %s persistent: %w", d.name, err)
	}
	d.persist = true
	if len(d.routes) == 0 {
		return nil
	}
	l, err := netlink.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("finding %s: %w", d.name, err)
	}
	return setRoutes(l, d.routes, true)
}

// setPersist sets or clears the TUN's persist flag.
func setPersist(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v); ioErr != nil {
			ioErr = fmt.Errorf("TUNSETPERSIST %d: %w", v, ioErr)
		}
	})
	return errors.Join(err, ioErr)
}

// ExistingIndex returns the interface index of the TUN device name if it
// exists (left by kubetun --persist), else 0: its routes are kubetun's own,
// not routes a service CIDR may not overlap (CheckOverlap's own).
func ExistingIndex(name string) int {
	l, err := netlink.LinkByName(name)
	if err != nil || l.Type() != "tuntap" {
		return 0
	}
	return l.Attrs().Index
}

// Cleanup removes for good what kubetun --persist leaves: the TUN device
// name with its routes, and their fallback routes, and any fallback route
// no other route of its prefix is left for. It returns what it removed, one
// `ip route`-like line each; nothing when there was nothing to remove. It
// refuses a device a process is attached to (its carrier is on): a running
// kubetun.
func Cleanup(name string) ([]string, error) {
	var routes []netip.Prefix
	var lines []string
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
	case err != nil:
		return nil, fmt.Errorf("finding %s: %w", name, err)
	case l.Type() != "tuntap":
		return nil, fmt.Errorf("%s is a %s device, not kubetun's TUN; not removing it", name, l.Type())
	case l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0:
		return nil, fmt.Errorf("TUN %s is in use (a kubetun is attached to it); stop that kubetun first", name)
	default:
		if routes, err = linkRoutes(l); err != nil {
			return nil, err
		}
		// Deleting the device deletes its routes with it.
		if err := netlink.LinkDel(l); err != nil {
			return nil, fmt.Errorf("deleting TUN %s: %w", name, err)
		}
		lines = append(lines, "TUN "+name)
		for _, p := range routes {
			lines = append(lines, fmt.Sprintf("route %s dev %s", p, name))
		}
	}
	fallbacks, err := fallbackRoutes()
	if err != nil {
		return lines, err
	}
	others, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return lines, fmt.Errorf("listing routes: %w", err)
	}
	for _, p := range fallbacks {
		if !slices.Contains(routes, p) && routedElsewhere(others, p) {
			continue // another kubetun's (another --tun)
		}
		if err := netlink.RouteDel(fallbackRoute(p)); err != nil && err != unix.ESRCH {
			return lines, fmt.Errorf("deleting route blackhole %s metric %d: %w", p, fallbackMetric, err)
		}
		lines = append(lines, fmt.Sprintf("route blackhole %s metric %d", p, fallbackMetric))
	}
	return lines, nil
}

// routedElsewhere reports whether routes hold a route of prefix p that is
// not a fallback.
func routedElsewhere(routes []netlink.Route, p netip.Prefix) bool {
	for _, r := range routes {
		if r.Dst == nil || isFallback(r) {
			continue
		}
		if dst, ok := prefixOf(r.Dst); ok && dst == p {
			return true
		}
	}
	return false
}
