package nodeport

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/resolver"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// freePort returns a port free on loopback for network now.
func freePort(t *testing.T, network string) uint16 {
	t.Helper()
	switch network {
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return uint16(ln.Addr().(*net.TCPAddr).Port)
	default:
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
}

// pod is a fake pod: a TCP server that reads its request to EOF, then
// answers with its name and the request's length; and a UDP server that
// answers each datagram with its name.
type pod struct {
	name string
	tcp  net.Listener
	udp  net.PacketConn
}

func startPod(t *testing.T, name string) *pod {
	t.Helper()
	p := &pod{name: name}
	var err error
	if p.tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if p.udp, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.tcp.Close(); p.udp.Close() })
	go func() {
		for {
			c, err := p.tcp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c) // to the client's half-close
				fmt.Fprintf(c, "%s %d\n", name, n)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := p.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			p.udp.WriteTo([]byte(name), from)
		}
	}()
	return p
}

// fixture is a Service with TCP and UDP node ports whose two endpoints,
// 10.0.1.2 on node1 and 10.0.2.2 on node2, are served by fake pods on
// loopback.
type fixture struct {
	table    *resolver.Table
	l        *Listeners
	tcpPort  uint16
	udpPort  uint16
	hcPort   uint16
	ready    map[string]bool // by endpoint address
	policy   corev1.ServiceExternalTrafficPolicy
	nodePort bool
}

func newFixture(t *testing.T, policy corev1.ServiceExternalTrafficPolicy) *fixture {
	t.Helper()
	return newFixtureConfig(t, policy, Config{})
}

// newFixtureConfig is newFixture with cfg's limits and timeouts.
func newFixtureConfig(t *testing.T, policy corev1.ServiceExternalTrafficPolicy, cfg Config) *fixture {
	t.Helper()
	pods := map[netip.Addr]*pod{
		netip.MustParseAddr("10.0.1.2"): startPod(t, "pod1"),
		netip.MustParseAddr("10.0.2.2"): startPod(t, "pod2"),
	}
	f := &fixture{
		table: new(resolver.Table), tcpPort: freePort(t, "tcp"), udpPort: freePort(t, "udp"), hcPort: freePort(t, "tcp"),
		ready: map[string]bool{"10.0.1.2": true, "10.0.2.2": true}, policy: policy, nodePort: true,
	}
	cfg.Services, cfg.DialTimeout = f.table, time.Second
	f.l = New(cfg)
	f.l.redirect = func(a netip.AddrPort) netip.AddrPort {
		p := pods[a.Addr()]
		if a.Port() == 8080 {
			return p.tcp.Addr().(*net.TCPAddr).AddrPort()
		}
		return p.udp.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	t.Cleanup(f.l.Close)
	return f
}

// apply builds the snapshot and reconciles the listeners on loopback.
func (f *fixture) apply(t *testing.T) []resolver.Problem {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "service-test"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.3.241.152", ClusterIPs: []string{"10.3.241.152"},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
				{Name: "echo", Protocol: corev1.ProtocolUDP, Port: 7},
			},
		},
	}
	if f.nodePort {
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.Ports[0].NodePort = int32(f.tcpPort)
		svc.Spec.Ports[1].NodePort = int32(f.udpPort)
		svc.Spec.ExternalTrafficPolicy = f.policy
		if f.policy == corev1.ServiceExternalTrafficPolicyLocal {
			svc.Spec.HealthCheckNodePort = int32(f.hcPort)
		}
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "service-test-1", Labels: map[string]string{discoveryv1.LabelServiceName: "service-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))},
			{Name: ptr("echo"), Protocol: ptr(corev1.ProtocolUDP), Port: ptr(int32(7007))},
		},
	}
	for _, e := range []struct{ addr, node string }{{"10.0.1.2", "node1"}, {"10.0.2.2", "node2"}} {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{e.addr}, NodeName: ptr(e.node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(f.ready[e.addr])},
		})
	}
	snap, problems := resolver.Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{es}, f.table.Load(), resolver.Topology{NodeName: "node1"})
	if len(problems) > 0 {
		t.Fatalf("Build: %v", problems)
	}
	f.table.Store(snap)
	return f.l.Reconcile(snap, []netip.Addr{loopback})
}

func ptr[T any](v T) *T { return &v }

// get sends a request through the TCP node port, half-closes, and returns
// the answer.
func get(t *testing.T, port uint16, body string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, port).String(), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, body)
	c.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestTCPNodePort(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyCluster)
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile: %v", p)
	}
	counts := map[string]int{}
	for range 10 {
		got, err := get(t, f.tcpPort, "hello")
		if err != nil {
			t.Fatalf("node port request: %v", err)
		}
		name, n, _ := strings.Cut(got, " ")
		if n != "5" {
			t.Errorf("answer %q: the pod read %s bytes before the half-close, want 5", got, n)
		}
		counts[name]++
	}
	if counts["pod1"] != 5 || counts["pod2"] != 5 {
		t.Errorf("split over 10 connections = %v, want 5 each", counts)
	}

	// Type back to ClusterIP: the port closes.
	f.nodePort = false
	f.apply(t)
	if _, err := get(t, f.tcpPort, "x"); err == nil {
		t.Errorf("node port still answers after the Service lost it")
	}
	if open := f.l.Open(); len(open) != 0 {
		t.Errorf("Open() = %v, want none", open)
	}
}

func TestLocalPolicyAndHealthCheck(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyLocal)
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile: %v", p)
	}
	for range 4 {
		got, err := get(t, f.tcpPort, "")
		if err != nil || got != "pod1 0" {
			t.Errorf("node port request = %q, %v; want pod1 (the local endpoint) only", got, err)
		}
	}
	check := func(wantCode, wantLocal int) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", f.hcPort))
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		defer resp.Body.Close()
		var body struct {
			Service             struct{ Namespace, Name string }
			LocalEndpoints      int
			ServiceProxyHealthy bool
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("health check body: %v", err)
		}
		if resp.StatusCode != wantCode || body.LocalEndpoints != wantLocal || body.Service.Name != "service-test" ||
			body.Service.Namespace != "default" || !body.ServiceProxyHealthy ||
			resp.Header.Get("Content-Type") != "application/json" ||
			resp.Header.Get("X-Load-Balancing-Endpoint-Weight") != fmt.Sprint(wantLocal) {
			t.Errorf("health check = %d %+v %v, want %d with localEndpoints %d", resp.StatusCode, body, resp.Header, wantCode, wantLocal)
		}
	}
	check(http.StatusOK, 1)

	// The local pod goes unready: the health check says 503 and the node
	// port refuses rather than send to the other node.
	f.ready["10.0.1.2"] = false
	f.apply(t)
	check(http.StatusServiceUnavailable, 0)
	if got, err := get(t, f.tcpPort, ""); err == nil {
		t.Errorf("node port with no local endpoint answered %q", got)
	}
}

func TestTakenPort(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyCluster)
	taken, err := net.Listen("tcp", netip.AddrPortFrom(loopback, f.tcpPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	problems := f.apply(t)
	if len(problems) != 1 || !strings.Contains(problems[0].String(), "Service default/service-test") ||
		!strings.Contains(problems[0].String(), fmt.Sprintf("node port %d (TCP)", f.tcpPort)) {
		t.Fatalf("Reconcile problems = %v, want one naming the Service and TCP port %d", problems, f.tcpPort)
	}
	// The UDP port is served meanwhile.
	if got := udpAsk(t, f.udpPort); got == "" {
		t.Errorf("UDP node port not served while the TCP one is taken")
	}
	// Freed: the next reconcile takes it.
	taken.Close()
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile after the port was freed: %v", p)
	}
	if _, err := get(t, f.tcpPort, ""); err != nil {
		t.Errorf("node port after the port was freed: %v", err)
	}
}

// udpAsk sends one datagram from a new socket and returns the answer, ""
// when none came.
func udpAsk(t *testing.T, port uint16) string {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return udpRoundTrip(c)
}

func udpRoundTrip(c *net.UDPConn) string {
	buf := make([]byte, 100)
	for range 3 { // UDP: a retry for a datagram lost under load
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	return ""
}

func TestUDPNodePort(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyCluster)
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile: %v", p)
	}
	counts := map[string]int{}
	for range 10 {
		counts[udpAsk(t, f.udpPort)]++
	}
	if counts["pod1"] != 5 || counts["pod2"] != 5 {
		t.Errorf("answers of 10 clients = %v, want 5 from each pod", counts)
	}

	// One client stays with its endpoint while it is usable, and moves
	// when it is not.
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, f.udpPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := udpRoundTrip(c)
	for range 3 {
		if got := udpRoundTrip(c); got != first {
			t.Fatalf("session answered by %q, then %q", first, got)
		}
	}
	ip := map[string]string{"pod1": "10.0.1.2", "pod2": "10.0.2.2"}[first]
	f.ready[ip] = false
	f.apply(t)
	if got := udpRoundTrip(c); got == first || got == "" {
		t.Errorf("after %s went unready the session answered %q", first, got)
	}
}

func TestClose(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyLocal)
	f.apply(t)
	// A connection in the middle of its splice.
	c, err := net.Dial("tcp", netip.AddrPortFrom(loopback, f.tcpPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	udpAsk(t, f.udpPort)
	done := make(chan struct{})
	go func() { f.l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if open := f.l.Open(); len(open) != 0 {
		t.Errorf("Open() after Close = %v", open)
	}
	if p := f.l.Reconcile(f.table.Load(), []netip.Addr{loopback}); p != nil || len(f.l.Open()) != 0 {
		t.Errorf("Reconcile after Close opened %v", f.l.Open())
	}
}

func TestParseAddresses(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		want    string
		wantErr bool
	}{
		{nil, "primary", false},
		{[]string{"primary"}, "primary", false},
		{[]string{"10.0.3.0/24,fd00::/64"}, "[10.0.3.0/24 fd00::/64]", false},
		{[]string{"10.0.3.1/24"}, "[10.0.3.0/24]", false},
		{[]string{"primary,10.0.0.0/8"}, "", true},
		{[]string{"eth0"}, "", true},
	} {
		a, err := ParseAddresses(tc.in)
		if (err != nil) != tc.wantErr || err == nil && a.String() != tc.want {
			t.Errorf("ParseAddresses(%q) = %v, %v; want %s (error %v)", tc.in, a, err, tc.want, tc.wantErr)
		}
	}
	got, _ := Addresses{}.Resolve([]netip.Addr{loopback, netip.MustParseAddr("10.0.3.1"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("10.0.3.1")})
	if fmt.Sprint(got) != "[10.0.3.1]" {
		t.Errorf("Resolve(primary) = %v, want [10.0.3.1]: never loopback or link-local", got)
	}
	lo, _ := ParseAddresses([]string{"127.0.0.0/8"})
	if got, err := lo.Resolve(nil); err != nil || len(got) != 0 {
		t.Errorf("Resolve(127.0.0.0/8) = %v, %v; want nothing", got, err)
	}
}

// TestDrain: Drain closes the TCP node port and its health check at once,
// while a connection accepted before goes on to its answer; Drain returns
// false at its deadline while it is open, true once it ended.
func TestDrain(t *testing.T) {
	f := newFixture(t, corev1.ServiceExternalTrafficPolicyLocal)
	f.apply(t)
	c, err := net.Dial("tcp", netip.AddrPortFrom(loopback, f.tcpPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "abc")
	// Wait until the connection is accepted and counted.
	for deadline := time.Now().Add(5 * time.Second); f.l.tcpActive.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the connection was not accepted")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if f.l.Drain(ctx) {
		t.Fatal("Drain = true with a connection open")
	}
	if _, err := get(t, f.tcpPort, "x"); err == nil {
		t.Error("the node port accepted a connection during the drain")
	}
	if open := f.l.Open(); len(open) != 1 || !strings.Contains(open[0], "UDP") {
		t.Errorf("Open() during the drain = %v, want the UDP node port only", open)
	}
	if got := udpAsk(t, f.udpPort); got != "pod1" {
		t.Errorf("UDP node port during the drain answered %q, want pod1", got)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "pod1 3" {
		t.Fatalf("answer on the drained connection = %q, %v; want \"pod1 3\"", line, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if !f.l.Drain(ctx2) {
		t.Fatal("Drain = false after the last connection ended")
	}
	f.apply(t)
	if open := f.l.Open(); len(open) != 1 {
		t.Errorf("Reconcile during the drain changed the sockets: %v", open)
	}
}

// TestBurstNotRefused: more connections at once than MaxSetups are all
// served; the listener stops accepting while its setup slots are taken,
// and the kernel's queue holds the rest.
func TestBurstNotRefused(t *testing.T) {
	f := newFixtureConfig(t, corev1.ServiceExternalTrafficPolicyCluster, Config{MaxSetups: 4})
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile: %v", p)
	}
	const n = 300
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got, err := get(t, f.tcpPort, "burst")
			if err == nil && !strings.HasSuffix(got, " 5") {
				err = fmt.Errorf("answer %q", got)
			}
			if err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestUDPSessionsPerSource: one client address holds at most
// MaxUDPSessionsPerSource sessions; past it, its new sessions' datagrams
// are dropped, and a session that ends frees its place.
func TestUDPSessionsPerSource(t *testing.T) {
	f := newFixtureConfig(t, corev1.ServiceExternalTrafficPolicyCluster, Config{MaxUDPSessionsPerSource: 2})
	if p := f.apply(t); len(p) > 0 {
		t.Fatalf("Reconcile: %v", p)
	}
	var conns []*net.UDPConn
	for i := range 3 {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback, f.udpPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		got := udpRoundTrip(c)
		switch {
		case i < 2 && got == "":
			t.Errorf("session %d of a client with a share of 2: no answer", i+1)
		case i == 2 && got != "":
			t.Errorf("session 3 of a client with a share of 2 answered %q, want its datagrams dropped", got)
		}
	}
	if n := f.l.udpSessions.Total(); n != 2 {
		t.Errorf("%d sessions counted, want 2", n)
	}
}
