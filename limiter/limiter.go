// Package limiter bounds what clients hold at once, per source address and
// in all: the connections being set up, the UDP sessions. It is the one
// count of both, for ClusterIPs and node ports alike.
package limiter

import (
	"net/netip"
	"sync"
)

// PerSource counts what each source address holds, and refuses a source
// past its share or everyone past the total. It is taken per connection or
// session, never per packet, except by Full, which a packet path may ask
// for a SYN: one uncontended lock.
type PerSource struct {
	maxPer, maxTotal int
	// lendUpTo, if above 0: a source past its share may still take more
	// while the total is below it (NewLending).
	lendUpTo int

	mu    sync.Mutex // guards n and total
	n     map[netip.Addr]int
	total int
}

// New returns a PerSource that lets each source hold maxPer and all of
// them maxTotal; 0 or less is no limit.
func New(maxPer, maxTotal int) *PerSource {
	return &PerSource{maxPer: maxPer, maxTotal: maxTotal, n: make(map[netip.Addr]int)}
}

// NewLending is New, but a source past its share may still take more
// while all sources together hold less than three quarters of maxTotal:
// capacity nobody uses is lent to a burst, and a quarter is always kept
// for the other sources, each of which still has its share. A kernel's
// listener lets one client fill its whole SYN queue; this is that, with
// room kept for everyone else.
func NewLending(maxPer, maxTotal int) *PerSource {
	l := New(maxPer, maxTotal)
	if maxPer > 0 && maxTotal > 0 {
		l.lendUpTo = maxTotal * 3 / 4
	}
	return l
}

// Reserve counts one more for src, or reports false if src has its share
// or the total is reached.
func (l *PerSource) Reserve(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fullLocked(src) {
		return false
	}
	l.n[src]++
	l.total++
	return true
}

// Release takes one off src's count, which Reserve counted. A source
// holding nothing leaves the map: it is bounded by what is held, not by
// every source ever seen.
func (l *PerSource) Release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[src] <= 0 {
		return
	}
	l.total--
	if l.n[src]--; l.n[src] == 0 {
		delete(l.n, src)
	}
}

// Full reports whether Reserve(src) would fail now.
func (l *PerSource) Full(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fullLocked(src)
}

func (l *PerSource) fullLocked(src netip.Addr) bool {
	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return true
	}
	return l.maxPer > 0 && l.n[src] >= l.maxPer && l.total >= l.lendUpTo
}

// Total returns what all sources hold.
func (l *PerSource) Total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Max returns the most one source holds, and how many sources hold any.
func (l *PerSource) Max() (most, sources int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.n {
		most = max(most, n)
	}
	return most, len(l.n)
}

// Counts returns a copy of what each source holds now.
func (l *PerSource) Counts() map[netip.Addr]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[netip.Addr]int, len(l.n))
	for a, n := range l.n {
		out[a] = n
	}
	return out
}
