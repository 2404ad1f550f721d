package dns

import (
	"cmp"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/kubetun/kubetun/resolver"
)

// endpointIndex maps every endpoint address of one snapshot to the one
// Service and endpoint its PTR record names. CoreDNS answers the reverse
// name of any Service's endpoint (its own reverse index over all
// Endpoints), with the name the forward records give it:
// <hostname or dashed address>.<svc>.<ns>.svc.<domain>.
type endpointIndex struct {
	snap   *resolver.Snapshot
	owners map[netip.Addr]endpointOwner
}

// endpointOwner is one endpoint and its Service: rec.Endpoints[i]. An
// index rather than a copy keeps a map of every endpoint small.
type endpointOwner struct {
	rec *resolver.ServiceRecord
	i   int
}

func (o endpointOwner) endpoint() resolver.EndpointRecord { return o.rec.Endpoints[o.i] }

// newEndpointIndex indexes snap's endpoints. When an address serves several
// Services, the PTR record names one, the same whatever order the snapshot
// lists them in (see before).
func newEndpointIndex(snap *resolver.Snapshot) *endpointIndex {
	n := 0
	for rec := range snap.ServiceRecords() {
		n += len(rec.Endpoints)
	}
	idx := &endpointIndex{snap: snap, owners: make(map[netip.Addr]endpointOwner, n)}
	for rec := range snap.ServiceRecords() {
		for i, ep := range rec.Endpoints {
			o := endpointOwner{rec, i}
			if cur, ok := idx.owners[ep.Addr]; !ok || o.before(cur) {
				idx.owners[ep.Addr] = o
			}
		}
	}
	return idx
}

// before orders the owners of one address: an endpoint with a hostname
// first (the name the pod chose, spec 2.4.1, e.g. a StatefulSet's web-0
// under its governing Service), then by namespace and name.
func (o endpointOwner) before(p endpointOwner) bool {
	oh, ph := o.endpoint().Hostname != "", p.endpoint().Hostname != ""
	if oh != ph {
		return oh
	}
	return cmp.Or(
		cmp.Compare(o.rec.Namespace, p.rec.Namespace),
		cmp.Compare(o.rec.Name, p.rec.Name),
	) < 0
}

// lookup returns the owner of ip.
func (idx *endpointIndex) lookup(ip netip.Addr) (endpointOwner, bool) {
	o, ok := idx.owners[ip]
	return o, ok
}

// endpointCache keeps the index of the latest snapshot asked about, so it
// is built once per snapshot, on the first reverse question after a change,
// not on every one. Questions read it without locking; those that find it
// stale wait for the one that builds it (building takes tens of
// milliseconds at 100 000 endpoints, see BenchmarkAnswerEndpointPTR).
type endpointCache struct {
	cur atomic.Pointer[endpointIndex]

	mu sync.Mutex // held while building; serialises builds
}

// index returns snap's index, from the cache when it is snap's. A nil
// cache builds one each time.
func (c *endpointCache) index(snap *resolver.Snapshot) *endpointIndex {
	if c == nil {
		return newEndpointIndex(snap)
	}
	if idx := c.cur.Load(); idx != nil && idx.snap == snap {
		return idx
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if idx := c.cur.Load(); idx != nil && idx.snap == snap {
		return idx // built while this one waited
	}
	idx := newEndpointIndex(snap)
	c.cur.Store(idx)
	return idx
}
