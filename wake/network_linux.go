package wake

import (
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// watchNetwork subscribes to the host's address and route changes; each
// one, but those on Config.Ignore's link, comes on the channel returned as a
// phrase.
func (w *Watcher) watchNetwork() (<-chan string, error) {
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(addrs, w.done, netlink.AddrSubscribeOptions{}); err != nil {
		return nil, fmt.Errorf("wake: following the host's addresses (netlink): %w", err)
	}
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, w.done, netlink.RouteSubscribeOptions{}); err != nil {
		return nil, fmt.Errorf("wake: following the host's routes (netlink): %w", err)
	}
	out := make(chan string)
	ignored := func(index int) bool {
		if (w.cfg.Ignore == "" && w.cfg.IgnorePrefix == "") || index == 0 {
			return false
		}
		l, err := netlink.LinkByIndex(index)
		if err != nil {
			return false
		}
		name := l.Attrs().Name
		return (w.cfg.Ignore != "" && name == w.cfg.Ignore) || (w.cfg.IgnorePrefix != "" && strings.HasPrefix(name, w.cfg.IgnorePrefix))
	}
	send := func(s string) bool {
		select {
		case out <- s:
			return true
		case <-w.done:
			return false
		}
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		// Both channels are closed once done is.
		for addrs != nil || routes != nil {
			select {
			case u, ok := <-addrs:
				if !ok {
					addrs = nil
					continue
				}
				if ignored(u.LinkIndex) || incidental(u.LinkAddress.IP) {
					continue
				}
				verb := "removed"
				if u.NewAddr {
					verb = "added"
				}
				if !send(fmt.Sprintf("address %s %s", u.LinkAddress.String(), verb)) {
					return
				}
			case u, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				if ignored(u.LinkIndex) || u.Table == unix.RT_TABLE_LOCAL || (u.Dst != nil && incidental(u.Dst.IP)) {
					continue
				}
				verb := "removed"
				if u.Type == unix.RTM_NEWROUTE {
					verb = "added"
				}
				dst := "default"
				if u.Dst != nil {
					dst = u.Dst.String()
				}
				if !send(fmt.Sprintf("route to %s %s", dst, verb)) {
					return
				}
			}
		}
	}()
	return out, nil
}

// incidental reports whether a change of ip (an address, or a route's
// destination) says nothing of the way to the API server: link-local and
// multicast ones come and go with every virtual interface (a container's
// veth brings an fe80:: address and route), and no server is reached
// through them.
func incidental(ip net.IP) bool {
	return ip == nil || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsMulticast()
}
