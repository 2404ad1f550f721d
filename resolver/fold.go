package resolver

import (
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
	ipClaims   map[netip.Addr][]*svcEntry // active entries with each ClusterIP, oldest first
	nsCount    map[string]int             // active entries per namespace
	services   int
	endpoints  int

	troubled map[*svcEntry]bool // entries that report a problem
	problems []Problem          // theirs, as last reported
}

// claim is one Service port claiming a portKey.
type claim struct {
	e  *svcEntry
	sp *ServicePort
}

func newFoldState() foldState {
	return foldState{
		portClaims: make(map[portKey][]claim),
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
	}
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
		e.active, e.served, e.claimedPorts, e.claimedIPs = false, false, e.claimedPorts[:0], e.claimedIPs[:0]
	}
	claimFor := func(e *svcEntry) {
		e.active = true
		for i := range e.steps {
			s := &e.steps[i]
			if s.sp == nil {
				continue
			}
			cl := c.portClaims[s.key]
			at := len(cl)
			for at > 0 && olderService(e.svc, cl[at-1].e.svc) < 0 {
				at--
			}
			c.portClaims[s.key] = slices.Insert(cl, at, claim{e, s.sp})
			e.claimedPorts = append(e.claimedPorts, s.key)
			affPorts[s.key] = true
		}
		for _, ip := range e.rec.ClusterIPs {
			cl := c.ipClaims[ip]
			if slices.Contains(cl, e) {
				continue // a ClusterIP listed twice
			}
			at := len(cl)
			for at > 0 && olderService(e.svc, cl[at-1].svc) < 0 {
				at--
			}
			c.ipClaims[ip] = slices.Insert(cl, at, e)
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

	// The ports whose claims changed: their holder, and the ClusterIPs
	// they are on.
	for k := range affPorts {
		old, had := ports.get(k)
		cl := c.portClaims[k]
		for _, x := range cl {
			recheck[x.e] = true
		}
		if had {
			c.endpoints -= len(old.usable)
		}
		if len(cl) == 0 {
			ports.del(k)
		} else {
			ports.set(k, cl[0].sp)
			c.endpoints += len(cl[0].sp.usable)
		}
		affIPs[k.addr.Addr()] = true
	}
	for e := range recheck {
		served := false
		if e.active {
			for _, k := range e.claimedPorts {
				if c.portClaims[k][0].e == e {
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
	}
	for ip := range affIPs {
		cl := c.ipClaims[ip]
		if len(cl) == 0 {
			byIP.del(ip)
		} else {
			byIP.set(ip, cl[0].rec) // the oldest Service names its ClusterIP
		}
		has, usable := false, false
		for _, e := range cl {
			for i := range e.steps {
				s := &e.steps[i]
				if s.sp != nil && s.key.addr.Addr() == ip && c.portClaims[s.key][0].sp == s.sp {
					has, usable = true, usable || len(s.sp.usable) > 0
				}
			}
		}
		if has {
			ips.set(ip, usable)
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
	problems = append(problems, c.problems...)

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
		if s.problem != nil || len(s.problems) > 0 || c.portClaims[s.key][0].sp != s.sp {
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
			if w := c.portClaims[s.key][0]; w.sp != s.sp {
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
