package limiter

import (
	"net/netip"
	"testing"
)

func TestPerSource(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.3.2"), netip.MustParseAddr("10.0.3.3"), netip.MustParseAddr("fd00::3")
	l := New(2, 3)
	for i, step := range []struct {
		src  netip.Addr
		want bool
	}{{a, true}, {a, true}, {a, false}, {b, true}, {c, false}} {
		if got := l.Reserve(step.src); got != step.want {
			t.Fatalf("step %d: Reserve(%v) = %v, want %v", i, step.src, got, step.want)
		}
	}
	if most, n := l.Max(); most != 2 || n != 2 || l.Total() != 3 {
		t.Errorf("Max() = %d, %d, Total() = %d; want 2, 2, 3", most, n, l.Total())
	}
	if !l.Full(a) || !l.Full(c) {
		t.Errorf("Full(a), Full(c) = %v, %v; want true (share, total)", l.Full(a), l.Full(c))
	}
	l.Release(b)
	if l.Full(c) || !l.Full(a) {
		t.Errorf("after Release(b): Full(c) = %v, Full(a) = %v; want false, true", l.Full(c), l.Full(a))
	}
	l.Release(a)
	l.Release(a)
	l.Release(a) // more than it holds: ignored
	if l.Total() != 0 {
		t.Errorf("Total() = %d after releasing everything, want 0", l.Total())
	}
	if _, n := l.Max(); n != 0 {
		t.Errorf("%d sources left in the map, want 0", n)
	}
	unlimited := New(0, 0)
	for range 1000 {
		if !unlimited.Reserve(a) {
			t.Fatal("New(0, 0) refused")
		}
	}
}

// TestLending: a lone source past its share takes what nobody uses, up to
// three quarters of the total; another source then still gets its share.
func TestLending(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.3.2"), netip.MustParseAddr("10.0.3.3")
	l := NewLending(2, 8)
	n := 0
	for l.Reserve(a) {
		n++
	}
	if n != 6 {
		t.Errorf("a lone source took %d of 8 with a share of 2, want 6 (three quarters)", n)
	}
	for i := range 2 {
		if !l.Reserve(b) {
			t.Fatalf("another source's reservation %d refused within its share", i+1)
		}
	}
	if l.Reserve(b) {
		t.Error("the total of 8 reached, yet another reservation was counted")
	}
}
