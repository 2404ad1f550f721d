// Package addrmap translates a cluster's addresses to the ones a laptop
// serves them on, when the cluster's own overlap a route the laptop
// already has: another cluster's service range (most clusters share
// kubeadm's and kind's 10.96.0.0/12), a VPN's, the LAN's.
//
// A real prefix maps onto a mapped prefix of the same length, host bits
// kept: 10.96.0.10 in 10.96.0.0/12 mapped onto 240.16.0.0/12 is
// 240.16.0.10. IPv4 maps into 240.0.0.0/4, the former class E, reserved
// "for future use" since RFC 1112 section 4 and never assigned: no LAN,
// VPN or Internet host has such an address, so a mapped range cannot clash
// with a real network, and Linux routes it as unicast (since 2.6.25).
// 255.255.255.255, the limited broadcast, is never part of a mapped range.
// IPv6 maps into a unique local /48 (RFC 4193) whose 40-bit global ID is a
// hash of the kubeconfig context, so that each cluster has its own and
// keeps it from one connection to the next.
//
// A Map is immutable: build one with With and publish it (an atomic
// pointer) for the packet path to read without locking.
package addrmap

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
)

// Pool4 is where IPv4 prefixes are mapped: class E.
var Pool4 = netip.MustParsePrefix("240.0.0.0/4")

// limitedBroadcast is the one class E address Linux does not route.
var limitedBroadcast = netip.MustParseAddr("255.255.255.255")

// Pool6 returns where IPv6 prefixes of context are mapped: the unique
// local /48 fdXX:XXXX:XXXX::/48, its global ID the first 40 bits of
// SHA-256 of the context (RFC 4193 section 3.2 asks for 40 pseudo-random
// bits; a hash keeps them the same for one context).
func Pool6(context string) netip.Prefix {
	sum := sha256.Sum256([]byte(context))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], sum[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 48)
}

// Pool returns the pool a prefix of real's family maps into for context.
func Pool(real netip.Prefix, context string) netip.Prefix {
	if real.Addr().Is4() {
		return Pool4
	}
	return Pool6(context)
}

// Pair is a real prefix and the prefix it is served on, of one family and
// one length.
type Pair struct {
	Real   netip.Prefix `json:"real"`
	Mapped netip.Prefix `json:"mapped"`
}

func (p Pair) String() string { return p.Mapped.String() + "=" + p.Real.String() }

// Map is a set of Pairs, none of whose real prefixes overlap, nor mapped
// ones. The zero Map, and a nil *Map, translate nothing.
type Map struct {
	ranges []Pair                    // prefixes shorter than a host's
	toReal map[netip.Addr]netip.Addr // host prefixes (/32, /128): mapped to real
	toMap  map[netip.Addr]netip.Addr // and back
}

// With returns a Map of m's pairs and pairs. It fails, naming the pair, if
// a pair mixes families or lengths, or overlaps a pair of m's or another
// of pairs, on the real side or the mapped.
func (m *Map) With(pairs ...Pair) (*Map, error) {
	out := &Map{toReal: map[netip.Addr]netip.Addr{}, toMap: map[netip.Addr]netip.Addr{}}
	for _, p := range m.Pairs() {
		out.add(p)
	}
	for _, p := range pairs {
		p = Pair{p.Real.Masked(), p.Mapped.Masked()}
		switch {
		case !p.Real.IsValid() || !p.Mapped.IsValid():
			return nil, fmt.Errorf("addrmap: pair %s: not two prefixes", p)
		case p.Real.Addr().Is4() != p.Mapped.Addr().Is4() || p.Real.Addr().Is4In6() || p.Mapped.Addr().Is4In6():
			return nil, fmt.Errorf("addrmap: pair %s: two families", p)
		case p.Real.Bits() != p.Mapped.Bits():
			return nil, fmt.Errorf("addrmap: pair %s: two lengths", p)
		}
		for _, q := range out.Pairs() {
			if q.Real.Overlaps(p.Real) || q.Mapped.Overlaps(p.Mapped) {
				return nil, fmt.Errorf("addrmap: pair %s overlaps %s", p, q)
			}
		}
		out.add(p)
	}
	return out, nil
}

func (m *Map) add(p Pair) {
	if p.Real.IsSingleIP() {
		m.toReal[p.Mapped.Addr()] = p.Real.Addr()
		m.toMap[p.Real.Addr()] = p.Mapped.Addr()
		return
	}
	m.ranges = append(m.ranges, p)
}

// Without returns a Map of m's pairs but those whose real prefix is one of
// reals.
func (m *Map) Without(reals ...netip.Prefix) *Map {
	out := &Map{toReal: map[netip.Addr]netip.Addr{}, toMap: map[netip.Addr]netip.Addr{}}
	for _, p := range m.Pairs() {
		if !slices.Contains(reals, p.Real) {
			out.add(p)
		}
	}
	return out
}

// Pairs returns m's pairs: ranges first, then host prefixes by address.
func (m *Map) Pairs() []Pair {
	if m == nil {
		return nil
	}
	out := slices.Clone(m.ranges)
	hosts := make([]Pair, 0, len(m.toMap))
	for r, a := range m.toMap {
		hosts = append(hosts, Pair{netip.PrefixFrom(r, r.BitLen()), netip.PrefixFrom(a, a.BitLen())})
	}
	slices.SortFunc(hosts, func(a, b Pair) int { return a.Real.Addr().Compare(b.Real.Addr()) })
	return append(out, hosts...)
}

// Len is the number of m's pairs.
func (m *Map) Len() int {
	if m == nil {
		return 0
	}
	return len(m.ranges) + len(m.toMap)
}

// ToReal returns the real address a is the mapped form of, and true; or a
// and false when a is in no mapped prefix.
func (m *Map) ToReal(a netip.Addr) (netip.Addr, bool) {
	if m.Len() == 0 {
		return a, false
	}
	a = a.Unmap()
	if r, ok := m.toReal[a]; ok {
		return r, true
	}
	for _, p := range m.ranges {
		if p.Mapped.Contains(a) {
			return move(a, p.Real), true
		}
	}
	return a, false
}

// ToMapped returns the address real is served on, and true; or real and
// false when real is in no real prefix of m.
func (m *Map) ToMapped(real netip.Addr) (netip.Addr, bool) {
	if m.Len() == 0 {
		return real, false
	}
	real = real.Unmap()
	if a, ok := m.toMap[real]; ok {
		return a, true
	}
	for _, p := range m.ranges {
		if p.Real.Contains(real) {
			return move(real, p.Mapped), true
		}
	}
	return real, false
}

// MappedPrefix returns the prefix real is served on: its pair's mapped
// prefix, or real itself when unmapped.
func (m *Map) MappedPrefix(real netip.Prefix) netip.Prefix {
	for _, p := range m.Pairs() {
		if p.Real == real.Masked() {
			return p.Mapped
		}
	}
	return real
}

// move returns a with its network bits replaced by to's.
func move(a netip.Addr, to netip.Prefix) netip.Addr {
	src, dst := a.As16(), to.Addr().As16()
	bits := to.Bits()
	if a.Is4() {
		bits += 96
	}
	for i := range 16 {
		n := bits - 8*i // network bits in this byte
		switch {
		case n >= 8:
			src[i] = dst[i]
		case n > 0:
			mask := byte(0xff << (8 - n))
			src[i] = dst[i]&mask | src[i]&^mask
		}
	}
	out := netip.AddrFrom16(src)
	if a.Is4() {
		out = out.Unmap()
	}
	return out
}

// ErrNoRoom is Allocate's when no prefix in the pool is free.
var ErrNoRoom = errors.New("addrmap: no free prefix in the pool")

// maxTries bounds the candidates Allocate asks free about: each may cost a
// look at the host's routes.
const maxTries = 1 << 16

// Allocate returns a prefix of real's length inside pool for which free
// is true, to map real onto. The first candidate is chosen by a hash of
// seed and real (the kubeconfig context, say), so that a cluster gets the
// same mapped range from one connection to the next while the range is
// free, and two clusters seldom ask for the same; the next candidates
// follow it, wrapping around the pool. A candidate holding
// 255.255.255.255 is skipped.
func Allocate(real, pool netip.Prefix, seed string, free func(netip.Prefix) bool) (netip.Prefix, error) {
	real, pool = real.Masked(), pool.Masked()
	if real.Addr().Is4() != pool.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("addrmap: %s and pool %s: two families", real, pool)
	}
	if real.Bits() < pool.Bits() {
		return netip.Prefix{}, fmt.Errorf("addrmap: %s is larger than pool %s", real, pool)
	}
	span := real.Bits() - pool.Bits() // candidates: 2^span
	h := fnv.New64a()
	h.Write([]byte(seed))
	h.Write([]byte{0})
	h.Write([]byte(real.String()))
	start := h.Sum64()
	var n uint64 = 1 << min(span, 63)
	if span < 64 {
		start %= n
	}
	for i := uint64(0); i < n && i < maxTries; i++ {
		c := candidate(pool, real.Bits(), (start+i)&(n-1))
		if c.Contains(limitedBroadcast) {
			continue
		}
		if free(c) {
			return c, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: %s in %s", ErrNoRoom, real, pool)
}

// candidate returns the i-th prefix of length bits inside pool.
func candidate(pool netip.Prefix, bits int, i uint64) netip.Prefix {
	a := pool.Addr().As16()
	shift := 128 - bits // i sits just above the host bits
	if pool.Addr().Is4() {
		shift = 32 - bits
	}
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	switch {
	case shift >= 64:
		hi |= i << (shift - 64)
	case shift == 0:
		lo |= i
	default:
		lo |= i << shift
		hi |= i >> (64 - shift)
	}
	binary.BigEndian.PutUint64(a[:8], hi)
	binary.BigEndian.PutUint64(a[8:], lo)
	addr := netip.AddrFrom16(a)
	if pool.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, bits)
}

// ReverseName returns the PTR name of a: "10.0.16.240.in-addr.arpa." for
// 240.16.0.10, the nibbles of an IPv6 address under ip6.arpa.
func ReverseName(a netip.Addr) string {
	a = a.Unmap()
	var b strings.Builder
	if a.Is4() {
		v := a.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.in-addr.arpa.", v[3], v[2], v[1], v[0])
		return b.String()
	}
	const hex = "0123456789abcdef"
	v := a.As16()
	for i := 15; i >= 0; i-- {
		b.WriteByte(hex[v[i]&0xf])
		b.WriteByte('.')
		b.WriteByte(hex[v[i]>>4])
		b.WriteByte('.')
	}
	b.WriteString("ip6.arpa.")
	return b.String()
}

// Table publishes the current Map: Store is for the control plane, the rest
// for the packet path and the DNS, which read it without locking. The zero
// Table maps nothing.
type Table struct{ cur atomic.Pointer[Map] }

// Load returns the current Map; nil before the first Store.
func (t *Table) Load() *Map { return t.cur.Load() }

// Store makes m the current Map.
func (t *Table) Store(m *Map) { t.cur.Store(m) }

// ToReal is Map.ToReal on the current Map.
func (t *Table) ToReal(a netip.Addr) (netip.Addr, bool) { return t.cur.Load().ToReal(a) }

// ToMapped is Map.ToMapped on the current Map.
func (t *Table) ToMapped(a netip.Addr) (netip.Addr, bool) { return t.cur.Load().ToMapped(a) }
