package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/resolver"
)

// TestMappedCIDRs checks that with Map a service range overlapping a route
// of the host (another cluster's) is served on a class E range: routed
// there, the DNS in it, the data path's lookup of a mapped address finding
// the real ClusterIP's Service, the status naming both with the context;
// and that a free range is left as it is.
func TestMappedCIDRs(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
		// followed: the source reports the ranges (ApplyCIDRs)
		followed bool
	}{
		{name: "followed", followed: true, cfg: Config{Mode: "connect", DNS: DNSConfig{Domain: "cluster.local"}, Map: MapConfig{Mode: MapOverlap, Seed: "kind-b"}}},
		{name: "fixed", cfg: Config{Mode: "connect", ServiceCIDRs: prefixes("10.3.240.0/20", "10.200.0.0/16"), DNS: DNSConfig{Domain: "cluster.local"}, Map: MapConfig{Mode: MapOverlap, Seed: "kind-b"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The first cluster's range is routed already, into its TUN.
			b := newBed(t, tt.cfg, netip.MustParsePrefix("10.3.240.0/20"))
			b.run(t)
			b.src.do(t, func(r Receiver) { r.Apply(seed()) })
			if tt.followed {
				b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.200.0.0/16")) })
			}
			routes := b.dp.lastRoutes()
			if len(routes) != 2 || !addrmap.Pool4.Contains(routes[0].Addr()) || routes[0].Bits() != 20 || routes[1] != netip.MustParsePrefix("10.200.0.0/16") {
				t.Fatalf("routes = %v, want a /20 in 240.0.0.0/4, then 10.200.0.0/16 as it is", routes)
			}
			mapped := routes[0]
			svcIP := netip.MustParseAddr("10.3.241.152")
			served, ok := b.p.mapping.ToMapped(svcIP)
			if !ok || !mapped.Contains(served) {
				t.Fatalf("ToMapped(%s) = %s, %v; want it in %s", svcIP, served, ok, mapped)
			}
			// The data path's lookup.
			ms := mappedServices{b.p.table, &b.p.mapping}
			if sp, ok := ms.Lookup(resolver.TCP, netip.AddrPortFrom(served, 80)); !ok || sp.Service != "default/service-test" {
				t.Errorf("Lookup(%s:80) = %v, %v; want default/service-test", served, sp, ok)
			}
			if _, ok := ms.Lookup(resolver.TCP, netip.AddrPortFrom(served.Next(), 80)); ok {
				t.Errorf("Lookup(%s:80) found a Service", served.Next())
			}
			if !ms.Answers(served) {
				t.Errorf("Answers(%s) = false", served)
			}
			// The DNS: on the mapped range's 10th address, translating.
			dns := b.dnsServer()
			if dns == nil || !mapped.Contains(dns.params.Self) || dns.params.Map == nil {
				t.Fatalf("DNS = %+v, want it in %s, with the map", dns, mapped)
			}
			if got, _ := dns.params.Map.ToMapped(svcIP); got != served {
				t.Errorf("DNS map: %s -> %s, want %s", svcIP, got, served)
			}
			st := b.status(t)
			if !slices.Equal(st.ServiceCIDRs, []string{mapped.String(), "10.200.0.0/16"}) || st.Mapped == nil || st.Mapped.Context != "kind-b" ||
				len(st.Mapped.Pairs) != 1 || st.Mapped.Pairs[0].Real != netip.MustParsePrefix("10.3.240.0/20") {
				t.Errorf("status: service CIDRs %v, mapped %+v", st.ServiceCIDRs, st.Mapped)
			}
			if len(st.Services) != 1 || !slices.Equal(st.Services[0].MappedClusterIPs, []string{served.String()}) || st.Services[0].ClusterIPs[0] != svcIP.String() {
				t.Errorf("status services = %+v, want %s served on %s", st.Services, svcIP, served)
			}
			if want := mapped.String() + " (10.3.240.0/20 of kind-b)"; !strings.Contains(b.logged(), want) {
				t.Errorf("log does not say %q", want)
			}
			// The same ranges again: the same mapped range.
			if tt.followed {
				b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.200.0.0/16")) })
				if got := b.dp.lastRoutes(); got[0] != mapped {
					t.Errorf("routes again = %v, want %s kept", got, mapped)
				}
			}
		})
	}
}

// TestMapAlways checks that with MapAlways a free range is mapped too, and
// the log says why.
func TestMapAlways(t *testing.T) {
	b := newBed(t, Config{Mode: "connect", ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Domain: "cluster.local"}, Map: MapConfig{Mode: MapAlways, Seed: "kind-a"}})
	b.run(t)
	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if routes := b.dp.lastRoutes(); len(routes) != 1 || !addrmap.Pool4.Contains(routes[0].Addr()) {
		t.Errorf("routes = %v, want one range in 240.0.0.0/4", routes)
	}
	if !strings.Contains(b.logged(), "why=\"--map always\"") {
		t.Errorf("log does not say why the range was mapped")
	}
}

// TestMappedPods checks that a headless Service's pod IP overlapping a
// route of the host is served on a mapped /32, routed there, found by the
// data path's PodByIP, and forgotten when the pod leaves.
func TestMappedPods(t *testing.T) {
	cidrs := prefixes("10.3.240.0/20")
	b := newBed(t, Config{Mode: "connect", ServiceCIDRs: cidrs, RoutePods: true, PodsVia: "portforward",
		DNS: DNSConfig{Domain: "cluster.local"}, Map: MapConfig{Mode: MapOverlap, Seed: "kind-b"}},
		// The first cluster's pod 10.0.9.2, routed into its TUN.
		netip.MustParsePrefix("10.0.9.2/32"))
	b.run(t)
	state := func(extra bool) State {
		st := seed()
		svc, es := headless(extra)
		st.Services = append(st.Services, svc)
		st.Slices = append(st.Slices, es)
		return st
	}
	b.src.do(t, func(r Receiver) { r.Apply(state(true)) })
	routes := b.dp.lastRoutes()
	if len(routes) != 3 || routes[0] != cidrs[0] || !addrmap.Pool4.Contains(routes[1].Addr()) || !routes[1].IsSingleIP() || routes[2] != netip.MustParsePrefix("10.0.9.3/32") {
		t.Fatalf("routes = %v, want %s, 10.0.9.2 mapped to a /32 in class E, 10.0.9.3/32 as it is", routes, cidrs[0])
	}
	ms := mappedServices{b.p.table, &b.p.mapping}
	if ns, name, ok := ms.PodByIP(routes[1].Addr()); !ok || ns != "default" || name != "db-0" {
		t.Errorf("PodByIP(%s) = %s/%s, %v; want default/db-0", routes[1].Addr(), ns, name, ok)
	}
	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if got := b.dp.lastRoutes(); !slices.Equal(got, cidrs) {
		t.Errorf("routes after the headless Service left = %v, want %v", got, cidrs)
	}
	if n := b.p.mapping.Load().Len(); n != 0 {
		t.Errorf("mapping after the pods left: %v", b.p.mapping.Load().Pairs())
	}
}
