package resolver

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Problem is something Build skipped, worth telling the user once.
type Problem struct {
	Object string // "Service default/foo" or "EndpointSlice default/foo-abc"
	Reason string
}

func (p Problem) String() string { return p.Object + ": " + p.Reason }

// Option changes what Build does: see [Routed], [MaxAffinityClients],
// [ExternalIPRanges] and [RefuseExternal].
type Option func(*buildOptions)

type buildOptions struct {
	routed         []netip.Prefix
	serviceCIDRs   []netip.Prefix
	maxAffinity    int
	externalRanges []netip.Prefix
	refuseExternal func(netip.Addr) string
}

// Routed tells Build the ranges kubetun routes into its TUN (the service
// CIDRs, and any other address it serves). An endpoint inside one of them is
// refused: kubetun would dial into itself, and each connection would come
// back through the TUN as a new one.
func Routed(prefixes ...netip.Prefix) Option {
	return func(o *buildOptions) { o.routed = append(o.routed, prefixes...) }
}

// ServiceCIDRs tells Build the service CIDRs routed into the TUN: a
// ClusterIP outside all of them is reported as a problem, as the host never
// routes it to kubetun. Without it (nothing routed yet) nothing is reported.
// Being judged with its Service, it costs nothing for Services that did not
// change.
func ServiceCIDRs(prefixes ...netip.Prefix) Option {
	return func(o *buildOptions) { o.serviceCIDRs = append(o.serviceCIDRs, prefixes...) }
}

// MaxAffinityClients caps each ClientIP session affinity table at n clients
// (see [DefaultMaxAffinityClients]); n <= 0 keeps the default. A table that
// is carried over from the previous snapshot keeps the cap it was made with.
func MaxAffinityClients(n int) Option {
	return func(o *buildOptions) {
		if n > 0 {
			o.maxAffinity = n
		}
	}
}

// Build makes a Snapshot from Services and EndpointSlices, the way kube-proxy
// reads them: EndpointSlices join their Service through the
// kubernetes.io/service-name label; a Service port takes its endpoints from
// the slice ports with the same name and protocol, so a named targetPort
// resolves per endpoint.
//
// The result is a function of the set of objects, not of the order they come
// in: informers list from a map. Services are taken oldest first
// (creationTimestamp, then namespace/name), so when two claim the same
// ClusterIP, protocol and port, the older one serves it and the other is
// reported. The apiserver's allocator never hands out one ClusterIP twice,
// so this happens only with hand-written manifests; kube-proxy has no rule
// for it (its iptables mode writes one KUBE-SERVICES rule per Service port in
// map order, and the first match wins), so kubetun follows the rule the
// Kubernetes API uses for conflicts elsewhere, the oldest object wins.
// EndpointSlices are taken by namespace/name. A Service given twice is
// defined twice, and reported; an EndpointSlice given twice is one.
//
// Build takes the whole set: it is Update with a change set that says
// everything. prev, if not nil, is the snapshot being replaced: round-robin
// cursors and session affinity carry over, so frequent rebuilds do not
// favour the first endpoint or move clients.
//
// Build never fails: what it cannot use it skips and reports as a Problem,
// each once.
//
// topo says where this kubetun runs, for internalTrafficPolicy: Local and
// topology hints.
func Build(services []*corev1.Service, slices []*discoveryv1.EndpointSlice, prev *Snapshot, topo Topology, opts ...Option) (*Snapshot, []Problem) {
	return build(prev, everything(services, slices), topo, opts)
}

// Update makes the Snapshot that follows prev once changes are applied to
// the objects prev was built from: only the Services and EndpointSlices
// the change set names are worked out again, with what depends on them
// (the Services whose ClusterIP, external address or node port they share,
// the Services whose endpoints are at their addresses). A change set that
// says All replaces every object, as Build does. A change costs what
// changed, not the whole table (kube-proxy's proxiers sync likewise from
// their change trackers).
//
// The first Update given prev takes over what prev's build kept; another
// given the same prev, or different options, starts again from prev's
// objects. The objects belong to the caller, who must not modify one it
// gave, but give a changed copy.
func Update(prev *Snapshot, changes *Changes, topo Topology, opts ...Option) (*Snapshot, []Problem) {
	return build(prev, changeSetOf(changes), topo, opts)
}

// build applies cs to prev's objects and makes the next snapshot:
// incrementally with prev's cache, or, when cs says All or the cache
// cannot be taken over, with a new cache and every object.
func build(prev *Snapshot, cs changeSet, topo Topology, opts []Option) (*Snapshot, []Problem) {
	o := buildOptions{maxAffinity: DefaultMaxAffinityClients}
	for _, opt := range opts {
		opt(&o)
	}
	c := prev.take()
	if cs.all || c == nil || !c.fits(topo, o) {
		cs = prev.objectsOf().everything(cs)
		c = newBuildCache(topo, o)
	}
	c.refuseExternal = o.refuseExternal
	c.update(cs, prev)
	snap, problems := c.fold()
	snap.cache = c
	snap.objects = prev.objectsOf().with(cs)
	snap.pods.objects = &snap.objects
	return snap, problems
}

// byName returns slices sorted by namespace/name (then UID), without
// changing the caller's slice.
func byName(list []*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice {
	return slices.SortedFunc(slices.Values(list), func(a, b *discoveryv1.EndpointSlice) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
}

// conflicts collects the Service ports a Service lost to an older one, to
// report each pair of Services once, not once per port and address.
type conflicts struct {
	order []conflictPair
	ports map[conflictPair][]string
}

type conflictPair struct{ loser, winner *corev1.Service }

func newConflicts() *conflicts { return &conflicts{ports: make(map[conflictPair][]string)} }

func (c *conflicts) add(loser, winner *corev1.Service, port string) {
	k := conflictPair{loser, winner}
	if _, ok := c.ports[k]; !ok {
		c.order = append(c.order, k)
	}
	c.ports[k] = append(c.ports[k], port)
}

func (c *conflicts) problems() []Problem {
	var out []Problem
	for _, k := range c.order {
		why := "the older Service"
		if k.winner.CreationTimestamp.Equal(&k.loser.CreationTimestamp) {
			why = "as old, and first by namespace/name"
		}
		out = append(out, Problem{"Service " + k.loser.Namespace + "/" + k.loser.Name,
			fmt.Sprintf("%s already served by Service %s/%s (%s); ignored",
				strings.Join(c.ports[k], ", "), k.winner.Namespace, k.winner.Name, why)})
	}
	return out
}

// once drops repeated problems, keeping the first of each: an endpoint
// refused for one port of a Service is refused for each of its ports.
func once(problems []Problem) []Problem {
	seen := make(map[Problem]bool, len(problems))
	out := problems[:0]
	for _, p := range problems {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// clusterIPs returns the addresses a Service is served on, or a reason to
// skip it altogether.
func clusterIPs(svc *corev1.Service) (ips []netip.Addr, skip string) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, "ExternalName"
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	if len(raw) == 0 {
		return nil, "no clusterIP"
	}
	if raw[0] == corev1.ClusterIPNone {
		return nil, "headless"
	}
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, ""
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, ""
}

// affinityTimeout returns how long ClientIP session affinity binds a client,
// or 0 when the Service has none.
func affinityTimeout(svc *corev1.Service) time.Duration {
	if svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	c := svc.Spec.SessionAffinityConfig
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil || *c.ClientIP.TimeoutSeconds <= 0 {
		return DefaultAffinityTimeout
	}
	return time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
}

func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "": // the API defaults a missing protocol to TCP
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return 0, false
}

// endpointsFor collects the endpoints of Service port p of Service id on ip
// from the Service's slices: those of ip's family, through the slice port
// with the same name and protocol. The result is sorted and has no duplicate
// address (an endpoint may sit in two slices while the controller moves it;
// the readiest copy is kept, then the one in the first slice by name). What
// the policy refuses is left out and reported.
func endpointsFor(id string, svcSlices []*discoveryv1.EndpointSlice, p corev1.ServicePort, ip netip.Addr, policy targetPolicy) ([]Endpoint, []Problem) {
	proto := p.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	family := discoveryv1.AddressTypeIPv4
	if ip.Is6() {
		family = discoveryv1.AddressTypeIPv6
	}
	var (
		eps      []Endpoint
		problems []Problem
	)
	for _, es := range svcSlices {
		if es.AddressType != family {
			continue
		}
		if _, headless := es.Labels[corev1.IsHeadlessService]; headless {
			continue // kube-proxy never proxies to a headless Service's slices
		}
		sliceID := "EndpointSlice " + es.Namespace + "/" + es.Name
		port, bad := slicePort(es, p.Name, proto)
		if bad != "" {
			if len(es.Endpoints) > 0 {
				problems = append(problems, Problem{sliceID, fmt.Sprintf("%s; its endpoints do not serve Service %s port %d", bad, id, p.Port)})
			}
			continue
		}
		for _, e := range es.Endpoints {
			ep, problem := sliceEndpoint(id, sliceID, e, port, policy)
			if problem != nil {
				problems = append(problems, *problem)
				continue
			}
			eps = append(eps, ep)
		}
	}
	slices.SortStableFunc(eps, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(rank(b), rank(a)))
	})
	eps = slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Addr == b.Addr })
	return eps, problems
}

// sliceEndpoint makes the Endpoint of slice endpoint e on port, or says
// why Service id cannot use it.
func sliceEndpoint(id, sliceID string, e discoveryv1.Endpoint, port uint16, policy targetPolicy) (Endpoint, *Problem) {
	if len(e.Addresses) == 0 {
		return Endpoint{}, &Problem{sliceID, "an endpoint has no address; ignored"}
	}
	// Like kube-proxy, use the first address: the API says they are
	// fungible and consumers use the first.
	addr, err := netip.ParseAddr(e.Addresses[0])
	if err != nil {
		return Endpoint{}, &Problem{sliceID, fmt.Sprintf("address %q is not an IP address", e.Addresses[0])}
	}
	addr = addr.Unmap()
	if reason := policy.refuse(addr); reason != "" {
		return Endpoint{}, &Problem{"Service " + id, fmt.Sprintf("endpoint %s (%s) is %s; refused, never dialled", addr, sliceID, reason)}
	}
	ep := Endpoint{
		Addr:        netip.AddrPortFrom(addr, port),
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			ep.ForZones = append(ep.ForZones, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			ep.ForNodes = append(ep.ForNodes, n.Name)
		}
	}
	return ep, nil
}

// rank orders copies of one endpoint: a ready copy before a serving one
// before the rest, so the copy that can take traffic is the one kept.
func rank(e Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving:
		return 1
	}
	return 0
}

// slicePort finds the port number a slice gives for a Service port, or says
// why it gives none.
func slicePort(es *discoveryv1.EndpointSlice, name string, proto corev1.Protocol) (uint16, string) {
	for _, p := range es.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		pproto := corev1.ProtocolTCP
		if p.Protocol != nil {
			pproto = *p.Protocol
		}
		if pname != name || pproto != proto {
			continue
		}
		if p.Port == nil {
			return 0, fmt.Sprintf("port %q (%s) has no number", name, proto)
		}
		if *p.Port <= 0 || *p.Port > 65535 {
			return 0, fmt.Sprintf("port %q (%s) is %d, not a port number (1-65535)", name, proto, *p.Port)
		}
		return uint16(*p.Port), ""
	}
	return 0, fmt.Sprintf("has no port named %q (%s)", name, proto)
}

// targetPolicy says which endpoints kubetun never dials.
type targetPolicy struct {
	routed     []netip.Prefix        // what kubetun routes into its TUN
	clusterIPs map[netip.Addr]string // every ClusterIP, to the Service that has it
	external   map[netip.Addr]string // every served external address, to its Service
}

// refuse names why kubetun must not dial a, or returns "". Addresses on the
// node itself other than loopback (a host-network endpoint such as the
// apiserver behind the kubernetes Service) are allowed, as kube-proxy allows
// them.
func (p targetPolicy) refuse(a netip.Addr) string {
	if svc, ok := p.clusterIPs[a]; ok {
		return "the ClusterIP of Service " + svc + " (kubetun would dial itself)"
	}
	if svc, ok := p.external[a]; ok {
		return "an external address of Service " + svc + ", which kubetun routes into its TUN (kubetun would dial itself)"
	}
	for _, r := range p.routed {
		if r.Contains(a) {
			return "inside " + r.String() + ", which kubetun routes into its TUN (kubetun would dial itself)"
		}
	}
	// CVE-2020-8558: a Service must never become a way into the node's own
	// loopback or link-local services.
	return refuseAddr(a)
}
