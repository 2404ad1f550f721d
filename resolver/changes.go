package resolver

import (
	"maps"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Changes is what changed among a source's Services and EndpointSlices
// since the last table was built, object by object, the way kube-proxy's
// ServiceChangeTracker and EndpointsChangeTracker (pkg/proxy) record it:
// for each key ("namespace/name") the object as the last build saw it and
// as it is now. A build given Changes works out again only those keys and
// what depends on them.
type Changes struct {
	// All says the change set holds every object the source has: a key
	// the table holds and the set does not is gone. A source's first
	// change set says it, and so does one after a resync.
	All bool
	// Services and Slices map each changed key to its change.
	Services map[string]Change[*corev1.Service]
	Slices   map[string]Change[*discoveryv1.EndpointSlice]
}

// Change is one object's change: Previous is the object before it (as the
// last build saw it, or a version that differs from that in nothing the
// table reads), nil for an object added; Current is nil for one deleted.
type Change[T any] struct {
	Previous, Current T
}

// Empty reports whether ch changes nothing.
func (ch *Changes) Empty() bool {
	return ch == nil || !ch.All && len(ch.Services) == 0 && len(ch.Slices) == 0
}

// Key is the key of a Service or EndpointSlice in a change set:
// "namespace/name", as client-go's MetaNamespaceKeyFunc makes it.
func Key(o metav1.Object) string { return o.GetNamespace() + "/" + o.GetName() }

// ChangeTracker records the changes a source sees, for the next build to
// take (Take): like kube-proxy's change trackers it keeps, per key, the
// object before the changes and the one now, so that any number of
// updates of one object between two builds are one change, and an update
// that changes nothing the table reads (SameService, SameSlice) is none.
// It also keeps the current object of every key, for a resync (Resync)
// and for sources that only know whole sets (Replace).
//
// It is safe for concurrent use: informer handlers record while the
// source's loop takes.
type ChangeTracker struct {
	mu       sync.Mutex
	all      bool // the next Take says All
	services tracked[*corev1.Service]
	slices   tracked[*discoveryv1.EndpointSlice]
}

// tracked is the current object of every key of one kind, and the keys
// changed since the last Take with the object that Take handed out.
type tracked[T comparable] struct {
	current map[string]T
	pending map[string]T // key -> the object before its changes (zero: none)
	same    func(a, b T) bool
}

// NewChangeTracker returns a tracker whose first change set says All.
func NewChangeTracker() *ChangeTracker {
	return &ChangeTracker{
		all:      true,
		services: newTracked(SameService),
		slices:   newTracked(SameSlice),
	}
}

func newTracked[T comparable](same func(a, b T) bool) tracked[T] {
	return tracked[T]{current: make(map[string]T), pending: make(map[string]T), same: same}
}

// Service records that the Service with key is now svc; nil: deleted.
func (t *ChangeTracker) Service(key string, svc *corev1.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.services.record(key, svc)
}

// Slice records that the EndpointSlice with key is now es; nil: deleted.
func (t *ChangeTracker) Slice(key string, es *discoveryv1.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.slices.record(key, es)
}

// Replace records the whole set a source now holds: every key not in it
// is deleted, every key in it is recorded. A source that reads whole sets
// (manifest files) gives them here; only what changed is taken. An object
// defined twice is recorded once, the last one given.
func (t *ChangeTracker) Replace(services []*corev1.Service, slices []*discoveryv1.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	replace(&t.services, services)
	replace(&t.slices, slices)
}

func replace[T interface {
	comparable
	metav1.Object
}](tr *tracked[T], list []T) {
	keep := make(map[string]bool, len(list))
	for _, o := range list {
		k := Key(o)
		keep[k] = true
		tr.record(k, o)
	}
	var zero T
	for k := range tr.current {
		if !keep[k] {
			tr.record(k, zero)
		}
	}
}

// Resync makes the next change set say All, with every current object: a
// source that may have missed changes (a relist it cannot tell apart)
// starts over.
func (t *ChangeTracker) Resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.all = true
}

// Pending reports whether a change waits to be taken.
func (t *ChangeTracker) Pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.all || len(t.services.pending) > 0 || len(t.slices.pending) > 0
}

// Take returns what changed since the last Take, and starts over; nil when
// nothing did.
func (t *ChangeTracker) Take() *Changes {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.all && len(t.services.pending) == 0 && len(t.slices.pending) == 0 {
		return nil
	}
	ch := &Changes{All: t.all, Services: t.services.take(t.all), Slices: t.slices.take(t.all)}
	t.all = false
	return ch
}

// record notes that key is now o (zero: deleted). A key back to what was
// last taken is no longer pending.
func (tr *tracked[T]) record(key string, o T) {
	var zero T
	prev, ok := tr.current[key]
	if o == zero {
		if !ok {
			return
		}
		delete(tr.current, key)
	} else {
		tr.current[key] = o
	}
	taken, pending := tr.pending[key]
	if !pending {
		taken = prev
		tr.pending[key] = prev
	}
	if taken == zero && o == zero || taken != zero && o != zero && tr.same(taken, o) {
		delete(tr.pending, key)
	}
}

// take returns the pending changes, with every current key when all.
func (tr *tracked[T]) take(all bool) map[string]Change[T] {
	out := make(map[string]Change[T], len(tr.pending))
	for k, prev := range tr.pending {
		out[k] = Change[T]{Previous: prev, Current: tr.current[k]}
	}
	if all {
		for k, o := range tr.current {
			if _, ok := out[k]; !ok {
				out[k] = Change[T]{Previous: o, Current: o}
			}
		}
	}
	clear(tr.pending)
	return out
}

// SameService reports whether two versions of a Service differ in nothing
// the table reads: its spec, status, labels and identity. An update
// between them is no change (CoreDNS's plugin/kubernetes drops such
// updates at the edge too).
func SameService(a, b *corev1.Service) bool {
	return sameIdentity(&a.ObjectMeta, &b.ObjectMeta) &&
		equality.Semantic.DeepEqual(a.Spec, b.Spec) && equality.Semantic.DeepEqual(a.Status, b.Status)
}

// SameSlice reports whether two versions of an EndpointSlice differ in
// nothing the table reads: its address type, ports, endpoints, labels and
// identity.
func SameSlice(a, b *discoveryv1.EndpointSlice) bool {
	return sameIdentity(&a.ObjectMeta, &b.ObjectMeta) && a.AddressType == b.AddressType &&
		equality.Semantic.DeepEqual(a.Ports, b.Ports) && equality.Semantic.DeepEqual(a.Endpoints, b.Endpoints)
}

func sameIdentity(o, n *metav1.ObjectMeta) bool {
	return o.Namespace == n.Namespace && o.Name == n.Name && o.UID == n.UID &&
		o.CreationTimestamp.Equal(&n.CreationTimestamp) && maps.Equal(o.Labels, n.Labels)
}

// changeSet is a change set as the build applies it: for each changed key,
// every definition it has now (usually one; none when deleted). Only the
// lists Build is given can define a key twice.
type changeSet struct {
	all      bool
	services map[string][]*corev1.Service
	slices   map[string][]*discoveryv1.EndpointSlice
}

// changeSetOf is ch as the build applies it.
func changeSetOf(ch *Changes) changeSet {
	cs := changeSet{services: make(map[string][]*corev1.Service), slices: make(map[string][]*discoveryv1.EndpointSlice)}
	if ch == nil {
		return cs
	}
	cs.all = ch.All
	for k, c := range ch.Services {
		cs.services[k] = nil
		if c.Current != nil {
			cs.services[k] = []*corev1.Service{c.Current}
		}
	}
	for k, c := range ch.Slices {
		cs.slices[k] = nil
		if c.Current != nil {
			cs.slices[k] = []*discoveryv1.EndpointSlice{c.Current}
		}
	}
	return cs
}

// everything is the change set of whole lists, as Build is given them: a
// Service given twice is defined twice (and reported); an EndpointSlice
// given twice is one slice.
func everything(services []*corev1.Service, list []*discoveryv1.EndpointSlice) changeSet {
	cs := changeSet{all: true, services: make(map[string][]*corev1.Service), slices: make(map[string][]*discoveryv1.EndpointSlice)}
	for _, svc := range services {
		k := Key(svc)
		cs.services[k] = append(cs.services[k], svc)
	}
	for _, es := range list {
		k := Key(es)
		if !slices.Contains(cs.slices[k], es) {
			cs.slices[k] = append(cs.slices[k], es)
		}
	}
	return cs
}

// Everything returns the change set that says All for the whole set of
// objects services and slices, for a source that hands over whole sets. An
// object defined twice is taken once, the last one given.
func Everything(services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *Changes {
	ch := &Changes{All: true, Services: make(map[string]Change[*corev1.Service], len(services)),
		Slices: make(map[string]Change[*discoveryv1.EndpointSlice], len(slices))}
	for _, svc := range services {
		ch.Services[Key(svc)] = Change[*corev1.Service]{Current: svc}
	}
	for _, es := range slices {
		ch.Slices[Key(es)] = Change[*discoveryv1.EndpointSlice]{Current: es}
	}
	return ch
}
