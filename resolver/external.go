package resolver

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// ExternalIPRanges limits the externalIPs Build serves to those inside
// prefixes; without it every externalIP is served, as kube-proxy serves them.
// Any Service author may claim any address as an externalIP and so capture
// its traffic on every node (CVE-2020-8554,
// https://github.com/kubernetes/kubernetes/issues/97076); the ranges keep
// that to addresses set aside for it. Load-balancer ingress IPs are written
// into a Service's status by the cloud's controller, not by its author, and
// are not limited.
func ExternalIPRanges(prefixes ...netip.Prefix) Option {
	return func(o *buildOptions) { o.externalRanges = append(o.externalRanges, prefixes...) }
}

// RefuseExternal gives Build a check for each external address (externalIP or
// load-balancer ingress IP): a non-empty reason refuses it, and Build reports
// it. The caller knows what Build does not: the node's own addresses and the
// host's routes, which an address routed into the TUN would take over.
func RefuseExternal(refuse func(netip.Addr) string) Option {
	return func(o *buildOptions) { o.refuseExternal = refuse }
}

// HealthCheck is a Service's healthCheckNodePort (type LoadBalancer with
// externalTrafficPolicy: Local) and what it answers.
type HealthCheck struct {
	Namespace, Name string
	Port            uint16
	// LocalEndpoints counts the Service's ready endpoints on this node, by
	// address, as kube-proxy counts them (an address serving two ports is
	// one endpoint).
	LocalEndpoints int
}

// NodePort is one node port of a Service, for the listeners.
type NodePort struct {
	Protocol Protocol
	Port     uint16
	Service  string // namespace/name
}

// nodePortKey identifies a node port: a listener on an IPv4 node address
// forwards to IPv4 endpoints, one on an IPv6 address to IPv6 ones, as
// kube-proxy's proxier of each family does.
type nodePortKey struct {
	proto Protocol
	ipv6  bool
	port  uint16
}

// external returns a copy of sp reached from outside the cluster on addr,
// with the endpoints externalTrafficPolicy allows. It shares sp's ClientIP
// affinity table: a client keeps its endpoint whichever address it uses, as
// with kube-proxy, whose affinity is kept per endpoint.
func (sp *ServicePort) external(addr netip.Addr, usable []Endpoint) *ServicePort {
	return &ServicePort{
		Service:         sp.Service,
		Name:            sp.Name,
		Protocol:        sp.Protocol,
		ClusterIP:       addr,
		Port:            sp.Port,
		External:        true,
		Endpoints:       sp.Endpoints,
		usable:          usable,
		affinity:        sp.affinity,
		affinityTimeout: sp.affinityTimeout,
	}
}

// externalAddrs returns the external addresses svc is served on: its
// externalIPs and, for type LoadBalancer, the ingress IPs whose ipMode is VIP
// or unset (with Proxy the load balancer itself proxies, and sends to the
// node port: kube-proxy leaves those addresses alone too). What the options
// refuse is reported.
func externalAddrs(svc *corev1.Service, o buildOptions) ([]netip.Addr, []Problem) {
	id := "Service " + svc.Namespace + "/" + svc.Name
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	var (
		out      []netip.Addr
		problems []Problem
	)
	add := func(what, s string, limited bool) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			problems = append(problems, Problem{id, fmt.Sprintf("%s %q is not an IP address; ignored", what, s)})
			return
		}
		a = a.Unmap()
		if limited && len(o.externalRanges) > 0 && !slices.ContainsFunc(o.externalRanges, func(p netip.Prefix) bool { return p.Contains(a) }) {
			problems = append(problems, Problem{id, fmt.Sprintf("%s %s is outside the allowed external IP ranges %v; not served", what, a, o.externalRanges)})
			return
		}
		if reason := refuseAddr(a); reason != "" {
			problems = append(problems, Problem{id, fmt.Sprintf("%s %s is %s; not served", what, a, reason)})
			return
		}
		if o.refuseExternal != nil {
			if reason := o.refuseExternal(a); reason != "" {
				problems = append(problems, Problem{id, fmt.Sprintf("%s %s: %s; not served", what, a, reason)})
				return
			}
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, s := range svc.Spec.ExternalIPs {
		add("externalIP", s, true)
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && len(svc.Spec.LoadBalancerSourceRanges) > 0 && len(svc.Status.LoadBalancer.Ingress) > 0 {
		// kube-proxy drops packets to the load-balancer IPs from outside
		// these ranges; kubetun has no such filter yet, and serving the
		// addresses to everyone would open what the author closed.
		problems = append(problems, Problem{id, "loadBalancerSourceRanges are not enforced by kubetun, so its load-balancer ingress IPs are not served (its node ports are)"})
	} else if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" || ing.IPMode != nil && *ing.IPMode != corev1.LoadBalancerIPModeVIP {
				continue
			}
			add("load-balancer ingress IP", ing.IP, false)
		}
	}
	return out, problems
}

// refuseAddr names why an address can be neither an endpoint kubetun dials
// nor an external address it routes into its TUN, or returns "": loopback,
// link-local, unspecified and multicast addresses belong to the host.
func refuseAddr(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsUnspecified():
		return "an unspecified address"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast address"
	}
	return ""
}

// RefuseHostAddr names why kubetun never dials a, whatever its table holds:
// a loopback, link-local, unspecified or multicast address (CVE-2020-8558);
// "" if it may. It is the part of the target policy Build applies to every
// endpoint that needs no table, for dials made outside one (kubetun
// connect's probe of EndpointSlice addresses). a must be unmapped.
func RefuseHostAddr(a netip.Addr) string { return refuseAddr(a) }

// LookupNodePort returns the Service port behind node port port, reached on
// the node address local: local's family chooses the endpoints.
func (s *Snapshot) LookupNodePort(proto Protocol, local netip.Addr, port uint16) (*ServicePort, bool) {
	return s.lookupNodePort(nodePortKey{proto, local.Unmap().Is6(), port})
}

func (s *Snapshot) lookupNodePort(k nodePortKey) (*ServicePort, bool) {
	if s == nil {
		return nil, false
	}
	return s.nodePorts.get(nodePortShard(k), k)
}

// NodePorts returns every node port to listen on, sorted by protocol and
// port. The caller must not modify the returned slice.
func (s *Snapshot) NodePorts() []NodePort {
	if s == nil {
		return nil
	}
	return s.nodePortList
}

// ExternalIPs returns the external addresses served (externalIPs and
// load-balancer ingress IPs), sorted: each must be routed into the TUN. The
// caller must not modify the returned slice.
func (s *Snapshot) ExternalIPs() []netip.Addr {
	if s == nil {
		return nil
	}
	return s.externalIPs
}

// HealthChecks returns the health check node ports to serve, sorted by port.
// The caller must not modify the returned slice.
func (s *Snapshot) HealthChecks() []HealthCheck {
	if s == nil {
		return nil
	}
	return s.healthChecks
}

// hasFamily reports whether ips has an address of a's family.
func hasFamily(ips []netip.Addr, a netip.Addr) bool {
	return slices.ContainsFunc(ips, func(ip netip.Addr) bool { return ip.Is4() == a.Is4() })
}
