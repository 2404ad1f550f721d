package resolver

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// buildCache is what Build keeps from one snapshot to the next so that a
// change costs what changed (issue 10; kube-proxy's nftables mode likewise
// syncs only what changed): each Service's part of the table is built on
// its own and kept until its Service, its EndpointSlices or the ClusterIPs
// its endpoints are judged against change.
//
// Objects are recognised by pointer: an informer's cache replaces an
// object's pointer when the object changes and keeps it otherwise, and the
// manifest source decodes only files whose contents changed. A caller must
// therefore never modify an object it has given Build; it gives a changed
// copy instead.
//
// A cache belongs to one snapshot chain: the Build that takes it over from
// its prev (see Snapshot.take) updates it in place, and a second Build
// given the same prev builds from scratch.
type buildCache struct {
	topo        Topology
	routed      []netip.Prefix
	maxAffinity int

	epoch  uint64
	svcs   map[*corev1.Service]*svcEntry
	byID   map[string][]*svcEntry // namespace/name: usually one entry
	slices map[*discoveryv1.EndpointSlice]*sliceEntry
	bySvc  map[string][]*discoveryv1.EndpointSlice // by Service id, by name
	bad    map[*discoveryv1.EndpointSlice]bool     // slices with a problem

	order  []*svcEntry           // oldest first
	owners map[netip.Addr]string // every ClusterIP, to its oldest Service

	// What changed since the last fold.
	touched map[string]bool // Service ids
	gone    []*svcEntry
	copied  map[*svcEntry]bool // entries given more than once, lately

	foldState
}

// sliceEntry is what Build knows of one EndpointSlice.
type sliceEntry struct {
	id      string  // its Service's namespace/name; "" when it has none
	problem Problem // why it serves no Service, when id is ""
	seen    uint64
}

// svcEntry is one Service's part of the table, built from the Service and
// its slices alone.
type svcEntry struct {
	svc   *corev1.Service
	id    string
	seen  uint64
	dirty bool

	ips   []netip.Addr
	skip  string
	rec   *ServiceRecord
	addrs []netip.Addr // endpoint addresses the target policy judged
	steps []step       // what the Service serves, in the order Build reports it

	copies int // how many more times the caller gave the same object

	// What the entry holds in the table (see fold).
	active       bool // this definition holds its name
	served       bool // it serves at least one port
	claimedPorts []portKey
	claimedIPs   []netip.Addr
}

// step is one thing a Service's entry adds to the table: a problem, or a
// Service port with the problems its endpoints gave.
type step struct {
	problem  *Problem
	key      portKey
	sp       *ServicePort
	problems []Problem
}

func newBuildCache(topo Topology, o buildOptions) *buildCache {
	return &buildCache{
		topo: topo, routed: slices.Clone(o.routed), maxAffinity: o.maxAffinity,
		svcs:      make(map[*corev1.Service]*svcEntry),
		byID:      make(map[string][]*svcEntry),
		slices:    make(map[*discoveryv1.EndpointSlice]*sliceEntry),
		bySvc:     make(map[string][]*discoveryv1.EndpointSlice),
		bad:       make(map[*discoveryv1.EndpointSlice]bool),
		owners:    make(map[netip.Addr]string),
		touched:   make(map[string]bool),
		copied:    make(map[*svcEntry]bool),
		foldState: newFoldState(),
	}
}

// fits reports whether c was made for the same topology and options.
func (c *buildCache) fits(topo Topology, o buildOptions) bool {
	return c.maxAffinity == o.maxAffinity && slices.Equal(c.routed, o.routed) && c.topo == topo
}

// update brings c to services and list, rebuilding the entries whose
// inputs changed.
func (c *buildCache) update(services []*corev1.Service, list []*discoveryv1.EndpointSlice, prev *Snapshot) {
	c.epoch++
	changed := make(map[string]bool) // Service ids whose slices changed

	seen := 0
	for _, es := range list {
		if e, ok := c.slices[es]; ok {
			if e.seen != c.epoch {
				e.seen = c.epoch
				seen++
			}
			continue
		}
		e := &sliceEntry{seen: c.epoch}
		seen++
		switch name := es.Labels[discoveryv1.LabelServiceName]; {
		case name == "":
			e.problem = Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
				"no " + discoveryv1.LabelServiceName + " label, so it belongs to no Service"}
		case es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6:
			e.problem = Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
				fmt.Sprintf("addressType %q is not served (only IPv4 and IPv6 are)", es.AddressType)}
		default:
			e.id = es.Namespace + "/" + name
		}
		c.slices[es] = e
		if e.id == "" {
			c.bad[es] = true
			continue
		}
		c.bySvc[e.id] = append(c.bySvc[e.id], es)
		changed[e.id] = true
	}
	if seen != len(c.slices) {
		for es, e := range c.slices {
			if e.seen == c.epoch {
				continue
			}
			delete(c.slices, es)
			if e.id == "" {
				delete(c.bad, es)
				continue
			}
			c.bySvc[e.id] = slices.DeleteFunc(c.bySvc[e.id], func(x *discoveryv1.EndpointSlice) bool { return x == es })
			if len(c.bySvc[e.id]) == 0 {
				delete(c.bySvc, e.id)
			}
			changed[e.id] = true
		}
	}
	for id := range changed {
		if l := c.bySvc[id]; len(l) > 1 {
			slices.SortFunc(l, func(a, b *discoveryv1.EndpointSlice) int {
				return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
			})
		}
		for _, e := range c.byID[id] {
			e.dirty = true
		}
	}

	// Services: a new or changed one is a new entry; the order and the
	// ClusterIP owners are worked out again only when the set changed.
	setChanged := false
	seen = 0
	for _, svc := range services {
		if e, ok := c.svcs[svc]; ok {
			if e.seen != c.epoch {
				e.seen, e.copies = c.epoch, 0
				seen++
			} else {
				e.copies++ // one object given twice: defined twice
				c.copied[e] = true
				c.touched[e.id] = true
			}
			continue
		}
		id := svc.Namespace + "/" + svc.Name
		ips, skip := clusterIPs(svc)
		e := &svcEntry{svc: svc, id: id, seen: c.epoch, dirty: true, ips: ips, skip: skip}
		seen++
		c.svcs[svc] = e
		c.byID[id] = append(c.byID[id], e)
		c.touched[id] = true
		setChanged = true
	}
	for e := range c.copied {
		if e.copies == 0 || c.svcs[e.svc] != e {
			delete(c.copied, e)
			c.touched[e.id] = true
		}
	}
	if seen != len(c.svcs) {
		for svc, e := range c.svcs {
			if e.seen == c.epoch {
				continue
			}
			delete(c.svcs, svc)
			c.gone = append(c.gone, e)
			c.touched[e.id] = true
			c.byID[e.id] = slices.DeleteFunc(c.byID[e.id], func(x *svcEntry) bool { return x == e })
			if len(c.byID[e.id]) == 0 {
				delete(c.byID, e.id)
			}
		}
		setChanged = true
	}
	if setChanged {
		c.order = c.order[:0]
		for _, e := range c.svcs {
			c.order = append(c.order, e)
		}
		slices.SortFunc(c.order, func(a, b *svcEntry) int { return olderService(a.svc, b.svc) })

		// Every ClusterIP, for the target policy: a Service whose endpoint
		// is a ClusterIP (its own or another's) would send kubetun's dial
		// back into kubetun, even before the service CIDRs are known.
		owners := make(map[netip.Addr]string, len(c.owners))
		for _, e := range c.order {
			for _, ip := range e.ips {
				if _, taken := owners[ip]; !taken {
					owners[ip] = e.id
				}
			}
		}
		// An entry whose endpoints were judged against a ClusterIP that
		// came, went or changed hands is judged again.
		moved := make(map[netip.Addr]bool)
		for ip, id := range owners {
			if c.owners[ip] != id {
				moved[ip] = true
			}
		}
		for ip := range c.owners {
			if _, ok := owners[ip]; !ok {
				moved[ip] = true
			}
		}
		c.owners = owners
		if len(moved) > 0 {
			for _, e := range c.order {
				if !e.dirty && slices.ContainsFunc(e.addrs, func(a netip.Addr) bool { return moved[a] }) {
					e.dirty = true
				}
			}
		}
	}

	policy := targetPolicy{routed: c.routed, clusterIPs: c.owners}
	for _, e := range c.order {
		if e.dirty {
			c.build(e, policy, prev)
			e.dirty = false
			c.touched[e.id] = true
		}
	}
}

// olderService orders Services oldest first: by creationTimestamp, then
// namespace/name (then UID, so that even two definitions of one name have
// an order).
func olderService(a, b *corev1.Service) int {
	if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
}

// build makes e's part of the table from its Service and slices.
func (c *buildCache) build(e *svcEntry, policy targetPolicy, prev *Snapshot) {
	svc, id, ips := e.svc, e.id, e.ips
	svcSlices := c.bySvc[id]
	e.rec = serviceRecord(svc, ips, svcSlices)
	e.steps = e.steps[:0]
	e.addrs = sliceAddrs(e.addrs[:0], svcSlices)
	problem := func(reason string) {
		e.steps = append(e.steps, step{problem: &Problem{"Service " + id, reason}})
	}
	if e.skip != "" {
		return // headless or ExternalName: nothing to proxy
	}
	if len(ips) == 0 {
		problem(fmt.Sprintf("clusterIP %q is not an IP address", svc.Spec.ClusterIP))
		return
	}
	if len(svc.Spec.Ports) == 0 {
		problem("has no ports; nothing to serve")
		return
	}
	local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	affinity := affinityTimeout(svc)
	for _, p := range svc.Spec.Ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok {
			problem(fmt.Sprintf("port %d: protocol %q is not supported", p.Port, p.Protocol))
			continue
		}
		if proto == SCTP {
			problem(fmt.Sprintf("port %d: SCTP is not supported (gVisor has no SCTP)", p.Port))
			continue
		}
		if p.Port <= 0 || p.Port > 65535 {
			problem(fmt.Sprintf("port %d is not a port number (1-65535); ignored", p.Port))
			continue
		}
		for _, ip := range ips {
			key := portKey{proto, netip.AddrPortFrom(ip, uint16(p.Port))}
			eps, probs := endpointsFor(id, svcSlices, p, ip, policy)
			sp := &ServicePort{
				Service:   id,
				Name:      p.Name,
				Protocol:  proto,
				ClusterIP: ip,
				Port:      uint16(p.Port),
				Endpoints: eps,
				usable:    Usable(eps, local, c.topo),
			}
			if affinity > 0 {
				sp.affinityTimeout = affinity
				sp.affinity = newAffinityTable(c.maxAffinity)
			}
			if old, ok := prev.Lookup(proto, key.addr); ok && old.Service == id {
				sp.next.Store(old.next.Load())
				if sp.affinity != nil && old.affinity != nil {
					sp.affinity = old.affinity // clients stay where they were
				}
			}
			e.steps = append(e.steps, step{key: key, sp: sp, problems: probs})
		}
	}
}

// sliceAddrs appends the addresses of the slices' endpoints, as the target
// policy sees them.
func sliceAddrs(out []netip.Addr, list []*discoveryv1.EndpointSlice) []netip.Addr {
	for _, es := range list {
		for _, ep := range es.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			if a, err := netip.ParseAddr(ep.Addresses[0]); err == nil {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

// endpointIndex is the Snapshot's map from endpoint address to its oldest
// Service, built on first use: only reverse lookups need it.
type endpointIndex struct {
	once sync.Once
	m    map[netip.Addr]endpointRef
}

func (s *Snapshot) endpointIndex() map[netip.Addr]endpointRef {
	s.byEndpoint.once.Do(func() {
		var list []nameEntry
		for _, n := range s.names.all() {
			list = append(list, n)
		}
		slices.SortFunc(list, func(a, b nameEntry) int { return olderService(a.svc, b.svc) })
		m := make(map[netip.Addr]endpointRef)
		for _, n := range list {
			for _, ep := range n.rec.Endpoints {
				if _, taken := m[ep.Addr]; !taken {
					m[ep.Addr] = endpointRef{n.rec, ep}
				}
			}
		}
		s.byEndpoint.m = m
	})
	return s.byEndpoint.m
}
