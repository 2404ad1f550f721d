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

// foldState is what the table looks like after the last Build, kept so
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

	troubled map[*svcEntry]bool // entries that report a problem
	problems []Problem          // theirs, as last reported
}

// claim is one Service port claiming a portKey or nodePortKey. An
// external port or node port claims only while its ClusterIP port dep
// (at depKey) is served: a Service that lost a ClusterIP port to an older
// one does not serve it from outside either.
type claim struct {
	e      *svcEntry
	sp     *ServicePort
	dep    *ServicePort
	depKey portKey
}

// addrCount counts the ports served on an address, and those of them with
// usable endpoints.
type addrCount struct{ n, usable int }

func newFoldState() foldState {
	return foldState{
		portClaims: make(map[portKey][]claim),
		portWin:    make(map[portKey]claim),
		nodeClaims: make(map[nodePortKey][]claim),
		nodeWin:    make(map[nodePortKey]claim),
		addrWin:    make(map[netip.Addr]addrCount),
		extAddrs:   make(map[netip.Addr]int),
		npCount:    make(map[NodePort]int),
		hcs:        make(map[*svcEntry]HealthCheck),
		ipClaims:   make(map[netip.Addr][]*svcEntry),
		nsCount:    make(map[string]int),
		troubled:   make(map[*svcEntry]bool),
	}
}

// fold makes the next snapshot: the last one with the keys of the touched
// Services worked out again. The result is what folding every entry
// oldest first would give (TestBuildIncrementalMatchesScratch checks it).
func (c *buildCache) fold() (*Snapshot, []Problem) {
	snap := &Snapshot{namespaces: map[string]struct{}{}}
	if b := c.cur; b != nil {
		snap.ports, snap.ips, snap.names, snap.byIP, snap.namespaces = b.ports, b.ips, b.names, b.byIP, b.namespaces
		snap.nodePorts, snap.nodePortList, snap.externalIPs, snap.healthChecks = b.nodePorts, b.nodePortList, b.externalIPs, b.healthChecks
	}
	nodes := newWriter(&snap.nodePorts, nodePortShard)
	affNodes := make(map[nodePortKey]bool)
	extDirty, npDirty, hcDirty := false, false, false
	ports := newWriter(&snap.ports, portShard)
	ips := newWriter(&snap.ips, addrShard)
	names := newWriter(&snap.names, nameShard)
	byIP := newWriter(&snap.byIP, addrShard)

	affPorts := make(map[portKey]bool)
	affIPs := make(map[netip.Addr]bool)
	recheck := make(map[*svcEntry]bool) // whose problems may have changed
	nsChanged := false

	withdraw := func(e *svcEntry) {
		recheck[e] = true
		if !e.active {
			return
		}
		for _, k := range e.claimedPorts {
			c.portClaims[k] = slices.DeleteFunc(c.portClaims[k], func(x claim) bool { return x.e == e })
			if len(c.portClaims[k]) == 0 {
				delete(c.portClaims, k)
			}
			affPorts[k] = true
		}
		for _, k := range e.claimedNodes {
			c.nodeClaims[k] = slices.DeleteFunc(c.nodeClaims[k], func(x claim) bool { return x.e == e })
			if len(c.nodeClaims[k]) == 0 {
				delete(c.nodeClaims, k)
			}
			affNodes[k] = true
		}
		for _, ip := range e.claimedIPs {
			c.ipClaims[ip] = slices.DeleteFunc(c.ipClaims[ip], func(x *svcEntry) bool { return x == e })
			if len(c.ipClaims[ip]) == 0 {
				delete(c.ipClaims, ip)
			}
			affIPs[ip] = true
		}
		if c.nsCount[e.svc.Namespace]--; c.nsCount[e.svc.Namespace] == 0 {
			delete(c.nsCount, e.svc.Namespace)
			nsChanged = true
		}
		if e.served {
			c.services--
		}
		e.active, e.served, e.claimedPorts, e.claimedIPs, e.claimedNodes = false, false, e.claimedPorts[:0], e.claimedIPs[:0], e.claimedNodes[:0]
	}
	claimFor := func(e *svcEntry) {
		e.active = true
		for i := range e.steps {
			s := &e.steps[i]
			if s.sp == nil {
				continue
			}
			x := claim{e: e, sp: s.sp}
			if s.parent > 0 {
				x.dep, x.depKey = e.steps[s.parent-1].sp, e.steps[s.parent-1].key
			}
			if s.node {
				c.nodeClaims[s.nkey] = insertClaim(c.nodeClaims[s.nkey], x)
				e.claimedNodes = append(e.claimedNodes, s.nkey)
				affNodes[s.nkey] = true
				continue
			}
			c.portClaims[s.key] = insertClaim(c.portClaims[s.key], x)
			e.claimedPorts = append(e.claimedPorts, s.key)
			affPorts[s.key] = true
		}
		for _, ip := range e.rec.ClusterIPs {
			cl := c.ipClaims[ip]
			if slices.Contains(cl, e) {
				continue // a ClusterIP listed twice
			}
			c.ipClaims[ip] = insertByAge(cl, e)
			e.claimedIPs = append(e.claimedIPs, ip)
			affIPs[ip] = true
		}
		if c.nsCount[e.svc.Namespace]++; c.nsCount[e.svc.Namespace] == 1 {
			nsChanged = true
		}
	}

	for _, e := range c.gone {
		withdraw(e)
	}
	for id := range c.touched {
		for _, e := range c.byID[id] {
			withdraw(e)
		}
	}
	for id := range c.touched {
		var oldest *svcEntry
		for _, e := range c.byID[id] {
			if oldest == nil || olderService(e.svc, oldest.svc) < 0 {
				oldest = e
			}
		}
		if oldest == nil {
			ns, name, _ := strings.Cut(id, "/")
			names.del(nameKey{ns, name})
			continue
		}
		claimFor(oldest)
		names.set(nameKey{oldest.svc.Namespace, oldest.svc.Name}, nameEntry{oldest.rec, oldest.svc})
	}

	// The ports whose claims changed, and those whose claims depend on a
	// port whose holder changed: their holder, and the addresses they are on.
	memo := make(map[portKey]claim)
	queue := slices.Collect(maps.Keys(affPorts))
	var nodeQueue []nodePortKey
	for k := range affNodes {
		nodeQueue = append(nodeQueue, k)
	}
	push := func(x claim) {
		for _, d := range x.e.dependents(x.sp) {
			if d.node {
				nodeQueue = append(nodeQueue, d.nkey)
			} else {
				queue = append(queue, d.key)
			}
		}
	}
	done := make(map[portKey]bool)
	for len(queue) > 0 {
		k := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if done[k] {
			continue
		}
		done[k] = true
		for _, x := range c.portClaims[k] {
			recheck[x.e] = true
		}
		old, had := c.portWin[k]
		w := c.winner(k, memo)
		if had == (w.sp != nil) && old.sp == w.sp && old.e == w.e {
			continue
		}
		affIPs[k.addr.Addr()] = true
		if had {
			push(old)
			c.count(k, old, -1, &extDirty)
		}
		if w.sp == nil {
			delete(c.portWin, k)
			ports.del(k)
			continue
		}
		push(w)
		c.portWin[k] = w
		c.count(k, w, 1, &extDirty)
		ports.set(k, w.sp)
	}
	doneNodes := make(map[nodePortKey]bool)
	for _, k := range nodeQueue {
		if doneNodes[k] {
			continue
		}
		doneNodes[k] = true
		var w claim
		for _, x := range c.nodeClaims[k] {
			recheck[x.e] = true
			if w.sp == nil && c.live(x) {
				w = x
			}
		}
		old, had := c.nodeWin[k]
		if had == (w.sp != nil) && old.sp == w.sp && old.e == w.e {
			continue
		}
		if had {
			np := NodePort{Protocol: k.proto, Port: k.port, Service: old.sp.Service}
			if c.npCount[np]--; c.npCount[np] == 0 {
				delete(c.npCount, np)
				npDirty = true
			}
		}
		if w.sp == nil {
			delete(c.nodeWin, k)
			nodes.del(k)
			continue
		}
		c.nodeWin[k] = w
		nodes.set(k, w.sp)
		np := NodePort{Protocol: k.proto, Port: k.port, Service: w.sp.Service}
		if c.npCount[np]++; c.npCount[np] == 1 {
			npDirty = true
		}
	}
	for e := range recheck {
		served := false
		if e.active {
			for i := range e.steps {
				s := &e.steps[i]
				if s.sp != nil && s.parent == 0 && c.portWin[s.key].sp == s.sp {
					served = true
					break
				}
			}
		}
		if served != e.served {
			e.served = served
			if served {
				c.services++
			} else {
				c.services--
			}
		}
		hc, ok := e.healthCheck(c)
		if old, had := c.hcs[e]; had != ok || old != hc {
			hcDirty = true
			if ok {
				c.hcs[e] = hc
			} else {
				delete(c.hcs, e)
			}
		}
	}
	for ip := range affIPs {
		cl := c.ipClaims[ip]
		if len(cl) == 0 {
			byIP.del(ip)
		} else {
			byIP.set(ip, cl[0].rec) // the oldest Service names its ClusterIP
		}
		if n := c.addrWin[ip]; n.n > 0 {
			ips.set(ip, n.usable > 0)
		} else {
			ips.del(ip)
		}
	}
	if nsChanged {
		snap.namespaces = make(map[string]struct{}, len(c.nsCount))
		for ns := range c.nsCount {
			snap.namespaces[ns] = struct{}{}
		}
	}
	snap.services, snap.endpoints = c.services, c.endpoints
	if extDirty {
		snap.externalIPs = slices.SortedFunc(maps.Keys(c.extAddrs), netip.Addr.Compare)
	}
	if npDirty {
		snap.nodePortList = slices.SortedFunc(maps.Keys(c.npCount), func(a, b NodePort) int {
			return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Service, b.Service))
		})
	}
	if hcDirty {
		snap.healthChecks, c.hcProblems = healthChecks(slices.Collect(maps.Values(c.hcs)))
	}

	// Problems: worked out again only when an entry that has or may have
	// one changed.
	again := false
	for _, e := range c.gone {
		if c.troubled[e] {
			delete(c.troubled, e)
			again = true
		}
	}
	for e := range recheck {
		if c.svcs[e.svc] != e {
			continue // gone
		}
		t := e.troubled(c)
		if t || c.troubled[e] {
			again = true
		}
		if t {
			c.troubled[e] = true
		} else {
			delete(c.troubled, e)
		}
	}
	if again {
		c.problems = c.entryProblems()
	}
	var problems []Problem
	if len(c.bad) > 0 {
		for _, es := range byName(slices.Collect(maps.Keys(c.bad))) {
			problems = append(problems, c.slices[es].problem)
		}
	}
	problems = append(problems, c.extProblems...)
	problems = append(problems, c.problems...)
	problems = append(problems, c.hcProblems...)

	c.cur = snap
	clear(c.touched)
	c.gone = c.gone[:0]
	return snap, once(problems)
}

// troubled reports whether e has a problem to report.
func (e *svcEntry) troubled(c *buildCache) bool {
	if !e.active || e.copies > 0 {
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

// entryProblems lists the problems of the troubled entries as a fold of
// every entry oldest first reports them.
func (c *buildCache) entryProblems() []Problem {
	list := slices.SortedFunc(maps.Keys(c.troubled), func(a, b *svcEntry) int { return olderService(a.svc, b.svc) })
	var problems []Problem
	conflicts := newConflicts()
	for _, e := range list {
		if !e.active {
			problems = append(problems, Problem{"Service " + e.id, "defined twice; using the older definition"})
			continue
		}
		for i := range e.steps {
			s := &e.steps[i]
			if s.problem != nil {
				problems = append(problems, *s.problem)
				continue
			}
			if s.parent > 0 && c.portWin[e.steps[s.parent-1].key].sp != e.steps[s.parent-1].sp {
				continue // its ClusterIP port is another's: not claimed
			}
			if s.node {
				if w := c.nodeWin[s.nkey]; w.sp != s.sp {
					conflicts.add(e.svc, w.e.svc, fmt.Sprintf("%s nodePort %d", s.nkey.proto, s.nkey.port))
				}
				continue
			}
			if w := c.portWin[s.key]; w.sp != s.sp {
				conflicts.add(e.svc, w.e.svc, fmt.Sprintf("%s %s", s.key.proto, s.key.addr))
				continue
			}
			problems = append(problems, s.problems...)
		}
		for range e.copies {
			problems = append(problems, Problem{"Service " + e.id, "defined twice; using the older definition"})
		}
	}
	return append(problems, conflicts.problems()...)
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

// live reports whether x claims: its ClusterIP port, if it depends on
// one, is served. Only while the port worklist of fold runs may portWin
// lag; fold asks only after it.
func (c *buildCache) live(x claim) bool {
	return x.dep == nil || c.portWin[x.depKey].sp == x.dep
}

// winner returns the claim serving k: the oldest that claims. A claim
// depending on a ClusterIP port is judged by that port's winner, worked out
// again here (memo keeps each key's): that port's claims all come before
// the dependent's in the order of Services and steps, so this ends.
func (c *buildCache) winner(k portKey, memo map[portKey]claim) claim {
	if w, ok := memo[k]; ok {
		return w
	}
	var w claim
	for _, x := range c.portClaims[k] {
		if x.dep == nil || c.winner(x.depKey, memo).sp == x.dep {
			w = x
			break
		}
	}
	memo[k] = w
	return w
}

// count adds (d 1) or takes (d -1) w, serving k, to the counts of what is
// served on each address.
func (c *buildCache) count(k portKey, w claim, d int, extDirty *bool) {
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
	if w.dep == nil {
		c.endpoints += d * len(w.sp.usable)
		return
	}
	c.extAddrs[a] += d
	switch c.extAddrs[a] {
	case 0:
		delete(c.extAddrs, a)
		*extDirty = true
	case d:
		*extDirty = true // the first
	}
}

// dependents returns the steps of e that depend on its ClusterIP port sp.
func (e *svcEntry) dependents(sp *ServicePort) []*step {
	var out []*step
	for i := range e.steps {
		if e.steps[i].sp != sp || e.steps[i].parent != 0 {
			continue
		}
		for j := i + 1; j < len(e.steps) && e.steps[j].parent == i+1; j++ {
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
	if !e.active || !e.served || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 || c.svcs[svc] != e {
		return HealthCheck{}, false
	}
	local := make(map[netip.Addr]bool)
	for i := range e.steps {
		s := &e.steps[i]
		if s.sp != nil && s.parent == 0 && c.portWin[s.key].sp == s.sp {
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
