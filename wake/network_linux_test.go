package wake

import (
	"net"
	"testing"
)

func TestIncidental(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"fe80::1", true},
		{"169.254.1.2", true},
		{"ff02::1", true},
		{"224.0.0.251", true},
		{"10.0.12.1", false},
		{"192.168.1.20", false},
		{"2001:db8::5", false},
	} {
		if got := incidental(net.ParseIP(tc.ip)); got != tc.want {
			t.Errorf("incidental(%s) = %v, want %v", tc.ip, got, tc.want)
		}
	}
	if !incidental(nil) {
		t.Error("incidental(nil) = false, want true")
	}
}
