package resolver

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// objects are the Services and EndpointSlices a snapshot was built from,
// by key, each with its definitions (one, but for Services given twice to
// Build). A snapshot shares the shards no change touched with the one
// before, as the table's maps do: keeping them costs what changed. They
// are what a build starts from when it cannot take over its prev's cache,
// and what PodByIP indexes.
type objects struct {
	services shardMap[string, []*corev1.Service]
	slices   shardMap[string, []*discoveryv1.EndpointSlice]
}

// objectsOf returns s's objects; none for a nil s.
func (s *Snapshot) objectsOf() *objects {
	if s == nil {
		return &objects{}
	}
	return &s.objects
}

// everything returns cs as a change set that says All: with every object
// of o whose key cs does not name.
func (o *objects) everything(cs changeSet) changeSet {
	if cs.all {
		return cs
	}
	out := changeSet{all: true, services: maps.Clone(cs.services), slices: maps.Clone(cs.slices)}
	for k, defs := range o.services.all() {
		if _, ok := out.services[k]; !ok {
			out.services[k] = defs
		}
	}
	for k, defs := range o.slices.all() {
		if _, ok := out.slices[k]; !ok {
			out.slices[k] = defs
		}
	}
	return out
}

// with returns o with cs applied; o stays as it is.
func (o *objects) with(cs changeSet) objects {
	var n objects
	if !cs.all {
		n = *o
	}
	apply(&n.services, cs.services)
	apply(&n.slices, cs.slices)
	return n
}

// apply sets each key of changes to its definitions, deleting those with
// none.
func apply[T any](m *shardMap[string, []T], changes map[string][]T) {
	w := newWriter(m, keyShard)
	for k, defs := range changes {
		if len(defs) == 0 {
			w.del(k)
		} else {
			w.set(k, defs)
		}
	}
}

// keyShard is FNV-1a over an object's key.
func keyShard(k string) uint8 {
	h := uint32(2166136261)
	for i := 0; i < len(k); i++ {
		h = (h ^ uint32(k[i])) * 16777619
	}
	return uint8(h ^ h>>8 ^ h>>16 ^ h>>24)
}
