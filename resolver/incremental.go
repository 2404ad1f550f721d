package resolver

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// buildCache is what Build keeps from one snapshot to the next so that a
// change costs what changed (kube-proxy's nftables mode likewise syncs only
// what changed): each Service's part of the table is built on
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
	topo           Topology
	routed         []netip.Prefix
	serviceCIDRs   []netip.Prefix
	maxAffinity    int
	externalRanges []netip.Prefix
	// refuseExternal is the caller's check of this Build: what it refuses
	// may change from one Build to the next (the node's addresses), so the
	// external addresses of every Service that has some are judged again
	// each Build while it is set.
	refuseExternal func(netip.Addr) string

	epoch  uint64
	svcs   map[*corev1.Service]*svcEntry
	byID   map[string][]*svcEntry // namespace/name: usually one entry
	slices map[*discoveryv1.EndpointSlice]*sliceEntry
	bySvc  map[string][]*discoveryv1.EndpointSlice // by Service id, by name
	bad    map[*discoveryv1.EndpointSlice]bool     // slices with a problem

	owners   map[netip.Addr]string      // every ClusterIP, to its oldest Service
	ipOwners map[netip.Addr][]*svcEntry // every entry with each ClusterIP, oldest first
	judged   map[netip.Addr][]*svcEntry // the entries whose endpoints have each address

	// External addresses, for the target policy as ClusterIPs are: those of
	// the oldest definition of each name that is not headless or
	// ExternalName (contrib), the oldest such entry owning each.
	contrib     map[string]*svcEntry
	extIPOwners map[netip.Addr][]*svcEntry
	extOwners   map[netip.Addr]string
	extCand     map[*svcEntry]bool // entries with externalIPs or ingress IPs
	extTroubled map[*svcEntry]bool // contributing entries whose external addresses have problems
	extProblems []Problem          // theirs, oldest first

	// What changed since the last fold.
	touched map[string]bool // Service ids
	gone    []*svcEntry
	copied  map[*svcEntry]bool // entries given more than once, lately
	// pendingCopies counts the new objects given more than once.
	pendingCopies map[*corev1.Service]int

	// The last inputs, to find what changed by comparing position by
	// position; nil when they held an object twice.
	lastSvcs   []*corev1.Service
	lastSlices []*discoveryv1.EndpointSlice

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

	ips      []netip.Addr
	skip     string
	rec      *ServiceRecord
	addrs    []netip.Addr // endpoint addresses the target policy judged
	ext      []netip.Addr // its external addresses (externalAddrs)
	extProbs []Problem    // and what externalAddrs reported
	contribs []netip.Addr // the external addresses it contributes to extIPOwners
	steps    []step       // what the Service serves, in the order Build reports it

	copies int // how many more times the caller gave the same object

	// What the entry holds in the table (see fold).
	active       bool // this definition holds its name
	served       bool // it serves at least one port
	claimedPorts []portKey
	claimedIPs   []netip.Addr
	claimedNodes []nodePortKey
}

// step is one thing a Service's entry adds to the table: a problem, or a
// Service port with the problems its endpoints gave.
//
// A Service port's ClusterIP step is followed by the steps serving the same
// port from outside: on each external address (key) and on its node port
// (node, nkey). Their parent is 1 + the index of the ClusterIP step; they
// serve only while it does.
type step struct {
	problem  *Problem
	key      portKey
	sp       *ServicePort
	problems []Problem
	local    []netip.Addr // ready endpoints on this node, for health checks

	parent int
	node   bool
	nkey   nodePortKey
}

func newBuildCache(topo Topology, o buildOptions) *buildCache {
	return &buildCache{
		topo: topo, routed: slices.Clone(o.routed), serviceCIDRs: slices.Clone(o.serviceCIDRs), maxAffinity: o.maxAffinity,
		externalRanges: slices.Clone(o.externalRanges),
		contrib:        make(map[string]*svcEntry),
		extIPOwners:    make(map[netip.Addr][]*svcEntry),
		extOwners:      make(map[netip.Addr]string),
		extCand:        make(map[*svcEntry]bool),
		extTroubled:    make(map[*svcEntry]bool),
		svcs:           make(map[*corev1.Service]*svcEntry),
		byID:           make(map[string][]*svcEntry),
		slices:         make(map[*discoveryv1.EndpointSlice]*sliceEntry),
		bySvc:          make(map[string][]*discoveryv1.EndpointSlice),
		bad:            make(map[*discoveryv1.EndpointSlice]bool),
		owners:         make(map[netip.Addr]string),
		ipOwners:       make(map[netip.Addr][]*svcEntry),
		judged:         make(map[netip.Addr][]*svcEntry),
		touched:        make(map[string]bool),
		copied:         make(map[*svcEntry]bool),
		pendingCopies:  make(map[*corev1.Service]int),
		foldState:      newFoldState(),
	}
}

// fits reports whether c was made for the same topology and options.
func (c *buildCache) fits(topo Topology, o buildOptions) bool {
	return c.maxAffinity == o.maxAffinity && slices.Equal(c.routed, o.routed) && slices.Equal(c.serviceCIDRs, o.serviceCIDRs) && c.topo == topo &&
		slices.Equal(c.externalRanges, o.externalRanges) && (c.refuseExternal == nil) == (o.refuseExternal == nil)
}

// extOptions are the options externalAddrs reads.
func (c *buildCache) extOptions() buildOptions {
	return buildOptions{externalRanges: c.externalRanges, refuseExternal: c.refuseExternal}
}

// hasExternal reports whether svc names external addresses.
func hasExternal(svc *corev1.Service) bool {
	return len(svc.Spec.ExternalIPs) > 0 || svc.Spec.Type == corev1.ServiceTypeLoadBalancer && len(svc.Status.LoadBalancer.Ingress) > 0
}

// update brings c to services and list, rebuilding the entries whose
// inputs changed.
func (c *buildCache) update(services []*corev1.Service, list []*discoveryv1.EndpointSlice, prev *Snapshot) {
	c.epoch++
	changed := make(map[string]bool) // Service ids whose slices changed
	var dirty []*svcEntry

	added, removed := diffSlices(c, list)
	for _, es := range removed {
		e := c.slices[es]
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
	for _, es := range added {
		e := &sliceEntry{seen: c.epoch}
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
	for id := range changed {
		if l := c.bySvc[id]; len(l) > 1 {
			slices.SortFunc(l, func(a, b *discoveryv1.EndpointSlice) int {
				return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
			})
		}
		for _, e := range c.byID[id] {
			if !e.dirty {
				e.dirty = true
				dirty = append(dirty, e)
			}
		}
	}

	// Services: a new or changed one is a new entry; the ClusterIP owners
	// change only where an added or removed entry has its ClusterIPs.
	addedSvcs, removedSvcs := diffServices(c, services)
	setChanged := len(addedSvcs) > 0 || len(removedSvcs) > 0
	extIDs := make(map[string]bool) // ids whose external addresses may have changed
	for _, svc := range removedSvcs {
		e := c.svcs[svc]
		delete(c.svcs, svc)
		delete(c.extCand, e)
		extIDs[e.id] = true
		c.gone = append(c.gone, e)
		c.touched[e.id] = true
		c.byID[e.id] = slices.DeleteFunc(c.byID[e.id], func(x *svcEntry) bool { return x == e })
		if len(c.byID[e.id]) == 0 {
			delete(c.byID, e.id)
		}
	}
	for _, svc := range addedSvcs {
		id := svc.Namespace + "/" + svc.Name
		ips, skip := clusterIPs(svc)
		e := &svcEntry{svc: svc, id: id, seen: c.epoch, dirty: true, ips: ips, skip: skip}
		if skip == "" && hasExternal(svc) {
			e.ext, e.extProbs = externalAddrs(svc, c.extOptions())
			c.extCand[e] = true
		}
		extIDs[id] = true
		c.svcs[svc] = e
		c.byID[id] = append(c.byID[id], e)
		c.touched[id] = true
		dirty = append(dirty, e)
	}
	if c.refuseExternal != nil {
		// What the caller refuses may have changed.
		for e := range c.extCand {
			ext, probs := externalAddrs(e.svc, c.extOptions())
			if slices.Equal(ext, e.ext) && slices.Equal(probs, e.extProbs) {
				continue
			}
			e.ext, e.extProbs = ext, probs
			extIDs[e.id] = true
			c.touched[e.id] = true
			if !e.dirty {
				e.dirty = true
				dirty = append(dirty, e)
			}
		}
	}
	for svc, n := range c.pendingCopies {
		e := c.svcs[svc]
		e.copies = n
		c.copied[e] = true
	}
	clear(c.pendingCopies)
	// Every ClusterIP, for the target policy: a Service whose endpoint is
	// a ClusterIP (its own or another's) would send kubetun's dial back
	// into kubetun, even before the service CIDRs are known. An entry
	// whose endpoints were judged against a ClusterIP that came, went or
	// changed hands is judged again.
	if setChanged {
		touchedIPs := make(map[netip.Addr]bool)
		for _, e := range c.gone {
			for _, ip := range e.ips {
				c.ipOwners[ip] = slices.DeleteFunc(c.ipOwners[ip], func(x *svcEntry) bool { return x == e })
				if len(c.ipOwners[ip]) == 0 {
					delete(c.ipOwners, ip)
				}
				touchedIPs[ip] = true
			}
			c.unjudge(e)
		}
		for _, svc := range addedSvcs {
			e := c.svcs[svc]
			for _, ip := range e.ips {
				cl := c.ipOwners[ip]
				if slices.Contains(cl, e) {
					continue
				}
				c.ipOwners[ip] = insertByAge(cl, e)
				touchedIPs[ip] = true
			}
		}
		for ip := range touchedIPs {
			dirty = c.settleOwner(ip, c.ipOwners, c.owners, dirty)
		}
	}

	c.updateExternal(extIDs, &dirty)

	policy := targetPolicy{routed: c.routed, clusterIPs: c.owners, external: c.extOwners}
	for _, e := range dirty {
		if c.svcs[e.svc] == e && e.dirty {
			c.build(e, policy, prev)
			c.touched[e.id] = true
		}
		e.dirty = false
	}
}

// diffSlices returns the slices in list that c does not know and those
// it knows that list no longer has.
func diffSlices(c *buildCache, list []*discoveryv1.EndpointSlice) (added, removed []*discoveryv1.EndpointSlice) {
	added, removed, ok := positional(c.lastSlices, list, func(es *discoveryv1.EndpointSlice) bool { _, ok := c.slices[es]; return ok })
	if ok {
		c.lastSlices = append(c.lastSlices[:0], list...)
		return added, removed
	}
	seen, twice := 0, false
	fresh := make(map[*discoveryv1.EndpointSlice]bool)
	for _, es := range list {
		if e, ok := c.slices[es]; ok {
			if e.seen != c.epoch {
				e.seen = c.epoch
				seen++
			} else {
				twice = true
			}
			continue
		}
		if fresh[es] {
			twice = true
			continue
		}
		fresh[es] = true
		added = append(added, es)
	}
	if seen != len(c.slices) {
		for es, e := range c.slices {
			if e.seen != c.epoch {
				removed = append(removed, es)
			}
		}
	}
	c.lastSlices = nil
	if !twice {
		c.lastSlices = slices.Clone(list)
	}
	return added, removed
}

// diffServices is diffSlices for Services; it also counts the objects
// given more than once (svcEntry.copies).
func diffServices(c *buildCache, services []*corev1.Service) (added, removed []*corev1.Service) {
	if len(c.copied) == 0 {
		added, removed, ok := positional(c.lastSvcs, services, func(svc *corev1.Service) bool { _, ok := c.svcs[svc]; return ok })
		if ok {
			c.lastSvcs = append(c.lastSvcs[:0], services...)
			return added, removed
		}
	}
	seen := 0
	fresh := make(map[*corev1.Service]int)
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
		if _, ok := fresh[svc]; !ok {
			added = append(added, svc)
		}
		fresh[svc]++
	}
	if seen != len(c.svcs) {
		for svc, e := range c.svcs {
			if e.seen != c.epoch {
				removed = append(removed, svc)
			}
		}
	}
	for e := range c.copied {
		if e.copies == 0 || e.seen != c.epoch {
			delete(c.copied, e)
			c.touched[e.id] = true
		}
	}
	c.lastSvcs = slices.Clone(services)
	for svc, n := range fresh {
		if n > 1 {
			c.pendingCopies[svc] = n - 1
		}
	}
	if len(c.copied) > 0 || len(c.pendingCopies) > 0 {
		c.lastSvcs = nil
	}
	return added, removed
}

// positional compares the inputs of two Builds position by position, as
// an informer cache that keeps its list in place (see resolver/kube) or a
// caller replacing one object of its list hands them: a change of a few
// objects costs a pass over two arrays of pointers, not a map lookup per
// object. It reports false when the lists differ in too many places or in
// a way it cannot tell apart from an object given twice (known says
// whether an object is in the cache).
func positional[T comparable](last, cur []T, known func(T) bool) (added, removed []T, ok bool) {
	if last == nil {
		return nil, nil, false
	}
	limit := 64 + len(cur)/16
	n := min(len(last), len(cur))
	var was, is []T
	for i := range n {
		if last[i] != cur[i] {
			if len(was) == limit {
				return nil, nil, false
			}
			was, is = append(was, last[i]), append(is, cur[i])
		}
	}
	if len(was)+len(is)+len(last)-n+len(cur)-n > 2*limit {
		return nil, nil, false
	}
	was, is = append(was, last[n:]...), append(is, cur[n:]...)
	left := make(map[T]int, len(was))
	for _, p := range was {
		left[p]++
	}
	fresh := make(map[T]bool, len(is))
	for _, p := range is {
		if left[p] > 0 {
			left[p]-- // moved
			continue
		}
		if known(p) || fresh[p] {
			return nil, nil, false // given twice, perhaps
		}
		fresh[p] = true
		added = append(added, p)
	}
	for p, k := range left {
		if k > 0 {
			removed = append(removed, p)
		}
	}
	return added, removed, true
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
	c.unjudge(e)
	e.addrs = sliceAddrs(e.addrs[:0], svcSlices)
	for _, a := range e.addrs {
		c.judged[a] = append(c.judged[a], e)
	}
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
	for _, ip := range ips {
		if len(c.serviceCIDRs) > 0 && !slices.ContainsFunc(c.serviceCIDRs, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			problem(fmt.Sprintf("clusterIP %s is outside every service CIDR; it is not routed to kubetun", ip))
		}
	}
	local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	affinity := affinityTimeout(svc)
	for _, a := range e.ext {
		if !hasFamily(ips, a) {
			problem(fmt.Sprintf("external address %s: the Service has no ClusterIP of its family; not served", a))
		}
	}
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
			var localReady []netip.Addr
			for _, ep := range eps {
				if ep.Ready && ep.NodeName != "" && ep.NodeName == c.topo.NodeName {
					localReady = append(localReady, ep.Addr.Addr())
				}
			}
			e.steps = append(e.steps, step{key: key, sp: sp, problems: probs, local: localReady})
			parent := len(e.steps)

			// The same port reached from outside the cluster: on its
			// external addresses of ip's family and on the node port, with
			// externalTrafficPolicy's endpoints.
			if len(e.ext) == 0 && p.NodePort <= 0 {
				continue
			}
			extUsable := Usable(eps, externalLocal, c.topo)
			for _, a := range e.ext {
				if a.Is4() != ip.Is4() {
					continue
				}
				ekey := portKey{proto, netip.AddrPortFrom(a, uint16(p.Port))}
				esp := sp.external(a, extUsable)
				if old, ok := prev.Lookup(proto, ekey.addr); ok && old.Service == id {
					esp.next.Store(old.next.Load())
				}
				e.steps = append(e.steps, step{key: ekey, sp: esp, parent: parent})
			}
			if p.NodePort > 0 && p.NodePort <= 65535 {
				nkey := nodePortKey{proto, ip.Is6(), uint16(p.NodePort)}
				nsp := sp.external(ip, extUsable)
				nsp.NodePort = uint16(p.NodePort)
				if old, ok := prev.lookupNodePort(nkey); ok && old.Service == id {
					nsp.next.Store(old.next.Load())
				}
				e.steps = append(e.steps, step{sp: nsp, parent: parent, node: true, nkey: nkey})
			}
		}
	}
}

// unjudge takes e out of the index of judged addresses.
func (c *buildCache) unjudge(e *svcEntry) {
	for _, a := range e.addrs {
		c.judged[a] = slices.DeleteFunc(c.judged[a], func(x *svcEntry) bool { return x == e })
		if len(c.judged[a]) == 0 {
			delete(c.judged, a)
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

// updateExternal brings the owners of external addresses up to date for
// the names in ids, and marks dirty the entries whose endpoints were judged
// against an address that changed hands.
func (c *buildCache) updateExternal(ids map[string]bool, dirty *[]*svcEntry) {
	touched := make(map[netip.Addr]bool)
	again := false
	for id := range ids {
		if old := c.contrib[id]; old != nil {
			for _, a := range old.contribs {
				c.extIPOwners[a] = slices.DeleteFunc(c.extIPOwners[a], func(x *svcEntry) bool { return x == old })
				if len(c.extIPOwners[a]) == 0 {
					delete(c.extIPOwners, a)
				}
				touched[a] = true
			}
			old.contribs = nil
			if c.extTroubled[old] {
				delete(c.extTroubled, old)
				again = true
			}
			delete(c.contrib, id)
		}
		var e *svcEntry
		for _, x := range c.byID[id] {
			if x.skip == "" && (e == nil || olderService(x.svc, e.svc) < 0) {
				e = x
			}
		}
		if e == nil {
			continue
		}
		c.contrib[id] = e
		if len(e.extProbs) > 0 {
			c.extTroubled[e] = true
			again = true
		}
		for _, a := range e.ext {
			cl := c.extIPOwners[a]
			c.extIPOwners[a] = insertByAge(cl, e)
			e.contribs = append(e.contribs, a)
			touched[a] = true
		}
	}
	for a := range touched {
		*dirty = c.settleOwner(a, c.extIPOwners, c.extOwners, *dirty)
	}
	if again {
		list := slices.SortedFunc(maps.Keys(c.extTroubled), func(a, b *svcEntry) int { return olderService(a.svc, b.svc) })
		c.extProblems = c.extProblems[:0:0]
		for _, e := range list {
			c.extProblems = append(c.extProblems, e.extProbs...)
		}
	}
}

// insertByAge inserts e into cl, which is sorted oldest Service first.
func insertByAge(cl []*svcEntry, e *svcEntry) []*svcEntry {
	at := len(cl)
	for at > 0 && olderService(e.svc, cl[at-1].svc) < 0 {
		at--
	}
	return slices.Insert(cl, at, e)
}

// settleOwner makes owners[a] the oldest of lists[a] (none: deleted) and,
// when that changed hands, marks dirty every entry whose endpoints were
// judged against a, appending them to dirty.
func (c *buildCache) settleOwner(a netip.Addr, lists map[netip.Addr][]*svcEntry, owners map[netip.Addr]string, dirty []*svcEntry) []*svcEntry {
	owner := ""
	if cl := lists[a]; len(cl) > 0 {
		owner = cl[0].id
	}
	if owner == owners[a] {
		return dirty
	}
	if owner == "" {
		delete(owners, a)
	} else {
		owners[a] = owner
	}
	for _, e := range c.judged[a] {
		if !e.dirty {
			e.dirty = true
			dirty = append(dirty, e)
		}
	}
	return dirty
}
