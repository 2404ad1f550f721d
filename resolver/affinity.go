package resolver

import (
	"net/netip"
	"sync"
	"time"
)

// DefaultAffinityTimeout is sessionAffinityConfig.clientIP.timeoutSeconds
// when a Service does not say (the API's default, 3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// affinityTable remembers, for ClientIP session affinity, which endpoint
// each client was last sent to. It is the one piece of mutable state a
// ServicePort holds besides the round-robin cursor, and like the cursor it
// is carried from one snapshot to the next, so a table rebuild does not
// move clients.
//
// Its mutex is a data-plane lock: taken once per new connection to this one
// Service port, never by the control plane while it builds a snapshot.
type affinityTable struct {
	mu      sync.Mutex // guards clients and inserts
	clients map[netip.Addr]affinityEntry
	inserts int // since the last sweep of expired entries
}

type affinityEntry struct {
	ep   netip.AddrPort
	last time.Time // the client's last new connection: the window slides
}

// sweepEvery is how many new clients trigger a sweep of expired entries, so
// the table's size stays bounded by the clients seen within the timeout.
const sweepEvery = 1024

func newAffinityTable() *affinityTable {
	return &affinityTable{clients: make(map[netip.Addr]affinityEntry)}
}

// pick returns the client's endpoint if it has one that is younger than
// timeout and still in usable; otherwise next() picks one, which is then
// remembered. Either way the client's window starts again at now.
func (t *affinityTable) pick(client netip.Addr, usable []Endpoint, timeout time.Duration, now time.Time, next func() (Endpoint, bool)) (Endpoint, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.clients[client]; ok && now.Sub(e.last) <= timeout {
		for _, ep := range usable {
			if ep.Addr == e.ep {
				t.clients[client] = affinityEntry{ep: e.ep, last: now}
				return ep, true
			}
		}
	}
	ep, ok := next()
	if !ok {
		delete(t.clients, client)
		return ep, false
	}
	t.remember(client, ep.Addr, now, timeout)
	return ep, true
}

// remember binds client to ep from now on.
func (t *affinityTable) remember(client netip.Addr, ep netip.AddrPort, now time.Time, timeout time.Duration) {
	if _, ok := t.clients[client]; !ok {
		t.inserts++
		if t.inserts >= sweepEvery {
			t.inserts = 0
			for c, e := range t.clients {
				if now.Sub(e.last) > timeout {
					delete(t.clients, c)
				}
			}
		}
	}
	t.clients[client] = affinityEntry{ep: ep, last: now}
}

// rebind is for a retry after the client's endpoint failed: the client
// moves to ep.
func (t *affinityTable) rebind(client netip.Addr, ep netip.AddrPort, now time.Time, timeout time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.remember(client, ep, now, timeout)
}
