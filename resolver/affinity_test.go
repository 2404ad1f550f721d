package resolver

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var stickyAddr = netip.MustParseAddrPort("10.3.240.20:80")

// epoch is the fake clock's start. It is near the real time so that
// PickOtherFor, which reads the real clock, agrees with it.
var epoch = time.Now()

// stickyService is Service default/sticky on 10.3.240.20:80. affinity says
// whether it has ClientIP session affinity; timeout, if not nil, is its
// sessionAffinityConfig.clientIP.timeoutSeconds.
func stickyService(affinity bool, timeout *int32) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "sticky"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  stickyAddr.Addr().String(),
			ClusterIPs: []string{stickyAddr.Addr().String()},
			Ports: []corev1.ServicePort{{
				Protocol: corev1.ProtocolTCP, Port: int32(stickyAddr.Port()), TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
	if affinity {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if timeout != nil {
			svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{
				ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout},
			}
		}
	} else {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	return svc
}

// buildSticky builds svc over prev with ready endpoints at 10.0.i.2:8080
// for each i in eps, and returns the new snapshot and its Service port.
func buildSticky(tb testing.TB, prev *Snapshot, svc *corev1.Service, eps ...int) (*Snapshot, *ServicePort) {
	tb.Helper()
	snap, problems := Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{stickySlice(eps...)}, prev, Topology{})
	if len(problems) > 0 {
		tb.Fatalf("Build: problems %v", problems)
	}
	sp, ok := snap.Lookup(TCP, stickyAddr)
	if !ok {
		tb.Fatalf("Lookup(TCP, %v) not found", stickyAddr)
	}
	if len(sp.Usable()) != len(eps) {
		tb.Fatalf("Usable() = %v, want %d endpoints", sp.Usable(), len(eps))
	}
	return snap, sp
}

// stickySlice is the EndpointSlice of default/sticky with ready endpoints
// at 10.0.i.2:8080 for each i in eps.
func stickySlice(eps ...int) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "sticky-1", Labels: map[string]string{discoveryv1.LabelServiceName: "sticky"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: new(""), Protocol: new(corev1.ProtocolTCP), Port: new(int32(8080))}},
	}
	for _, i := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.0.%d.2", i)}})
	}
	return es
}

// client returns the i-th test client address, 192.168.x.y.
func client(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})
}

func mustPickFor(tb testing.TB, sp *ServicePort, c netip.Addr, now time.Time) netip.AddrPort {
	tb.Helper()
	ep, ok := sp.pickFor(c, now)
	if !ok {
		tb.Fatalf("pickFor(%v, %v) = false, want an endpoint", c, now.Sub(epoch))
	}
	return ep.Addr
}

func affinityLen(sp *ServicePort) int {
	sp.affinity.mu.Lock()
	defer sp.affinity.mu.Unlock()
	return len(sp.affinity.clients)
}

func TestAffinityTimeout(t *testing.T) {
	tests := []struct {
		name string
		svc  *corev1.Service
		want time.Duration
	}{
		{"no affinity", stickyService(false, nil), 0},
		{"no sessionAffinity field", func() *corev1.Service {
			svc := stickyService(false, nil)
			svc.Spec.SessionAffinity = ""
			return svc
		}(), 0},
		{"ClientIP without config: the default", stickyService(true, nil), DefaultAffinityTimeout},
		{"ClientIP with a config without clientIP: the default", func() *corev1.Service {
			svc := stickyService(true, nil)
			svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{}
			return svc
		}(), DefaultAffinityTimeout},
		{"ClientIP without timeoutSeconds: the default", func() *corev1.Service {
			svc := stickyService(true, nil)
			svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{}}
			return svc
		}(), DefaultAffinityTimeout},
		{"ClientIP 60s", stickyService(true, new(int32(60))), time.Minute},
		{"ClientIP 86400s (the API's maximum)", stickyService(true, new(int32(86400))), 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sp := buildSticky(t, nil, tt.svc, 1, 2)
			if got := sp.Affinity(); got != tt.want {
				t.Errorf("Affinity() = %v, want %v", got, tt.want)
			}
			if (sp.affinity != nil) != (tt.want != 0) {
				t.Errorf("affinity table = %v, want one: %v", sp.affinity, tt.want != 0)
			}
		})
	}
	if DefaultAffinityTimeout != 10800*time.Second {
		t.Errorf("DefaultAffinityTimeout = %v, want 10800s", DefaultAffinityTimeout)
	}
}

// TestAffinitySticky checks that one client keeps its endpoint for 15
// connections in a row while the clients around it are spread round-robin.
func TestAffinitySticky(t *testing.T) {
	for _, timeout := range []*int32{nil, new(int32(30))} {
		t.Run(fmt.Sprintf("timeoutSeconds %v", deref(timeout)), func(t *testing.T) {
			_, sp := buildSticky(t, nil, stickyService(true, timeout), 1, 2, 3)
			a := client(1)
			now := epoch
			first := mustPickFor(t, sp, a, now)
			others := make(map[netip.AddrPort]int)
			for i := range 15 {
				now = now.Add(time.Second)
				if got := mustPickFor(t, sp, a, now); got != first {
					t.Fatalf("pickFor(%v) #%d = %v, want %v as before", a, i+2, got, first)
				}
				others[mustPickFor(t, sp, client(100+i), now)]++
			}
			for _, ep := range sp.Usable() {
				if others[ep.Addr] != 5 {
					t.Errorf("15 new clients: %v got %d, want 5 (all: %v)", ep, others[ep.Addr], others)
				}
			}
			// The new clients are bound too.
			for i := range 15 {
				if got, want := mustPickFor(t, sp, client(100+i), now), mustPickFor(t, sp, client(100+i), now); got != want {
					t.Errorf("client %v moved from %v to %v", client(100+i), want, got)
				}
			}
		})
	}
}

func deref(p *int32) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// TestAffinityWindow checks the sliding window: every connection restarts
// the client's timeout.
func TestAffinityWindow(t *testing.T) {
	tests := []struct {
		name    string
		timeout *int32
		want    time.Duration
	}{
		{"default", nil, DefaultAffinityTimeout},
		{"60s", new(int32(60)), time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sp := buildSticky(t, nil, stickyService(true, tt.timeout), 1, 2, 3)
			a := client(1)
			now := epoch
			bound := mustPickFor(t, sp, a, now)

			// Reconnecting every timeout-1s keeps the endpoint, far longer
			// than one timeout, while new clients move the cursor (two at a
			// time: with three endpoints, one would bring it back to where
			// an expired client would land on its old endpoint again).
			for i := range 50 {
				now = now.Add(tt.want - time.Second)
				mustPickFor(t, sp, client(1000+2*i), now)
				mustPickFor(t, sp, client(1001+2*i), now)
				if got := mustPickFor(t, sp, a, now); got != bound {
					t.Fatalf("pickFor(%v) after %d reconnections every %v = %v, want %v", a, i+1, tt.want-time.Second, got, bound)
				}
			}

			// Waiting timeout+1s ends the binding: the client goes where
			// round-robin says. Place the cursor so that it is not bound.
			for {
				ep, _ := sp.Pick()
				if ep.Addr == bound {
					break
				}
			}
			now = now.Add(tt.want + time.Second)
			moved := mustPickFor(t, sp, a, now)
			if moved == bound {
				t.Errorf("pickFor(%v) after %v = %v, want another endpoint (the round-robin one)", a, tt.want+time.Second, moved)
			}
			// And it is bound to the new endpoint from then on.
			now = now.Add(time.Second)
			if got := mustPickFor(t, sp, a, now); got != moved {
				t.Errorf("pickFor(%v) = %v, want %v it moved to", a, got, moved)
			}
		})
	}
}

// TestAffinityEndpointGone checks that a client whose endpoint leaves the
// usable set moves, and stays where it moved.
func TestAffinityEndpointGone(t *testing.T) {
	svc := stickyService(true, nil)
	snap, sp := buildSticky(t, nil, svc, 1, 2, 3)
	a := client(1)
	now := epoch
	bound := mustPickFor(t, sp, a, now)
	var left []int
	for _, i := range []int{1, 2, 3} {
		if netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 2}), 8080) != bound {
			left = append(left, i)
		}
	}
	_, sp = buildSticky(t, snap, svc, left...)
	now = now.Add(time.Second)
	moved := mustPickFor(t, sp, a, now)
	if moved == bound {
		t.Fatalf("pickFor(%v) = %v, which is no longer usable", a, moved)
	}
	for range 5 {
		now = now.Add(time.Second)
		if got := mustPickFor(t, sp, a, now); got != moved {
			t.Errorf("pickFor(%v) = %v, want %v it moved to", a, got, moved)
		}
	}

	// A not-ready endpoint is not usable either.
	snap, sp = buildSticky(t, nil, svc, 1, 2)
	bound = mustPickFor(t, sp, a, now)
	es := stickySlice(1, 2)
	for i := range es.Endpoints {
		es.Endpoints[i].Conditions.Ready = new(es.Endpoints[i].Addresses[0]+":8080" != bound.String())
	}
	snap, _ = Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{es}, snap, Topology{})
	sp, _ = snap.Lookup(TCP, stickyAddr)
	if got := mustPickFor(t, sp, a, now); got == bound {
		t.Errorf("pickFor(%v) = %v, which is not ready", a, got)
	}

	// With no endpoint left the client is refused and forgotten.
	_, sp = buildSticky(t, snap, svc)
	if ep, ok := sp.pickFor(a, now); ok {
		t.Errorf("pickFor(%v) with no endpoints = %v, want false", a, ep)
	}
	if n := affinityLen(sp); n != 0 {
		t.Errorf("affinity table holds %d clients after a refusal, want 0", n)
	}
}

// TestAffinityRebuild checks that clients stay bound across rebuilds, and
// that affinity can be switched off and on again at runtime.
func TestAffinityRebuild(t *testing.T) {
	on, off := stickyService(true, nil), stickyService(false, nil)
	a := client(1)
	now := epoch

	snap, sp := buildSticky(t, nil, on, 1, 2, 3)
	bound := mustPickFor(t, sp, a, now)

	// A rebuild with the same Service keeps the client where it was, even
	// after other clients moved the cursor.
	for i := range 5 {
		now = now.Add(time.Second)
		mustPickFor(t, sp, client(100+i), now)
		snap, sp = buildSticky(t, snap, on, 1, 2, 3)
		if got := mustPickFor(t, sp, a, now); got != bound {
			t.Fatalf("after rebuild %d: pickFor(%v) = %v, want %v as before", i+1, a, got, bound)
		}
	}
	// So does one that adds an endpoint.
	snap, sp = buildSticky(t, snap, on, 1, 2, 3, 4)
	if got := mustPickFor(t, sp, a, now); got != bound {
		t.Fatalf("after adding an endpoint: pickFor(%v) = %v, want %v as before", a, got, bound)
	}

	// Affinity off: plain round-robin, the client goes everywhere.
	snap, sp = buildSticky(t, snap, off, 1, 2, 3, 4)
	if sp.Affinity() != 0 {
		t.Errorf("Affinity() = %v with sessionAffinity None, want 0", sp.Affinity())
	}
	seen := make(map[netip.AddrPort]int)
	for range 8 {
		now = now.Add(time.Second)
		seen[mustPickFor(t, sp, a, now)]++
	}
	for _, ep := range sp.Usable() {
		if seen[ep.Addr] != 2 {
			t.Errorf("affinity off: 8 pickFor(%v) gave %v %d times, want 2 (all: %v)", a, ep, seen[ep.Addr], seen)
		}
	}

	// On again: sticky again.
	_, sp = buildSticky(t, snap, on, 1, 2, 3, 4)
	if sp.Affinity() != DefaultAffinityTimeout {
		t.Errorf("Affinity() = %v after switching back on, want %v", sp.Affinity(), DefaultAffinityTimeout)
	}
	bound = mustPickFor(t, sp, a, now)
	for i := range 15 {
		now = now.Add(time.Second)
		mustPickFor(t, sp, client(200+i), now)
		if got := mustPickFor(t, sp, a, now); got != bound {
			t.Fatalf("affinity on again: pickFor(%v) #%d = %v, want %v", a, i+2, got, bound)
		}
	}
}

// TestAffinityPickOtherFor checks that a retry after a failed dial moves the
// client to the endpoint it was retried on.
func TestAffinityPickOtherFor(t *testing.T) {
	_, sp := buildSticky(t, nil, stickyService(true, nil), 1, 2, 3)
	a := client(1)
	now := time.Now() // PickOtherFor reads the real clock
	bound, _ := sp.pickFor(a, now)
	other, ok := sp.PickOtherFor(a, bound)
	if !ok || other.Addr == bound.Addr {
		t.Fatalf("PickOtherFor(%v, %v) = %v, %v; want another endpoint", a, bound, other, ok)
	}
	for i := range 5 {
		if got := mustPickFor(t, sp, a, now.Add(time.Duration(i+1)*time.Second)); got != other.Addr {
			t.Errorf("pickFor(%v) after PickOtherFor = %v, want %v", a, got, other)
		}
	}

	// No other endpoint: nothing to retry on, and the binding stays.
	_, sp = buildSticky(t, nil, stickyService(true, nil), 1)
	only, _ := sp.pickFor(a, now)
	if ep, ok := sp.PickOtherFor(a, only); ok {
		t.Errorf("PickOtherFor(%v, %v) with one endpoint = %v, want false", a, only, ep)
	}
	if got := mustPickFor(t, sp, a, now.Add(time.Second)); got != only.Addr {
		t.Errorf("pickFor(%v) = %v, want %v", a, got, only)
	}

	// Without affinity PickOtherFor is PickOther.
	_, sp = buildSticky(t, nil, stickyService(false, nil), 1, 2)
	ep, _ := sp.Pick()
	if got, ok := sp.PickOtherFor(a, ep); !ok || got.Addr == ep.Addr {
		t.Errorf("PickOtherFor(%v, %v) without affinity = %v, %v; want the other endpoint", a, ep, got, ok)
	}
}

// TestAffinitySweep checks that expired bindings are dropped as time passes,
// whatever the number of new clients, and that live ones are kept.
func TestAffinitySweep(t *testing.T) {
	t.Run("expired", func(t *testing.T) {
		_, sp := buildSticky(t, nil, stickyService(true, new(int32(10))), 1, 2)
		now := epoch
		for i := range 3000 {
			now = now.Add(11 * time.Second) // every earlier client has expired
			mustPickFor(t, sp, client(i), now)
			if n := affinityLen(sp); n != 1 {
				t.Fatalf("after %d clients each past the previous one's timeout: %d in the table, want 1", i+1, n)
			}
		}
	})
	t.Run("expired_without_new_clients", func(t *testing.T) {
		// Many clients, then only one returning one: the others expire.
		_, sp := buildSticky(t, nil, stickyService(true, new(int32(10))), 1, 2)
		for i := range 100 {
			mustPickFor(t, sp, client(i), epoch)
		}
		mustPickFor(t, sp, client(0), epoch.Add(11*time.Second))
		if n := affinityLen(sp); n != 1 {
			t.Errorf("one client back after the others' timeout: %d in the table, want 1", n)
		}
	})
	t.Run("live", func(t *testing.T) {
		_, sp := buildSticky(t, nil, stickyService(true, new(int32(3600))), 1, 2)
		now := epoch
		bound := make(map[netip.Addr]netip.AddrPort)
		for i := range 3000 {
			now = now.Add(time.Millisecond)
			bound[client(i)] = mustPickFor(t, sp, client(i), now)
		}
		if n := affinityLen(sp); n != len(bound) {
			t.Errorf("%d clients within the timeout: %d in the table, want all", len(bound), n)
		}
		// Move the cursor by one so that an unbound client would change.
		sp.Pick()
		for c, want := range bound {
			if got := mustPickFor(t, sp, c, now); got != want {
				t.Fatalf("pickFor(%v) = %v, want %v: a live binding was swept", c, got, want)
			}
		}
	})
}

// TestAffinityCap checks that a full table forgets the client seen least
// recently, and that the count for metrics follows the table.
func TestAffinityCap(t *testing.T) {
	const max = 64
	snap, problems := Build([]*corev1.Service{stickyService(true, nil)}, []*discoveryv1.EndpointSlice{stickySlice(1, 2)}, nil, Topology{}, MaxAffinityClients(max))
	if len(problems) > 0 {
		t.Fatalf("Build: problems %v", problems)
	}
	sp, _ := snap.Lookup(TCP, stickyAddr)
	now := epoch
	bound := make(map[netip.Addr]netip.AddrPort)
	for i := range max {
		now = now.Add(time.Second)
		bound[client(i)] = mustPickFor(t, sp, client(i), now)
	}
	// client(0) comes back, so client(1) is now the least recently seen.
	now = now.Add(time.Second)
	mustPickFor(t, sp, client(0), now)
	for i := max; i < 3*max; i++ {
		now = now.Add(time.Second)
		mustPickFor(t, sp, client(i), now)
		if n := affinityLen(sp); n > max {
			t.Fatalf("after %d clients: %d in the table, want at most %d", i+1, n, max)
		}
		if i == max {
			if _, ok := sp.affinity.clients[client(1)]; ok {
				t.Errorf("table full: client %v, the least recently seen, is still there", client(1))
			}
			if _, ok := sp.affinity.clients[client(0)]; !ok {
				t.Errorf("table full: client %v, seen again, was forgotten", client(0))
			}
		}
	}
	if got := snap.AffinityEntries(); got != max {
		t.Errorf("AffinityEntries() = %d, want %d", got, max)
	}
	if got := (*Snapshot)(nil).AffinityEntries(); got != 0 {
		t.Errorf("nil AffinityEntries() = %d, want 0", got)
	}
}

// BenchmarkAffinityTableMemory reports the memory one remembered client
// costs (DefaultMaxAffinityClients' comment quotes it).
func BenchmarkAffinityTableMemory(b *testing.B) {
	_, sp := buildSticky(b, nil, stickyService(true, nil), 1, 2)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range DefaultMaxAffinityClients {
		c := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 8), byte(i)})
		sp.pickFor(c, epoch)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(sp)
	for b.Loop() {
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/DefaultMaxAffinityClients, "bytes/client")
}

// TestAffinityConcurrent picks for many clients on many goroutines while
// the control plane rebuilds the table over and over (run it with -race):
// every client keeps its endpoint throughout.
func TestAffinityConcurrent(t *testing.T) {
	svc := stickyService(true, nil)
	var tbl Table
	snap, _ := buildSticky(t, nil, svc, 1, 2, 3)
	tbl.Store(snap)

	done := make(chan struct{})
	rebuilt := make(chan struct{})
	go func() {
		defer close(rebuilt)
		for {
			select {
			case <-done:
				return
			default:
			}
			// Not buildSticky: t.Fatal is for the test's goroutine.
			snap, _ := Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{stickySlice(1, 2, 3)}, tbl.Load(), Topology{})
			tbl.Store(snap)
		}
	}()

	const workers, clients, rounds = 8, 16, 50
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			bound := make(map[netip.Addr]netip.AddrPort)
			for r := range rounds {
				for c := range clients {
					addr := client(w*clients + c)
					sp, ok := tbl.Lookup(TCP, stickyAddr)
					if !ok {
						errs <- fmt.Errorf("Lookup(TCP, %v) not found", stickyAddr)
						return
					}
					ep, ok := sp.pickFor(addr, epoch.Add(time.Duration(r)*time.Second))
					if !ok {
						errs <- fmt.Errorf("pickFor(%v) = false", addr)
						return
					}
					if want, seen := bound[addr]; seen && ep.Addr != want {
						errs <- fmt.Errorf("round %d: pickFor(%v) = %v, want %v as before", r, addr, ep, want)
						return
					}
					bound[addr] = ep.Addr
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(done)
	<-rebuilt
}
