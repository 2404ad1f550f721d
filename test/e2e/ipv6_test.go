package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The IPv6 twins of emptyIP, strayIP and dnsIP, in testbed.ServiceCIDR6.
const (
	emptyIP6 = "fd00:10:96::153"
	strayIP6 = "fd00:10:96::99"
	// dnsIP6 is kubetun's default DNS address when fd00:10:96::/112 is the
	// first service CIDR: its 10th address.
	dnsIP6 = "fd00:10:96::a"
)

// TestIPv6 is kubetun with only an IPv6 service CIDR, IPv6 Services and
// EndpointSlices (addressType IPv6), and every host reached over IPv6:
// TCP and UDP through the ClusterIP, ICMPv6 port unreachable, AAAA, PTR and
// an upstream name from the DNS server on its IPv6 address, the seed's nc by
// name, and ping -6.
func TestIPv6(t *testing.T) {
	b := newSvcBed(t, true)
	b.write(t, seedServices6(testbed.EndpointOf6(b.Pod1), testbed.EndpointOf6(b.Pod2))...)
	b.start(t, []string{testbed.ServiceCIDR6})
	client := b.Client.Namespace

	t.Run("tcp", func(t *testing.T) {
		counts := nameAnswers(t, b.Testbed, client, testbed.ClusterIP6, 20)
		if len(counts) != 2 {
			t.Errorf("20 requests to [%s]:80: answers %v, want both pods", testbed.ClusterIP6, counts)
		}
	})
	t.Run("udp", func(t *testing.T) {
		checkUDPEcho(t, client, testbed.ClusterIP6)
	})
	t.Run("udp_no_endpoint", func(t *testing.T) {
		for _, ip := range []string{emptyIP6, strayIP6} {
			addr := net.JoinHostPort(ip, fmt.Sprint(echoPort))
			c := dialUDP(t, client, addr)
			began := time.Now()
			if pod, err := udpAsk(c, "anyone?", 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) || time.Since(began) > time.Second {
				t.Errorf("datagram to %s: answer %q, %v after %v; want ECONNREFUSED (ICMPv6 port unreachable) within 1s", addr, pod, err, time.Since(began).Round(time.Millisecond))
			}
		}
	})
	t.Run("dns", func(t *testing.T) {
		const svc = "service-test.default.svc.cluster.local."
		checkDig(t, b, dnsIP6, []digCase{
			{[]string{svc, "AAAA"}, "NOERROR", []string{"AAAA " + testbed.ClusterIP6}},
			{[]string{"+tcp", svc, "AAAA"}, "NOERROR", []string{"AAAA " + testbed.ClusterIP6}},
			{[]string{svc, "A"}, "NOERROR", nil},
			{[]string{"_http._tcp." + svc, "SRV"}, "NOERROR", []string{"SRV 80 " + svc}},
			{[]string{"-x", testbed.ClusterIP6}, "NOERROR", []string{"PTR " + svc}},
			{[]string{"-x", strayIP6}, "NXDOMAIN", nil},
			{[]string{"no-such-service.default.svc.cluster.local.", "AAAA"}, "NXDOMAIN", nil},
			{[]string{"upstream.test.", "AAAA"}, "NOERROR", []string{"AAAA 2001:db8::7"}},
		})
	})
	t.Run("resolv_conf", func(t *testing.T) {
		writePodResolvConf(t, b.Testbed, b.Client, dnsIP6)
		counts := nameAnswers(t, b.Testbed, client, "service-test", 20)
		if len(counts) != 2 {
			t.Errorf("20 requests to service-test by name (AAAA only): answers %v, want both pods", counts)
		}
	})
	t.Run("ping", func(t *testing.T) {
		for _, tc := range []struct {
			ip       string
			answered bool
			extra    []string
		}{
			{testbed.ClusterIP6, true, nil}, {emptyIP6, false, nil}, {strayIP6, false, nil},
			// Sent in fragments: the client's link has an MTU of 1500.
			{testbed.ClusterIP6, true, []string{"-s", "3000"}}, {emptyIP6, false, []string{"-s", "3000"}}, {strayIP6, false, []string{"-s", "3000"}},
		} {
			if got := pingAnswered(t, b.Testbed, client, tc.ip, tc.extra...); got != tc.answered {
				t.Errorf("ping -6 -c1 -W1 %s %s answered = %v, want %v", strings.Join(tc.extra, " "), tc.ip, got, tc.answered)
			}
		}
	})
}

// TestDualStack is kubetun with an IPv4 and an IPv6 service CIDR, and a
// dual-stack Service (clusterIPs [IPv4, IPv6], ipFamilies, one
// EndpointSlice per family) in front of dual-stack pods: reachable over
// both families by TCP, UDP and ping, with A and AAAA from the DNS address,
// and by name through the client's resolv.conf.
func TestDualStack(t *testing.T) {
	b := newSvcBed(t, true)
	eps := []testbed.Endpoint{testbed.EndpointOf(b.Pod1), testbed.EndpointOf(b.Pod2), testbed.EndpointOf6(b.Pod1), testbed.EndpointOf6(b.Pod2)}
	b.write(t, dualServices(eps...)...)
	b.start(t, []string{testbed.ServiceCIDR, testbed.ServiceCIDR6})
	client := b.Client.Namespace

	for _, fam := range []struct{ name, ip, empty string }{
		{"ipv4", testbed.ClusterIP, emptyIP},
		{"ipv6", testbed.ClusterIP6, emptyIP6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			counts := nameAnswers(t, b.Testbed, client, fam.ip, 20)
			if len(counts) != 2 {
				t.Errorf("20 requests to %s port 80: answers %v, want both pods", fam.ip, counts)
			}
			checkUDPEcho(t, client, fam.ip)
			if !pingAnswered(t, b.Testbed, client, fam.ip) {
				t.Errorf("ping -c1 -W1 %s: no answer, want one", fam.ip)
			}
			if pingAnswered(t, b.Testbed, client, fam.empty) {
				t.Errorf("ping -c1 -W1 %s (service-empty): answered, want no answer", fam.empty)
			}
		})
	}
	t.Run("resolv_conf", func(t *testing.T) {
		writePodResolvConf(t, b.Testbed, b.Client, dnsIP)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		out, err := b.Run(ctx, client, "getent", "ahosts", "service-test")
		if err != nil || !strings.Contains(out, testbed.ClusterIP+" ") || !strings.Contains(out, testbed.ClusterIP6+" ") {
			t.Errorf("getent ahosts service-test in the client = %q, %v; want %s and %s", out, err, testbed.ClusterIP, testbed.ClusterIP6)
		}
		counts := nameAnswers(t, b.Testbed, client, "service-test", 20)
		if len(counts) != 2 {
			t.Errorf("20 requests to service-test by name: answers %v, want both pods", counts)
		}
	})
	t.Run("dns", func(t *testing.T) {
		const svc = "service-test.default.svc.cluster.local."
		checkDig(t, b, dnsIP, []digCase{
			{[]string{svc, "A"}, "NOERROR", []string{"A " + testbed.ClusterIP}},
			{[]string{svc, "AAAA"}, "NOERROR", []string{"AAAA " + testbed.ClusterIP6}},
			{[]string{"-x", testbed.ClusterIP}, "NOERROR", []string{"PTR " + svc}},
			{[]string{"-x", testbed.ClusterIP6}, "NOERROR", []string{"PTR " + svc}},
		})
	})
}

// seedServices6 is seedServices over IPv6: service-test on ClusterIP6 with
// eps, service-empty on emptyIP6 with none.
func seedServices6(eps ...testbed.Endpoint) []testbed.Service {
	return []testbed.Service{
		{Name: "service-test", ClusterIPs: []netip.Addr{netip.MustParseAddr(testbed.ClusterIP6)}, Ports: udpPorts, Endpoints: eps},
		{Name: "service-empty", ClusterIPs: []netip.Addr{netip.MustParseAddr(emptyIP6)}, Ports: udpPorts},
	}
}

// dualServices is seedServices dual-stack, IPv4 the primary family.
func dualServices(eps ...testbed.Endpoint) []testbed.Service {
	return []testbed.Service{
		{Name: "service-test", Ports: udpPorts, Endpoints: eps, ClusterIPs: []netip.Addr{
			netip.MustParseAddr(testbed.ClusterIP), netip.MustParseAddr(testbed.ClusterIP6)}},
		{Name: "service-empty", Ports: udpPorts, ClusterIPs: []netip.Addr{
			netip.MustParseAddr(emptyIP), netip.MustParseAddr(emptyIP6)}},
	}
}

// checkUDPEcho sends datagrams from ns to ip's UDP echo port on 10 sockets
// and fails t unless each is answered and both pods answer.
func checkUDPEcho(t *testing.T, ns, ip string) {
	t.Helper()
	addr := net.JoinHostPort(ip, fmt.Sprint(echoPort))
	counts, err := udpSpread(ns, addr, 10)
	if err != nil || len(counts) != 2 {
		t.Errorf("UDP echo through %s from 10 sockets: answers %v, %v; want both pods", addr, counts, err)
	}
}

// udpSpread asks addr once from each of n new UDP sockets in namespace ns
// and counts the answers by pod.
func udpSpread(ns, addr string, n int) (map[string]int, error) {
	counts := map[string]int{}
	err := testbed.InNamespace(ns, func() error {
		for i := range n {
			c, err := net.DialTimeout("udp", addr, time.Second)
			if err != nil {
				return err
			}
			pod, err := udpAsk(c, fmt.Sprintf("socket %d", i), time.Second)
			c.Close()
			if err != nil {
				return fmt.Errorf("socket %d: %w", i, err)
			}
			counts[pod]++
		}
		return nil
	})
	return counts, err
}

// digCase is one dig question (the arguments after @server) and the rcode
// and answer records wanted.
type digCase struct {
	args   []string
	status string
	answer []string
}

// checkDig asks each question from b's client and compares.
func checkDig(t *testing.T, b *svcBed, server string, cases []digCase) {
	t.Helper()
	for _, tc := range cases {
		got, err := dig(t.Context(), b.Testbed, b.Client.Namespace, server, tc.args...)
		if err != nil {
			t.Error(err)
			continue
		}
		if got.Status != tc.status || !slices.Equal(got.Answer, tc.answer) {
			t.Errorf("dig @%s %s = %s %q, want %s %q\n%s", server, strings.Join(tc.args, " "), got.Status, got.Answer, tc.status, tc.answer, got.Raw)
		}
	}
}
