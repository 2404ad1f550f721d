package testbed

import (
	"fmt"
	"net/netip"
)

// The test bed's IPv6 numbers, next to the seed's IPv4 ones.
const (
	// ServiceCIDR6 is the IPv6 service network.
	ServiceCIDR6 = "fd00:10:96::/112"
	// ClusterIP6 is the test Service's IPv6 address, in ServiceCIDR6.
	ClusterIP6 = "fd00:10:96::152"
)

// IPv6Of returns the IPv6 address AddIPv6 gives h: fd00:10:N::2 for
// 10.0.N.2 (N written in decimal, read as hex: subnet 12 is fd00:10:12::).
func IPv6Of(h *Host) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:10:%d::2", h.IP.As4()[2]))
}

// GatewayIPv6Of returns the node side's IPv6 address on h's link,
// fd00:10:N::1.
func GatewayIPv6Of(h *Host) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:10:%d::1", h.IP.As4()[2]))
}

// AddIPv6 makes h dual-stack: IPv6 forwarding on in the node namespace,
// fd00:10:N::2/64 on h's eth0, fd00:10:N::1/64 on the node side, and an
// IPv6 default route via the node side. Both addresses skip duplicate
// address detection (nodad), so they are usable at once.
//
// A test that wants an IPv6-only client or pod simply uses only IPv6Of(h):
// h keeps its IPv4 address, but nothing routes IPv4 service traffic when
// kubetun serves only ServiceCIDR6.
//
// Subnet 96 is refused: fd00:10:96::/64 would contain ServiceCIDR6, and h
// would then look up ClusterIPs on its link instead of routing them to the
// node (the same trap as the seed's 10.0.0.0/14, see the package comment).
func (tb *Testbed) AddIPv6(h *Host) error {
	if h.IP.As4()[2] == 96 {
		return fmt.Errorf("testbed: AddIPv6 %s: subnet 96 would put fd00:10:96::/64 around the service CIDR %s", h.Name, ServiceCIDR6)
	}
	ip, gw := IPv6Of(h), GatewayIPv6Of(h)
	// /proc/sys/net belongs to the namespace of the process that opens it.
	if err := tb.setup("ip", "netns", "exec", tb.Node, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", tb.Node, "-6", "addr", "add", gw.String() + "/64", "dev", h.NodeLink, "nodad"},
		{"-n", h.Namespace, "-6", "addr", "add", ip.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", h.Namespace, "-6", "route", "add", "default", "via", gw.String(), "dev", "eth0"},
	}
	for _, args := range steps {
		if err := tb.ip(args...); err != nil {
			return err
		}
	}
	tb.logf("testbed %s: host %s: %s/64, default via %s (IPv6 forwarding on in the node)", tb.Prefix, h.Name, ip, gw)
	return nil
}

// EndpointOf6 returns h's IPv6 address as a ready Endpoint on the node.
func EndpointOf6(h *Host) Endpoint {
	return Endpoint{IP: IPv6Of(h), Pod: h.Name, Node: NodeName}
}
