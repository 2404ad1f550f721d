package resolver

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
)

// Protocol is the transport protocol of a Service port.
type Protocol uint8

const (
	TCP Protocol = iota + 1
	UDP
	SCTP
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// Endpoint is one backend of a Service port: a pod address and the port
// number resolved for that pod (a named targetPort may resolve to different
// numbers on different pods).
type Endpoint struct {
	Addr     netip.AddrPort
	NodeName string
	Zone     string

	// Topology hints: the zones and nodes this endpoint should serve.
	ForZones []string
	ForNodes []string

	// Conditions, with the API's defaults applied: a missing ready or serving
	// means true, a missing terminating means false.
	Ready       bool
	Serving     bool
	Terminating bool
}

func (e Endpoint) String() string { return e.Addr.String() }

// ServicePort is one (ClusterIP, protocol, port) of a Service and the
// endpoints that serve it. It is part of an immutable Snapshot: only the
// round-robin cursor changes after it is built.
type ServicePort struct {
	// Service is "namespace/name".
	Service   string
	Name      string // the Service port's name; "" for a single unnamed port
	Protocol  Protocol
	ClusterIP netip.Addr // or the external address, for an External port
	Port      uint16

	// External is true for the port reached from outside the cluster: on
	// an externalIP or load-balancer IP (in ClusterIP), or on the node port
	// NodePort. externalTrafficPolicy decides its usable endpoints.
	External bool
	NodePort uint16

	// Endpoints lists every endpoint the EndpointSlices give for this port,
	// in a stable order.
	Endpoints []Endpoint

	// usable are the endpoints new connections may go to (see Usable).
	usable []Endpoint

	// next is the round-robin cursor.
	next atomic.Uint32

	// affinity binds clients to endpoints for ClientIP session affinity;
	// nil when the Service has none.
	affinity        *affinityTable
	affinityTimeout time.Duration
}

func (sp *ServicePort) String() string {
	name := sp.Service
	if sp.Name != "" {
		name += ":" + sp.Name
	}
	if sp.NodePort != 0 {
		return fmt.Sprintf("%s (%s nodePort %d)", name, sp.Protocol, sp.NodePort)
	}
	return fmt.Sprintf("%s (%s %s)", name, sp.Protocol, netip.AddrPortFrom(sp.ClusterIP, sp.Port))
}

// Usable returns the endpoints new connections may be sent to. The caller
// must not modify the returned slice.
func (sp *ServicePort) Usable() []Endpoint { return sp.usable }

// Pick returns the endpoint for a new connection, or false when the port has
// no usable endpoint.
//
// Balancing is round-robin over the usable endpoints: over any window of n
// connections each of n endpoints gets exactly one, so the split is even even
// for a handful of requests (random choice needs hundreds to look even), and
// it costs one atomic add, no lock and no shared random source.
func (sp *ServicePort) Pick() (Endpoint, bool) {
	n := uint32(len(sp.usable))
	if n == 0 {
		return Endpoint{}, false
	}
	return sp.usable[(sp.next.Add(1)-1)%n], true
}

// PickFor is Pick for a connection from client: with ClientIP session
// affinity, a client that connected within the timeout goes to the same
// endpoint while it is usable, and each connection restarts its timeout.
func (sp *ServicePort) PickFor(client netip.Addr) (Endpoint, bool) {
	return sp.pickFor(client, time.Now())
}

func (sp *ServicePort) pickFor(client netip.Addr, now time.Time) (Endpoint, bool) {
	if sp.affinity == nil {
		return sp.Pick()
	}
	return sp.affinity.pick(client, sp.usable, sp.affinityTimeout, now, sp.Pick)
}

// PickOtherFor is PickFor for a retry after the dial to failed did not
// work: it returns another endpoint and, with session affinity, moves the
// client to it.
func (sp *ServicePort) PickOtherFor(client netip.Addr, failed Endpoint) (Endpoint, bool) {
	ep, ok := sp.PickOther(failed)
	if ok && sp.affinity != nil {
		sp.affinity.rebind(client, ep.Addr, time.Now(), sp.affinityTimeout)
	}
	return ep, ok
}

// Affinity returns the ClientIP session affinity timeout, 0 for none.
func (sp *ServicePort) Affinity() time.Duration { return sp.affinityTimeout }

// PickOther is Pick for a retry: it returns an endpoint other than failed, or
// false when there is none.
func (sp *ServicePort) PickOther(failed Endpoint) (Endpoint, bool) {
	n := len(sp.usable)
	for range n {
		ep, ok := sp.Pick()
		if !ok {
			return Endpoint{}, false
		}
		if ep.Addr != failed.Addr {
			return ep, true
		}
	}
	return Endpoint{}, false
}

// portKey identifies a Service port by what a packet carries.
type portKey struct {
	proto Protocol
	addr  netip.AddrPort
}

// Snapshot is the immutable service table at one point in time.
type Snapshot struct {
	// The maps are split in shards that later snapshots share until a
	// change touches them (see shardMap).
	ports shardMap[portKey, *ServicePort]
	// ips maps each ClusterIP to whether any of its ports has a usable
	// endpoint.
	ips       shardMap[netip.Addr, bool]
	services  int
	endpoints int

	// For DNS.
	names      shardMap[nameKey, nameEntry]
	byIP       shardMap[netip.Addr, *ServiceRecord]
	byEndpoint endpointIndex
	namespaces map[string]struct{}

	// For reaching pods without routes to them (PodByIP).
	pods podIndex

	// Reached from outside the cluster.
	nodePorts    shardMap[nodePortKey, *ServicePort]
	nodePortList []NodePort
	externalIPs  []netip.Addr
	healthChecks []HealthCheck

	// objects are what the snapshot was built from.
	objects objects

	// cache lets the next Build reuse what did not change; the first Build
	// given this snapshot as prev takes it over.
	cache *buildCache
	taken atomic.Bool
}

// take hands s's build cache to the one Build replacing s, or returns nil.
func (s *Snapshot) take() *buildCache {
	if s == nil || s.cache == nil || !s.taken.CompareAndSwap(false, true) {
		return nil
	}
	return s.cache
}

// Lookup returns the Service port owning proto/addr, if any.
func (s *Snapshot) Lookup(proto Protocol, addr netip.AddrPort) (*ServicePort, bool) {
	if s == nil {
		return nil, false
	}
	k := portKey{proto, addr}
	return s.ports.get(portShard(k), k)
}

// HasIP reports whether any Service port uses ip as its ClusterIP.
func (s *Snapshot) HasIP(ip netip.Addr) bool {
	if s == nil {
		return false
	}
	_, ok := s.ips.get(addrShard(ip), ip)
	return ok
}

// Answers reports whether ip is a ClusterIP with at least one usable
// endpoint on some port: such an address answers ping.
func (s *Snapshot) Answers(ip netip.Addr) bool {
	if s == nil {
		return false
	}
	usable, _ := s.ips.get(addrShard(ip), ip)
	return usable
}

// Ports returns every Service port in the snapshot, in no particular order.
func (s *Snapshot) Ports() []*ServicePort {
	if s == nil {
		return nil
	}
	out := make([]*ServicePort, 0, s.ports.len)
	for _, sp := range s.ports.all() {
		out = append(out, sp)
	}
	return out
}

// Services returns the number of Services with at least one ClusterIP port.
func (s *Snapshot) Services() int {
	if s == nil {
		return 0
	}
	return s.services
}

// Endpoints returns the number of (service port, usable endpoint) pairs:
// what new connections can be sent to.
func (s *Snapshot) Endpoints() int {
	if s == nil {
		return 0
	}
	return s.endpoints
}

// AffinityEntries returns how many clients the ClientIP session affinity
// tables of all Service ports remember now, for metrics. It takes no lock
// the packet path takes: each table keeps its count in an atomic.
func (s *Snapshot) AffinityEntries() int {
	if s == nil {
		return 0
	}
	n := 0
	for _, sp := range s.ports.all() {
		if sp.affinity != nil {
			n += sp.affinity.len()
		}
	}
	return n
}

// Table publishes the current Snapshot. Store is for the control plane,
// Load and Lookup are for the packet path; neither locks.
type Table struct {
	cur atomic.Pointer[Snapshot]
}

// Load returns the current snapshot; nil before the first Store.
func (t *Table) Load() *Snapshot { return t.cur.Load() }

// Store makes s the current snapshot.
func (t *Table) Store(s *Snapshot) { t.cur.Store(s) }

// Answers reports whether ip answers ping in the current snapshot.
func (t *Table) Answers(ip netip.Addr) bool { return t.cur.Load().Answers(ip) }

// PodByIP is Snapshot.PodByIP on the current snapshot.
func (t *Table) PodByIP(ip netip.Addr) (namespace, name string, ok bool) {
	return t.cur.Load().PodByIP(ip)
}

// Lookup looks addr up in the current snapshot.
func (t *Table) Lookup(proto Protocol, addr netip.AddrPort) (*ServicePort, bool) {
	return t.cur.Load().Lookup(proto, addr)
}
