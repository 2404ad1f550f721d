package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubetun/kubetun/resolver"
)

// TestExternalIPsRouted checks that the external addresses a state serves
// are routed next to the service CIDRs, follow the state, and that the
// refused ones are each reported once with the reason.
func TestExternalIPsRouted(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true},
		External: &ExternalConfig{ExternalIPRanges: prefixes("192.0.2.0/24", "198.51.100.0/24")}},
		prefixes("198.51.100.0/24")...)
	b.run(t)
	st := seed()
	svc := st.Services[0]
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.ExternalIPs = []string{"192.0.2.10", "203.0.113.10", "198.51.100.7"}
	for range 3 {
		b.src.do(t, func(r Receiver) { r.Apply(st) })
	}
	if r, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20", "192.0.2.10/32"); !slices.Equal(r, want) {
		t.Errorf("routes = %v, want %v", r, want)
	}
	if sp, ok := b.p.table.Lookup(resolver.TCP, netip.MustParseAddrPort("192.0.2.10:80")); !ok || !sp.External {
		t.Errorf("Lookup(TCP, 192.0.2.10:80) = %v, %v; want the Service's external port", sp, ok)
	}
	for _, want := range []string{
		"externalIP 203.0.113.10 is outside the allowed external IP ranges",
		"externalIP 198.51.100.7: overlaps route 198.51.100.0/24 dev eth0; not served",
		"no node address matches --nodeport-addresses primary; node ports are not served",
	} {
		if n := strings.Count(b.logged(), want); n != 1 {
			t.Errorf("log has %d lines with %q after 3 identical states, want 1", n, want)
		}
	}

	svc.Spec.ExternalIPs = nil
	b.src.do(t, func(r Receiver) { r.Apply(st) })
	if r, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20"); !slices.Equal(r, want) {
		t.Errorf("routes after the externalIPs went = %v, want %v", r, want)
	}
}
