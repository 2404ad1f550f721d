package netstack

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fakePods names the pods of some addresses.
type fakePods map[netip.Addr]string

func (p fakePods) PodByIP(ip netip.Addr) (string, string, bool) {
	name, ok := p[ip]
	return "db", name, ok
}

// TestPodPassthrough: with Config.Pods, a SYN to a pod's own address (no
// Service's) is dialled at that address and port; any other address is
// refused, as without Config.Pods.
func TestPodPassthrough(t *testing.T) {
	db0 := netip.MustParseAddrPort("10.0.9.2:5432")
	stranger := netip.MustParseAddrPort("10.0.9.3:5432")
	tests := []struct {
		name     string
		pods     Pods
		dst      netip.AddrPort
		wantDial bool
	}{
		{"known pod", fakePods{db0.Addr(): "db-0"}, db0, true},
		{"unknown address", fakePods{db0.Addr(): "db-0"}, stranger, false},
		{"no Pods", nil, db0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			startPod(t, d, db0, echo)
			_, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500, func(c *Config) { c.Pods = tt.pods })
			const iss = 7000
			inject(link, tcpPacket(client, tt.dst, iss, 0, header.TCPFlagSyn, nil))
			_, seg := readSegment(t, link)
			want := header.TCPFlagRst | header.TCPFlagAck
			if tt.wantDial {
				want = header.TCPFlagSyn | header.TCPFlagAck
			}
			if seg.Flags() != want || seg.AckNumber() != iss+1 {
				t.Errorf("reply to SYN for %v: flags %v ack %d, want %v ack %d", tt.dst, seg.Flags(), seg.AckNumber(), want, iss+1)
			}
			var wantCalls []string
			if tt.wantDial {
				wantCalls = []string{tt.dst.String()}
			}
			if got := d.calls(); strings.Join(got, ",") != strings.Join(wantCalls, ",") {
				t.Errorf("dials = %v, want %v", got, wantCalls)
			}
		})
	}
}

// TestRefuseUDP: with Config.RefuseUDP, a datagram to a UDP Service with
// endpoints gets ICMP port unreachable at once, nothing is dialled, and the
// reason is logged once for the Service however many clients try.
func TestRefuseUDP(t *testing.T) {
	d := new(fakeDialer)
	startUDPPod(t, d, pod1, "pod1")
	var logs syncBuffer
	_, link := newTestStackConfig(t, buildTable(t, udpService(clusterIP, pod1)), d, nil, 1500, func(c *Config) {
		c.RefuseUDP = "TCP only here"
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	dst := netip.AddrPortFrom(clusterIP, 80)
	for port := uint16(41000); port < 41003; port++ {
		inject(link, udpPacket(netip.AddrPortFrom(client.Addr(), port), dst, []byte("stat")))
		_, _, proto, p := parseIP(t, readPacket(t, link))
		icmp := header.ICMPv4(p)
		if proto != uint8(header.ICMPv4ProtocolNumber) || icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4PortUnreachable {
			t.Fatalf("reply to a datagram from port %d: protocol %d % x, want ICMP port unreachable", port, proto, p)
		}
	}
	if calls := d.calls(); len(calls) != 0 {
		t.Errorf("dials = %v, want none", calls)
	}
	if n := bytes.Count(logs.Bytes(), []byte("TCP only here")); n != 1 {
		t.Errorf("the refusal's reason logged %d times, want once:\n%s", n, logs.Bytes())
	}
}

// syncBuffer is a bytes.Buffer safe for the stack's goroutines to log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}
