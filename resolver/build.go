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
// EndpointSlices are taken by namespace/name.
//
// prev, if not nil, is the snapshot being replaced: round-robin cursors and
// session affinity carry over, so frequent rebuilds do not favour the first
// endpoint or move clients.
//
// Build never fails: what it cannot use it skips and reports as a Problem,
// each once.
//
// topo says where this kubetun runs, for internalTrafficPolicy: Local and
// topology hints.
func Build(services []*corev1.Service, slices []*discoveryv1.EndpointSlice, prev *Snapshot, topo Topology, opts ...Option) (*Snapshot, []Problem) {
	o := buildOptions{maxAffinity: DefaultMaxAffinityClients}
	for _, opt := range opts {
		opt(&o)
	}
	services = oldestFirst(services)
	slices = byName(slices)

	var problems []Problem
	bySvc := make(map[string][]*discoveryv1.EndpointSlice)
	for _, es := range slices {
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			problems = append(problems, Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
				"no " + discoveryv1.LabelServiceName + " label, so it belongs to no Service"})
			continue
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			problems = append(problems, Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
				fmt.Sprintf("addressType %q is not served (only IPv4 and IPv6 are)", es.AddressType)})
			continue
		}
		key := es.Namespace + "/" + name
		bySvc[key] = append(bySvc[key], es)
	}

	// Every ClusterIP, for the target policy: a Service whose endpoint is a
	// ClusterIP (its own or another's) would send kubetun's dial back into
	// kubetun, even before the service CIDRs are known.
	owners := make(map[netip.Addr]string)
	for _, svc := range services {
		ips, _ := clusterIPs(svc)
		for _, ip := range ips {
			if _, taken := owners[ip]; !taken {
				owners[ip] = svc.Namespace + "/" + svc.Name
			}
		}
	}
	// The external addresses each Service is served on: decided before any
	// endpoint, since an endpoint on one of them would loop like one on a
	// ClusterIP.
	external := make(map[string][]netip.Addr)
	externalOwners := make(map[netip.Addr]string)
	for _, svc := range services {
		id := svc.Namespace + "/" + svc.Name
		if _, done := external[id]; done {
			continue // defined twice: the older definition is the one used
		}
		if _, skip := clusterIPs(svc); skip != "" {
			continue // headless or ExternalName: nothing to proxy
		}
		addrs, probs := externalAddrs(svc, o)
		problems = append(problems, probs...)
		external[id] = addrs
		for _, a := range addrs {
			if _, taken := externalOwners[a]; !taken {
				externalOwners[a] = id
			}
		}
	}
	policy := targetPolicy{routed: o.routed, clusterIPs: owners, external: externalOwners}

	snap := &Snapshot{
		ports:      make(map[portKey]*ServicePort),
		ips:        make(map[netip.Addr]bool),
		names:      make(map[nameKey]*ServiceRecord),
		byIP:       make(map[netip.Addr]*ServiceRecord),
		byEndpoint: make(map[netip.Addr]endpointRef),
		namespaces: make(map[string]struct{}),
		pods:       podsByIP(slices),
		nodePorts:  make(map[nodePortKey]*ServicePort),
	}
	owner := make(map[portKey]*corev1.Service)             // who serves each port, for conflicts
	nodePortOwner := make(map[nodePortKey]*corev1.Service) // who serves each node port
	conflicts := newConflicts()
	for _, svc := range services {
		id := svc.Namespace + "/" + svc.Name
		if _, dup := snap.names[nameKey{svc.Namespace, svc.Name}]; dup {
			problems = append(problems, Problem{"Service " + id, "defined twice; using the older definition"})
			continue
		}
		ips, skip := clusterIPs(svc)
		rec := serviceRecord(svc, ips, bySvc[id])
		snap.names[nameKey{svc.Namespace, svc.Name}] = rec
		snap.namespaces[svc.Namespace] = struct{}{}
		for _, ip := range rec.ClusterIPs {
			if _, taken := snap.byIP[ip]; !taken {
				snap.byIP[ip] = rec // the oldest Service names its ClusterIP
			}
		}
		for _, ep := range rec.Endpoints {
			if _, taken := snap.byEndpoint[ep.Addr]; !taken {
				snap.byEndpoint[ep.Addr] = endpointRef{rec, ep}
			}
		}
		if skip != "" {
			continue // headless or ExternalName: nothing to proxy
		}
		if len(ips) == 0 {
			problems = append(problems, Problem{"Service " + id, fmt.Sprintf("clusterIP %q is not an IP address", svc.Spec.ClusterIP)})
			continue
		}
		if len(svc.Spec.Ports) == 0 {
			problems = append(problems, Problem{"Service " + id, "has no ports; nothing to serve"})
			continue
		}
		local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		affinity := affinityTimeout(svc)
		served := false
		localReady := make(map[netip.Addr]bool) // for the health check node port
		for _, a := range external[id] {
			if !hasFamily(ips, a) {
				problems = append(problems, Problem{"Service " + id,
					fmt.Sprintf("external address %s: the Service has no ClusterIP of its family; not served", a)})
			}
		}
		for _, p := range svc.Spec.Ports {
			proto, ok := protocolOf(p.Protocol)
			if !ok {
				problems = append(problems, Problem{"Service " + id, fmt.Sprintf("port %d: protocol %q is not supported", p.Port, p.Protocol)})
				continue
			}
			if proto == SCTP {
				problems = append(problems, Problem{"Service " + id, fmt.Sprintf("port %d: SCTP is not supported (gVisor has no SCTP)", p.Port)})
				continue
			}
			if p.Port <= 0 || p.Port > 65535 {
				problems = append(problems, Problem{"Service " + id, fmt.Sprintf("port %d is not a port number (1-65535); ignored", p.Port)})
				continue
			}
			for _, ip := range ips {
				key := portKey{proto, netip.AddrPortFrom(ip, uint16(p.Port))}
				if old, ok := owner[key]; ok {
					conflicts.add(svc, old, fmt.Sprintf("%s %s", proto, key.addr))
					continue
				}
				eps, probs := endpointsFor(id, bySvc[id], p, ip, policy)
				problems = append(problems, probs...)
				sp := &ServicePort{
					Service:   id,
					Name:      p.Name,
					Protocol:  proto,
					ClusterIP: ip,
					Port:      uint16(p.Port),
					Endpoints: eps,
					usable:    Usable(eps, local, topo),
				}
				if affinity > 0 {
					sp.affinityTimeout = affinity
					sp.affinity = newAffinityTable(o.maxAffinity)
				}
				if old, ok := prev.Lookup(proto, key.addr); ok && old.Service == id {
					sp.next.Store(old.next.Load())
					if sp.affinity != nil && old.affinity != nil {
						sp.affinity = old.affinity // clients stay where they were
					}
				}
				owner[key] = svc
				snap.ports[key] = sp
				snap.ips[ip] = snap.ips[ip] || len(sp.usable) > 0
				snap.endpoints += len(sp.usable)
				served = true
				for _, ep := range eps {
					if ep.Ready && ep.NodeName != "" && ep.NodeName == topo.NodeName {
						localReady[ep.Addr.Addr()] = true
					}
				}

				// The same port reached from outside the cluster: on its
				// external addresses of ip's family and on the node port,
				// with externalTrafficPolicy's endpoints.
				extUsable := Usable(eps, externalLocal, topo)
				for _, a := range external[id] {
					if a.Is4() != ip.Is4() {
						continue
					}
					ekey := portKey{proto, netip.AddrPortFrom(a, uint16(p.Port))}
					if old, ok := owner[ekey]; ok {
						conflicts.add(svc, old, fmt.Sprintf("%s %s", proto, ekey.addr))
						continue
					}
					esp := sp.external(a, extUsable)
					if old, ok := prev.Lookup(proto, ekey.addr); ok && old.Service == id {
						esp.next.Store(old.next.Load())
					}
					owner[ekey] = svc
					snap.ports[ekey] = esp
					snap.ips[a] = snap.ips[a] || len(esp.usable) > 0
				}
				if p.NodePort > 0 && p.NodePort <= 65535 {
					nkey := nodePortKey{proto, ip.Is6(), uint16(p.NodePort)}
					if old, ok := nodePortOwner[nkey]; ok {
						conflicts.add(svc, old, fmt.Sprintf("%s nodePort %d", proto, p.NodePort))
						continue
					}
					nsp := sp.external(ip, extUsable)
					nsp.NodePort = uint16(p.NodePort)
					if old, ok := prev.lookupNodePort(nkey); ok && old.Service == id {
						nsp.next.Store(old.next.Load())
					}
					nodePortOwner[nkey] = svc
					snap.nodePorts[nkey] = nsp
				}
			}
		}
		if served {
			snap.services++
			if externalLocal && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort <= 65535 {
				snap.healthChecks = append(snap.healthChecks, HealthCheck{
					Namespace:      svc.Namespace,
					Name:           svc.Name,
					Port:           uint16(svc.Spec.HealthCheckNodePort),
					LocalEndpoints: len(localReady),
				})
			}
		}
	}
	problems = append(problems, conflicts.problems()...)
	problems = append(problems, snap.finishExternal()...)
	return snap, once(problems)
}

// oldestFirst returns services sorted by creationTimestamp, then
// namespace/name (then UID, so that even two definitions of one name have an
// order). The caller's slice is not changed: it may be an informer's.
func oldestFirst(services []*corev1.Service) []*corev1.Service {
	return slices.SortedFunc(slices.Values(services), func(a, b *corev1.Service) int {
		if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
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
// the readiest copy is kept, then the one in the first slice by name). What the policy refuses is left out and
// reported.
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
			if len(e.Addresses) == 0 {
				problems = append(problems, Problem{sliceID, "an endpoint has no address; ignored"})
				continue
			}
			// Like kube-proxy, use the first address: the API says they are
			// fungible and consumers use the first.
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				problems = append(problems, Problem{sliceID, fmt.Sprintf("address %q is not an IP address", e.Addresses[0])})
				continue
			}
			addr = addr.Unmap()
			if reason := policy.refuse(addr); reason != "" {
				problems = append(problems, Problem{"Service " + id,
					fmt.Sprintf("endpoint %s (%s) is %s; refused, never dialled", addr, sliceID, reason)})
				continue
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
			eps = append(eps, ep)
		}
	}
	slices.SortStableFunc(eps, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(rank(b), rank(a)))
	})
	eps = slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Addr == b.Addr })
	return eps, problems
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
