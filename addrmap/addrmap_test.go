package addrmap

import (
	"net/netip"
	"strings"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestTranslate(t *testing.T) {
	m, err := new(Map).With(
		Pair{pfx("10.96.0.0/12"), pfx("240.16.0.0/12")},
		Pair{pfx("fd00:10:96::/108"), pfx("fd12:3456:789a::/108")},
		// Headless Services' pods, one by one.
		Pair{pfx("10.244.1.7/32"), pfx("241.0.0.7/32")},
		Pair{pfx("fd00:10:244::7/128"), pfx("fd12:3456:789a:1::7/128")},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		real, mapped string
		ok           bool
	}{
		{"10.96.0.10", "240.16.0.10", true},
		{"10.96.0.0", "240.16.0.0", true},
		{"10.111.255.255", "240.31.255.255", true},
		{"10.100.3.4", "240.20.3.4", true},
		{"fd00:10:96::a", "fd12:3456:789a::a", true},
		{"fd00:10:96::f:ffff", "fd12:3456:789a::f:ffff", true},
		{"10.244.1.7", "241.0.0.7", true},
		{"fd00:10:244::7", "fd12:3456:789a:1::7", true},
	} {
		r, a := addr(tc.real), addr(tc.mapped)
		if got, ok := m.ToMapped(r); got != a || ok != tc.ok {
			t.Errorf("ToMapped(%s) = %s, %v; want %s", r, got, ok, a)
		}
		if got, ok := m.ToReal(a); got != r || ok != tc.ok {
			t.Errorf("ToReal(%s) = %s, %v; want %s", a, got, ok, r)
		}
		// The IPv4-mapped IPv6 form of an address is the address.
		if r.Is4() {
			if got, _ := m.ToMapped(netip.AddrFrom16(r.As16())); got != a {
				t.Errorf("ToMapped(::ffff:%s) = %s, want %s", r, got, a)
			}
		}
	}
	// Outside every pair: unchanged, and said so.
	for _, s := range []string{"10.95.255.255", "10.112.0.0", "192.168.1.1", "241.0.0.8", "10.244.1.8", "fd00:10:97::1"} {
		a := addr(s)
		if got, ok := m.ToMapped(a); got != a || ok {
			t.Errorf("ToMapped(%s) = %s, %v; want it unchanged", a, got, ok)
		}
		if got, ok := m.ToReal(a); got != a || ok {
			t.Errorf("ToReal(%s) = %s, %v; want it unchanged", a, got, ok)
		}
	}
	var none *Map
	if got, ok := none.ToReal(addr("240.16.0.1")); ok || got != addr("240.16.0.1") {
		t.Errorf("nil Map ToReal = %s, %v", got, ok)
	}
	if got := m.MappedPrefix(pfx("10.96.0.0/12")); got != pfx("240.16.0.0/12") {
		t.Errorf("MappedPrefix = %s", got)
	}
	if got := m.MappedPrefix(pfx("10.0.0.0/16")); got != pfx("10.0.0.0/16") {
		t.Errorf("MappedPrefix of an unmapped prefix = %s, want it", got)
	}
	if got := m.Without(pfx("10.244.1.7/32")); got.Len() != 3 {
		t.Errorf("Without a /32: %v", got.Pairs())
	}
	if got := m.Pairs(); len(got) != 4 || got[0].Real != pfx("10.96.0.0/12") || got[2].Real != pfx("10.244.1.7/32") {
		t.Errorf("Pairs = %v", got)
	}
}

func TestWithRefuses(t *testing.T) {
	base, err := new(Map).With(Pair{pfx("10.96.0.0/12"), pfx("240.16.0.0/12")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		p    Pair
		want string
	}{
		{"two families", Pair{pfx("10.0.0.0/16"), pfx("fd00::/16")}, "two families"},
		{"two lengths", Pair{pfx("10.0.0.0/16"), pfx("240.0.0.0/12")}, "two lengths"},
		{"real overlaps", Pair{pfx("10.100.0.0/16"), pfx("241.0.0.0/16")}, "overlaps"},
		{"mapped overlaps", Pair{pfx("10.0.0.0/16"), pfx("240.17.0.0/16")}, "overlaps"},
		{"host in a mapped range", Pair{pfx("10.0.0.1/32"), pfx("240.16.0.1/32")}, "overlaps"},
		{"invalid", Pair{Mapped: pfx("240.0.0.0/8")}, "not two prefixes"},
	} {
		if _, err := base.With(tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: With(%s) = %v, want %q", tc.name, tc.p, err, tc.want)
		}
	}
}

func TestAllocate(t *testing.T) {
	taken := []netip.Prefix{}
	free := func(c netip.Prefix) bool {
		for _, x := range taken {
			if x.Overlaps(c) {
				return false
			}
		}
		return true
	}
	real := pfx("10.96.0.0/12")
	a, err := Allocate(real, Pool4, "kind-a", free)
	if err != nil || !Pool4.Contains(a.Addr()) || a.Bits() != 12 || a.Contains(addr("255.255.255.255")) {
		t.Fatalf("Allocate = %s, %v; want a /12 in class E", a, err)
	}
	// The same seed, the same range while free.
	if again, _ := Allocate(real, Pool4, "kind-a", free); again != a {
		t.Errorf("Allocate again = %s, want %s", again, a)
	}
	// Taken: the next free one.
	taken = append(taken, a)
	b, err := Allocate(real, Pool4, "kind-a", free)
	if err != nil || b == a || b.Overlaps(a) {
		t.Errorf("Allocate with %s taken = %s, %v", a, b, err)
	}
	// All 255 usable /12s of 240/4 (255.240/12 holds the broadcast).
	taken = nil
	seen := map[netip.Prefix]bool{}
	for range 255 {
		c, err := Allocate(real, Pool4, "x", free)
		if err != nil {
			t.Fatalf("Allocate #%d: %v", len(seen)+1, err)
		}
		seen[c] = true
		taken = append(taken, c)
	}
	if _, err := Allocate(real, Pool4, "x", free); err == nil {
		t.Errorf("Allocate with every /12 taken: want ErrNoRoom")
	}
	if seen[pfx("255.240.0.0/12")] {
		t.Errorf("Allocate handed out the /12 of 255.255.255.255")
	}

	// Hosts, and IPv6.
	taken = nil
	if h, err := Allocate(pfx("10.244.1.7/32"), Pool4, "kind-a", free); err != nil || !h.IsSingleIP() || !Pool4.Contains(h.Addr()) || h.Addr() == addr("255.255.255.255") {
		t.Errorf("Allocate of a /32 = %s, %v", h, err)
	}
	p6 := Pool6("kind-a")
	if p6.Bits() != 48 || p6.Addr().As16()[0] != 0xfd || p6 == Pool6("kind-b") || p6 != Pool6("kind-a") {
		t.Errorf("Pool6 = %s (kind-b %s)", p6, Pool6("kind-b"))
	}
	for _, r := range []string{"fd00:10:96::/108", "fd00:10:96::/64", "fd00:10:244::7/128", "2001:db8::/48"} {
		c, err := Allocate(pfx(r), p6, "kind-a", free)
		if err != nil || !p6.Contains(c.Addr()) || c.Bits() != pfx(r).Bits() {
			t.Errorf("Allocate(%s) in %s = %s, %v", r, p6, c, err)
		}
	}
	for _, tc := range []struct{ real, pool string }{{"10.0.0.0/3", "240.0.0.0/4"}, {"10.0.0.0/16", "fd00::/48"}, {"fd00::/40", "fd00::/48"}} {
		if _, err := Allocate(pfx(tc.real), pfx(tc.pool), "x", free); err == nil {
			t.Errorf("Allocate(%s) in %s: want an error", tc.real, tc.pool)
		}
	}
}

func TestReverseName(t *testing.T) {
	for _, tc := range []struct{ a, want string }{
		{"240.16.0.10", "10.0.16.240.in-addr.arpa."},
		{"::ffff:240.16.0.10", "10.0.16.240.in-addr.arpa."},
		{"fd12:3456:789a::a", "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa."},
	} {
		if got := ReverseName(addr(tc.a)); got != tc.want {
			t.Errorf("ReverseName(%s) = %s, want %s", tc.a, got, tc.want)
		}
	}
}
