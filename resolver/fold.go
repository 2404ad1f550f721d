package resolver

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// foldState is what the table looks like after the last build, kept so
// that the next one changes only the keys the changed Services hold or
// claim. Where Services claim one name, ClusterIP or port, the oldest
// (creationTimestamp, then namespace/name, then UID) holds it.
type foldState struct {
	cur *Snapshot // the last snapshot built; its shards are the next one's base

	portClaims map[portKey][]claim        // active entries serving each port, oldest first
	portWin    map[portKey]claim          // the claim serving each port
	nodeClaims map[nodePortKey][]claim    // active entries serving each node port, oldest first
	nodeWin    map[nodePortKey]claim      // the claim serving each node port
	addrWin    map[netip.Addr]addrCount   // the ports served on each address
	extAddrs   map[netip.Addr]int         // external ports served on each address
	npCount    map[NodePort]int           // node ports served, for NodePorts
	hcs        map[*svcEntry]HealthCheck  // the health check node port of each served entry
	hcProblems []Problem                  // two Services with one health check node port
	ipClaims   map[netip.Addr][]*svcEntry // active entries with each ClusterIP, oldest first
	nsCount    map[string]int             // active entries per namespace
	services   int
	endpoints  int

	withProblems map[*svcEntry]bool // entries that report a problem
	problems     []Problem          // theirs, as last reported
}

// claim is one Service port claiming a portKey or nodePortKey. A port
// served from outside (an external address, a node port) claims only while
// its ClusterIP port (clusterPort, at clusterKey) is served: a Service
// that lost a ClusterIP port to an older one does not serve it from
// outside either.
type claim struct {
	e           *svcEntry
	sp          *ServicePort
	clusterPort *ServicePort // nil for a ClusterIP port
	clusterKey  portKey
}

// addrCount counts the ports served on an address, and those of them with
// usable endpoints.
type addrCount struct{ n, usable int }

func newFoldState() foldState {
	return foldState{
		portClaims:   make(map[portKey][]claim),
		portWin:      make(map[portKey]claim),
		nodeClaims:   make(map[nodePortKey][]claim),
		nodeWin:      make(map[nodePortKey]claim),
		addrWin:      make(map[netip.Addr]addrCount),
		extAddrs:     make(map[netip.Addr]int),
		npCount:      make(map[NodePort]int),
		hcs:          make(map[*svcEntry]HealthCheck),
		ipClaims:     make(map[netip.Addr][]*svcEntry),
		nsCount:      make(map[string]int),
		withProblems: make(map[*svcEntry]bool),
	}
}

// folding is one fold: the snapshot being made, its writers, and the keys
// whose holders the changed entries may have changed.
type folding struct {
	c    *buildCache
	snap *Snapshot

	ports *writer[portKey, *ServicePort]
	ips   *writer[netip.Addr, bool]
	names *writer[nameKey, nameEntry]
	byIP  *writer[netip.Addr, *ServiceRecord]
	nodes *writer[nodePortKey, *ServicePort]

	affPorts  map[portKey]bool
	affNodes  map[nodePortKey]bool
	affIPs    map[netip.Addr]bool
	recheck   map[*svcEntry]bool // whose problems, serving and health check may have changed
	nsChanged bool
	extDirty  bool // the list of external addresses
	npDirty   bool // the list of node ports
	hcDirty   bool // the health checks
}

// fold makes the next snapshot: the last one with the keys of the touched
// Services worked out again. The result is what folding every entry
// oldest first would give (TestBuildIncrementalMatchesScratch checks it).
func (c *buildCache) fold() (*Snapshot, []Problem) {
	f := c.newFolding()
	for _, e := range c.gone {
		f.withdraw(e)
	}
	for id := range c.touched {
		for _, e := range c.byID[id] {
			f.withdraw(e)
		}
	}
	for id := range c.touched {
		f.claimName(id)
	}
	f.settlePorts()
	f.settleNodePorts()
	for e := range f.recheck {
		f.settleServed(e)
		f.settleHealthCheck(e)
	}
	f.settleAddresses()
	f.settleLists()
	problems := f.problems()
	c.cur = f.snap
	clear(c.touched)
	c.gone = c.gone[:0]
	return f.snap, problems
}

// newFolding starts a fold from the last snapshot's maps.
func (c *buildCache) newFolding() *folding {
	snap := &Snapshot{namespaces: map[string]struct{}{}}
	if b := c.cur; b != nil {
		snap.ports, snap.ips, snap.names, snap.byIP, snap.namespaces = b.ports, b.ips, b.names, b.byIP, b.namespaces
		snap.nodePorts, snap.nodePortList, snap.externalIPs, snap.healthChecks = b.nodePorts, b.nodePortList, b.externalIPs, b.healthChecks
	}
	return &folding{
		c: c, snap: snap,
		ports:    newWriter(&snap.ports, portShard),
		ips:      newWriter(&snap.ips, addrShard),
		names:    newWriter(&snap.names, nameShard),
		byIP:     newWriter(&snap.byIP, addrShard),
		nodes:    newWriter(&snap.nodePorts, nodePortShard),
		affPorts: make(map[portKey]bool),
		affNodes: make(map[nodePortKey]bool),
		affIPs:   make(map[netip.Addr]bool),
		recheck:  make(map[*svcEntry]bool),
	}
}

// withdraw takes back what e claims: its ports, node ports, ClusterIPs and
// its namespace's count.
func (f *folding) withdraw(e *svcEntry) {
	c := f.c
	f.recheck[e] = true
	if !e.active {
		return
	}
	for _, k := range e.claimedPorts {
		deleteClaim(c.portClaims, k, e)
		f.affPorts[k] = true
	}
	for _, k := range e.claimedNodes {
		deleteClaim(c.nodeClaims, k, e)
		f.affNodes[k] = true
	}
	for _, ip := range e.claimedIPs {
		deleteEntry(c.ipClaims, ip, e)
		f.affIPs[ip] = true
	}
	if c.nsCount[e.svc.Namespace]--; c.nsCount[e.svc.Namespace] == 0 {
		delete(c.nsCount, e.svc.Namespace)
		f.nsChanged = true
	}
	if e.served {
		c.services--
	}
	e.active, e.served, e.claimedPorts, e.claimedIPs, e.claimedNodes = false, false, e.claimedPorts[:0], e.claimedIPs[:0], e.claimedNodes[:0]
}

// deleteClaim takes e's claims out of lists[k]; an empty list is deleted.
func deleteClaim[K comparable](lists map[K][]claim, k K, e *svcEntry) {
	if l := slices.DeleteFunc(lists[k], func(x claim) bool { return x.e == e }); len(l) > 0 {
		lists[k] = l
	} else {
		delete(lists, k)
	}
}

// claimName gives Service name id to its oldest definition, which claims
// its ports and ClusterIPs; a name with no definition left loses its DNS
// record.
func (f *folding) claimName(id string) {
	var oldest *svcEntry
	for _, e := range f.c.byID[id] {
		if oldest == nil || olderService(e.svc, oldest.svc) < 0 {
			oldest = e
		}
	}
	if oldest == nil {
		ns, name, _ := strings.Cut(id, "/")
		f.names.del(nameKey{ns, name})
		return
	}
	f.claim(oldest)
	f.names.set(nameKey{oldest.svc.Namespace, oldest.svc.Name}, nameEntry{oldest.rec, oldest.svc})
}

// claim makes e the active definition of its name: each of its steps
// claims its port or node port, and e claims its ClusterIPs.
func (f *folding) claim(e *svcEntry) {
	c := f.c
	e.active = true
	for i := range e.steps {
		s := &e.steps[i]
		if s.sp == nil {
			continue
		}
		x := claim{e: e, sp: s.sp}
		if s.outside {
			x.clusterPort, x.clusterKey = e.steps[s.cluster].sp, e.steps[s.cluster].key
		}
		if s.node {
			c.nodeClaims[s.nkey] = insertClaim(c.nodeClaims[s.nkey], x)
			e.claimedNodes = append(e.claimedNodes, s.nkey)
			f.affNodes[s.nkey] = true
			continue
		}
		c.portClaims[s.key] = insertClaim(c.portClaims[s.key], x)
		e.claimedPorts = append(e.claimedPorts, s.key)
		f.affPorts[s.key] = true
	}
	for _, ip := range e.rec.ClusterIPs {
		cl := c.ipClaims[ip]
		if slices.Contains(cl, e) {
			continue // a ClusterIP listed twice
		}
		c.ipClaims[ip] = insertByAge(cl, e)
		e.claimedIPs = append(e.claimedIPs, ip)
		f.affIPs[ip] = true
	}
	if c.nsCount[e.svc.Namespace]++; c.nsCount[e.svc.Namespace] == 1 {
		f.nsChanged = true
	}
}

// settlePorts picks the winner of every port whose claims changed, and of
// the ports served from outside through a ClusterIP port whose winner
// changed (they are queued as it changes), and counts what each address
// serves.
func (f *folding) settlePorts() {
	c := f.c
	memo := make(map[portKey]claim)
	queue := slices.Collect(maps.Keys(f.affPorts))
	done := make(map[portKey]bool)
	for len(queue) > 0 {
		k := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if done[k] {
			continue
		}
		done[k] = true
		for _, x := range c.portClaims[k] {
			f.recheck[x.e] = true
		}
		old, had := c.portWin[k]
		w := c.winner(k, memo)
		if had == (w.sp != nil) && old.sp == w.sp && old.e == w.e {
			continue
		}
		f.affIPs[k.addr.Addr()] = true
		if had {
			queue = f.queueOutside(old, queue)
			f.count(k, old, -1)
		}
		if w.sp == nil {
			delete(c.portWin, k)
			f.ports.del(k)
			continue
		}
		queue = f.queueOutside(w, queue)
		c.portWin[k] = w
		f.count(k, w, 1)
		f.ports.set(k, w.sp)
	}
}

// queueOutside queues the ports that serve x's ClusterIP port from outside:
// external addresses on queue (returned), node ports in affNodes.
func (f *folding) queueOutside(x claim, queue []portKey) []portKey {
	for _, d := range x.e.outsideOf(x.sp) {
		if d.node {
			f.affNodes[d.nkey] = true
		} else {
			queue = append(queue, d.key)
		}
	}
	return queue
}

// settleNodePorts picks the winner of every node port whose claims, or
// whose claims' ClusterIP ports, changed: the oldest that claims.
func (f *folding) settleNodePorts() {
	c := f.c
	for k := range f.affNodes {
		var w claim
		for _, x := range c.nodeClaims[k] {
			f.recheck[x.e] = true
			if w.sp == nil && c.live(x) {
				w = x
			}
		}
		old, had := c.nodeWin[k]
		if had == (w.sp != nil) && old.sp == w.sp && old.e == w.e {
			continue
		}
		if had {
			f.countNodePort(NodePort{Protocol: k.proto, Port: k.port, Service: old.sp.Service}, -1)
		}
		if w.sp == nil {
			delete(c.nodeWin, k)
			f.nodes.del(k)
			continue
		}
		c.nodeWin[k] = w
		f.nodes.set(k, w.sp)
		f.countNodePort(NodePort{Protocol: k.proto, Port: k.port, Service: w.sp.Service}, 1)
	}
}

// countNodePort adds (d 1) or takes (d -1) np to the node ports served.
func (f *folding) countNodePort(np NodePort, d int) {
	c := f.c
	c.npCount[np] += d
	switch c.npCount[np] {
	case 0:
		delete(c.npCount, np)
		f.npDirty = true
	case d:
		f.npDirty = true // the first
	}
}

// settleServed counts e among the Services served if it serves a
// ClusterIP port.
func (f *folding) settleServed(e *svcEntry) {
	c := f.c
	served := false
	if e.active {
		for i := range e.steps {
			s := &e.steps[i]
			if s.sp != nil && !s.outside && c.portWin[s.key].sp == s.sp {
				served = true
				break
			}
		}
	}
	if served == e.served {
		return
	}
	e.served = served
	if served {
		c.services++
	} else {
		c.services--
	}
}

// settleHealthCheck brings e's health check node port up to date.
func (f *folding) settleHealthCheck(e *svcEntry) {
	c := f.c
	hc, ok := e.healthCheck(c)
	if old, had := c.hcs[e]; had == ok && old == hc {
		return
	}
	f.hcDirty = true
	if ok {
		c.hcs[e] = hc
	} else {
		delete(c.hcs, e)
	}
}

// settleAddresses updates, for every address whose ports or ClusterIP
// holders changed, the Service that names it and whether it answers.
func (f *folding) settleAddresses() {
	c := f.c
	for ip := range f.affIPs {
		if cl := c.ipClaims[ip]; len(cl) == 0 {
			f.byIP.del(ip)
		} else {
			f.byIP.set(ip, cl[0].rec) // the oldest Service names its ClusterIP
		}
		if n := c.addrWin[ip]; n.n > 0 {
			f.ips.set(ip, n.usable > 0)
		} else {
			f.ips.del(ip)
		}
	}
}

// settleLists makes again the snapshot's lists whose contents changed:
// namespaces, external addresses, node ports and health checks.
func (f *folding) settleLists() {
	c, snap := f.c, f.snap
	if f.nsChanged {
		snap.namespaces = make(map[string]struct{}, len(c.nsCount))
		for ns := range c.nsCount {
			snap.namespaces[ns] = struct{}{}
		}
	}
	snap.services, snap.endpoints = c.services, c.endpoints
	if f.extDirty {
		snap.externalIPs = slices.SortedFunc(maps.Keys(c.extAddrs), netip.Addr.Compare)
	}
	if f.npDirty {
		snap.nodePortList = slices.SortedFunc(maps.Keys(c.npCount), func(a, b NodePort) int {
			return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Service, b.Service))
		})
	}
	if f.hcDirty {
		snap.healthChecks, c.hcProblems = healthChecks(slices.Collect(maps.Values(c.hcs)))
	}
}

// problems lists the build's problems: the slices that serve no Service,
// external addresses, the entries' (worked out again only when an entry
// that has or may have one changed), and health check node ports.
func (f *folding) problems() []Problem {
	c := f.c
	again := false
	for _, e := range c.gone {
		if c.withProblems[e] {
			delete(c.withProblems, e)
			again = true
		}
	}
	for e := range f.recheck {
		if e.retired {
			continue
		}
		has := e.hasProblems(c)
		if has || c.withProblems[e] {
			again = true
		}
		if has {
			c.withProblems[e] = true
		} else {
			delete(c.withProblems, e)
		}
	}
	if again {
		c.problems = c.entryProblems()
	}
	var problems []Problem
	for _, e := range slices.SortedFunc(maps.Keys(c.noService), bySliceName) {
		problems = append(problems, e.problem)
	}
	problems = append(problems, c.extProblems...)
	problems = append(problems, c.problems...)
	problems = append(problems, c.hcProblems...)
	return once(problems)
}

// bySliceName orders slice entries by namespace/name, then UID.
func bySliceName(a, b *sliceEntry) int {
	return cmp.Or(cmp.Compare(a.es.Namespace, b.es.Namespace), cmp.Compare(a.es.Name, b.es.Name), cmp.Compare(a.es.UID, b.es.UID))
}

// hasProblems reports whether e has a problem to report.
func (e *svcEntry) hasProblems(c *buildCache) bool {
	if !e.active {
		return true
	}
	for i := range e.steps {
		s := &e.steps[i]
		if s.problem != nil || len(s.problems) > 0 {
			return true
		}
		if s.sp != nil && !s.node && c.portWin[s.key].sp != s.sp || s.node && c.nodeWin[s.nkey].sp != s.sp {
			return true
		}
	}
	return false
}

// entryProblems lists the problems of the entries that have some, as a
// fold of every entry oldest first reports them.
func (c *buildCache) entryProblems() []Problem {
	list := slices.SortedFunc(maps.Keys(c.withProblems), olderEntry)
	var problems []Problem
	conflicts := newConflicts()
	for _, e := range list {
		if !e.active {
			problems = append(problems, Problem{"Service " + e.id, "defined twice; using the older definition"})
			continue
		}
		for i := range e.steps {
			problems = c.stepProblems(e, &e.steps[i], problems, conflicts)
		}
	}
	return append(problems, conflicts.problems()...)
}

// stepProblems appends the problems of step s of e, or notes the older
// Service that took its port from it.
func (c *buildCache) stepProblems(e *svcEntry, s *step, problems []Problem, conflicts *conflicts) []Problem {
	switch {
	case s.problem != nil:
		return append(problems, *s.problem)
	case s.outside && c.portWin[e.steps[s.cluster].key].sp != e.steps[s.cluster].sp:
		return problems // its ClusterIP port is another's: not claimed
	case s.node:
		if w := c.nodeWin[s.nkey]; w.sp != s.sp {
			conflicts.add(e.svc, w.e.svc, fmt.Sprintf("%s nodePort %d", s.nkey.proto, s.nkey.port))
		}
		return problems
	}
	if w := c.portWin[s.key]; w.sp != s.sp {
		conflicts.add(e.svc, w.e.svc, fmt.Sprintf("%s %s", s.key.proto, s.key.addr))
		return problems
	}
	return append(problems, s.problems...)
}

// nameEntry is a Service's DNS record and the Service it comes from.
type nameEntry struct {
	rec *ServiceRecord
	svc *corev1.Service
}

// insertClaim inserts x into cl, oldest first; after the claims of its own
// entry, which come in the order of its steps.
func insertClaim(cl []claim, x claim) []claim {
	at := len(cl)
	for at > 0 && olderService(x.e.svc, cl[at-1].e.svc) < 0 {
		at--
	}
	return slices.Insert(cl, at, x)
}

// live reports whether x claims: its ClusterIP port, if it serves one from
// outside, is served. Only while settlePorts runs may portWin lag; fold
// asks only after it.
func (c *buildCache) live(x claim) bool {
	return x.clusterPort == nil || c.portWin[x.clusterKey].sp == x.clusterPort
}

// winner returns the claim serving k: the oldest that claims. A claim
// serving a ClusterIP port from outside is judged by that port's winner,
// worked out again here (memo keeps each key's): that port's claims all
// come before the dependent's in the order of Services and steps, so this
// ends.
func (c *buildCache) winner(k portKey, memo map[portKey]claim) claim {
	if w, ok := memo[k]; ok {
		return w
	}
	var w claim
	for _, x := range c.portClaims[k] {
		if x.clusterPort == nil || c.winner(x.clusterKey, memo).sp == x.clusterPort {
			w = x
			break
		}
	}
	memo[k] = w
	return w
}

// count adds (d 1) or takes (d -1) w, serving k, to the counts of what is
// served on each address.
func (f *folding) count(k portKey, w claim, d int) {
	c := f.c
	a := k.addr.Addr()
	n := c.addrWin[a]
	n.n += d
	if len(w.sp.usable) > 0 {
		n.usable += d
	}
	if n.n == 0 {
		delete(c.addrWin, a)
	} else {
		c.addrWin[a] = n
	}
	if w.clusterPort == nil {
		c.endpoints += d * len(w.sp.usable)
		return
	}
	c.extAddrs[a] += d
	switch c.extAddrs[a] {
	case 0:
		delete(c.extAddrs, a)
		f.extDirty = true
	case d:
		f.extDirty = true // the first
	}
}

// outsideOf returns the steps of e that serve its ClusterIP port sp from
// outside.
func (e *svcEntry) outsideOf(sp *ServicePort) []*step {
	var out []*step
	for i := range e.steps {
		if e.steps[i].sp != sp || e.steps[i].outside {
			continue
		}
		for j := i + 1; j < len(e.steps) && e.steps[j].outside && e.steps[j].cluster == i; j++ {
			out = append(out, &e.steps[j])
		}
		break
	}
	return out
}

// healthCheck returns e's health check node port, if it serves one: a
// served Service with externalTrafficPolicy: Local and a
// healthCheckNodePort, with its ready endpoints on this node, counted by
// address over the ports it serves.
func (e *svcEntry) healthCheck(c *buildCache) (HealthCheck, bool) {
	svc := e.svc
	if !e.active || !e.served || e.retired || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 {
		return HealthCheck{}, false
	}
	local := make(map[netip.Addr]bool)
	for i := range e.steps {
		s := &e.steps[i]
		if s.sp != nil && !s.outside && c.portWin[s.key].sp == s.sp {
			for _, a := range s.local {
				local[a] = true
			}
		}
	}
	return HealthCheck{Namespace: svc.Namespace, Name: svc.Name, Port: uint16(svc.Spec.HealthCheckNodePort), LocalEndpoints: len(local)}, true
}

// healthChecks sorts list by port, then name, and keeps the first of each
// port, reporting the others.
func healthChecks(list []HealthCheck) ([]HealthCheck, []Problem) {
	var problems []Problem
	slices.SortFunc(list, func(a, b HealthCheck) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	// Two Services with one health check node port: the apiserver never
	// allocates that; keep the first by port, then name.
	list = slices.CompactFunc(list, func(a, b HealthCheck) bool {
		if a.Port == b.Port {
			problems = append(problems, Problem{"Service " + b.Namespace + "/" + b.Name,
				fmt.Sprintf("healthCheckNodePort %d already served for Service %s/%s; ignored", b.Port, a.Namespace, a.Name)})
			return true
		}
		return false
	})
	if len(list) == 0 {
		list = nil
	}
	return list, problems
}
