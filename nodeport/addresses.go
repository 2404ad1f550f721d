package nodeport

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Addresses says which node addresses node ports listen on, with
// kube-proxy's --nodeport-addresses semantics: the node's primary addresses
// (the keyword "primary", and the default), or every address of the node
// inside one of some CIDRs. Loopback and link-local addresses are never
// used: a node port on 127.0.0.1 reaches Services from any local process
// without the Service's author knowing (CVE-2020-8558), and a link-local
// address needs a zone no client sends.
type Addresses struct {
	cidrs []netip.Prefix // nil: primary
}

// ParseAddresses parses the values of --nodeport-addresses: CIDRs, or the
// single word "primary". No value means primary.
func ParseAddresses(values []string) (Addresses, error) {
	var a Addresses
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			switch {
			case s == "":
				continue
			case s == "primary":
				if len(values) > 1 || strings.Contains(v, ",") {
					return Addresses{}, fmt.Errorf("--nodeport-addresses: %q must be given alone", s)
				}
				return Addresses{}, nil
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return Addresses{}, fmt.Errorf("--nodeport-addresses: %q is neither a CIDR nor \"primary\"", s)
			}
			a.cidrs = append(a.cidrs, p.Masked())
		}
	}
	return a, nil
}

// Primary reports whether a means the node's primary addresses.
func (a Addresses) Primary() bool { return len(a.cidrs) == 0 }

func (a Addresses) String() string {
	if a.Primary() {
		return "primary"
	}
	return fmt.Sprint(a.cidrs)
}

// Resolve returns the addresses to listen on: primary when a is Primary
// (the Node's addresses, as the caller knows them), else the addresses of
// the host's interfaces that a's CIDRs contain.
func (a Addresses) Resolve(primary []netip.Addr) ([]netip.Addr, error) {
	if a.Primary() {
		return usable(primary), nil
	}
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var host []netip.Addr
	for _, ia := range ifAddrs {
		n, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		if ip, ok := netip.AddrFromSlice(n.IP); ok {
			host = append(host, ip.Unmap())
		}
	}
	return a.ResolveFrom(primary, host), nil
}

// ResolveFrom is Resolve with the host's addresses given (AddressWatch's).
func (a Addresses) ResolveFrom(primary, host []netip.Addr) []netip.Addr {
	if a.Primary() {
		return usable(primary)
	}
	var have []netip.Addr
	for _, ip := range host {
		if slices.ContainsFunc(a.cidrs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			have = append(have, ip)
		}
	}
	return usable(have)
}

// usable drops loopback, link-local and unspecified addresses and
// duplicates, and sorts.
func usable(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, ip := range addrs {
		ip = ip.Unmap()
		if !ip.IsValid() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// NodeAddresses returns a Node's primary addresses as kube-proxy picks them
// (k8s.io/component-helpers/node/util GetNodeHostIPs): the InternalIPs, else
// the ExternalIPs, then the first of each family.
func NodeAddresses(node *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != t {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			if !slices.ContainsFunc(out, func(o netip.Addr) bool { return o.Is4() == ip.Is4() }) {
				out = append(out, ip)
			}
		}
	}
	return out
}

// DefaultRouteAddresses returns the source address the host would use
// toward the default route of each family: the node's primary addresses
// when no Node object says. Connecting a UDP socket only looks the route
// up; no packet is sent.
func DefaultRouteAddresses() []netip.Addr {
	var out []netip.Addr
	for _, probe := range []string{"192.0.2.1:9", "[2001:db8::1]:9"} { // documentation addresses (RFC 5737, RFC 3849)
		c, err := net.Dial("udp", probe)
		if err != nil {
			continue // no route of this family
		}
		if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			out = append(out, ap.Addr().Unmap())
		}
		c.Close()
	}
	return usable(out)
}
