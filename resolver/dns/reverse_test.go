package dns

import (
	"net/netip"
	"testing"

	miekg "github.com/miekg/dns"
)

func TestParseReverse(t *testing.T) {
	for _, s := range []string{"10.3.240.20", "0.0.0.0", "255.255.255.255", "fd00:10:96::30", "2001:db8:1234:5678:9abc:def0:1:2", "::"} {
		want := netip.MustParseAddr(s)
		name, err := miekg.ReverseAddr(s)
		if err != nil {
			t.Fatalf("ReverseAddr(%q): %v", s, err)
		}
		got, origin, ok := parseReverse(name)
		if !ok || got != want {
			t.Errorf("parseReverse(%q) = %v, %v; want %v", name, got, ok, want)
		}
		if wantOrigin := map[bool]string{true: reverseV4, false: reverseV6}[want.Is4()]; origin != wantOrigin {
			t.Errorf("parseReverse(%q) zone = %q, want %q", name, origin, wantOrigin)
		}
	}
	for _, name := range []string{
		"240.3.10.in-addr.arpa.",        // a network
		"1.240.3.10.10.in-addr.arpa.",   // five labels
		"256.240.3.10.in-addr.arpa.",    // not a byte
		"01.240.3.10.in-addr.arpa.",     // not canonical
		"-1.240.3.10.in-addr.arpa.",     //
		"a.240.3.10.in-addr.arpa.",      //
		"in-addr.arpa.",                 //
		"0.3.0.0.0.0.0.0.ip6.arpa.",     // a network
		"1.2.3.4.example.com.",          //
		"10.3.240.20.in-addr.arpa.com.", //
	} {
		if ip, _, ok := parseReverse(name); ok {
			t.Errorf("parseReverse(%q) = %v, want not an address", name, ip)
		}
	}
	long := ""
	for range 32 {
		long += "g."
	}
	if ip, _, ok := parseReverse(long + "ip6.arpa."); ok {
		t.Errorf("parseReverse(g.g...ip6.arpa.) = %v, want not an address", ip)
	}
}

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in, want string // want "" for an error
	}{
		{"192.0.2.53:53", "192.0.2.53:53"},
		{"192.0.2.53:5353", "192.0.2.53:5353"},
		{"192.0.2.53", "192.0.2.53:53"},
		{"2001:db8::53", "[2001:db8::53]:53"},
		{"[2001:db8::53]:5353", "[2001:db8::53]:5353"},
		{"fe80::1%eth0", "[fe80::1%eth0]:53"},
		{"192.0.2.53:0", ""},
		{"dns.example.com:53", ""},
		{"192.0.2.53:", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := parseUpstream(tt.in)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("parseUpstream(%q) = %v, want an error", tt.in, got)
		case tt.want != "" && (err != nil || got.String() != tt.want):
			t.Errorf("parseUpstream(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}
