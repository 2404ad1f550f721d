package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	corev1 "k8s.io/api/core/v1"

	"github.com/kubetun/kubetun/tunnel"
)

// The fuzz targets here feed the stack what a client on the node's network
// controls: whole IP packets. `go test` runs their seed corpora; `make fuzz`
// fuzzes each in turn.

// fuzzSeeds are valid IPv4 and IPv6 TCP, UDP and ICMP packets from the
// client to the Service address of its family, and fragments of each
// family.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, fam := range families {
		svc := netip.AddrPortFrom(fam.clusterIP, 80)
		big := bytes.Repeat([]byte("kubetun "), 200)
		seeds = append(seeds,
			tcpPacket(fam.client, svc, 1000, 0, header.TCPFlagSyn, nil),
			tcpPacket(fam.client, svc, 1001, 1, header.TCPFlagAck|header.TCPFlagPsh, []byte("hello")),
			tcpPacket(fam.client, svc, 1001, 1, header.TCPFlagRst, nil),
			udpPacket(fam.client, svc, []byte("query")),
			echoRequest(fam.client.Addr(), fam.clusterIP, 7, 1, []byte("ping")),
		)
		seeds = append(seeds, fragmentIP(t, echoRequest(fam.client.Addr(), fam.clusterIP, 7, 2, big), 512, 42)...)
		seeds = append(seeds, fragmentIP(t, udpPacket(fam.client, svc, big), 512, 43)[0])
	}
	return seeds
}

// FuzzParseUDP: the UDP fast path's parser takes any bytes; what it accepts
// is a UDP datagram whose payload lies inside the packet, as long as the
// UDP length says.
func FuzzParseUDP(f *testing.F) {
	for _, p := range fuzzSeeds(f) {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		pkt = pkt[:len(pkt):len(pkt)] // so that the payload's capacity tells where it starts
		key, payload, ok := parseUDP(pkt)
		if !ok {
			return
		}
		if len(payload) > len(pkt)-header.UDPMinimumSize {
			t.Fatalf("parseUDP(%x): %d bytes of payload in a %d-byte packet", pkt, len(payload), len(pkt))
		}
		// The payload is the tail of the UDP datagram its header names.
		off := len(pkt) - cap(payload)
		if off < header.IPv4MinimumSize || !bytes.Equal(pkt[off:off+len(payload)], payload) {
			t.Fatalf("parseUDP(%x): payload not inside the packet", pkt)
		}
		u := header.UDP(pkt[off-header.UDPMinimumSize:])
		if int(u.Length()) != header.UDPMinimumSize+len(payload) || u.SourcePort() != key.src.Port() || u.DestinationPort() != key.dst.Port() {
			t.Fatalf("parseUDP(%x) = %v, %d bytes: not what the UDP header says", pkt, key, len(payload))
		}
	})
}

// FuzzLinkFilter: the link filter's ICMP classification reads any packet
// without panicking; an echo request's reply, when it makes one, is a
// well-formed packet no longer than the request; and fragment6 splits
// what it accepts into fragments of the IPv6 minimum MTU that reassemble
// into the packet's payload.
func FuzzLinkFilter(f *testing.F) {
	for _, p := range fuzzSeeds(f) {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		proto := header.IPv4ProtocolNumber
		if header.IPVersion(pkt) == header.IPv6Version {
			proto = header.IPv6ProtocolNumber
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(bytes.Clone(pkt))})
		_, kind := classifyICMP(proto, pb)
		pb.DecRef()
		if kind == kindEcho {
			if reply := echoReply(proto, pkt); reply != nil {
				checkReply(t, proto, pkt, reply)
			}
		}
		if proto == header.IPv6ProtocolNumber {
			checkFragment6(t, pkt)
		}
	})
}

func checkReply(t *testing.T, proto tcpip.NetworkProtocolNumber, req, reply []byte) {
	t.Helper()
	if len(reply) > len(req) {
		t.Fatalf("echoReply(%x): %d bytes for a %d-byte request", req, len(reply), len(req))
	}
	switch proto {
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(reply)
		if !ip.IsValid(len(reply)) || !ip.IsChecksumValid() || int(ip.TotalLength()) != len(reply) {
			t.Fatalf("echoReply(%x) = %x: IPv4 header not valid", req, reply)
		}
	case header.IPv6ProtocolNumber:
		ip := header.IPv6(reply)
		if !ip.IsValid(len(reply)) || header.IPv6MinimumSize+int(ip.PayloadLength()) != len(reply) {
			t.Fatalf("echoReply(%x) = %x: IPv6 header not valid", req, reply)
		}
	}
}

func checkFragment6(t *testing.T, pkt []byte) {
	t.Helper()
	frags := fragment6(pkt, 99)
	if frags == nil {
		return
	}
	ip := header.IPv6(pkt)
	want := pkt[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
	var got []byte
	for i, fr := range frags {
		if len(fr) > header.IPv6MinimumMTU {
			t.Fatalf("fragment6(%x): fragment %d is %d bytes", pkt, i, len(fr))
		}
		fh := header.IPv6Fragment(fr[header.IPv6MinimumSize:])
		if int(fh.FragmentOffset())*8 != len(got) || fh.More() != (i < len(frags)-1) || fh.NextHeader() != ip.NextHeader() {
			t.Fatalf("fragment6(%x): fragment %d: offset %d, more %v", pkt, i, fh.FragmentOffset(), fh.More())
		}
		got = append(got, fr[header.IPv6MinimumSize+header.IPv6FragmentHeaderSize:]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("fragment6(%x): fragments do not reassemble into the payload", pkt)
	}
}

// FuzzStack pushes a sequence of arbitrary packets through the whole stack
// as the inbound pump hands them over: UDP first to DeliverUDP, the rest
// into the link, into gVisor (checksums not checked again, as on the
// pump's link, which advertises RX checksum offload), the link filter and
// the TCP and UDP forwarders, which dial loopback stand-ins for the pods.
// Nothing may panic, and once Close returns no goroutine of the stack is
// left and the heap is bounded.
//
// The input is a list of packets, each behind 3 bytes: a control byte and
// its big-endian length. Control bit 0 sets the ACK number of a TCP
// segment to the next sequence number the stack sent on its flow, so that
// handshakes and established flows are reached; bit 1 waits (briefly, at
// most maxWaits times an input) for the stack to answer before the next
// packet.
func FuzzStack(f *testing.F) {
	d := new(fakeDialer)
	var svcs []testService
	for _, fam := range families {
		startPod(f, d, fam.pod, echo)
		startUDPPod(f, d, fam.pod, "pod")
		svcs = append(svcs, testService{name: "fuzz-" + fam.name, ip: fam.clusterIP, eps: []netip.Addr{fam.pod.Addr()},
			ports: []testPort{{corev1.ProtocolTCP, 80, 8080}, {corev1.ProtocolUDP, 80, 8080}}})
	}
	tab := buildTable(f, svcs...)

	for _, p := range fuzzSeeds(f) {
		f.Add(stackInput(0, p))
	}
	// Handshake, data, FIN, each answered; and a UDP exchange, then the
	// same flow again (the fast path).
	for _, fam := range families {
		svc := netip.AddrPortFrom(fam.clusterIP, 80)
		f.Add(bytes.Join([][]byte{
			stackInput(2, tcpPacket(fam.client, svc, 1000, 0, header.TCPFlagSyn, nil)),
			stackInput(3, tcpPacket(fam.client, svc, 1001, 0, header.TCPFlagAck, nil)),
			stackInput(3, tcpPacket(fam.client, svc, 1001, 0, header.TCPFlagAck|header.TCPFlagPsh, []byte("hello"))),
			stackInput(3, tcpPacket(fam.client, svc, 1006, 0, header.TCPFlagAck|header.TCPFlagFin, nil)),
		}, nil))
		f.Add(bytes.Join([][]byte{
			stackInput(2, udpPacket(fam.client, svc, []byte("first"))),
			stackInput(2, udpPacket(fam.client, svc, []byte("second"))),
		}, nil))
	}

	var inputs atomic.Uint64
	f.Fuzz(func(t *testing.T, in []byte) {
		link := channel.New(256, 1500, "")
		link.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
		ns, err := New(Config{Link: link, Services: tab, Dialer: d, DialTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		nextSeq := make(map[[2]netip.AddrPort]uint32) // client, service -> the stack's next sequence number
		drain := func(wait time.Duration) {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			for pb := link.ReadContext(ctx); pb != nil; pb = link.Read() {
				noteSeq(nextSeq, pb.ToView().AsSlice())
				pb.DecRef()
			}
		}
		npkts, waits := 0, 0
		for len(in) >= 3 && npkts < 64 {
			ctl, n := in[0], int(binary.BigEndian.Uint16(in[1:3]))
			in = in[3:]
			pkt := bytes.Clone(in[:min(n, len(in))])
			in = in[len(pkt):]
			npkts++
			if ctl&1 != 0 {
				patchAck(nextSeq, pkt)
			}
			switch header.IPVersion(pkt) {
			case header.IPv4Version, header.IPv6Version:
			default:
				continue // the pump drops it
			}
			if !(tunnel.IsUDP(pkt) && ns.DeliverUDP(pkt)) {
				inject(link, pkt)
			}
			wait := time.Duration(0)
			if ctl&2 != 0 && waits < maxWaits {
				wait = 50 * time.Millisecond
				waits++
			}
			drain(wait)
		}
		st := ns.Stats()
		if st.TCPActive > npkts || st.UDPActive > npkts {
			t.Fatalf("%d packets made %d TCP flows and %d UDP sessions", npkts, st.TCPActive, st.UDPActive)
		}
		// Close waits for the link to take what it queued (the FINs and
		// RSTs of its flows), as the pump does.
		ctx, stop := context.WithCancel(context.Background())
		read := make(chan struct{})
		go func() {
			defer close(read)
			for pb := link.ReadContext(ctx); pb != nil; pb = link.ReadContext(ctx) {
				pb.DecRef()
			}
		}()
		ns.Close()
		stop()
		<-read
		link.Close()
		checkNoLeaks(t)
		if inputs.Add(1)%256 == 0 {
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > 512<<20 {
				t.Fatalf("heap %d MiB after %d inputs, each stack closed", ms.HeapAlloc>>20, inputs.Load())
			}
		}
	})
}

// maxWaits bounds the waits for an answer in one input of FuzzStack, so
// that every input runs in a fraction of a second.
const maxWaits = 6

// stackInput is one packet of FuzzStack's input.
func stackInput(ctl byte, pkt []byte) []byte {
	return append([]byte{ctl, byte(len(pkt) >> 8), byte(len(pkt))}, pkt...)
}

// tcpOf returns the addresses and TCP header of an IPv4 or IPv6 packet
// carrying TCP right behind its IP header.
func tcpOf(pkt []byte) (src, dst netip.Addr, tcp header.TCP, ok bool) {
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		ip := header.IPv4(pkt)
		if len(pkt) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.TCPProtocolNumber) ||
			int(ip.HeaderLength()) < header.IPv4MinimumSize || len(pkt) < int(ip.HeaderLength())+header.TCPMinimumSize {
			return
		}
		return netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), header.TCP(pkt[ip.HeaderLength():]), true
	case header.IPv6Version:
		if len(pkt) < header.IPv6MinimumSize+header.TCPMinimumSize || pkt[6] != uint8(header.TCPProtocolNumber) {
			return
		}
		return netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), header.TCP(pkt[header.IPv6MinimumSize:]), true
	}
	return
}

// noteSeq records the sequence number that follows out, a segment the
// stack sent, for its flow.
func noteSeq(next map[[2]netip.AddrPort]uint32, out []byte) {
	src, dst, tcp, ok := tcpOf(out)
	if !ok {
		return
	}
	seq := tcp.SequenceNumber() + uint32(len(tcp)-int(tcp.DataOffset()))
	if tcp.Flags()&(header.TCPFlagSyn|header.TCPFlagFin) != 0 {
		seq++
	}
	next[[2]netip.AddrPort{netip.AddrPortFrom(dst, tcp.DestinationPort()), netip.AddrPortFrom(src, tcp.SourcePort())}] = seq
}

// patchAck sets the ACK number of pkt, a client's TCP segment, to what the
// stack sent last on its flow.
func patchAck(next map[[2]netip.AddrPort]uint32, pkt []byte) {
	src, dst, tcp, ok := tcpOf(pkt)
	if !ok {
		return
	}
	if seq, ok := next[[2]netip.AddrPort{netip.AddrPortFrom(src, tcp.SourcePort()), netip.AddrPortFrom(dst, tcp.DestinationPort())}]; ok {
		tcp.SetAckNumber(seq)
	}
}
