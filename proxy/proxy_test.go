package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/resolver"
)

// wait bounds every wait for what the Proxy does in the background.
const wait = 5 * time.Second

// fakeSource runs the steps a test sends it, on Run's goroutine, as a real
// Source calls its Receiver.
type fakeSource struct {
	steps chan func(Receiver)
	done  chan struct{} // one value after each step
}

func newFakeSource() *fakeSource {
	return &fakeSource{steps: make(chan func(Receiver)), done: make(chan struct{})}
}

func (s *fakeSource) Run(ctx context.Context, r Receiver) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case step := <-s.steps:
			step(r)
			s.done <- struct{}{}
		}
	}
}

func (s *fakeSource) Info() SourceInfo { return SourceInfo{Kind: "manifests", Path: "/fake"} }

// do runs step on the Source's goroutine and waits until it returned.
func (s *fakeSource) do(tb testing.TB, step func(Receiver)) {
	tb.Helper()
	select {
	case s.steps <- step:
	case <-time.After(wait):
		tb.Fatalf("the Source is not running")
	}
	<-s.done
}

// fakeDataplane records routes; the host's routes are overlapping.
type fakeDataplane struct {
	overlapping []netip.Prefix
	gone        chan struct{} // nil: the TUN never goes
	table       *resolver.Table

	// startedWith is the number of Services the table held when Start
	// was called; -1 until then.
	startedWith int
	starts      int

	// flowsLeft: Drain waits for its context's end and reports false, as
	// with connections that never finish.
	flowsLeft bool

	mu     sync.Mutex // guards the fields below
	routes [][]netip.Prefix
	closed bool
	stale  int
	drains int  // calls of Drain
	late   bool // Drain was called after Close
}

func (d *fakeDataplane) Drain(ctx context.Context) bool {
	d.mu.Lock()
	d.drains++
	d.late = d.late || d.closed
	d.mu.Unlock()
	if d.flowsLeft {
		<-ctx.Done()
		return false
	}
	return true
}

func (d *fakeDataplane) SetRoutes(cidrs []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.routes = append(d.routes, slices.Clone(cidrs))
	return nil
}

func (d *fakeDataplane) CheckOverlap(cidrs []netip.Prefix) error {
	for _, c := range cidrs {
		for _, o := range d.overlapping {
			if c.Overlaps(o) {
				return fmt.Errorf("service CIDR %s overlaps route %s dev eth0", c, o)
			}
		}
	}
	return nil
}

func (d *fakeDataplane) lastRoutes() []netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.routes) == 0 {
		return nil
	}
	return d.routes[len(d.routes)-1]
}

func (d *fakeDataplane) ListenUDP(netip.AddrPort) (net.PacketConn, error) {
	return net.ListenPacket("udp", "127.0.0.1:0")
}

func (d *fakeDataplane) ListenTCP(netip.AddrPort) (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:0")
}

func (d *fakeDataplane) Name() string { return "kubetun0" }

func (d *fakeDataplane) Gone() <-chan struct{} { return d.gone }

func (d *fakeDataplane) Err() error {
	if d.gone != nil {
		select {
		case <-d.gone:
			return errors.New("link kubetun0 deleted")
		default:
		}
	}
	return nil
}

func (d *fakeDataplane) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	d.startedWith = d.table.Load().Services()
}

func (d *fakeDataplane) started() (starts, services int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.starts, d.startedWith
}

func (d *fakeDataplane) EndStaleSessions() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stale++
}

func (d *fakeDataplane) Stats() netstack.Stats { return netstack.Stats{} }

func (d *fakeDataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// fakeDNS serves nothing; it records what the Proxy told it.
type fakeDNS struct {
	params dnsParams

	mu    sync.Mutex // guards cidrs
	cidrs []netip.Prefix
}

func (f *fakeDNS) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	<-ctx.Done()
	pc.Close()
	ln.Close()
	return nil
}

func (f *fakeDNS) SetServiceCIDRs(cidrs []netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cidrs = slices.Clone(cidrs)
}

// bed is a Proxy on fakes, running until the test ends.
type bed struct {
	p      *Proxy
	src    *fakeSource
	dp     *fakeDataplane
	log    *bytes.Buffer
	logMu  *sync.Mutex
	health string // the health server's address

	mu   sync.Mutex // guards dns
	dns  *fakeDNS
	errc chan error
	stop context.CancelFunc
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (b *bed) logged() string {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	return b.log.String()
}

func (b *bed) dnsServer() *fakeDNS {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dns
}

// newBed builds a Proxy with cfg on fakes; overlapping are the host's
// routes. It does not run it.
func newBed(t *testing.T, cfg Config, overlapping ...netip.Prefix) *bed {
	t.Helper()
	b := &bed{src: newFakeSource(), dp: &fakeDataplane{overlapping: overlapping, startedWith: -1}, log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	log := slog.New(slog.NewTextHandler(syncWriter{b.logMu, b.log}, nil))
	if cfg.HealthAddr == "" {
		cfg.HealthAddr = "127.0.0.1:0"
	}
	e := env{
		checkOverlap: func(_ string, cidrs []netip.Prefix) error { return b.dp.CheckOverlap(cidrs) },
		open: func(_ Config, table *resolver.Table, _ *slog.Logger) (Dataplane, error) {
			b.dp.table = table
			return b.dp, nil
		},
		newDNS: func(p dnsParams) (DNS, error) {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.dns = &fakeDNS{params: p, cidrs: p.ServiceCIDRs}
			return b.dns, nil
		},
		hostUpstreams: func() ([]string, error) { return []string{"192.0.2.53:53"}, nil },
		listen: func(network, addr string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			if err == nil && addr == cfg.HealthAddr {
				b.health = ln.Addr().String()
			}
			return ln, err
		},
	}
	b.p = newProxy(cfg, b.src, log, e)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", b.logged())
		}
	})
	return b
}

// run runs the Proxy until the test ends, and waits until its Source runs.
func (b *bed) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	b.errc = make(chan error, 1)
	go func() { b.errc <- b.p.Run(ctx) }()
	t.Cleanup(func() { b.shutdown(t) })
	b.src.do(t, func(Receiver) {}) // Run has started the data plane and the Source
}

// shutdown cancels Run and checks that it returned nil and closed the data
// plane.
func (b *bed) shutdown(t *testing.T) {
	t.Helper()
	if b.stop == nil {
		return
	}
	b.stop()
	b.stop = nil
	select {
	case err := <-b.errc:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(wait):
		t.Fatalf("Run did not return within %v of its context's end", wait)
	}
	b.dp.mu.Lock()
	defer b.dp.mu.Unlock()
	if !b.dp.closed {
		t.Errorf("Run returned without closing the data plane")
	}
}

func (b *bed) get(t *testing.T, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: wait}
	resp, err := c.Get("http://" + b.health + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *bed) status(t *testing.T) Status {
	t.Helper()
	code, body := b.get(t, StatusPath)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %s", StatusPath, code, body)
	}
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("GET %s: %v\n%s", StatusPath, err, body)
	}
	return st
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// seed is the seed's Service and EndpointSlice: service-test at
// 10.3.241.152:80, named targetPort http on 10.0.1.2 and 10.0.2.2:8080.
func seed() State {
	ready := true
	port, name, proto := int32(8080), "", corev1.ProtocolTCP
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "service-test"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.3.241.152", ClusterIPs: []string{"10.3.241.152"},
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "service-test-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "service-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			{Addresses: []string{"10.0.1.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	return State{Services: []*corev1.Service{svc}, Slices: []*discoveryv1.EndpointSlice{es}}
}

// TestFixedCIDRsRoutedAfterFirstState checks that fixed service CIDRs, and
// the DNS in them, come up only with the source's first whole state (an API
// source's caches synced): until then nothing is routed and /readyz is 503.
func TestFixedCIDRsRoutedAfterFirstState(t *testing.T) {
	cidrs := prefixes("10.3.240.0/20")
	b := newBed(t, Config{Mode: "run", ServiceCIDRs: cidrs, TUN: "kubetun0", DNS: DNSConfig{Domain: "cluster.local"}})
	b.run(t)

	if r := b.dp.lastRoutes(); r != nil {
		t.Errorf("routes before the first state = %v, want none", r)
	}
	if b.dnsServer() != nil {
		t.Errorf("DNS started before the first state")
	}
	if code, body := b.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz before the first state = %d %q, want 503", code, body)
	}
	if st := b.status(t); st.Ready || len(st.ServiceCIDRs) != 0 || st.DNS != nil {
		t.Errorf("status before the first state = %+v, want not ready, nothing routed, no DNS", st)
	}
	b.src.do(t, func(r Receiver) { r.Changed() })
	if r := b.dp.lastRoutes(); r != nil {
		t.Errorf("routes after a change before the first state = %v, want none", r)
	}

	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if r := b.dp.lastRoutes(); !slices.Equal(r, cidrs) {
		t.Errorf("routes after the first state = %v, want %v", r, cidrs)
	}
	dns := b.dnsServer()
	if dns == nil || dns.params.Self != netip.MustParseAddr("10.3.240.10") || !slices.Equal(dns.params.Upstreams, []string{"192.0.2.53:53"}) {
		t.Fatalf("DNS after the first state = %+v, want it on 10.3.240.10 with the host's upstreams", dns)
	}
	if code, body := b.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz after the first state = %d %q, want 200", code, body)
	}
	if n := strings.Count(b.logged(), "msg=ready"); n != 1 {
		t.Errorf("log has %d msg=ready lines, want 1", n)
	}

	st := b.status(t)
	want := Status{
		Mode: "run", Source: SourceInfo{Kind: "manifests", Path: "/fake"}, Ready: true, TUN: "kubetun0",
		ServiceCIDRs: []string{"10.3.240.0/20"}, DNS: &DNSStatus{Domain: "cluster.local", Address: "10.3.240.10"}, Pods: "direct",
		Services: []ServiceStatus{{Namespace: "default", Name: "service-test", ClusterIPs: []string{"10.3.241.152"},
			Ports: []PortStatus{{Protocol: "TCP", ClusterIP: "10.3.241.152", Port: 80, Endpoints: []string{"10.0.1.2:8080", "10.0.2.2:8080"}}}}},
	}
	if got, _ := json.Marshal(st); string(got) != string(must(json.Marshal(want))) {
		t.Errorf("status = %s\nwant %s", got, must(json.Marshal(want)))
	}

	// Later states rebuild the table; the routes stay.
	b.src.do(t, func(r Receiver) { r.Apply(State{}) })
	if n := len(b.dp.routes); n != 1 {
		t.Errorf("SetRoutes called %d times after two states, want once", n)
	}
	if st := b.status(t); len(st.Services) != 0 {
		t.Errorf("status after an empty state lists %v, want no Service", st.Services)
	}
	b.dp.mu.Lock()
	stale := b.dp.stale
	b.dp.mu.Unlock()
	if stale != 2 {
		t.Errorf("EndStaleSessions called %d times after two states, want 2", stale)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestFixedCIDROverlapRefused checks that a fixed CIDR overlapping a host
// route fails Run before the data plane is opened.
func TestFixedCIDROverlapRefused(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.0.0.0/14")}, netip.MustParsePrefix("10.0.1.0/24"))
	opened := false
	b.p.env.open = func(_ Config, table *resolver.Table, _ *slog.Logger) (Dataplane, error) {
		b.dp.table = table
		opened = true
		return b.dp, nil
	}
	err := b.p.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "overlaps route 10.0.1.0/24") {
		t.Errorf("Run = %v, want the overlapping route named", err)
	}
	if opened {
		t.Errorf("Run opened the data plane despite the overlap")
	}
}

// TestFollowedCIDRs checks that without fixed CIDRs the source's ranges are
// routed, an overlapping one left out with an error, and the DNS address
// taken from the first routed one.
func TestFollowedCIDRs(t *testing.T) {
	b := newBed(t, Config{Mode: "run", DNS: DNSConfig{Domain: "cluster.local"}}, netip.MustParsePrefix("10.96.0.0/24"))
	b.run(t)
	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if r := b.dp.lastRoutes(); r != nil {
		t.Errorf("routes before any ServiceCIDR = %v, want none", r)
	}
	b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.96.0.0/12")) })
	if r, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20"); !slices.Equal(r, want) {
		t.Errorf("routes = %v, want %v (10.96.0.0/12 overlaps the host's 10.96.0.0/24)", r, want)
	}
	if !strings.Contains(b.logged(), "ServiceCIDR not routed") || !strings.Contains(b.logged(), "overlaps route 10.96.0.0/24") {
		t.Errorf("log does not name the overlapping route")
	}
	if dns := b.dnsServer(); dns == nil || dns.params.Self != netip.MustParseAddr("10.3.240.10") {
		t.Errorf("DNS = %+v, want it on 10.3.240.10", dns)
	}
	// The same ranges again change nothing.
	b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.96.0.0/12")) })
	if n := len(b.dp.routes); n != 1 {
		t.Errorf("SetRoutes called %d times for the same ranges twice, want once", n)
	}
	// A new range is routed; the DNS hears of it.
	b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.4.0.0/24")) })
	want := prefixes("10.3.240.0/20", "10.4.0.0/24")
	if r := b.dp.lastRoutes(); !slices.Equal(r, want) {
		t.Errorf("routes = %v, want %v", r, want)
	}
	dns := b.dnsServer()
	dns.mu.Lock()
	got := dns.cidrs
	dns.mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("DNS service CIDRs = %v, want %v", got, want)
	}
	if st := b.status(t); !slices.Equal(st.ServiceCIDRs, []string{"10.3.240.0/20", "10.4.0.0/24"}) {
		t.Errorf("status service CIDRs = %v", st.ServiceCIDRs)
	}
	if n := strings.Count(b.logged(), "msg=ready"); n != 1 {
		t.Errorf("log has %d msg=ready lines, want 1", n)
	}
}

// TestDNSOutsideCIDRsRouted checks that a --dns-ip outside the service
// CIDRs is routed as a /32 of its own.
func TestDNSOutsideCIDRsRouted(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{IP: netip.MustParseAddr("169.254.20.10"), Domain: "cluster.local"}})
	b.run(t)
	b.src.do(t, func(r Receiver) { r.Apply(State{}) })
	if r, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20", "169.254.20.10/32"); !slices.Equal(r, want) {
		t.Errorf("routes = %v, want %v", r, want)
	}
}

// TestDNSOff checks that with DNS off nothing listens and status says so.
func TestDNSOff(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}})
	b.run(t)
	b.src.do(t, func(r Receiver) { r.Apply(State{}) })
	if b.dnsServer() != nil {
		t.Errorf("DNS started with DNS off")
	}
	if st := b.status(t); st.DNS != nil {
		t.Errorf("status DNS = %+v with DNS off, want none", st.DNS)
	}
}

// TestProblemsReportedOnce checks that a ClusterIP outside every service
// CIDR and a source's warning are each logged once while they last.
func TestProblemsReportedOnce(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.96.0.0/12"), DNS: DNSConfig{Off: true}})
	b.run(t)
	st := seed()
	st.Warnings = []string{"web.yaml: kind ConfigMap ignored"}
	for range 3 {
		b.src.do(t, func(r Receiver) { r.Apply(st) })
	}
	for _, want := range []string{"clusterIP 10.3.241.152 is outside every service CIDR", "kind ConfigMap ignored"} {
		if n := strings.Count(b.logged(), want); n != 1 {
			t.Errorf("log has %d lines with %q after 3 identical states, want 1", n, want)
		}
	}
}

// TestSetRoutesFails checks that fixed CIDRs that cannot be routed end Run
// with the error.
func TestSetRoutesFails(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}})
	b.p.env.open = func(_ Config, table *resolver.Table, _ *slog.Logger) (Dataplane, error) {
		b.dp.table = table
		return failingRoutes{b.dp}, nil
	}
	errc := make(chan error, 1)
	go func() { errc <- b.p.Run(t.Context()) }()
	b.src.do(t, func(r Receiver) { r.Apply(State{}) })
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "no netlink") {
			t.Errorf("Run = %v, want the routing error", err)
		}
	case <-time.After(wait):
		t.Fatalf("Run did not return after routing failed")
	}
}

type failingRoutes struct{ *fakeDataplane }

func (failingRoutes) SetRoutes([]netip.Prefix) error { return errors.New("no netlink") }

// TestHealthAddrTaken checks that a taken health address fails Run at
// once, naming the flag.
func TestHealthAddrTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b := newBed(t, Config{HealthAddr: ln.Addr().String()})
	if err := b.p.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "--health-addr "+ln.Addr().String()) {
		t.Errorf("Run = %v, want --health-addr named", err)
	}
}

// countingDataplane counts flows per Service, as FlowCounter asks: flows.
type countingDataplane struct {
	*fakeDataplane
	flows map[string]int
}

func (d countingDataplane) ActiveFlowsByService() map[string]int { return d.flows }

// TestStatusFlows checks that a data plane counting flows per Service gets
// them into status, 0 for a Service it leaves out (a nil map too), and that
// one that does not count leaves them out.
func TestStatusFlows(t *testing.T) {
	three := 3
	for _, tt := range []struct {
		name     string
		counting bool
		flows    map[string]int
		want     *int
	}{
		{name: "not counting"},
		{name: "counting", counting: true, flows: map[string]int{"default/service-test": 3}, want: &three},
		{name: "counting, other Service", counting: true, flows: map[string]int{"default/other": 3}, want: new(int)},
		{name: "counting, nil map", counting: true, want: new(int)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}})
			if tt.counting {
				b.p.env.open = func(_ Config, table *resolver.Table, _ *slog.Logger) (Dataplane, error) {
					b.dp.table = table
					return countingDataplane{b.dp, tt.flows}, nil
				}
			}
			b.run(t)
			b.src.do(t, func(r Receiver) { r.Apply(seed()) })
			st := b.status(t)
			if len(st.Services) != 1 {
				t.Fatalf("status services = %+v, want service-test", st.Services)
			}
			got := st.Services[0].ActiveFlows
			switch {
			case tt.want == nil && got != nil:
				t.Errorf("activeFlows = %d, want none: the data plane does not count", *got)
			case tt.want != nil && (got == nil || *got != *tt.want):
				t.Errorf("activeFlows = %v, want %d", got, *tt.want)
			}
		})
	}
}

// TestStartAfterTableLoaded checks that the data plane pumps packets only
// once the first table is loaded and routed (a SYN that waited in a
// persistent TUN is then served, not refused), and is started once.
func TestStartAfterTableLoaded(t *testing.T) {
	for _, follow := range []bool{false, true} {
		t.Run(fmt.Sprint("follow=", follow), func(t *testing.T) {
			cfg := Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}}
			if follow {
				cfg.ServiceCIDRs = nil
			}
			b := newBed(t, cfg)
			b.run(t)
			b.src.do(t, func(r Receiver) { r.Changed() })
			if n, _ := b.dp.started(); n != 0 {
				t.Fatalf("data plane started before the first state")
			}
			b.src.do(t, func(r Receiver) { r.Apply(seed()) })
			if follow {
				if n, _ := b.dp.started(); n != 0 {
					t.Fatalf("data plane started before any ServiceCIDR is routed")
				}
				b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20")) })
			}
			b.src.do(t, func(r Receiver) { r.Apply(seed()) })
			if n, services := b.dp.started(); n != 1 || services != 1 {
				t.Errorf("data plane started %d times, with %d Services in the table; want once, with service-test", n, services)
			}
		})
	}
}

// podAt is a Service at 10.3.241.200:80 whose one endpoint is ip:8080.
func podAt(ip string) State {
	st := seed()
	svc, es := st.Services[0].DeepCopy(), st.Slices[0].DeepCopy()
	svc.Name, svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "loop", "10.3.241.200", []string{"10.3.241.200"}
	es.Name, es.Labels[discoveryv1.LabelServiceName] = "loop-abc", "loop"
	es.Endpoints = es.Endpoints[:1]
	es.Endpoints[0].Addresses = []string{ip}
	return State{Services: []*corev1.Service{svc}, Slices: []*discoveryv1.EndpointSlice{es}}
}

// TestCIDRChangeRebuildsTable checks that a newly routed ServiceCIDR
// rebuilds the table at once, so that an endpoint inside it, which kubetun
// would dial into itself, is refused without waiting for the next change.
func TestCIDRChangeRebuildsTable(t *testing.T) {
	b := newBed(t, Config{DNS: DNSConfig{Off: true}})
	b.run(t)
	b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20")) })
	b.src.do(t, func(r Receiver) { r.Apply(podAt("10.4.0.5")) })
	if n := b.p.table.Load().Endpoints(); n != 1 {
		t.Fatalf("endpoints with 10.4.0.0/24 not routed = %d, want 1", n)
	}
	b.src.do(t, func(r Receiver) { r.ApplyCIDRs(prefixes("10.3.240.0/20", "10.4.0.0/24")) })
	if n := b.p.table.Load().Endpoints(); n != 0 {
		t.Errorf("endpoints once 10.4.0.0/24 is routed = %d, want 0: 10.4.0.5 is inside a routed range", n)
	}
}

// TestDNSAddressIsRouted checks that the DNS address routed as a /32 of
// its own is, for the table too, an address kubetun routes: an endpoint
// there is refused from the first table on.
func TestDNSAddressIsRouted(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{IP: netip.MustParseAddr("10.96.0.10"), Domain: "cluster.local"}})
	b.run(t)
	b.src.do(t, func(r Receiver) { r.Apply(podAt("10.96.0.10")) })
	if n := b.p.table.Load().Endpoints(); n != 0 {
		t.Errorf("endpoints = %d, want 0: 10.96.0.10 is kubetun's DNS address, routed into the TUN", n)
	}
	if r, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20", "10.96.0.10/32"); !slices.Equal(r, want) {
		t.Errorf("routes = %v, want %v", r, want)
	}
}

// TestAffinityEntriesMetric checks MaxAffinityClients reaches the table
// and kubetun_affinity_entries counts the clients it remembers.
func TestAffinityEntriesMetric(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}, MaxAffinityClients: 2})
	b.run(t)
	st := seed()
	svc := st.Services[0].DeepCopy()
	timeout := int32(600)
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
	st.Services[0] = svc
	b.src.do(t, func(r Receiver) { r.Apply(st) })
	sp, ok := b.p.table.Lookup(resolver.TCP, netip.MustParseAddrPort("10.3.241.152:80"))
	if !ok {
		t.Fatalf("service-test not in the table")
	}
	for _, c := range []string{"10.0.9.1", "10.0.9.2", "10.0.9.3"} {
		if _, ok := sp.PickFor(netip.MustParseAddr(c)); !ok {
			t.Fatalf("PickFor(%s) found no endpoint", c)
		}
	}
	rec := httptest.NewRecorder()
	b.p.tracker.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := "kubetun_affinity_entries 2\n"; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics does not have %q (3 clients, at most 2 remembered):\n%s", want, rec.Body.String())
	}
}

// TestHealthzFailsWhenTUNGone checks that once the TUN is gone Run ends
// with TUNLost, and /healthz and /livez fail from then on, whatever the
// table's health.
func TestHealthzFailsWhenTUNGone(t *testing.T) {
	b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}})
	b.dp.gone = make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- b.p.Run(t.Context()) }()
	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if code, body := b.get(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("GET /healthz with the TUN there = %d %q, want 200", code, body)
	}
	close(b.dp.gone)
	select {
	case err := <-errc:
		var lost TUNLost
		if !errors.As(err, &lost) {
			t.Errorf("Run = %v, want TUNLost", err)
		}
	case <-time.After(wait):
		t.Fatalf("Run did not return after the TUN went")
	}
	for _, path := range []string{"/healthz", "/livez"} {
		rec := httptest.NewRecorder()
		b.p.healthMux().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "TUN device gone") {
			t.Errorf("GET %s after the TUN went = %d %q, want 503 naming the TUN", path, rec.Code, rec.Body.String())
		}
	}
}

// TestDrain: the end of Run's context drains the data plane for
// DrainTimeout before it is closed; at the deadline what is left is
// reset, and the log says so.
func TestDrain(t *testing.T) {
	for _, tc := range []struct {
		name      string
		timeout   time.Duration
		flowsLeft bool
		drains    int
		logged    string
	}{
		{"finished", time.Minute, false, 1, "drained: every connection finished"},
		{"timeout", 50 * time.Millisecond, true, 1, "drain timeout: resetting the connections still open"},
		{"off", 0, true, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBed(t, Config{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.240.0/20")}, DrainTimeout: tc.timeout,
				External: &ExternalConfig{}})
			b.dp.flowsLeft = tc.flowsLeft
			b.run(t)
			b.shutdown(t)
			b.dp.mu.Lock()
			drains, late := b.dp.drains, b.dp.late
			b.dp.mu.Unlock()
			if drains != tc.drains || late {
				t.Errorf("Drain called %d times (after Close: %v), want %d, before Close", drains, late, tc.drains)
			}
			if tc.logged != "" && !strings.Contains(b.logged(), tc.logged) {
				t.Errorf("log lacks %q", tc.logged)
			}
		})
	}
}
