package resolver

import (
	"iter"
	"maps"
	"net/netip"
)

// shards is how many maps a shardMap splits into: a change to the table
// copies the few it touches, not the whole map (a map of 30 000 ports takes
// milliseconds to copy; one of its shards, microseconds).
const shards = 256

// shardMap is a map split by a hash of the key into shards. Snapshots share
// the shards no change touched; a shard is never modified once a snapshot
// holding it is published.
type shardMap[K comparable, V any] struct {
	m   [shards]map[K]V
	len int
}

func (s *shardMap[K, V]) get(i uint8, k K) (V, bool) {
	v, ok := s.m[i][k]
	return v, ok
}

// all yields every entry, in no particular order.
func (s *shardMap[K, V]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for _, m := range s.m {
			for k, v := range m {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// writer changes a shardMap of a snapshot being built, copying each shard
// it touches once, so that the previous snapshot's shards stay as they are.
type writer[K comparable, V any] struct {
	s     *shardMap[K, V]
	shard func(K) uint8
	owned [shards]bool
}

func newWriter[K comparable, V any](s *shardMap[K, V], shard func(K) uint8) *writer[K, V] {
	return &writer[K, V]{s: s, shard: shard}
}

func (w *writer[K, V]) own(i uint8) map[K]V {
	if !w.owned[i] {
		if w.s.m[i] == nil {
			w.s.m[i] = make(map[K]V)
		} else {
			w.s.m[i] = maps.Clone(w.s.m[i])
		}
		w.owned[i] = true
	}
	return w.s.m[i]
}

func (w *writer[K, V]) get(k K) (V, bool) { return w.s.get(w.shard(k), k) }

func (w *writer[K, V]) set(k K, v V) {
	m := w.own(w.shard(k))
	if _, ok := m[k]; !ok {
		w.s.len++
	}
	m[k] = v
}

func (w *writer[K, V]) del(k K) {
	i := w.shard(k)
	if _, ok := w.s.m[i][k]; !ok {
		return
	}
	delete(w.own(i), k)
	w.s.len--
}

// addrShard spreads addresses over the shards by their last bytes, which
// is where ClusterIPs out of one range differ.
func addrShard(a netip.Addr) uint8 {
	b := a.As16()
	return b[15] ^ b[14]*31 ^ b[13]*17
}

func portShard(k portKey) uint8 {
	return addrShard(k.addr.Addr()) ^ uint8(k.addr.Port()) ^ uint8(k.addr.Port()>>8)*7 ^ uint8(k.proto)*59
}

// nameShard is FNV-1a over namespace and name.
func nameShard(k nameKey) uint8 {
	h := uint32(2166136261)
	for i := 0; i < len(k.namespace); i++ {
		h = (h ^ uint32(k.namespace[i])) * 16777619
	}
	h = (h ^ '/') * 16777619
	for i := 0; i < len(k.name); i++ {
		h = (h ^ uint32(k.name[i])) * 16777619
	}
	return uint8(h ^ h>>8 ^ h>>16 ^ h>>24)
}

func nodePortShard(k nodePortKey) uint8 {
	v := uint8(k.port) ^ uint8(k.port>>8)*7 ^ uint8(k.proto)*59
	if k.ipv6 {
		v ^= 0x80
	}
	return v
}
