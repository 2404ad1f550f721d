package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The Services these tests write next to service-test, in the seed's CIDR.
const (
	// emptyIP is service-empty's ClusterIP: a Service with no endpoint.
	emptyIP = "10.3.241.153"
	// strayIP is inside the service CIDR, and no Service has it.
	strayIP = "10.3.242.99"
	// dnsIP is kubetun's default DNS address for 10.3.240.0/20: the 10th.
	dnsIP = "10.3.240.10"
	// echoPort is the Service port of both echo servers, TCP and UDP.
	echoPort = 7
)

// udpPorts are service-test's ports here: the seed's HTTP port, named (for
// SRV), and the same port number on TCP and UDP, each to its own server,
// so a reply shows which protocol's endpoint port was used (podserver's UDP
// echo names the pod, its TCP echo does not).
var udpPorts = []testbed.ServicePort{
	{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080},
	{Name: "echo", Port: echoPort, TargetPort: "9000", EndpointPort: 9000},
	{Name: "echo-udp", Port: echoPort, TargetPort: "9002", EndpointPort: 9002, Protocol: "UDP"},
}

// upstreamRecords are what the upstream DNS server (a host of the test
// bed, outside the cluster domain) answers. 192.0.2.7 and 2001:db8::7 are
// documentation addresses: only named, never dialled.
var upstreamRecords = []string{
	"upstream.test. 60 IN A 192.0.2.7",
	"upstream.test. 60 IN AAAA 2001:db8::7",
}

// svcBed is the seed's hosts (pod1, pod2 with their servers, the client), an
// upstream DNS server on a host of its own, and kubetun serving the Services
// of one manifest file, which tests rewrite.
type svcBed struct {
	*testbed.Testbed
	Pod1, Pod2, Client *testbed.Host
	// Upstream is the host of UpstreamDNS, 10.0.5.2 (fd00:10:5::2).
	Upstream    *testbed.Host
	UpstreamDNS *testbed.DNSServer
	// ManifestPath is the file kubetun's --manifests names.
	ManifestPath string
	Kubetun      *testbed.Process
}

// newSvcBed builds the hosts, IPv6 too when ipv6 is set (every host
// dual-stack; the upstream DNS server then listens on its IPv6 address),
// and writes svcs. It does not start kubetun: see start.
func newSvcBed(t *testing.T, ipv6 bool, svcs ...testbed.Service) *svcBed {
	t.Helper()
	needKubetun(t)
	tb, seed := newBed(t)
	b := &svcBed{Testbed: tb, Pod1: seed.Pod1, Pod2: seed.Pod2, Client: seed.Client,
		ManifestPath: filepath.Join(tb.Dir, "services.yaml")}
	var err error
	if b.Upstream, err = tb.AddHost("upstream", 5); err != nil {
		t.Fatalf("AddHost(upstream): %v", err)
	}
	upstreamAddr := netip.AddrPortFrom(b.Upstream.IP, 53)
	if ipv6 {
		for _, h := range []*testbed.Host{b.Pod1, b.Pod2, b.Client, b.Upstream} {
			if err := tb.AddIPv6(h); err != nil {
				t.Fatalf("AddIPv6(%s): %v", h.Name, err)
			}
		}
		upstreamAddr = netip.AddrPortFrom(testbed.IPv6Of(b.Upstream), 53)
	}
	if b.UpstreamDNS, err = tb.StartDNSServerOn(b.Upstream, upstreamAddr, upstreamRecords...); err != nil {
		t.Fatalf("StartDNSServer: %v", err)
	}
	t.Cleanup(func() { // before the test bed's Close: registered after it
		if err := b.UpstreamDNS.Close(); err != nil {
			t.Errorf("upstream DNS server: %v", err)
		}
	})
	b.write(t, svcs...)
	return b
}

// start runs kubetun on the manifest with the given service CIDRs, the
// upstream DNS server as --dns-upstream, debug logging, and extra flags.
// When t fails, kubetun's output is logged.
func (b *svcBed) start(t *testing.T, cidrs []string, extra ...string) {
	t.Helper()
	args := []string{"run", "--manifests", b.ManifestPath, "--tun", testbed.TUN,
		"--dns-upstream", b.UpstreamDNS.Addr.String(), "--log-level", "debug"}
	for _, c := range cidrs {
		args = append(args, "--service-cidr", c)
	}
	p, err := b.StartKubetunArgs(append(args, extra...)...)
	b.Kubetun = p
	t.Cleanup(func() {
		if t.Failed() && p != nil {
			t.Logf("kubetun (%s) output:\n%s", p.CommandLine(), p.Output())
		}
	})
	if err != nil {
		t.Fatalf("StartKubetun: %v", err)
	}
}

// write rewrites the manifest kubetun watches.
func (b *svcBed) write(t *testing.T, svcs ...testbed.Service) {
	t.Helper()
	if err := testbed.WriteServices(b.ManifestPath, svcs...); err != nil {
		t.Fatal(err)
	}
}

// seedServices are service-test (ClusterIP 10.3.241.152, udpPorts) with
// endpoints eps, and service-empty (emptyIP, the same ports) with none.
func seedServices(eps ...testbed.Endpoint) []testbed.Service {
	return []testbed.Service{
		{Name: "service-test", ClusterIPs: []netip.Addr{netip.MustParseAddr(testbed.ClusterIP)}, Ports: udpPorts, Endpoints: eps},
		{Name: "service-empty", ClusterIPs: []netip.Addr{netip.MustParseAddr(emptyIP)}, Ports: udpPorts},
	}
}

// startSeedServices is the IPv4 bed these tests share: seedServices with
// pod1 and pod2, kubetun on the seed's CIDR with its default DNS address.
func startSeedServices(t *testing.T) *svcBed {
	t.Helper()
	b := newSvcBed(t, false)
	b.write(t, seedServices(testbed.EndpointOf(b.Pod1), testbed.EndpointOf(b.Pod2))...)
	b.start(t, []string{testbed.ServiceCIDR})
	return b
}

// TestUDPEcho: datagrams to a ClusterIP reach a pod's UDP echo server and
// the answers come back from the ClusterIP; one client socket stays with one
// pod; new sockets spread over both pods; and the Service's port 7 works on
// TCP and UDP at once, each protocol reaching its own endpoint port.
func TestUDPEcho(t *testing.T) {
	b := startSeedServices(t)
	target := net.JoinHostPort(testbed.ClusterIP, fmt.Sprint(echoPort))

	t.Run("nc", func(t *testing.T) {
		// netcat-openbsd: -w1 quits one second after the last datagram.
		for i := range 2 {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			out, err := b.Run(ctx, b.Client.Namespace, "sh", "-c", fmt.Sprintf("printf 'hello %d' | nc -u -w1 %s %d", i, testbed.ClusterIP, echoPort))
			cancel()
			pod, msg, ok := strings.Cut(out, ": ")
			if err != nil || !ok || msg != fmt.Sprintf("hello %d", i) || (pod != "pod1" && pod != "pod2") {
				t.Errorf("printf 'hello %d' | nc -u -w1 %s: %q, %v; want \"pod1: hello %d\" or pod2's", i, target, out, err, i)
			}
		}
	})

	t.Run("one_socket_one_pod", func(t *testing.T) {
		c := dialUDP(t, b.Client.Namespace, target)
		var pods []string
		for i := range 10 {
			pod, err := udpAsk(c, fmt.Sprintf("seq %d", i), time.Second)
			if err != nil {
				t.Fatalf("datagram %d from %s to %s: %v (answers so far %v)", i, c.LocalAddr(), target, err, pods)
			}
			pods = append(pods, pod)
		}
		if distinct := slices.Compact(slices.Clone(pods)); len(distinct) != 1 {
			t.Errorf("10 datagrams from one socket were answered by %v, want one pod throughout", pods)
		}
	})

	t.Run("sockets_spread", func(t *testing.T) {
		counts, err := udpSpread(b.Client.Namespace, target, 20)
		if err != nil || len(counts) != 2 || counts["pod1"]+counts["pod2"] != 20 {
			t.Errorf("20 sockets to %s: answers %v, %v; want both pods", target, counts, err)
		}
	})

	t.Run("same_port_tcp_and_udp", func(t *testing.T) {
		tcp, err := testbed.DialIn(b.Client.Namespace, "tcp", target, time.Second)
		if err != nil {
			t.Fatalf("DialIn(client, tcp %s): %v", target, err)
		}
		defer tcp.Close()
		udp := dialUDP(t, b.Client.Namespace, target)
		tcp.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		for i := range 3 { // interleaved, over one TCP connection and one UDP socket
			msg := fmt.Sprintf("tcp %d\n", i)
			if _, err := tcp.Write([]byte(msg)); err != nil {
				t.Fatalf("TCP write to %s: %v", target, err)
			}
			n, err := tcp.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("TCP echo through %s = %q, %v; want %q (podserver's TCP echo, port 9000)", target, buf[:n], err, msg)
			}
			if pod, err := udpAsk(udp, fmt.Sprintf("udp %d", i), time.Second); err != nil {
				t.Fatalf("UDP echo through %s: %v", target, err)
			} else if pod != "pod1" && pod != "pod2" {
				t.Fatalf("UDP echo through %s answered by %q", target, pod)
			}
		}
	})
}

// TestUDPEndpointReplaced is the stale-conntrack case (kubernetes issues
// 19029, 125467): a client keeps its source port while the Service's only
// endpoint is replaced. The old pod stays up and reachable, so a proxy
// that stuck to it would keep working, wrongly. Within 2 s of the manifest
// change the next datagram from the same source port must reach the new
// pod, and every datagram after that too.
func TestUDPEndpointReplaced(t *testing.T) {
	b := newSvcBed(t, false)
	b.write(t, seedServices(testbed.EndpointOf(b.Pod1))...)
	b.start(t, []string{testbed.ServiceCIDR})
	target := net.JoinHostPort(testbed.ClusterIP, fmt.Sprint(echoPort))
	c := dialUDP(t, b.Client.Namespace, target)
	for i := range 3 {
		if pod, err := udpAsk(c, fmt.Sprintf("before %d", i), time.Second); err != nil || pod != "pod1" {
			t.Fatalf("datagram %d from %s before the change: %q, %v; want pod1", i, c.LocalAddr(), pod, err)
		}
	}

	changed := time.Now()
	b.write(t, seedServices(testbed.EndpointOf(b.Pod2))...)
	const limit = 2 * time.Second
	var (
		trail []string // each datagram's answer, for the failure message
		moved time.Duration
	)
	for i := 0; time.Since(changed) < limit+time.Second && i < 100; i++ {
		pod, err := udpAsk(c, fmt.Sprintf("after %d", i), 100*time.Millisecond)
		if err != nil {
			pod = err.Error()
		}
		trail = append(trail, fmt.Sprintf("%v:%s", time.Since(changed).Round(10*time.Millisecond), pod))
		if pod == "pod2" {
			moved = time.Since(changed)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if moved == 0 || moved > limit {
		t.Fatalf("source port %s kept reaching the old pod after the EndpointSlice changed to pod2 only: answers %v; want pod2 within %v",
			c.LocalAddr(), trail, limit)
	}
	t.Logf("the datagram %v after the manifest change reached pod2 (source %s, %d datagrams)", moved.Round(time.Millisecond), c.LocalAddr(), len(trail))
	for i := range 10 {
		if pod, err := udpAsk(c, fmt.Sprintf("later %d", i), time.Second); err != nil || pod != "pod2" {
			t.Fatalf("datagram %d after the move: %q, %v; want pod2 (answers before: %v)", i, pod, err, trail)
		}
	}
}

// TestUDPEndpointsLeave: a client keeps one connected socket to a UDP
// Service whose endpoints all leave. Its next datagram is refused (ICMP port
// unreachable, read as ECONNREFUSED), as kube-proxy's REJECT rule would
// refuse it, and none is lost in silence on the way.
func TestUDPEndpointsLeave(t *testing.T) {
	b := startSeedServices(t)
	target := net.JoinHostPort(testbed.ClusterIP, fmt.Sprint(echoPort))
	c := dialUDP(t, b.Client.Namespace, target)
	if pod, err := udpAsk(c, "before", time.Second); err != nil {
		t.Fatalf("datagram to %s before the change: %q, %v", target, pod, err)
	}
	changed := time.Now()
	b.write(t, seedServices()...)
	var trail []string
	for i := 0; time.Since(changed) < 3*time.Second && i < 100; i++ {
		pod, err := udpAsk(c, fmt.Sprintf("after %d", i), 500*time.Millisecond)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			t.Logf("refused %v after the manifest change (answers before: %v)", time.Since(changed).Round(time.Millisecond), trail)
			return
		case err != nil:
			t.Fatalf("datagram %d to %s, %v after the endpoints left: %v; want an answer until the change applies, then ECONNREFUSED (answers before: %v)",
				i, target, time.Since(changed).Round(time.Millisecond), err, trail)
		}
		trail = append(trail, pod)
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("datagrams to %s still answered 3s after its endpoints left: %v", target, trail)
}

// TestUDPNoEndpoint: a datagram nobody can serve is refused with ICMP port
// unreachable at once, which a connected socket reads as ECONNREFUSED:
// to a Service without endpoints, to a port the ClusterIP lacks, to an
// address of the CIDR no Service has. Once the Service gets an endpoint,
// the same socket is served: a refusal leaves nothing stale behind.
func TestUDPNoEndpoint(t *testing.T) {
	b := startSeedServices(t)
	const fast = time.Second
	for _, tc := range []struct{ name, addr string }{
		{"service_without_endpoints", net.JoinHostPort(emptyIP, fmt.Sprint(echoPort))},
		{"unknown_port", net.JoinHostPort(testbed.ClusterIP, "9999")},
		{"no_service", net.JoinHostPort(strayIP, fmt.Sprint(echoPort))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialUDP(t, b.Client.Namespace, tc.addr)
			began := time.Now()
			pod, err := udpAsk(c, "anyone?", 2*time.Second)
			took := time.Since(began)
			if !errors.Is(err, syscall.ECONNREFUSED) || took > fast {
				t.Errorf("datagram to %s: answer %q, %v after %v; want ECONNREFUSED (ICMP port unreachable) within %v", tc.addr, pod, err, took.Round(time.Millisecond), fast)
			}
		})
	}

	t.Run("endpoint_appears", func(t *testing.T) {
		target := net.JoinHostPort(emptyIP, fmt.Sprint(echoPort))
		c := dialUDP(t, b.Client.Namespace, target)
		if _, err := udpAsk(c, "before", 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("datagram to %s before it has endpoints: %v, want ECONNREFUSED", target, err)
		}
		svcs := seedServices(testbed.EndpointOf(b.Pod1), testbed.EndpointOf(b.Pod2))
		svcs[1].Endpoints = []testbed.Endpoint{testbed.EndpointOf(b.Pod2)}
		changed := time.Now()
		b.write(t, svcs...)
		var last error
		for i := 0; i < 30 && time.Since(changed) < 3*time.Second; i++ {
			pod, err := udpAsk(c, fmt.Sprintf("after %d", i), 100*time.Millisecond)
			if err == nil && pod == "pod2" {
				t.Logf("served %v after the endpoint appeared", time.Since(changed).Round(time.Millisecond))
				return
			}
			last = fmt.Errorf("%q, %w", pod, err)
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("datagram to %s after service-empty got pod2: %v; want pod2's answer within 2 s", target, last)
	})
}

// TestDNSRecords asks kubetun's DNS address with dig, from the client:
// A, AAAA (none: an IPv4 Service), SRV of named ports, PTR of the
// ClusterIP, NXDOMAIN inside the cluster domain, and the same over TCP.
func TestDNSRecords(t *testing.T) {
	b := startSeedServices(t)
	const svc = "service-test.default.svc.cluster.local."
	for _, tc := range []struct {
		name string
		args []string // after @server
		want digResult
	}{
		{"A", []string{svc, "A"}, digResult{Status: "NOERROR", Answer: []string{"A " + testbed.ClusterIP}}},
		{"A_tcp", []string{"+tcp", svc, "A"}, digResult{Status: "NOERROR", Answer: []string{"A " + testbed.ClusterIP}}},
		{"AAAA_none", []string{svc, "AAAA"}, digResult{Status: "NOERROR"}},
		{"A_mixed_case", []string{"Service-Test.Default.SVC.cluster.local.", "A"}, digResult{Status: "NOERROR", Answer: []string{"A " + testbed.ClusterIP}}},
		{"SRV_http", []string{"_http._tcp." + svc, "SRV"}, digResult{Status: "NOERROR", Answer: []string{"SRV 80 " + svc}}},
		{"SRV_echo_udp", []string{"_echo-udp._udp." + svc, "SRV"}, digResult{Status: "NOERROR", Answer: []string{"SRV 7 " + svc}}},
		{"SRV_wrong_protocol", []string{"_echo-udp._tcp." + svc, "SRV"}, digResult{Status: "NXDOMAIN"}},
		{"PTR", []string{"-x", testbed.ClusterIP}, digResult{Status: "NOERROR", Answer: []string{"PTR " + svc}}},
		{"PTR_unknown_in_cidr", []string{"-x", strayIP}, digResult{Status: "NXDOMAIN"}},
		{"A_empty_service", []string{"service-empty.default.svc.cluster.local.", "A"}, digResult{Status: "NOERROR", Answer: []string{"A " + emptyIP}}},
		{"NXDOMAIN_service", []string{"no-such-service.default.svc.cluster.local.", "A"}, digResult{Status: "NXDOMAIN"}},
		{"NXDOMAIN_namespace", []string{"service-test.no-such-ns.svc.cluster.local.", "A"}, digResult{Status: "NXDOMAIN"}},
		{"NXDOMAIN_tcp", []string{"+tcp", "no-such-service.default.svc.cluster.local.", "A"}, digResult{Status: "NXDOMAIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dig(t.Context(), b.Testbed, b.Client.Namespace, dnsIP, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.want.Status || !slices.Equal(got.Answer, tc.want.Answer) {
				t.Errorf("dig @%s %s = %s %q, want %s %q\n%s", dnsIP, strings.Join(tc.args, " "), got.Status, got.Answer, tc.want.Status, tc.want.Answer, got.Raw)
			}
			if !slices.Contains(got.Flags, "aa") {
				t.Errorf("dig @%s %s: flags %v, want aa (the cluster zone is kubetun's own)", dnsIP, strings.Join(tc.args, " "), got.Flags)
			}
		})
	}
}

// TestDNSUpstream: a name outside the cluster domain is forwarded to the
// --dns-upstream server, a host of the test bed behind the node, over UDP
// and over TCP; its NXDOMAIN is relayed. With the server silent (it reads
// questions and answers none), stopped (its port refuses), and unreachable
// (its link down), the answer is SERVFAIL within a few seconds, and the
// cluster's own names are still answered.
func TestDNSUpstream(t *testing.T) {
	b := startSeedServices(t)
	for _, tc := range []struct {
		name string
		args []string
		want digResult
	}{
		{"A", []string{"upstream.test.", "A"}, digResult{Status: "NOERROR", Answer: []string{"A 192.0.2.7"}}},
		{"AAAA", []string{"upstream.test.", "AAAA"}, digResult{Status: "NOERROR", Answer: []string{"AAAA 2001:db8::7"}}},
		{"A_tcp", []string{"+tcp", "upstream.test.", "A"}, digResult{Status: "NOERROR", Answer: []string{"A 192.0.2.7"}}},
		{"NXDOMAIN", []string{"nothing.test.", "A"}, digResult{Status: "NXDOMAIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.UpstreamDNS.Queries()
			got, err := dig(t.Context(), b.Testbed, b.Client.Namespace, dnsIP, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.want.Status || !slices.Equal(got.Answer, tc.want.Answer) {
				t.Errorf("dig @%s %s = %s %q, want %s %q\n%s", dnsIP, strings.Join(tc.args, " "), got.Status, got.Answer, tc.want.Status, tc.want.Answer, got.Raw)
			}
			if b.UpstreamDNS.Queries() == before {
				t.Errorf("dig @%s %s: the upstream server at %s was not asked", dnsIP, strings.Join(tc.args, " "), b.UpstreamDNS.Addr)
			}
		})
	}

	// Within a few seconds: kubetun gives an upstream 2 s.
	const limit = 4 * time.Second
	servfail := func(t *testing.T, args ...string) {
		t.Helper()
		got, err := dig(t.Context(), b.Testbed, b.Client.Namespace, dnsIP, append([]string{"+time=8"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != "SERVFAIL" || got.Took > limit {
			t.Errorf("dig @%s %s with the upstream gone = %s after %v, want SERVFAIL within %v\n%s", dnsIP, strings.Join(args, " "), got.Status, got.Took.Round(time.Millisecond), limit, got.Raw)
		} else {
			t.Logf("SERVFAIL after %v", got.Took.Round(time.Millisecond))
		}
	}
	t.Run("upstream_silent", func(t *testing.T) {
		b.UpstreamDNS.SetSilent(true)
		defer b.UpstreamDNS.SetSilent(false)
		before := b.UpstreamDNS.Queries()
		servfail(t, "upstream.test.", "A")
		servfail(t, "+tcp", "upstream.test.", "A")
		if b.UpstreamDNS.Queries() == before {
			t.Errorf("the silent upstream server was not asked")
		}
	})
	t.Run("upstream_stopped", func(t *testing.T) {
		if err := b.UpstreamDNS.Close(); err != nil {
			t.Fatal(err)
		}
		servfail(t, "upstream.test.", "A")
		servfail(t, "+tcp", "upstream.test.", "A")
	})
	t.Run("upstream_unreachable", func(t *testing.T) {
		if err := b.SetLink(b.Upstream, false); err != nil {
			t.Fatal(err)
		}
		servfail(t, "other.test.", "A")
		servfail(t, "+tcp", "other.test.", "A")
		// The cluster's own names do not depend on upstream.
		got, err := dig(t.Context(), b.Testbed, b.Client.Namespace, dnsIP, "service-test.default.svc.cluster.local.", "A")
		if err != nil || got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A " + testbed.ClusterIP}) {
			t.Errorf("dig service-test with upstream down = %+v, %v; want A %s", got, err, testbed.ClusterIP)
		}
	})
}

// TestDNSResolvConf gives the client the resolv.conf kubelet writes for a
// pod (kubetun's DNS address, the usual search path, ndots:5), and then the
// seed's own client line, `echo 'GET / HTTP/1.1\r\n\r\n' | nc service-test
// 80`, works by name: 20 requests, both pods answer.
func TestDNSResolvConf(t *testing.T) {
	b := startSeedServices(t)
	writePodResolvConf(t, b.Testbed, b.Client, dnsIP)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, name := range []string{"service-test", "service-test.default", "service-test.default.svc.cluster.local"} {
		out, err := b.Run(ctx, b.Client.Namespace, "getent", "ahostsv4", name)
		if err != nil || !strings.HasPrefix(out, testbed.ClusterIP+" ") {
			t.Errorf("getent ahostsv4 %s in the client = %q, %v; want %s", name, out, err, testbed.ClusterIP)
		}
	}
	counts := nameAnswers(t, b.Testbed, b.Client.Namespace, "service-test", 20)
	if len(counts) != 2 {
		t.Errorf("20 requests to service-test by name: answers %v, want both pods", counts)
	}
}

// TestPingClusterIP: ping answers for a ClusterIP with an endpoint, not for
// one whose Service has none, nor for an address no Service has; and it
// stops once the Service's endpoints leave.
func TestPingClusterIP(t *testing.T) {
	b := startSeedServices(t)
	for _, tc := range []struct {
		name, ip string
		answered bool
		extra    []string
	}{
		{"service_with_endpoints", testbed.ClusterIP, true, nil},
		{"service_without_endpoints", emptyIP, false, nil},
		{"no_service", strayIP, false, nil},
		// 3000 bytes: the client's kernel sends the request in fragments
		// (its link's MTU is 1500), and the reply needs them too.
		{"fragmented_with_endpoints", testbed.ClusterIP, true, []string{"-s", "3000"}},
		{"fragmented_without_endpoints", emptyIP, false, []string{"-s", "3000"}},
		{"fragmented_no_service", strayIP, false, []string{"-s", "3000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pingAnswered(t, b.Testbed, b.Client.Namespace, tc.ip, tc.extra...); got != tc.answered {
				t.Errorf("ping -c1 -W1 %s %s answered = %v, want %v", strings.Join(tc.extra, " "), tc.ip, got, tc.answered)
			}
		})
	}
	t.Run("endpoints_leave", func(t *testing.T) {
		b.write(t, seedServices()...)
		changed := time.Now()
		for i := 0; i < 20 && time.Since(changed) < 3*time.Second; i++ {
			sent := time.Since(changed)
			if !pingAnswered(t, b.Testbed, b.Client.Namespace, testbed.ClusterIP) {
				t.Logf("the echo request sent %v after the endpoints left was not answered", sent.Round(time.Millisecond))
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("ping %s still answered %v after its Service lost every endpoint", testbed.ClusterIP, time.Since(changed).Round(time.Millisecond))
	})
}

// dialUDP opens a connected UDP socket in ns to addr, closed at the end of t.
func dialUDP(t *testing.T, ns, addr string) net.Conn {
	t.Helper()
	c, err := testbed.DialIn(ns, "udp", addr, time.Second)
	if err != nil {
		t.Fatalf("DialIn(%s, udp %s): %v", ns, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpAsk sends msg on c and waits up to wait for podserver's UDP echo of
// it, "POD: msg", skipping late answers to earlier datagrams; it returns
// POD. A refusal (ICMP port unreachable) is ECONNREFUSED.
func udpAsk(c net.Conn, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	deadline := time.Now().Add(wait)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		n, err := c.Read(buf)
		if err != nil {
			return "", err
		}
		if pod, got, ok := strings.Cut(string(buf[:n]), ": "); ok && got == msg {
			return pod, nil
		}
	}
	return "", fmt.Errorf("no answer to %q within %v", msg, wait)
}

// digResult is what matters of dig's answer.
type digResult struct {
	Status string   // the rcode: NOERROR, NXDOMAIN, SERVFAIL
	Flags  []string // qr, aa, rd, ra...
	// Answer holds the answer section's records as "TYPE DATA", e.g.
	// "A 10.3.241.152"; an SRV record as "SRV PORT TARGET".
	Answer []string
	Took   time.Duration // how long dig ran
	Raw    string        // dig's output
}

var (
	digStatusRE = regexp.MustCompile(`status: ([A-Z]+)`)
	digFlagsRE  = regexp.MustCompile(`;; flags: ([a-z ]+)[;]`)
)

// dig runs `dig +time=3 +tries=1 @server args...` in ns (a later +time in
// args wins) and parses its answer. No answer at all is an error.
func dig(ctx context.Context, tb *testbed.Testbed, ns, server string, args ...string) (digResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	argv := append([]string{"dig", "+time=3", "+tries=1", "@" + server}, args...)
	began := time.Now()
	out, err := tb.Run(ctx, ns, argv...)
	r := digResult{Took: time.Since(began), Raw: out}
	if err != nil {
		return r, fmt.Errorf("%v\n%s", err, out)
	}
	m := digStatusRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("%s: no status in the output:\n%s", strings.Join(argv, " "), out)
	}
	r.Status = m[1]
	if m := digFlagsRE.FindStringSubmatch(out); m != nil {
		r.Flags = strings.Fields(m[1])
	}
	_, section, _ := strings.Cut(out, ";; ANSWER SECTION:\n")
	section, _, _ = strings.Cut(section, "\n\n")
	for _, line := range strings.Split(section, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || strings.HasPrefix(line, ";") {
			continue
		}
		typ, data := f[3], f[4:]
		if typ == "SRV" && len(data) == 4 { // priority weight port target
			data = data[2:]
		}
		r.Answer = append(r.Answer, typ+" "+strings.Join(data, " "))
	}
	return r, nil
}

// pingAnswered runs `ping -c1 -W1 ip` in ns (-6 for an IPv6 address), with
// extra arguments such as "-s", "3000", and reports whether the echo was
// answered; a failure to run ping fails t.
func pingAnswered(t *testing.T, tb *testbed.Testbed, ns, ip string, extra ...string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	family := "-4"
	if strings.Contains(ip, ":") {
		family = "-6"
	}
	argv := append([]string{"ping", family, "-c1", "-W1"}, extra...)
	out, err := tb.Run(ctx, ns, append(argv, ip)...)
	switch testbed.ExitCode(err) {
	case 0:
		return true
	case 1: // iputils: no reply
		return false
	}
	t.Fatalf("%s %s: %v\n%s", strings.Join(argv, " "), ip, err, out)
	return false
}

// writePodResolvConf gives h the resolv.conf kubelet writes for a pod in
// namespace default, with server as the nameserver, for every command run
// in h's namespace; it is removed at the end of t.
func writePodResolvConf(t *testing.T, tb *testbed.Testbed, h *testbed.Host, server string) {
	t.Helper()
	remove, err := tb.WriteResolvConf(h, "nameserver "+server+"\n"+
		"search default.svc.cluster.local svc.cluster.local cluster.local\n"+
		"options ndots:5\n")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := remove(); err != nil {
			t.Error(err)
		}
	})
}

// nameAnswers sends n seed requests from ns to name:80 (the name resolved
// by nc, through the namespace's resolv.conf) and counts the answering
// pods. It stops at the first failure, and after a minute in any case.
func nameAnswers(t *testing.T, tb *testbed.Testbed, ns, name string, n int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	counts := make(map[string]int)
	began := time.Now()
	for i := range n {
		pod, err := seedRequest(ctx, tb, ns, name, 80)
		if err != nil {
			t.Fatalf("request %d of %d to %s: %v (answers so far: %v)", i+1, n, name, err, counts)
		}
		counts[pod]++
	}
	t.Logf("%d requests to %s in %v: %v", n, name, time.Since(began).Round(time.Millisecond), counts)
	return counts
}
