package resolver

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// build makes e's part of the table from its Service and slices: a
// ClusterIP step per Service port and ClusterIP, each followed by the
// steps serving it from outside, and a problem step for what cannot be
// served.
func (c *buildCache) build(e *svcEntry, policy targetPolicy, prev *Snapshot) {
	svcSlices := c.bySvc[e.id]
	e.rec = serviceRecord(e.svc, e.ips, svcSlices)
	e.steps = e.steps[:0]
	c.judge(e, svcSlices)
	if !c.servable(e) {
		return
	}
	b := portBuilder{c: c, e: e, slices: svcSlices, policy: policy, prev: prev, affinity: affinityTimeout(e.svc),
		local:         e.svc.Spec.InternalTrafficPolicy != nil && *e.svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		externalLocal: e.svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal}
	for _, p := range e.svc.Spec.Ports {
		proto, ok := e.checkPort(p)
		if !ok {
			continue
		}
		for _, ip := range e.ips {
			b.add(p, proto, ip)
		}
	}
}

// problem adds a problem step to e.
func (e *svcEntry) problem(reason string) {
	e.steps = append(e.steps, step{problem: &Problem{"Service " + e.id, reason}})
}

// judge files e under the addresses of its endpoints, which the target
// policy judges: e is built again when one of them changes hands.
func (c *buildCache) judge(e *svcEntry, svcSlices []*discoveryv1.EndpointSlice) {
	c.unjudge(e)
	e.addrs = sliceAddrs(e.addrs[:0], svcSlices)
	for _, a := range e.addrs {
		c.byEndpointAddr[a] = append(c.byEndpointAddr[a], e)
	}
}

// servable decides whether e has ports to serve at all, adding the
// problems that say why not, and those of ClusterIPs outside the service
// CIDRs and external addresses of a family it has no ClusterIP of.
func (c *buildCache) servable(e *svcEntry) bool {
	svc := e.svc
	switch {
	case e.skip != "":
		return false // headless or ExternalName: nothing to proxy
	case len(e.ips) == 0:
		e.problem(fmt.Sprintf("clusterIP %q is not an IP address", svc.Spec.ClusterIP))
		return false
	case len(svc.Spec.Ports) == 0:
		e.problem("has no ports; nothing to serve")
		return false
	}
	for _, ip := range e.ips {
		if len(c.serviceCIDRs) > 0 && !slices.ContainsFunc(c.serviceCIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			e.problem(fmt.Sprintf("clusterIP %s is outside every service CIDR; it is not routed to kubetun", ip))
		}
	}
	for _, a := range e.ext {
		if !hasFamily(e.ips, a) {
			e.problem(fmt.Sprintf("external address %s: the Service has no ClusterIP of its family; not served", a))
		}
	}
	return true
}

// checkPort returns p's protocol, or adds the problem that says why p is
// not served.
func (e *svcEntry) checkPort(p corev1.ServicePort) (Protocol, bool) {
	proto, ok := protocolOf(p.Protocol)
	switch {
	case !ok:
		e.problem(fmt.Sprintf("port %d: protocol %q is not supported", p.Port, p.Protocol))
	case proto == SCTP:
		e.problem(fmt.Sprintf("port %d: SCTP is not supported (gVisor has no SCTP)", p.Port))
	case p.Port <= 0 || p.Port > 65535:
		e.problem(fmt.Sprintf("port %d is not a port number (1-65535); ignored", p.Port))
	default:
		return proto, true
	}
	return 0, false
}

// portBuilder adds the steps of one Service's ports to its entry.
type portBuilder struct {
	c      *buildCache
	e      *svcEntry
	slices []*discoveryv1.EndpointSlice
	policy targetPolicy
	prev   *Snapshot

	local, externalLocal bool          // the traffic policies
	affinity             time.Duration // ClientIP session affinity; 0: none
}

// add adds the steps of Service port p on ClusterIP ip: its ClusterIP
// step, then the same port reached from outside the cluster, on its
// external addresses of ip's family and on the node port, with
// externalTrafficPolicy's endpoints.
func (b *portBuilder) add(p corev1.ServicePort, proto Protocol, ip netip.Addr) {
	e := b.e
	sp, probs := b.clusterPort(p, proto, ip)
	e.steps = append(e.steps, step{key: portKey{proto, netip.AddrPortFrom(ip, sp.Port)}, sp: sp, problems: probs, local: b.localReady(sp.Endpoints)})
	cluster := len(e.steps) - 1
	if len(e.ext) == 0 && p.NodePort <= 0 {
		return
	}
	extUsable := Usable(sp.Endpoints, b.externalLocal, b.c.topo)
	for _, a := range e.ext {
		if a.Is4() != ip.Is4() {
			continue
		}
		ekey := portKey{proto, netip.AddrPortFrom(a, sp.Port)}
		esp := sp.external(a, extUsable)
		if old, ok := b.prev.Lookup(proto, ekey.addr); ok && old.Service == e.id {
			esp.next.Store(old.next.Load())
		}
		e.steps = append(e.steps, step{key: ekey, sp: esp, outside: true, cluster: cluster})
	}
	if p.NodePort > 0 && p.NodePort <= 65535 {
		nkey := nodePortKey{proto, ip.Is6(), uint16(p.NodePort)}
		nsp := sp.external(ip, extUsable)
		nsp.NodePort = uint16(p.NodePort)
		if old, ok := b.prev.lookupNodePort(nkey); ok && old.Service == e.id {
			nsp.next.Store(old.next.Load())
		}
		e.steps = append(e.steps, step{sp: nsp, outside: true, cluster: cluster, node: true, nkey: nkey})
	}
}

// clusterPort makes the ServicePort of p on ip, with the endpoints its
// slices give and the policy allows, and the problems of those refused.
// Its round-robin cursor and affinity table carry over from prev's.
func (b *portBuilder) clusterPort(p corev1.ServicePort, proto Protocol, ip netip.Addr) (*ServicePort, []Problem) {
	eps, probs := endpointsFor(b.e.id, b.slices, p, ip, b.policy)
	sp := &ServicePort{
		Service:   b.e.id,
		Name:      p.Name,
		Protocol:  proto,
		ClusterIP: ip,
		Port:      uint16(p.Port),
		Endpoints: eps,
		usable:    Usable(eps, b.local, b.c.topo),
	}
	if b.affinity > 0 {
		sp.affinityTimeout = b.affinity
		sp.affinity = newAffinityTable(b.c.maxAffinity)
	}
	if old, ok := b.prev.Lookup(proto, netip.AddrPortFrom(ip, sp.Port)); ok && old.Service == b.e.id {
		sp.next.Store(old.next.Load())
		if sp.affinity != nil && old.affinity != nil {
			sp.affinity = old.affinity // clients stay where they were
		}
	}
	return sp, probs
}

// localReady returns the addresses of the ready endpoints on this node,
// for health checks.
func (b *portBuilder) localReady(eps []Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, ep := range eps {
		if ep.Ready && ep.NodeName != "" && ep.NodeName == b.c.topo.NodeName {
			out = append(out, ep.Addr.Addr())
		}
	}
	return out
}
