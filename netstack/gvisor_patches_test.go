package netstack

// Tests of what kubetun's patches to gVisor (third_party/patches/gvisor)
// promise, through gVisor's public stack API: two plain gVisor stacks joined
// by channel endpoints, with the options under test set on one of them. A
// gVisor update that drops a patch fails to build here; one that changes
// what it does fails these tests.

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

var (
	peerA = netip.MustParseAddr("10.77.0.1")
	peerB = netip.MustParseAddr("10.77.0.2")
)

// peerStack is a gVisor stack with one NIC on a channel endpoint, the
// address addr, and the TCP options opts.
func peerStack(t testing.TB, addr netip.Addr, opts ...tcpip.SettableTransportProtocolOption) (*stack.Stack, *channel.Endpoint) {
	t.Helper()
	link := channel.New(4096, 1500, "")
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	for _, opt := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			t.Fatalf("SetTransportProtocolOption(tcp, %T): %v", opt, err)
		}
	}
	if err := s.CreateNIC(1, link); err != nil {
		t.Fatalf("CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: gvAddr(addr).WithPrefix()}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatalf("AddProtocolAddress(1, %v): %v", pa, err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	t.Cleanup(func() {
		link.Close()
		s.Close()
		s.Wait()
	})
	return s, link
}

// faults says what a pump does to the packets it carries.
type faults struct {
	loss, reorder, duplicate float64 // probabilities per packet
}

// pumpPackets carries packets from one stack's link to the other's until ctx
// ends, dropping, reordering (holding one back until the next has passed)
// and duplicating them as f says, with a seeded generator.
func pumpPackets(ctx context.Context, from, to *channel.Endpoint, f faults, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	var held []byte
	for {
		pb := from.ReadContext(ctx)
		if pb == nil {
			return
		}
		b := bytes.Clone(pb.ToView().AsSlice())
		pb.DecRef()
		switch r := rng.Float64(); {
		case r < f.loss:
			continue
		case r < f.loss+f.reorder && held == nil:
			held = b
			continue
		case r < f.loss+f.reorder+f.duplicate:
			inject(to, b)
		}
		inject(to, b)
		if held != nil {
			inject(to, held)
			held = nil
		}
	}
}

// connectPeers returns a TCP connection from stack a to stack b and b's end
// of it, the two links pumped with f both ways.
func connectPeers(t testing.TB, a, b *stack.Stack, la, lb *channel.Endpoint, f faults) (client, server *gonet.TCPConn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { pumpPackets(ctx, la, lb, f, 1) })
	wg.Go(func() { pumpPackets(ctx, lb, la, f, 2) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	ln, err := gonet.ListenTCP(b, tcpip.FullAddress{NIC: 1, Addr: gvAddr(peerB), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer ln.Close()
	accepted := make(chan *gonet.TCPConn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c.(*gonet.TCPConn)
	}()
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	client, err = gonet.DialContextTCP(dctx, a, tcpip.FullAddress{NIC: 1, Addr: gvAddr(peerB), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("DialContextTCP: %v", err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("Accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// carry moves every packet queued on from to the stack behind to, in the
// caller's goroutine.
func carry(from, to *channel.Endpoint) (n int) {
	for pb := from.Read(); pb != nil; pb = from.Read() {
		inject(to, bytes.Clone(pb.ToView().AsSlice()))
		pb.DecRef()
		n++
	}
	return n
}

// handCarried is a connection from stack A to stack B whose packets the
// test carries itself (carry): B's end is a bare endpoint, whose Read never
// waits.
type handCarried struct {
	client *gonet.TCPConn
	server tcpip.Endpoint
	la, lb *channel.Endpoint // A's and B's links
}

// newHandCarried connects A to B with B's TCP options optsB, the handshake
// carried by pumps that stop once it is done.
func newHandCarried(t testing.TB, optsB ...tcpip.SettableTransportProtocolOption) handCarried {
	t.Helper()
	a, la := peerStack(t, peerA)
	b, lb := peerStack(t, peerB, optsB...)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { pumpPackets(ctx, la, lb, faults{}, 1) })
	wg.Go(func() { pumpPackets(ctx, lb, la, faults{}, 2) })
	var lwq waiter.Queue
	ln, terr := b.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &lwq)
	if terr != nil {
		t.Fatalf("NewEndpoint: %v", terr)
	}
	t.Cleanup(ln.Close)
	if terr := ln.Bind(tcpip.FullAddress{NIC: 1, Addr: gvAddr(peerB), Port: 80}); terr != nil {
		t.Fatalf("Bind: %v", terr)
	}
	if terr := ln.Listen(1); terr != nil {
		t.Fatalf("Listen: %v", terr)
	}
	client, err := gonet.DialTCP(a, tcpip.FullAddress{NIC: 1, Addr: gvAddr(peerB), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	var server tcpip.Endpoint
	waitFor(t, "the connection accepted", func() bool {
		server, _, terr = ln.Accept(nil)
		return terr == nil
	})
	t.Cleanup(server.Close)
	cancel()
	wg.Wait()
	for carry(la, lb)+carry(lb, la) > 0 { // ACKs left over
	}
	return handCarried{client: client, server: server, la: la, lb: lb}
}

// send writes msg on A's end and carries A's segments to B; it returns the
// number of segments and the sequence number after the last.
func (h handCarried) send(t testing.TB, msg []byte) (n int, end uint32) {
	t.Helper()
	if _, err := h.client.Write(msg); err != nil {
		t.Fatalf("Write: %v", err)
	}
	for got := 0; got < len(msg); n++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pb := h.la.ReadContext(ctx)
		cancel()
		if pb == nil {
			t.Fatalf("A sent %d of %d bytes within 5s", got, len(msg))
		}
		b := bytes.Clone(pb.ToView().AsSlice())
		pb.DecRef()
		seg := header.TCP(header.IPv4(b).Payload())
		got += len(seg.Payload())
		end = seg.SequenceNumber() + uint32(len(seg.Payload()))
		inject(h.lb, b)
	}
	return n, end
}

// fromB returns the packets B sends within d, at most max.
func (h handCarried) fromB(d time.Duration, max int) [][]byte {
	var segs [][]byte
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for len(segs) < max {
		pb := h.lb.ReadContext(ctx)
		if pb == nil {
			return segs
		}
		b := bytes.Clone(pb.ToView().AsSlice())
		pb.DecRef()
		segs = append(segs, b)
	}
	return segs
}

// segmentOf returns the TCP segment of an IPv4 packet.
func segmentOf(pkt []byte) header.TCP { return header.TCP(header.IPv4(pkt).Payload()) }

// TestInlineDeliveryIsInline: with TCPInlineDeliveryOption, a data segment
// of an established connection has been processed when the link's
// InjectInbound returns, in the caller's goroutine: its bytes are readable
// at once, every time.
func TestInlineDeliveryIsInline(t *testing.T) {
	h := newHandCarried(t, ptr(tcpip.TCPInlineDeliveryOption(true)))
	for i := range 200 {
		msg := []byte{byte(i), 'x', 'y'}
		h.send(t, msg)
		// Readable now, or it was not processed inline.
		var got bytes.Buffer
		if _, terr := h.server.Read(&got, tcpip.ReadOptions{}); terr != nil || !bytes.Equal(got.Bytes(), msg) {
			t.Fatalf("segment %d: Read right after InjectInbound = %q, %v; want %q: the segment was not processed inline", i, got.Bytes(), terr, msg)
		}
		carry(h.lb, h.la) // B's ACK
	}
}

// ackDelay is the TCPAckDelayOption of the tests: long enough that a
// loaded machine does not fire it before the test looks.
const ackDelay = 200 * time.Millisecond

// TestAckDelay: with TCPAckDelayOption, the ACK of a small request is held;
// an answer written meanwhile carries it (one segment back, not two), and
// without an answer it is sent when the delay runs out. Two full-sized
// segments are acknowledged at once.
func TestAckDelay(t *testing.T) {
	// Receive buffer moderation off: a buffer it grows on a read is
	// announced with a window update at once, a segment these tests would
	// count.
	opts := []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPInlineDeliveryOption(true)),
		ptr(tcpip.TCPAckDelayOption(ackDelay)),
		ptr(tcpip.TCPModerateReceiveBufferOption(false)),
	}
	t.Run("carried by the answer", func(t *testing.T) {
		h := newHandCarried(t, opts...)
		for i := range 20 {
			_, end := h.send(t, []byte("GET"))
			if segs := h.fromB(10*time.Millisecond, 1); len(segs) != 0 {
				seg := segmentOf(segs[0])
				t.Fatalf("request %d: B sent a segment before answering (flags %v, %d bytes, ack %d), want its ACK held", i, seg.Flags(), len(seg.Payload()), seg.AckNumber())
			}
			var buf bytes.Buffer
			if _, terr := h.server.Read(&buf, tcpip.ReadOptions{}); terr != nil {
				t.Fatalf("Read: %v", terr)
			}
			if _, terr := h.server.Write(bytes.NewReader([]byte("200 OK")), tcpip.WriteOptions{}); terr != nil {
				t.Fatalf("Write: %v", terr)
			}
			segs := h.fromB(5*time.Second, 1)
			if len(segs) != 1 {
				t.Fatalf("request %d: no answer from B", i)
			}
			if seg := segmentOf(segs[0]); len(seg.Payload()) != 6 || seg.AckNumber() != end {
				t.Fatalf("request %d: B's first segment has %d bytes, ack %d; want the answer carrying ack %d", i, len(seg.Payload()), seg.AckNumber(), end)
			}
			// A acknowledges the answer; B has nothing more to say.
			inject(h.la, segs[0])
			waitFor(t, "A's ACK", func() bool { return h.la.NumQueued() > 0 })
			carry(h.la, h.lb)
			if segs := h.fromB(20*time.Millisecond, 1); len(segs) != 0 {
				seg := segmentOf(segs[0])
				t.Fatalf("request %d: after its answer B sent another segment (flags %v, %d bytes, ack %d)", i, seg.Flags(), len(seg.Payload()), seg.AckNumber())
			}
		}
	})
	t.Run("sent on its timer", func(t *testing.T) {
		h := newHandCarried(t, opts...)
		h.send(t, []byte("GET"))
		start := time.Now()
		segs := h.fromB(5*time.Second, 1)
		if len(segs) != 1 || len(segmentOf(segs[0]).Payload()) != 0 || !segmentOf(segs[0]).Flags().Contains(header.TCPFlagAck) {
			t.Fatalf("B sent %d segments, want one pure ACK", len(segs))
		}
		if took := time.Since(start); took < ackDelay/2 {
			t.Fatalf("the ACK came after %v, want it held about %v", took, ackDelay)
		}
	})
	t.Run("two full-sized segments", func(t *testing.T) {
		h := newHandCarried(t, opts...)
		if n, _ := h.send(t, make([]byte, 3000)); n < 3 {
			t.Fatalf("A sent 3000 bytes in %d segments, want 2 full-sized and a rest", n)
		}
		if segs := h.fromB(ackDelay/2, 1); len(segs) == 0 {
			t.Fatal("B held the ACK of two full-sized segments")
		}
	})
}

// TestAckDelayEndpointGoneFirst closes connections while their ACK is held
// and its timer is firing: the timer's callback, waiting for the endpoint's
// lock while the endpoint is cleaned up, must find the timer gone and do
// nothing (it once dereferenced the cleared timer's clock).
func TestAckDelayEndpointGoneFirst(t *testing.T) {
	for i := range 200 {
		// A delay of a microsecond: the callback fires while the
		// endpoint is being closed.
		h := newHandCarried(t, ptr(tcpip.TCPInlineDeliveryOption(true)), ptr(tcpip.TCPAckDelayOption(time.Microsecond)))
		h.send(t, []byte("GET"))
		if i%2 == 0 {
			h.server.Abort()
		} else {
			h.server.Close()
		}
	}
}

// TestPatchedStreamsUnderFaults sends 2 MiB each way at once through links
// that lose, reorder and duplicate packets, with each patch's option on and
// off: every byte arrives, in order, and the connection ends cleanly.
func TestPatchedStreamsUnderFaults(t *testing.T) {
	cases := []struct {
		name string
		opts []tcpip.SettableTransportProtocolOption
	}{
		{"queued", nil},
		{"inline", []tcpip.SettableTransportProtocolOption{ptr(tcpip.TCPInlineDeliveryOption(true))}},
		{"inline, ACK delay", []tcpip.SettableTransportProtocolOption{ptr(tcpip.TCPInlineDeliveryOption(true)), ptr(tcpip.TCPAckDelayOption(time.Millisecond))}},
	}
	f := faults{loss: 0.01, reorder: 0.03, duplicate: 0.01}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, la := peerStack(t, peerA, c.opts...)
			b, lb := peerStack(t, peerB, c.opts...)
			client, server := connectPeers(t, a, b, la, lb, f)
			deadline := time.Now().Add(60 * time.Second)
			client.SetDeadline(deadline)
			server.SetDeadline(deadline)

			rng := rand.New(rand.NewPCG(3, 4))
			up, down := make([]byte, 2<<20), make([]byte, 2<<20)
			for i := range up {
				up[i], down[i] = byte(rng.Uint32()), byte(rng.Uint32())
			}
			var wg sync.WaitGroup
			var gotUp, gotDown []byte
			var errs [4]error
			wg.Go(func() { _, errs[0] = client.Write(up); client.CloseWrite() })
			wg.Go(func() { _, errs[1] = server.Write(down); server.CloseWrite() })
			wg.Go(func() { gotUp, errs[2] = io.ReadAll(server) })
			wg.Go(func() { gotDown, errs[3] = io.ReadAll(client) })
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("transfer %d: %v", i, err)
				}
			}
			if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
				t.Fatalf("received %d and %d bytes, not the 2 MiB sent each way", len(gotUp), len(gotDown))
			}
		})
	}
}
