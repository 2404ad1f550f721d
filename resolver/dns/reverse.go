package dns

import (
	"net/netip"
	"strconv"
	"strings"
)

const (
	reverseV4 = "in-addr.arpa."
	reverseV6 = "ip6.arpa."
)

// parseReverse parses a canonical reverse name of a whole address:
// 4.3.2.1.in-addr.arpa. or the 32 nibbles of an ip6.arpa. name. It returns
// the address and the reverse zone (in-addr.arpa. or ip6.arpa.). Shorter
// names (a network's) and non-canonical spellings are not an address.
func parseReverse(name string) (netip.Addr, string, bool) {
	if rest, ok := strings.CutSuffix(name, "."+reverseV4); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 4 {
			return netip.Addr{}, "", false
		}
		var b [4]byte
		for i, l := range labels {
			if len(l) > 1 && l[0] == '0' {
				return netip.Addr{}, "", false
			}
			v, err := strconv.ParseUint(l, 10, 8)
			if err != nil {
				return netip.Addr{}, "", false
			}
			b[3-i] = byte(v)
		}
		return netip.AddrFrom4(b), reverseV4, true
	}
	if rest, ok := strings.CutSuffix(name, "."+reverseV6); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 32 {
			return netip.Addr{}, "", false
		}
		var b [16]byte
		for i, l := range labels {
			if len(l) != 1 {
				return netip.Addr{}, "", false
			}
			v, err := strconv.ParseUint(l, 16, 8)
			if err != nil {
				return netip.Addr{}, "", false
			}
			// labels[0] is the low nibble of the last byte.
			n := 31 - i
			if n%2 == 0 {
				b[n/2] |= byte(v) << 4
			} else {
				b[n/2] |= byte(v)
			}
		}
		return netip.AddrFrom16(b), reverseV6, true
	}
	return netip.Addr{}, "", false
}
