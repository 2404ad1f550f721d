package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubetun/kubetun/resolver"
)

// refuseExternal says why an external address must not be routed into the
// TUN: it is one of the node's own (a local route), or another route of the
// host leads there already.
func (p *Proxy) refuseExternal(a netip.Addr) string {
	if p.dp == nil {
		return ""
	}
	pfx := netip.PrefixFrom(a, a.BitLen())
	if err := p.dp.CheckOverlap([]netip.Prefix{pfx}); err != nil {
		// CheckOverlap speaks of service CIDRs; say it of the address.
		return strings.TrimPrefix(err.Error(), "service CIDR "+pfx.String()+" ")
	}
	return ""
}

// applyExternal routes snap's external addresses into the TUN, next to the
// service CIDRs, and opens and closes node ports and health check node
// ports to match snap. It returns what cannot be served, for
// reportProblems.
func (p *Proxy) applyExternal(snap *resolver.Snapshot) []resolver.Problem {
	if p.cfg.External == nil || p.dp == nil || p.nodePorts == nil {
		return nil
	}
	var problems []resolver.Problem
	var ext []netip.Prefix
	for _, a := range snap.ExternalIPs() {
		ext = append(ext, netip.PrefixFrom(a, a.BitLen()))
	}
	p.mu.Lock()
	changed := !slices.Equal(ext, p.external)
	p.external = ext
	cidrs := p.cidrs
	p.mu.Unlock()
	// Before the service CIDRs are routed, setRoutes routes these with them.
	if changed && cidrs != nil {
		if err := p.dp.SetRoutes(p.routedPrefixes(cidrs)); err != nil {
			problems = append(problems, resolver.Problem{Object: "external IPs", Reason: fmt.Sprintf("routing %v: %v", ext, err)})
		}
	}

	addrs, err := p.cfg.External.NodePortAddresses.Resolve(p.cfg.External.Primary)
	if err != nil {
		problems = append(problems, resolver.Problem{Object: "node ports", Reason: err.Error()})
	}
	if len(addrs) == 0 && len(snap.NodePorts())+len(snap.HealthChecks()) > 0 {
		problems = append(problems, resolver.Problem{Object: "node ports",
			Reason: fmt.Sprintf("no node address matches --nodeport-addresses %s; node ports are not served", p.cfg.External.NodePortAddresses)})
	}
	return append(problems, p.nodePorts.Reconcile(snap, addrs)...)
}
