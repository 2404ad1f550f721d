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

// buildCache is what a build keeps from one snapshot to the next so that a
// change costs what changed (kube-proxy's nftables mode likewise syncs only
// what changed): each Service's part of the table is built on its own and
// kept until its Service, its EndpointSlices or the addresses its
// endpoints are judged against change. What changed is what the change
// set says, key by key (see Changes); nothing is found by comparing
// objects.
//
// A cache belongs to one snapshot chain: the build that takes it over from
// its prev (see Snapshot.take) updates it in place; a second build given
// the same prev starts from prev's objects instead.
type buildCache struct {
	topo           Topology
	routed         []netip.Prefix
	serviceCIDRs   []netip.Prefix
	maxAffinity    int
	externalRanges []netip.Prefix
	// refuseExternal is the caller's check of this build: what it refuses
	// may change from one build to the next (the node's addresses), so the
	// external addresses of every Service that has some are judged again
	// each build while it is set.
	refuseExternal func(netip.Addr) string

	byID      map[string][]*svcEntry                  // Service key: an entry per definition, as given
	sliceDefs map[string][]*sliceEntry                // EndpointSlice key: an entry per definition
	bySvc     map[string][]*discoveryv1.EndpointSlice // by Service id, by name then UID
	noService map[*sliceEntry]bool                    // slices that serve no Service, with why

	// Every ClusterIP, for the target policy: the entries with each, oldest
	// first, and the id of the oldest.
	ipOwners map[netip.Addr][]*svcEntry
	owners   map[netip.Addr]string
	// byEndpointAddr lists the entries whose endpoints have each address:
	// they are judged again when the address changes hands.
	byEndpointAddr map[netip.Addr][]*svcEntry

	// External addresses, for the target policy as ClusterIPs are: those of
	// the oldest definition of each name that is neither headless nor
	// ExternalName (extHolder), the oldest such entry owning each.
	extHolder    map[string]*svcEntry
	extIPOwners  map[netip.Addr][]*svcEntry
	extOwners    map[netip.Addr]string
	withExternal map[*svcEntry]bool // entries with externalIPs or ingress IPs
	extTroubled  map[*svcEntry]bool // holders whose external addresses have problems
	extProblems  []Problem          // theirs, oldest first

	// What changed since the last fold.
	touched map[string]bool // Service ids
	gone    []*svcEntry

	foldState
}

// sliceEntry is what a build knows of one EndpointSlice.
type sliceEntry struct {
	es      *discoveryv1.EndpointSlice
	id      string  // its Service's namespace/name; "" when it has none
	problem Problem // why it serves no Service, when id is ""
}

// svcEntry is one definition of a Service and its part of the table,
// built from the Service and its slices alone.
type svcEntry struct {
	svc     *corev1.Service
	id      string
	def     int  // which definition of its name (0 but for Services given twice)
	retired bool // replaced or deleted
	dirty   bool // to be built again

	ips      []netip.Addr
	skip     string
	rec      *ServiceRecord
	addrs    []netip.Addr // endpoint addresses the target policy judged
	ext      []netip.Addr // its external addresses (externalAddrs)
	extProbs []Problem    // and what externalAddrs reported
	extHeld  []netip.Addr // the external addresses it holds in extIPOwners
	steps    []step       // what the Service serves, in the order Build reports it

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
// (node, nkey). They are outside, and cluster is the index of their
// ClusterIP step: they serve only while it does.
type step struct {
	problem  *Problem
	key      portKey
	sp       *ServicePort
	problems []Problem
	local    []netip.Addr // ready endpoints on this node, for health checks

	outside bool
	cluster int // the index of the ClusterIP step, when outside
	node    bool
	nkey    nodePortKey
}

// olderEntry orders entries oldest Service first, then by definition: two
// definitions of one object keep the order they were given in.
func olderEntry(a, b *svcEntry) int {
	return cmp.Or(olderService(a.svc, b.svc), cmp.Compare(a.def, b.def))
}

func newBuildCache(topo Topology, o buildOptions) *buildCache {
	return &buildCache{
		topo: topo, routed: slices.Clone(o.routed), serviceCIDRs: slices.Clone(o.serviceCIDRs), maxAffinity: o.maxAffinity,
		externalRanges: slices.Clone(o.externalRanges),
		byID:           make(map[string][]*svcEntry),
		sliceDefs:      make(map[string][]*sliceEntry),
		bySvc:          make(map[string][]*discoveryv1.EndpointSlice),
		noService:      make(map[*sliceEntry]bool),
		ipOwners:       make(map[netip.Addr][]*svcEntry),
		owners:         make(map[netip.Addr]string),
		byEndpointAddr: make(map[netip.Addr][]*svcEntry),
		extHolder:      make(map[string]*svcEntry),
		extIPOwners:    make(map[netip.Addr][]*svcEntry),
		extOwners:      make(map[netip.Addr]string),
		withExternal:   make(map[*svcEntry]bool),
		extTroubled:    make(map[*svcEntry]bool),
		touched:        make(map[string]bool),
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

// dirtyList collects the entries to build again, each once.
type dirtyList []*svcEntry

func (d *dirtyList) mark(e *svcEntry) {
	if !e.dirty {
		e.dirty = true
		*d = append(*d, e)
	}
}

// update applies cs to c: the keys it names are replaced, and every entry
// whose inputs that changed is built again. A change set that says All is
// applied to a new cache only (see build), so every key it lacks is one c
// never had.
func (c *buildCache) update(cs changeSet, prev *Snapshot) {
	var dirty dirtyList
	c.replaceSlices(cs.slices, &dirty)
	added := c.replaceServices(cs.services, &dirty)
	extIDs := make(map[string]bool, len(cs.services)) // names whose external addresses may have changed
	for id := range cs.services {
		extIDs[id] = true
	}
	c.rejudgeRefusedExternal(extIDs, &dirty)
	c.settleClusterIPs(added, &dirty)
	c.updateExternal(extIDs, &dirty)
	c.rebuild(dirty, prev)
}

// replaceSlices withdraws the slices of each changed key and files the new
// ones under their Service; the entries of every Service that lost or got
// a slice are marked dirty.
func (c *buildCache) replaceSlices(changes map[string][]*discoveryv1.EndpointSlice, dirty *dirtyList) {
	changed := make(map[string]bool) // Service ids whose slices changed
	for key, defs := range changes {
		for _, e := range c.sliceDefs[key] {
			c.withdrawSlice(e)
			if e.id != "" {
				changed[e.id] = true
			}
		}
		delete(c.sliceDefs, key)
		for _, es := range defs {
			e := newSliceEntry(es)
			c.sliceDefs[key] = append(c.sliceDefs[key], e)
			if e.id == "" {
				c.noService[e] = true
				continue
			}
			c.bySvc[e.id] = append(c.bySvc[e.id], es)
			changed[e.id] = true
		}
	}
	for id := range changed {
		if l := c.bySvc[id]; len(l) > 1 {
			slices.SortStableFunc(l, func(a, b *discoveryv1.EndpointSlice) int {
				return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
			})
		}
		for _, e := range c.byID[id] {
			dirty.mark(e)
		}
	}
}

// newSliceEntry files es under its Service, or says why it serves none.
func newSliceEntry(es *discoveryv1.EndpointSlice) *sliceEntry {
	e := &sliceEntry{es: es}
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
	return e
}

// withdrawSlice takes e's slice out of its Service's list. Every
// definition of one key goes at once, and they share a name, so the slices
// are found by name: the Service's slices are all in its namespace.
func (c *buildCache) withdrawSlice(e *sliceEntry) {
	if e.id == "" {
		delete(c.noService, e)
		return
	}
	name := e.es.Name
	c.bySvc[e.id] = slices.DeleteFunc(c.bySvc[e.id], func(x *discoveryv1.EndpointSlice) bool { return x.Name == name })
	if len(c.bySvc[e.id]) == 0 {
		delete(c.bySvc, e.id)
	}
}

// replaceServices retires the entries of each changed Service key (to
// c.gone, for fold to withdraw) and makes an entry for each of its new
// definitions, which it returns.
func (c *buildCache) replaceServices(changes map[string][]*corev1.Service, dirty *dirtyList) (added []*svcEntry) {
	for id, defs := range changes {
		for _, e := range c.byID[id] {
			e.retired = true
			delete(c.withExternal, e)
			c.gone = append(c.gone, e)
		}
		delete(c.byID, id)
		c.touched[id] = true
		for i, svc := range defs {
			e := c.newEntry(svc, id, i)
			c.byID[id] = append(c.byID[id], e)
			dirty.mark(e)
			added = append(added, e)
		}
	}
	return added
}

// newEntry makes the entry of definition def of Service id.
func (c *buildCache) newEntry(svc *corev1.Service, id string, def int) *svcEntry {
	ips, skip := clusterIPs(svc)
	e := &svcEntry{svc: svc, id: id, def: def, ips: ips, skip: skip}
	if skip == "" && hasExternal(svc) {
		e.ext, e.extProbs = externalAddrs(svc, c.extOptions())
		c.withExternal[e] = true
	}
	return e
}

// rejudgeRefusedExternal judges again the external addresses of every
// entry that has some, when the caller refuses some (RefuseExternal): what
// it refuses may have changed. Those whose verdict changed are dirty.
func (c *buildCache) rejudgeRefusedExternal(extIDs map[string]bool, dirty *dirtyList) {
	if c.refuseExternal == nil {
		return
	}
	for e := range c.withExternal {
		ext, probs := externalAddrs(e.svc, c.extOptions())
		if slices.Equal(ext, e.ext) && slices.Equal(probs, e.extProbs) {
			continue
		}
		e.ext, e.extProbs = ext, probs
		extIDs[e.id] = true
		c.touched[e.id] = true
		dirty.mark(e)
	}
}

// settleClusterIPs brings the owners of ClusterIPs up to date with the
// entries gone and added: a Service whose endpoint is a ClusterIP (its
// own or another's) would send kubetun's dial back into kubetun, even
// before the service CIDRs are known. An entry whose endpoints were judged
// against a ClusterIP that came, went or changed hands is dirty.
func (c *buildCache) settleClusterIPs(added []*svcEntry, dirty *dirtyList) {
	touched := make(map[netip.Addr]bool)
	for _, e := range c.gone {
		for _, ip := range e.ips {
			deleteEntry(c.ipOwners, ip, e)
			touched[ip] = true
		}
		c.unjudge(e)
	}
	for _, e := range added {
		for _, ip := range e.ips {
			if cl := c.ipOwners[ip]; !slices.Contains(cl, e) { // a ClusterIP listed twice
				c.ipOwners[ip] = insertByAge(cl, e)
				touched[ip] = true
			}
		}
	}
	for ip := range touched {
		c.settleOwner(ip, c.ipOwners, c.owners, dirty)
	}
}

// rebuild builds each dirty entry that is still in the table again.
func (c *buildCache) rebuild(dirty dirtyList, prev *Snapshot) {
	policy := targetPolicy{routed: c.routed, clusterIPs: c.owners, external: c.extOwners}
	for _, e := range dirty {
		if !e.retired {
			c.build(e, policy, prev)
			c.touched[e.id] = true
		}
		e.dirty = false
	}
}

// deleteEntry takes e out of lists[k]; an empty list is deleted.
func deleteEntry[K comparable](lists map[K][]*svcEntry, k K, e *svcEntry) {
	if l := slices.DeleteFunc(lists[k], func(x *svcEntry) bool { return x == e }); len(l) > 0 {
		lists[k] = l
	} else {
		delete(lists, k)
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

// unjudge takes e out of the index of judged addresses.
func (c *buildCache) unjudge(e *svcEntry) {
	for _, a := range e.addrs {
		deleteEntry(c.byEndpointAddr, a, e)
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
func (c *buildCache) updateExternal(ids map[string]bool, dirty *dirtyList) {
	touched := make(map[netip.Addr]bool)
	again := false
	for id := range ids {
		if c.releaseExternal(id, touched) {
			again = true
		}
		if c.holdExternal(id, touched) {
			again = true
		}
	}
	for a := range touched {
		c.settleOwner(a, c.extIPOwners, c.extOwners, dirty)
	}
	if again {
		list := slices.SortedFunc(maps.Keys(c.extTroubled), olderEntry)
		c.extProblems = c.extProblems[:0:0]
		for _, e := range list {
			c.extProblems = append(c.extProblems, e.extProbs...)
		}
	}
}

// releaseExternal takes the external addresses name id held out of
// extIPOwners, noting them in touched; it reports whether the problems
// of external addresses changed.
func (c *buildCache) releaseExternal(id string, touched map[netip.Addr]bool) bool {
	old := c.extHolder[id]
	if old == nil {
		return false
	}
	for _, a := range old.extHeld {
		deleteEntry(c.extIPOwners, a, old)
		touched[a] = true
	}
	old.extHeld = nil
	delete(c.extHolder, id)
	if c.extTroubled[old] {
		delete(c.extTroubled, old)
		return true
	}
	return false
}

// holdExternal makes the oldest definition of id that is neither headless
// nor ExternalName hold its external addresses, noting them in touched; it
// reports whether it has problems with them.
func (c *buildCache) holdExternal(id string, touched map[netip.Addr]bool) bool {
	var e *svcEntry
	for _, x := range c.byID[id] {
		if x.skip == "" && (e == nil || olderService(x.svc, e.svc) < 0) {
			e = x
		}
	}
	if e == nil {
		return false
	}
	c.extHolder[id] = e
	for _, a := range e.ext {
		c.extIPOwners[a] = insertByAge(c.extIPOwners[a], e)
		e.extHeld = append(e.extHeld, a)
		touched[a] = true
	}
	if len(e.extProbs) > 0 {
		c.extTroubled[e] = true
		return true
	}
	return false
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
// judged against a.
func (c *buildCache) settleOwner(a netip.Addr, lists map[netip.Addr][]*svcEntry, owners map[netip.Addr]string, dirty *dirtyList) {
	owner := ""
	if cl := lists[a]; len(cl) > 0 {
		owner = cl[0].id
	}
	if owner == owners[a] {
		return
	}
	if owner == "" {
		delete(owners, a)
	} else {
		owners[a] = owner
	}
	for _, e := range c.byEndpointAddr[a] {
		dirty.mark(e)
	}
}
