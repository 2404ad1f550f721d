package resolver_test

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubetun/kubetun/resolver"
)

var seedAddr = netip.MustParseAddrPort("10.3.241.152:80")

// seedWith builds the seed Service with n ready endpoints 10.0.i.2:8080
// (i from 1), rebuilding over prev, and returns its snapshot and port.
func seedWith(tb testing.TB, n int, prev *resolver.Snapshot) (*resolver.Snapshot, *resolver.ServicePort) {
	tb.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.%d.2", i+1)
	}
	es := seedSlice()
	es.Endpoints = endpoints(addrs...)
	snap, problems := resolver.Build([]*corev1.Service{seedService()}, []*discoveryv1.EndpointSlice{es}, prev, resolver.Topology{})
	if len(problems) > 0 {
		tb.Fatalf("Build: problems %v", problems)
	}
	sp, ok := snap.Lookup(resolver.TCP, seedAddr)
	if !ok {
		tb.Fatalf("Lookup(TCP, %v) not found", seedAddr)
	}
	if len(sp.Usable()) != n {
		tb.Fatalf("Usable() = %v, want %d endpoints", sp.Usable(), n)
	}
	return snap, sp
}

// TestPickEven checks that n*k picks over n endpoints give each exactly k,
// wherever the cursor starts.
func TestPickEven(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5} {
		for _, skip := range []int{0, 1, 7} {
			t.Run(fmt.Sprintf("%d endpoints after %d picks", n, skip), func(t *testing.T) {
				const k = 4
				_, sp := seedWith(t, n, nil)
				for range skip {
					sp.Pick()
				}
				got := make(map[netip.AddrPort]int)
				for i := range n * k {
					ep, ok := sp.Pick()
					if !ok {
						t.Fatalf("Pick() #%d = false, want an endpoint", i)
					}
					got[ep.Addr]++
				}
				for _, ep := range sp.Usable() {
					if got[ep.Addr] != k {
						t.Errorf("%d Pick()s gave %v %d times, want %d (all: %v)", n*k, ep, got[ep.Addr], k, got)
					}
				}
				if len(got) != n {
					t.Errorf("%d Pick()s gave %d distinct endpoints, want %d: %v", n*k, len(got), n, got)
				}
			})
		}
	}
}

// TestPickEvenConcurrent checks that round-robin stays exact when flows
// arrive on many goroutines at once.
func TestPickEvenConcurrent(t *testing.T) {
	const n, goroutines, each = 3, 8, 300
	_, sp := seedWith(t, n, nil)
	var (
		mu  sync.Mutex
		got = make(map[netip.AddrPort]int)
		wg  sync.WaitGroup
	)
	for range goroutines {
		wg.Go(func() {
			local := make(map[netip.AddrPort]int)
			for range each {
				ep, ok := sp.Pick()
				if !ok {
					t.Error("Pick() = false, want an endpoint")
					return
				}
				local[ep.Addr]++
			}
			mu.Lock()
			defer mu.Unlock()
			for a, c := range local {
				got[a] += c
			}
		})
	}
	wg.Wait()
	for _, ep := range sp.Usable() {
		if want := goroutines * each / n; got[ep.Addr] != want {
			t.Errorf("concurrent Pick()s gave %v %d times, want %d (all: %v)", ep, got[ep.Addr], want, got)
		}
	}
}

// TestPickCursorCarriesOver checks that a rebuild does not restart the
// round-robin at the first endpoint: with a rebuild before every
// connection (a busy control plane), the split must stay even.
func TestPickCursorCarriesOver(t *testing.T) {
	const n, k = 3, 5
	tests := []struct {
		name    string
		carry   bool
		wantMax int // most picks any endpoint may get
	}{
		{name: "rebuilt over the previous snapshot", carry: true, wantMax: k},
		{name: "rebuilt from scratch", carry: false, wantMax: n * k}, // the first endpoint, every time
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var snap *resolver.Snapshot
			got := make(map[netip.AddrPort]int)
			for range n * k {
				prev := snap
				if !tt.carry {
					prev = nil
				}
				var sp *resolver.ServicePort
				snap, sp = seedWith(t, n, prev)
				ep, ok := sp.Pick()
				if !ok {
					t.Fatal("Pick() = false, want an endpoint")
				}
				got[ep.Addr]++
			}
			most := 0
			for _, c := range got {
				most = max(most, c)
			}
			if most != tt.wantMax {
				t.Errorf("%d rebuilds and Pick()s: split %v, most %d, want %d", n*k, got, most, tt.wantMax)
			}
		})
	}
}

func TestPickOther(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("%d endpoints", n), func(t *testing.T) {
			_, sp := seedWith(t, n, nil)
			for _, failed := range sp.Usable() {
				for range 3 * n {
					ep, ok := sp.PickOther(failed)
					if n == 1 {
						if ok {
							t.Fatalf("PickOther(%v) = %v, true; want false with a single endpoint", failed, ep)
						}
						continue
					}
					if !ok || ep.Addr == failed.Addr {
						t.Fatalf("PickOther(%v) = %v, %v; want another endpoint", failed, ep, ok)
					}
				}
			}
			// An endpoint that is gone already: any endpoint will do.
			gone := resolver.Endpoint{Addr: netip.MustParseAddrPort("10.0.99.2:8080")}
			if ep, ok := sp.PickOther(gone); !ok {
				t.Errorf("PickOther(%v) = %v, false; want an endpoint", gone, ep)
			}
		})
	}
}

func TestPickNoEndpoints(t *testing.T) {
	notReady := seedSlice()
	for i := range notReady.Endpoints {
		notReady.Endpoints[i].Conditions.Ready = ptr(false)
	}
	tests := []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
	}{
		{name: "no EndpointSlice"},
		{name: "no endpoint in the slice", slices: []*discoveryv1.EndpointSlice{
			slice("default", "service-test-x7k2p", "service-test", discoveryv1.AddressTypeIPv4, seedSlice().Ports)}},
		{name: "no ready endpoint", slices: []*discoveryv1.EndpointSlice{notReady}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, _ := resolver.Build([]*corev1.Service{seedService()}, tt.slices, nil, resolver.Topology{})
			sp, ok := snap.Lookup(resolver.TCP, seedAddr)
			if !ok {
				t.Fatalf("Lookup(TCP, %v) not found; a Service without endpoints still owns its port", seedAddr)
			}
			if ep, ok := sp.Pick(); ok {
				t.Errorf("Pick() = %v, true; want false", ep)
			}
			failed := resolver.Endpoint{Addr: netip.MustParseAddrPort("10.0.1.2:8080")}
			if ep, ok := sp.PickOther(failed); ok {
				t.Errorf("PickOther(%v) = %v, true; want false", failed, ep)
			}
		})
	}
}

func TestNilSnapshot(t *testing.T) {
	var s *resolver.Snapshot
	if sp, ok := s.Lookup(resolver.TCP, seedAddr); ok || sp != nil {
		t.Errorf("nil Snapshot: Lookup(TCP, %v) = %v, %v; want nil, false", seedAddr, sp, ok)
	}
	if s.HasIP(seedAddr.Addr()) {
		t.Errorf("nil Snapshot: HasIP(%v) = true, want false", seedAddr.Addr())
	}
	if got := s.Ports(); got != nil {
		t.Errorf("nil Snapshot: Ports() = %v, want nil", got)
	}
	if s.Services() != 0 || s.Endpoints() != 0 {
		t.Errorf("nil Snapshot: Services(), Endpoints() = %d, %d; want 0, 0", s.Services(), s.Endpoints())
	}
}

func TestTable(t *testing.T) {
	var table resolver.Table
	if s := table.Load(); s != nil {
		t.Errorf("empty Table: Load() = %v, want nil", s)
	}
	if sp, ok := table.Lookup(resolver.TCP, seedAddr); ok {
		t.Errorf("empty Table: Lookup(TCP, %v) = %v, want not found", seedAddr, sp)
	}

	first, _ := seedWith(t, 2, nil)
	table.Store(first)
	if table.Load() != first {
		t.Error("Load() after Store(first) is not first")
	}
	sp, ok := table.Lookup(resolver.TCP, seedAddr)
	if !ok || len(sp.Endpoints) != 2 {
		t.Fatalf("Lookup(TCP, %v) = %v, %v; want the seed port with 2 endpoints", seedAddr, sp, ok)
	}

	second, _ := seedWith(t, 3, first)
	table.Store(second)
	sp, ok = table.Lookup(resolver.TCP, seedAddr)
	if !ok || len(sp.Endpoints) != 3 {
		t.Fatalf("Lookup(TCP, %v) after Store(second) = %v, %v; want the seed port with 3 endpoints", seedAddr, sp, ok)
	}

	empty, _ := resolver.Build(nil, nil, second, resolver.Topology{})
	table.Store(empty)
	if sp, ok := table.Lookup(resolver.TCP, seedAddr); ok {
		t.Errorf("Lookup(TCP, %v) after Store(empty) = %v, want not found", seedAddr, sp)
	}
}
