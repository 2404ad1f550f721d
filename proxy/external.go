package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubetun/kubetun/resolver"
)

// routeSnapshotter is implemented by a Dataplane that can check many
// prefixes against one dump of the host's routes (the host's).
type routeSnapshotter interface {
	OverlapChecker() (func([]netip.Prefix) error, error)
}

// refuseExternalFunc returns the check of one table update for external
// addresses: why one must not be routed into the TUN — it is one of the
// node's own (a local route), or another route of the host leads there
// already. The host's routes are read once for the update, when the first
// address is checked: a dump per address cost a thousand dumps per update
// with a thousand load-balancer IPs.
func (p *Proxy) refuseExternalFunc() func(netip.Addr) string {
	if p.dp == nil {
		return func(netip.Addr) string { return "" }
	}
	var (
		check func([]netip.Prefix) error
		done  bool
	)
	return func(a netip.Addr) string {
		if !done {
			done = true
			check = p.dp.CheckOverlap
			if rs, ok := p.dp.(routeSnapshotter); ok {
				if c, err := rs.OverlapChecker(); err == nil {
					check = c
				}
			}
		}
		pfx := netip.PrefixFrom(a, a.BitLen())
		if err := check([]netip.Prefix{pfx}); err != nil {
			// CheckOverlap speaks of service CIDRs; say it of the address.
			return strings.TrimPrefix(err.Error(), "service CIDR "+pfx.String()+" ")
		}
		return ""
	}
}

// applyExternal routes snap's external addresses into the TUN, next to the
// service CIDRs, and opens and closes node ports and health check node
// ports to match snap. It returns what cannot be served, for
// reportProblems, and whether the external addresses routed changed.
func (p *Proxy) applyExternal(snap *resolver.Snapshot) ([]resolver.Problem, bool) {
	if p.cfg.External == nil || p.dp == nil || p.nodePorts == nil {
		return nil, false
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

	addrs, err := p.nodeAddresses()
	if err != nil {
		problems = append(problems, resolver.Problem{Object: "node ports", Reason: err.Error()})
	}
	if len(addrs) == 0 && len(snap.NodePorts())+len(snap.HealthChecks()) > 0 {
		problems = append(problems, resolver.Problem{Object: "node ports",
			Reason: fmt.Sprintf("no node address matches --nodeport-addresses %s; node ports are not served", p.cfg.External.NodePortAddresses)})
	}
	return append(problems, p.nodePorts.Reconcile(snap, addrs)...), changed
}

// nodeAddresses are the node's addresses node ports listen on now.
func (p *Proxy) nodeAddresses() ([]netip.Addr, error) {
	ext := p.cfg.External
	if p.addrs != nil {
		return ext.NodePortAddresses.ResolveFrom(ext.Primary, p.addrs.Addrs()), nil
	}
	return ext.NodePortAddresses.Resolve(ext.Primary)
}

// nodeAddressesChanged opens and closes node ports for the node's
// addresses now, called by the address watch when they change.
func (p *Proxy) nodeAddressesChanged() {
	addrs, _ := p.nodeAddresses()
	p.log.Info("node addresses changed", "nodeport-addresses", addrs)
	for _, pr := range p.nodePorts.Reconcile(p.table.Load(), addrs) {
		p.log.Warn(pr.String())
	}
}
