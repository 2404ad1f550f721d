package netstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
)

var (
	clusterIP = netip.MustParseAddr("10.3.241.152")
	pod1      = netip.MustParseAddrPort("10.0.1.2:8080")
	pod2      = netip.MustParseAddrPort("10.0.2.2:8080")
	client    = netip.MustParseAddrPort("10.0.3.2:40000")

	// IPv6: a Service, two pods and the client.
	clusterIP6 = netip.MustParseAddr("fd00:10:96::a:98")
	pod1v6     = netip.MustParseAddrPort("[fd00:10:1::2]:8080")
	pod2v6     = netip.MustParseAddrPort("[fd00:10:2::2]:8080")
	client6    = netip.MustParseAddrPort("[fd00:10:3::2]:40000")
)

// seedTable returns the seed's Service (ClusterIP 10.3.241.152, port 80 →
// targetPort http) with the given endpoints, each ready unless listed in
// notReady.
func seedTable(t testing.TB, eps []netip.AddrPort, notReady ...netip.AddrPort) *resolver.Table {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "service-test", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP.String(),
			Ports:     []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "service-test-abcde", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "service-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, ep := range eps {
		ready := true
		for _, nr := range notReady {
			if nr == ep {
				ready = false
			}
		}
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ep.Addr().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	snap, problems := resolver.Build([]*corev1.Service{svc}, []*discoveryv1.EndpointSlice{es}, nil, resolver.Topology{})
	if len(problems) > 0 {
		t.Fatalf("Build: %v", problems)
	}
	tab := new(resolver.Table)
	tab.Store(snap)
	return tab
}

// testService is a Service for buildTable: ports on ip, served by eps
// (ready unless listed in notReady) through an EndpointSlice of ip's family.
type testService struct {
	name     string
	ip       netip.Addr
	ports    []testPort
	eps      []netip.Addr
	notReady []netip.Addr
}

// testPort is a Service port and the port its endpoints serve it on.
type testPort struct {
	proto  corev1.Protocol
	port   uint16
	target uint16
}

// snapshotOf builds a snapshot of svcs, or fails.
func snapshotOf(t testing.TB, svcs ...testService) *resolver.Snapshot {
	t.Helper()
	var (
		services  []*corev1.Service
		sliceList []*discoveryv1.EndpointSlice
	)
	for _, ts := range svcs {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: ts.name, Namespace: "default"},
			Spec:       corev1.ServiceSpec{ClusterIP: ts.ip.String()},
		}
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: ts.name + "-abcde", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: ts.name}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		if ts.ip.Is6() {
			es.AddressType = discoveryv1.AddressTypeIPv6
		}
		for _, p := range ts.ports {
			name := fmt.Sprintf("%s-%d", strings.ToLower(string(p.proto)), p.port)
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: name, Port: int32(p.port), Protocol: p.proto, TargetPort: intstr.FromInt32(int32(p.target))})
			es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(name), Port: ptr(int32(p.target)), Protocol: ptr(p.proto)})
		}
		for _, ep := range ts.eps {
			ready := !slices.Contains(ts.notReady, ep)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{ep.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
			})
		}
		services = append(services, svc)
		sliceList = append(sliceList, es)
	}
	snap, problems := resolver.Build(services, sliceList, nil, resolver.Topology{})
	if len(problems) > 0 {
		t.Fatalf("Build: %v", problems)
	}
	return snap
}

// buildTable returns a table holding a snapshot of svcs.
func buildTable(t testing.TB, svcs ...testService) *resolver.Table {
	t.Helper()
	tab := new(resolver.Table)
	tab.Store(snapshotOf(t, svcs...))
	return tab
}

// fakeDialer sends a dial for a pod address to the loopback listener or
// UDP socket that stands in for that pod, and refuses pods it has none for.
type fakeDialer struct {
	mu      sync.Mutex
	pods    map[string]string // TCP pod address -> listener address
	udpPods map[string]string // UDP pod address -> socket address
	dialed  []string
}

func (d *fakeDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dialed = append(d.dialed, addr)
	target, ok := d.pods[addr]
	if strings.HasPrefix(network, "udp") {
		target, ok = d.udpPods[addr]
	}
	d.mu.Unlock()
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, target)
}

func (d *fakeDialer) calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dialed...)
}

// startPod runs an in-process backend on loopback that handles each
// connection with serve, and registers it with d as pod.
func startPod(t testing.TB, d *fakeDialer, pod netip.AddrPort, serve func(net.Conn)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	d.mu.Lock()
	if d.pods == nil {
		d.pods = make(map[string]string)
	}
	d.pods[pod.String()] = ln.Addr().String()
	d.mu.Unlock()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
}

// udpPod is a loopback UDP socket standing in for a pod: it answers each
// datagram with its name, a space, and the datagram, and reports what it got.
type udpPod struct {
	name string
	got  chan datagram
}

// datagram is what a udpPod received, and from which host socket.
type datagram struct {
	from string
	data string
}

// startUDPPod runs a udpPod on loopback and registers it with d as pod.
func startUDPPod(t testing.TB, d *fakeDialer, pod netip.AddrPort, name string) *udpPod {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &udpPod{name: name, got: make(chan datagram, 64)}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	d.mu.Lock()
	if d.udpPods == nil {
		d.udpPods = make(map[string]string)
	}
	d.udpPods[pod.String()] = pc.LocalAddr().String()
	d.mu.Unlock()
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case p.got <- datagram{from.String(), string(buf[:n])}:
			default:
			}
			pc.WriteTo(append([]byte(name+" "), buf[:n]...), from)
		}
	}()
	return p
}

// echo copies everything back, then half-closes: the test's stand-in for a
// server that answers once the client has finished sending.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

func newTestStack(t testing.TB, tab *resolver.Table, d *fakeDialer) (*Stack, *channel.Endpoint) {
	t.Helper()
	return newTestStackTimers(t, tab, d, nil)
}

// newTestStackTimers is newTestStack with UDP session timings of its own;
// nil means New's.
func newTestStackTimers(t testing.TB, tab *resolver.Table, d *fakeDialer, udpt *udpTimers) (*Stack, *channel.Endpoint) {
	t.Helper()
	return newTestStackLink(t, tab, d, udpt, 1500)
}

// newTestStackLink is newTestStackTimers on a link with the MTU given.
func newTestStackLink(t testing.TB, tab *resolver.Table, d *fakeDialer, udpt *udpTimers, mtu uint32) (*Stack, *channel.Endpoint) {
	t.Helper()
	return newTestStackConfig(t, tab, d, udpt, mtu, nil)
}

// newTestStackConfig is newTestStackLink with the Config changed by edit
// (nil: none) before New.
func newTestStackConfig(t testing.TB, tab *resolver.Table, d Dialer, udpt *udpTimers, mtu uint32, edit func(*Config)) (*Stack, *channel.Endpoint) {
	t.Helper()
	link := channel.New(256, mtu, "")
	cfg := Config{Link: link, Services: tab, Dialer: d, DialTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if edit != nil {
		edit(&cfg)
	}
	var (
		ns  *Stack
		err error
	)
	if udpt == nil {
		ns, err = New(cfg)
	} else {
		ns, err = newStack(cfg, *udpt)
	}
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		link.Close()
		checkNoLeaks(t)
	})
	return ns, link
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// checkNoLeaks fails if a goroutine of this package outlives Close.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	var stacks string
	for range 50 {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "kubetun/netstack.(*Stack)") && !strings.Contains(stacks, "kubetun/netstack.(*flow)") &&
			!strings.Contains(stacks, "kubetun/netstack.(*udpSession)") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("goroutines left after Close:\n%s", stacks)
}

// tcpPacket builds an IPv4 or IPv6 TCP segment, by src's family, with valid
// checksums.
func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, payload []byte) []byte {
	b, p := ipPacket(src.Addr(), dst.Addr(), header.TCPProtocolNumber, header.TCPMinimumSize+len(payload))
	srcA, dstA := gvAddr(src.Addr()), gvAddr(dst.Addr())
	seg := header.TCP(p)
	seg.Encode(&header.TCPFields{
		SrcPort:    src.Port(),
		DstPort:    dst.Port(),
		SeqNum:     seq,
		AckNum:     ack,
		DataOffset: header.TCPMinimumSize,
		Flags:      flags,
		WindowSize: 65535,
	})
	copy(seg.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, srcA, dstA, uint16(len(seg)))
	xsum = checksum.Checksum(payload, xsum)
	seg.SetChecksum(^seg.CalculateChecksum(xsum))
	return b
}

// ipPacket returns an IPv4 or IPv6 packet, by src's family, with room for a
// transport payload of n bytes, and that payload. The IPv4 header checksum
// is set.
func ipPacket(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, n int) (pkt, payload []byte) {
	if src.Is6() {
		b := make([]byte, header.IPv6MinimumSize+n)
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(n),
			TransportProtocol: proto,
			HopLimit:          64,
			SrcAddr:           gvAddr(src),
			DstAddr:           gvAddr(dst),
		})
		return b, b[header.IPv6MinimumSize:]
	}
	b := make([]byte, header.IPv4MinimumSize+n)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(proto),
		SrcAddr:     gvAddr(src),
		DstAddr:     gvAddr(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b, b[header.IPv4MinimumSize:]
}

func gvAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: gvAddr(a.Addr()), Port: a.Port()}
}

func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is6() {
		return ipv6.ProtocolNumber
	}
	return ipv4.ProtocolNumber
}

// inject delivers an IPv4 or IPv6 packet to the stack behind link.
func inject(link *channel.Endpoint, pkt []byte) {
	proto := header.IPv4ProtocolNumber
	if header.IPVersion(pkt) == header.IPv6Version {
		proto = header.IPv6ProtocolNumber
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	link.InjectInbound(proto, pb)
	pb.DecRef()
}

// readPacket returns the next packet the stack sends, or fails.
func readPacket(t testing.TB, link *channel.Endpoint) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pb := link.ReadContext(ctx)
	if pb == nil {
		t.Fatal("no packet from the stack within 5s")
	}
	defer pb.DecRef()
	return bytes.Clone(pb.ToView().AsSlice())
}

// expectSilence fails if the stack sends any packet within d.
func expectSilence(t testing.TB, link *channel.Endpoint, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if pb := link.ReadContext(ctx); pb != nil {
		defer pb.DecRef()
		t.Fatalf("stack sent % x, want nothing", pb.ToView().AsSlice())
	}
}

// readSegment returns the next TCP segment the stack sends, or fails.
func readSegment(t testing.TB, link *channel.Endpoint) (header.IPv4, header.TCP) {
	t.Helper()
	b := readPacket(t, link)
	ip := header.IPv4(b)
	if !ip.IsValid(len(b)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		t.Fatalf("stack sent a non-TCP/IPv4 packet: % x", b)
	}
	return ip, header.TCP(ip.Payload())
}

// families are the addresses the tests that run over IPv4 and IPv6 use:
// a ClusterIP, the client and the pod.
var families = []struct {
	name      string
	clusterIP netip.Addr
	client    netip.AddrPort
	pod       netip.AddrPort
}{
	{"IPv4", clusterIP, client, pod1},
	{"IPv6", clusterIP6, client6, pod1v6},
}

// TestHandshakeAfterDial drives a real handshake with hand-built segments,
// over IPv4 and IPv6: the SYN-ACK comes from the ClusterIP only after the
// pod was dialled, and bytes then flow both ways between the client's
// segments and the pod.
func TestHandshakeAfterDial(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := new(fakeDialer)
			got := make(chan string, 1)
			startPod(t, d, fam.pod, func(c net.Conn) {
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil {
					got <- "read: " + err.Error()
					return
				}
				got <- string(buf)
				c.Write([]byte("world"))
			})
			svc := netip.AddrPortFrom(fam.clusterIP, 80)
			_, link := newTestStack(t, buildTable(t, testService{name: "service-test", ip: fam.clusterIP,
				ports: []testPort{{corev1.ProtocolTCP, 80, 8080}}, eps: []netip.Addr{fam.pod.Addr()}}), d)

			const iss = 1000
			inject(link, tcpPacket(fam.client, svc, iss, 0, header.TCPFlagSyn, nil))
			src, dst, synack := readTCP(t, link)
			if calls := d.calls(); len(calls) != 1 || calls[0] != fam.pod.String() {
				t.Fatalf("SYN-ACK sent after dials %v, want one dial to %v first", calls, fam.pod)
			}
			if want := header.TCPFlagSyn | header.TCPFlagAck; synack.Flags() != want {
				t.Fatalf("reply flags = %v, want %v", synack.Flags(), want)
			}
			if src != svc || dst != fam.client {
				t.Fatalf("SYN-ACK %v → %v, want %v → %v (from the ClusterIP)", src, dst, svc, fam.client)
			}
			if synack.AckNumber() != iss+1 {
				t.Fatalf("SYN-ACK ack = %d, want %d", synack.AckNumber(), iss+1)
			}
			srvSeq := synack.SequenceNumber() + 1

			inject(link, tcpPacket(fam.client, svc, iss+1, srvSeq, header.TCPFlagAck|header.TCPFlagPsh, []byte("hello")))
			select {
			case s := <-got:
				if s != "hello" {
					t.Fatalf("pod got %q, want %q", s, "hello")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("pod got nothing within 5s")
			}
			for range 10 {
				_, _, seg := readTCP(t, link)
				if len(seg.Payload()) == 0 {
					continue // a bare ACK of our data
				}
				if string(seg.Payload()) != "world" || seg.SequenceNumber() != srvSeq {
					t.Fatalf("segment seq %d payload %q, want seq %d payload %q", seg.SequenceNumber(), seg.Payload(), srvSeq, "world")
				}
				return
			}
			t.Fatal("no data segment from the stack")
		})
	}
}

// TestRefused checks the RST for every flow kubetun must not accept.
func TestRefused(t *testing.T) {
	tests := []struct {
		name      string
		dst       netip.AddrPort
		eps       []netip.AddrPort
		notReady  []netip.AddrPort
		listening []netip.AddrPort // pods that accept
		wantDials int
	}{
		{name: "unknown port", dst: netip.AddrPortFrom(clusterIP, 81), eps: []netip.AddrPort{pod1}, listening: []netip.AddrPort{pod1}},
		{name: "unknown IP", dst: netip.MustParseAddrPort("10.3.241.153:80"), eps: []netip.AddrPort{pod1}, listening: []netip.AddrPort{pod1}},
		{name: "no endpoint", dst: netip.AddrPortFrom(clusterIP, 80)},
		{name: "no ready endpoint", dst: netip.AddrPortFrom(clusterIP, 80), eps: []netip.AddrPort{pod1}, notReady: []netip.AddrPort{pod1}, listening: []netip.AddrPort{pod1}},
		{name: "every dial refused", dst: netip.AddrPortFrom(clusterIP, 80), eps: []netip.AddrPort{pod1, pod2}, wantDials: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := new(fakeDialer)
			for _, p := range tt.listening {
				startPod(t, d, p, echo)
			}
			ns, link := newTestStack(t, seedTable(t, tt.eps, tt.notReady...), d)
			const iss = 5000
			inject(link, tcpPacket(client, tt.dst, iss, 0, header.TCPFlagSyn, nil))
			_, seg := readSegment(t, link)
			if want := header.TCPFlagRst | header.TCPFlagAck; seg.Flags() != want || seg.AckNumber() != iss+1 {
				t.Errorf("reply to SYN for %v: flags %v ack %d, want %v ack %d", tt.dst, seg.Flags(), seg.AckNumber(), want, iss+1)
			}
			if n := len(d.calls()); n != tt.wantDials {
				t.Errorf("dials = %v, want %d", d.calls(), tt.wantDials)
			}
			want := Stats{TCPRefused: 1}
			if tt.wantDials > 0 {
				want = Stats{TCPUnreachable: 1, DialFailures: uint64(tt.wantDials)}
			}
			// The setup's slot is released just after the RST leaves.
			waitFor(t, "the refusal counted and its setup slot released", func() bool { return ns.Stats() == want })
		})
	}
}

// clientStack is a second gVisor stack playing the client pod (client and
// client6), wired to the stack under test by two channel endpoints and a
// pair of pumps.
func clientStack(t testing.TB, server *channel.Endpoint) *stack.Stack {
	t.Helper()
	link := channel.New(256, 1500, "")
	cs := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	if err := cs.CreateNIC(1, link); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	for _, a := range []netip.Addr{client.Addr(), client6.Addr()} {
		addr := tcpip.ProtocolAddress{Protocol: netProto(a), AddressWithPrefix: gvAddr(a).WithPrefix()}
		if err := cs.AddProtocolAddress(1, addr, stack.AddressProperties{}); err != nil {
			t.Fatalf("AddProtocolAddress(1, %v): %v", addr, err)
		}
	}
	cs.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	pump := func(from, to *channel.Endpoint) {
		for {
			pb := from.ReadContext(ctx)
			if pb == nil {
				return
			}
			b := pb.ToView().AsSlice()
			pb.DecRef()
			inject(to, b)
		}
	}
	wg.Go(func() { pump(link, server) })
	wg.Go(func() { pump(server, link) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		cs.Close()
		cs.Wait()
	})
	return cs
}

func dialService(t testing.TB, cs *stack.Stack, dst netip.AddrPort) (*gonet.TCPConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, cs, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

// TestHalfClose sends 1 MiB, shuts the write side, and still reads all of
// the pod's answer, which the pod sends only after it saw EOF.
func TestHalfClose(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	_, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)

	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial %v: %v", clusterIP, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back, want the %d sent", len(got), len(want))
	}
}

// TestRetryOtherEndpoint: the first pick refuses; the client is still served
// by the other endpoint and never sees the failure.
func TestRetryOtherEndpoint(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod2, echo) // pod1 has no listener: refused
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1, pod2}), d)
	cs := clientStack(t, link)
	for i := range 4 {
		c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Write([]byte("ping"))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != "ping" {
			t.Fatalf("connection %d: got %q, %v; want %q", i, got, err, "ping")
		}
	}
	n := strings.Count(strings.Join(d.calls(), " "), pod1.String())
	if n == 0 {
		t.Errorf("dials %v: pod1 never tried, the test proves nothing", d.calls())
	}
	if st := ns.Stats(); st.TCPForwarded != 4 || st.DialFailures != uint64(n) || st.TCPRefused+st.TCPUnreachable != 0 {
		t.Errorf("Stats() = %+v, want 4 forwarded, %d dial failures, none refused", st, n)
	}
}

// TestCloseEndsFlows: Close ends established connections and returns only
// when every goroutine is gone (checked by newTestStack's cleanup).
func TestCloseEndsFlows(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo: %v", err)
	}
	ns.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("read after Close = %v, want the connection ended", err)
	}
}

// TestCloseDuringHandshake: a client that sent a SYN and vanished (the
// SYN-ACK is never answered) must not hold up Close; gVisor would retransmit
// the SYN-ACK for about two minutes.
func TestCloseDuringHandshake(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	inject(link, tcpPacket(client, netip.AddrPortFrom(clusterIP, 80), 1000, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("reply to SYN: flags %v, want SYN|ACK", seg.Flags())
	}
	done := make(chan struct{})
	go func() { ns.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s of a half-open handshake")
	}
}

// readTCP returns the next packet from the stack, IPv4 or IPv6, which must
// be a TCP segment with a valid checksum.
func readTCP(t testing.TB, link *channel.Endpoint) (src, dst netip.AddrPort, seg header.TCP) {
	t.Helper()
	s, d, proto, p := parseIP(t, readPacket(t, link))
	if proto != uint8(header.TCPProtocolNumber) {
		t.Fatalf("stack sent protocol %d from %v to %v, want TCP", proto, s, d)
	}
	seg = header.TCP(p)
	if !seg.IsChecksumValid(gvAddr(s), gvAddr(d), checksum.Checksum(seg.Payload(), 0), uint16(len(seg.Payload()))) {
		t.Fatalf("TCP checksum of the segment from %v to %v is wrong", s, d)
	}
	return netip.AddrPortFrom(s, seg.SourcePort()), netip.AddrPortFrom(d, seg.DestinationPort()), seg
}

// TestDialsPerSource: a client with its share of connections being set
// up, and what is lent to a burst past it, has its next SYN dropped, without a dial and without a RST
// (a burst is not an attack: it retransmits), at the pump already
// (AdmitTCP) and in the stack if one gets there; another client is
// served; a finished setup frees a slot.
func TestDialsPerSource(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	// Its share, then what is lent to a burst: three quarters of all.
	for range DefaultMaxSetups * 3 / 4 {
		if err := ns.reserveSetup(client.Addr()); err != nil {
			t.Fatalf("reserveSetup(%v) = %v before the limit", client.Addr(), err)
		}
	}
	svc := netip.AddrPortFrom(clusterIP, 80)
	const iss = 7000
	syn := tcpPacket(client, svc, iss, 0, header.TCPFlagSyn, nil)
	if ns.AdmitTCP(syn) {
		t.Error("AdmitTCP admitted a SYN over the per-source limit")
	}
	if !ns.AdmitTCP(tcpPacket(client, svc, iss, 1, header.TCPFlagAck, []byte("x"))) {
		t.Error("AdmitTCP dropped a segment that is no SYN")
	}
	inject(link, syn) // as if it got past the pump
	expectSilence(t, link, 100*time.Millisecond)
	if calls := d.calls(); len(calls) != 0 {
		t.Errorf("dials %v over the limit, want none", calls)
	}
	if st := ns.Stats(); st.TCPLimited != 2 {
		t.Errorf("TCPLimited = %d, want 2 (the pump's drop and the stack's)", st.TCPLimited)
	}

	other := netip.MustParseAddrPort("10.0.4.2:40000")
	if !ns.AdmitTCP(tcpPacket(other, svc, iss, 0, header.TCPFlagSyn, nil)) {
		t.Error("AdmitTCP dropped another client's SYN")
	}
	inject(link, tcpPacket(other, svc, iss, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Errorf("SYN from another client: flags %v, want SYN|ACK", seg.Flags())
	}

	ns.releaseSetup(client.Addr())
	inject(link, tcpPacket(netip.AddrPortFrom(client.Addr(), 40001), svc, iss, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Errorf("SYN after a slot was freed: flags %v, want SYN|ACK", seg.Flags())
	}
}
