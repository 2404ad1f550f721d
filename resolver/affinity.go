package resolver

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultAffinityTimeout is sessionAffinityConfig.clientIP.timeoutSeconds
// when a Service does not say (the API's default, 3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// DefaultMaxAffinityClients is how many clients one Service port with ClientIP
// session affinity remembers (see [MaxAffinityClients]). A node's clients are
// its own pods (the kubelet's default maxPods is 110) and host processes, so
// 8192 is far above what a real node needs, while a flood of spoofed source
// addresses (IPv6 gives an attacker plenty) costs at most about 1.4 MB per
// sticky Service port (176 bytes a client, measured by
// BenchmarkAffinityTableMemory). When the table is full the client seen least
// recently is forgotten and simply balanced anew on its next connection, as
// in kube-proxy's iptables mode, whose xt_recent lists keep 100 addresses
// each by default (ip_list_tot, see iptables-extensions(8)).
const DefaultMaxAffinityClients = 8192

// affinityTable remembers, for ClientIP session affinity, which endpoint
// each client was last sent to. It is the one piece of mutable state a
// ServicePort holds besides the round-robin cursor, and like the cursor it
// is carried from one snapshot to the next, so a table rebuild does not
// move clients.
//
// Its entries form a list from the most to the least recently seen client.
// As every entry of a table has the same timeout, that is also the order in
// which they expire: each pick drops the expired ones from the cold end, so
// the table holds only clients seen within the timeout (at most max), however
// few or many new clients arrive. A table no one connects to keeps its
// entries until its Service port goes away with the snapshot.
//
// Its mutex is a data-plane lock: taken once per new connection to this one
// Service port, never by the control plane while it builds a snapshot.
type affinityTable struct {
	mu      sync.Mutex // guards clients and lru
	clients map[netip.Addr]*affinityEntry
	lru     affinityEntry // sentinel: lru.next is the most recent client, lru.prev the least
	max     int

	// n is len(clients), for metrics that must not take mu.
	n atomic.Int64
}

type affinityEntry struct {
	client     netip.Addr
	ep         netip.AddrPort
	last       time.Time // the client's last new connection: the window slides
	prev, next *affinityEntry
}

func newAffinityTable(max int) *affinityTable {
	if max <= 0 {
		max = DefaultMaxAffinityClients
	}
	t := &affinityTable{clients: make(map[netip.Addr]*affinityEntry), max: max}
	t.lru.prev, t.lru.next = &t.lru, &t.lru
	return t
}

// pick returns the client's endpoint if it has one that is younger than
// timeout and still in usable; otherwise next() picks one, which is then
// remembered. Either way the client's window starts again at now.
func (t *affinityTable) pick(client netip.Addr, usable []Endpoint, timeout time.Duration, now time.Time, next func() (Endpoint, bool)) (Endpoint, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(now, timeout)
	if e, ok := t.clients[client]; ok {
		for _, ep := range usable {
			if ep.Addr == e.ep {
				t.touch(e, now)
				return ep, true
			}
		}
	}
	ep, ok := next()
	if !ok {
		if e, ok := t.clients[client]; ok {
			t.remove(e)
		}
		return ep, false
	}
	t.remember(client, ep.Addr, now)
	return ep, true
}

// rebind is for a retry after the client's endpoint failed: the client
// moves to ep.
func (t *affinityTable) rebind(client netip.Addr, ep netip.AddrPort, now time.Time, timeout time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(now, timeout)
	t.remember(client, ep, now)
}

// len returns the number of clients remembered, without taking the lock.
func (t *affinityTable) len() int { return int(t.n.Load()) }

// remember binds client to ep from now on, forgetting the least recently
// seen client if the table is full.
func (t *affinityTable) remember(client netip.Addr, ep netip.AddrPort, now time.Time) {
	if e, ok := t.clients[client]; ok {
		e.ep = ep
		t.touch(e, now)
		return
	}
	if len(t.clients) >= t.max {
		t.remove(t.lru.prev)
	}
	e := &affinityEntry{client: client, ep: ep, last: now}
	t.clients[client] = e
	t.pushFront(e)
	t.n.Store(int64(len(t.clients)))
}

// expire forgets the clients not seen within timeout: they are at the cold
// end of the list.
func (t *affinityTable) expire(now time.Time, timeout time.Duration) {
	for e := t.lru.prev; e != &t.lru && now.Sub(e.last) > timeout; e = t.lru.prev {
		t.remove(e)
	}
}

func (t *affinityTable) touch(e *affinityEntry, now time.Time) {
	e.last = now
	e.prev.next, e.next.prev = e.next, e.prev
	t.pushFront(e)
}

func (t *affinityTable) pushFront(e *affinityEntry) {
	e.prev, e.next = &t.lru, t.lru.next
	t.lru.next.prev = e
	t.lru.next = e
}

func (t *affinityTable) remove(e *affinityEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(t.clients, e.client)
	t.n.Store(int64(len(t.clients)))
}
