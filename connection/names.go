package connection

import (
	"fmt"
	"hash/fnv"
	"strings"
)

// maxIfName is the longest network device name Linux takes (IFNAMSIZ 16,
// with its NUL).
const maxIfName = 15

// TUNPrefix starts the name of every TUN a connection derives, so that a
// person (and `ip link`) tells kubetun's apart from other devices.
const TUNPrefix = "kt-"

// TUNName derives a connection's TUN name from its kubeconfig context:
// "kt-" and the context made a device name, "kt-kind-kind" for
// kind-kind. A context too long for the 15 characters Linux allows keeps
// its start and ends with 4 hex digits of its hash, so that two long
// contexts that begin alike ("gke_project_europe-west1_a", "..._b") still
// get two names, always the same for one context. taken reports a name in
// use (a device exists); then the next of "-2", "-3", ... replaces the
// tail.
func TUNName(context string, taken func(string) bool) (string, error) {
	base := deviceLabel(context)
	name := fit(base, context, "")
	for i := 2; taken != nil && taken(name); i++ {
		if i > 99 {
			return "", fmt.Errorf("no free TUN name for context %q: %s and 98 more are taken", context, fit(base, context, ""))
		}
		name = fit(base, context, fmt.Sprintf("-%d", i))
	}
	return name, nil
}

// fit returns TUNPrefix+base+suffix, shortened with a hash of context when
// it is too long.
func fit(base, context, suffix string) string {
	room := maxIfName - len(TUNPrefix) - len(suffix)
	if len(base) <= room {
		return TUNPrefix + base + suffix
	}
	h := fnv.New32a()
	h.Write([]byte(context))
	tail := fmt.Sprintf("%04x", h.Sum32()&0xffff)
	return TUNPrefix + strings.TrimRight(base[:room-5], "-") + "-" + tail + suffix
}

// deviceLabel keeps the lower-case letters and digits of s, every other run
// of characters becoming one '-'.
func deviceLabel(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			continue
		}
		dash = true
	}
	if b.Len() == 0 {
		return "default"
	}
	return b.String()
}

// Domain derives a connection's own DNS domain from its kubeconfig
// context: the context as one DNS label ("kind-kind", "staging"), so that
// names read <svc>.<ns>.svc.<context>. Kubeconfig contexts are free text
// (EKS uses ARNs, GKE underscores): every character outside RFC 1123's
// letters, digits and '-' becomes '-', and the label is cut to 63
// characters.
func Domain(context string) string {
	d := deviceLabel(context)
	if len(d) > 63 {
		d = strings.TrimRight(d[:63], "-")
	}
	return d
}
