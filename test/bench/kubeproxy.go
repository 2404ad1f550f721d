package main

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// kube-proxy's own kernel path, as a baseline: the bench programs the seed's
// Service into a separate test bed's node namespace the way kube-proxy's
// iptables and nftables modes write it, so a client there reaches the pods
// through the kernel's DNAT and conntrack. The rules follow
// pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go in
// https://github.com/kubernetes/kubernetes: the chains and rules a forwarded
// packet to a ClusterIP meets, with kube-proxy's names, comments and hashes.
// What only NodePorts, LoadBalancers, affinity or local traffic policies use
// is left out: the seed's Service has none of them.

// kpService is one Service as kube-proxy sees it.
type kpService struct {
	Namespace, Name string
	ClusterIP       netip.Addr
	// ClusterCIDR is the pods' network: traffic from outside it to a
	// ClusterIP is masqueraded (kube-proxy's --cluster-cidr local detector).
	ClusterCIDR netip.Prefix
	// ServiceCIDR is the service network, which nftables mode drops
	// traffic to when no Service port matches.
	ServiceCIDR netip.Prefix
	Ports       []kpPort
}

// kpPort is one Service port and its ready endpoints.
type kpPort struct {
	Name      string // the port's name; "" for a Service's only port
	Port      int
	Endpoints []netip.AddrPort
}

// masqMark is kube-proxy's default --masquerade-bit 14.
const masqMark = "0x4000"

// portName is kube-proxy's ServicePortName.String(): "ns/name:port", or
// "ns/name" for an unnamed port.
func (s kpService) portName(p kpPort) string {
	n := s.Namespace + "/" + s.Name
	if p.Name != "" {
		n += ":" + p.Name
	}
	return n
}

// base32Hash is the start of the base32 SHA-256 of s, kube-proxy's chain
// name hash.
func base32Hash(s string, n int) string {
	h := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(h[:])[:n]
}

// iptablesSVCChain is iptables mode's servicePortChainName.
func iptablesSVCChain(portName, proto string) string {
	return "KUBE-SVC-" + base32Hash(portName+proto, 16)
}

// iptablesSEPChain is iptables mode's servicePortEndpointChainName.
func iptablesSEPChain(portName, proto, endpoint string) string {
	return "KUBE-SEP-" + base32Hash(portName+proto+endpoint, 16)
}

// iptablesProbability is iptables mode's computeProbability: endpoint i of n
// is taken with probability 1/(n-i), the last one always.
func iptablesProbability(n int) string {
	return fmt.Sprintf("%0.10f", 1.0/float64(n))
}

// iptablesRules renders s as iptables-restore input, as iptables mode
// writes it (it runs iptables-restore --noflush with this shape of input).
func iptablesRules(s kpService) string {
	const proto = "tcp"
	var chains, rules strings.Builder
	for _, c := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		fmt.Fprintf(&chains, ":%s - [0:0]\n", c)
	}
	rules.WriteString(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark ` + masqMark + `/` + masqMark + ` -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark ` + masqMark + `
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark ` + masqMark + `
`)
	var svcRules, sepRules strings.Builder
	for _, p := range s.Ports {
		name := s.portName(p)
		svc := iptablesSVCChain(name, proto)
		fmt.Fprintf(&chains, ":%s - [0:0]\n", svc)
		match := fmt.Sprintf("-m tcp -p tcp -d %s/32 --dport %d", s.ClusterIP, p.Port)
		fmt.Fprintf(&rules, "-A KUBE-SERVICES -m comment --comment \"%s cluster IP\" %s -j %s\n", name, match, svc)
		fmt.Fprintf(&svcRules, "-A %s -m comment --comment \"%s cluster IP\" %s ! -s %s -j KUBE-MARK-MASQ\n", svc, name, match, s.ClusterCIDR)
		for i, ep := range p.Endpoints {
			sep := iptablesSEPChain(name, proto, ep.String())
			fmt.Fprintf(&chains, ":%s - [0:0]\n", sep)
			stat := ""
			if i < len(p.Endpoints)-1 {
				stat = " -m statistic --mode random --probability " + iptablesProbability(len(p.Endpoints)-i)
			}
			fmt.Fprintf(&svcRules, "-A %s -m comment --comment \"%s -> %s\"%s -j %s\n", svc, name, ep, stat, sep)
			fmt.Fprintf(&sepRules, "-A %s -m comment --comment %s -s %s/32 -j KUBE-MARK-MASQ\n", sep, name, ep.Addr())
			fmt.Fprintf(&sepRules, "-A %s -m comment --comment %s -m tcp -p tcp -j DNAT --to-destination %s\n", sep, name, ep)
		}
	}
	rules.WriteString(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
`)
	rules.WriteString(svcRules.String())
	rules.WriteString(sepRules.String())

	filter := `*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark ` + masqMark + `/` + masqMark + ` -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
`
	return filter + "*nat\n" + chains.String() + rules.String() + "COMMIT\n"
}

// nftablesChainName is nftables mode's hashAndTruncate: the name prefixed
// with a hash of itself (never truncated for names this short).
func nftablesChainName(name string) string {
	return base32Hash(name, 8) + "-" + name
}

// nftablesServiceChain is "service-" + servicePortChainNameBase.
func nftablesServiceChain(s kpService, p kpPort, proto string) string {
	return "service-" + nftablesChainName(fmt.Sprintf("%s/%s/%s/%s", s.Namespace, s.Name, proto, p.Name))
}

// nftablesEndpointChain is "endpoint-" + servicePortEndpointChainNameBase.
func nftablesEndpointChain(s kpService, p kpPort, proto string, ep netip.AddrPort) string {
	return "endpoint-" + nftablesChainName(fmt.Sprintf("%s/%s/%s/%s__%s/%d", s.Namespace, s.Name, proto, p.Name, ep.Addr(), ep.Port()))
}

// nftablesRules renders s as `nft -f` input in table ip kube-proxy, as
// nftables mode's transaction writes it (through sigs.k8s.io/knftables).
func nftablesRules(s kpService) string {
	const proto = "tcp"
	var b strings.Builder
	add := func(format string, args ...any) {
		fmt.Fprintf(&b, format+"\n", args...)
	}
	add(`add table ip kube-proxy { comment "rules for kube-proxy" ; }`)
	for _, c := range []struct{ name, hook string }{
		{"filter-prerouting", "type filter hook prerouting priority -110"},
		{"filter-forward", "type filter hook forward priority -10"},
		{"nat-prerouting", "type nat hook prerouting priority -100"},
		{"nat-output", "type nat hook output priority -100"},
		{"nat-postrouting", "type nat hook postrouting priority 100"},
	} {
		add("add chain ip kube-proxy %s { %s ; }", c.name, c.hook)
	}
	for _, c := range []string{"mark-for-masquerade", "masquerading", "services", "firewall-check", "service-endpoints-check", "cluster-ips-check"} {
		add("add chain ip kube-proxy %s", c)
	}
	add(`add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }`)
	for _, m := range []struct{ name, typ, comment string }{
		{"firewall-ips", "ipv4_addr . inet_proto . inet_service : verdict", "destinations that are subject to LoadBalancerSourceRanges"},
		{"no-endpoint-services", "ipv4_addr . inet_proto . inet_service : verdict", "vmap to drop or reject packets to services with no endpoints"},
		{"service-ips", "ipv4_addr . inet_proto . inet_service : verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic"},
		{"service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic"},
	} {
		add(`add map ip kube-proxy %s { type %s ; comment "%s" ; }`, m.name, m.typ, m.comment)
	}
	add("add rule ip kube-proxy filter-prerouting ct state new jump firewall-check")
	add("add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check")
	add("add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check")
	add("add rule ip kube-proxy nat-prerouting jump services")
	add("add rule ip kube-proxy nat-output jump services")
	add("add rule ip kube-proxy nat-postrouting jump masquerading")
	add("add rule ip kube-proxy mark-for-masquerade mark set mark or %s", masqMark)
	add("add rule ip kube-proxy masquerading mark and %s == 0 return", masqMark)
	add("add rule ip kube-proxy masquerading mark set mark xor %s", masqMark)
	add("add rule ip kube-proxy masquerading masquerade fully-random")
	add("add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips")
	add("add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
	add("add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject")
	add("add rule ip kube-proxy cluster-ips-check ip daddr %s drop", s.ServiceCIDR)
	add("add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips")
	add("add rule ip kube-proxy services fib daddr type local meta l4proto . th dport vmap @service-nodeports")
	add("add element ip kube-proxy cluster-ips { %s }", s.ClusterIP)
	for _, p := range s.Ports {
		svc := nftablesServiceChain(s, p, proto)
		add("add chain ip kube-proxy %s", svc)
		var eps []string
		for i, ep := range p.Endpoints {
			chain := nftablesEndpointChain(s, p, proto, ep)
			add("add chain ip kube-proxy %s", chain)
			add("add rule ip kube-proxy %s ip saddr %s jump mark-for-masquerade", chain, ep.Addr())
			add("add rule ip kube-proxy %s meta l4proto %s dnat to %s", chain, proto, ep)
			eps = append(eps, fmt.Sprintf("%d : goto %s", i, chain))
		}
		add("add rule ip kube-proxy %s ip daddr %s %s dport %d ip saddr != %s jump mark-for-masquerade", svc, s.ClusterIP, proto, p.Port, s.ClusterCIDR)
		if len(eps) > 0 {
			add("add rule ip kube-proxy %s numgen random mod %d vmap { %s }", svc, len(eps), strings.Join(eps, " , "))
		}
		add("add element ip kube-proxy service-ips { %s . %s . %d : goto %s }", s.ClusterIP, proto, p.Port, svc)
	}
	return b.String()
}
