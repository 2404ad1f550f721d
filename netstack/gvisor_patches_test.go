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

// TestInlineDeliveryIsInline: with TCPInlineDeliveryOption, a data segment
// of an established connection has been processed when the link's
// InjectInbound returns, in the caller's goroutine: its bytes are readable
// at once, every time.
func TestInlineDeliveryIsInline(t *testing.T) {
	a, la := peerStack(t, peerA)
	b, lb := peerStack(t, peerB, ptr(tcpip.TCPInlineDeliveryOption(true)))
	var got tcpip.TCPInlineDeliveryOption
	if err := b.TransportProtocolOption(tcp.ProtocolNumber, &got); err != nil || !bool(got) {
		t.Fatalf("TransportProtocolOption(TCPInlineDeliveryOption) = %v, %v; want true", got, err)
	}

	// The handshake through pumps, then the pumps stop and the test
	// carries A's segments itself.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { pumpPackets(ctx, la, lb, faults{}, 1) })
	wg.Go(func() { pumpPackets(ctx, lb, la, faults{}, 2) })
	// B's side is a bare endpoint: its Read never waits.
	var lwq waiter.Queue
	ln, terr := b.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &lwq)
	if terr != nil {
		t.Fatalf("NewEndpoint: %v", terr)
	}
	defer ln.Close()
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
	defer client.Close()
	var server tcpip.Endpoint
	waitFor(t, "the connection accepted", func() bool {
		server, _, terr = ln.Accept(nil)
		return terr == nil
	})
	defer server.Close()
	cancel()
	wg.Wait()
	for la.NumQueued() > 0 || lb.NumQueued() > 0 { // ACKs left over: carry them
		if pb := la.Read(); pb != nil {
			inject(lb, bytes.Clone(pb.ToView().AsSlice()))
			pb.DecRef()
		}
		if pb := lb.Read(); pb != nil {
			inject(la, bytes.Clone(pb.ToView().AsSlice()))
			pb.DecRef()
		}
	}

	for i := range 200 {
		msg := []byte{byte(i), 'x', 'y'}
		if _, err := client.Write(msg); err != nil {
			t.Fatalf("Write: %v", err)
		}
		pb := la.ReadContext(context.Background())
		inject(lb, bytes.Clone(pb.ToView().AsSlice()))
		pb.DecRef()
		// Readable now, or it was not processed inline.
		var got bytes.Buffer
		if _, terr := server.Read(&got, tcpip.ReadOptions{}); terr != nil || !bytes.Equal(got.Bytes(), msg) {
			t.Fatalf("segment %d: Read right after InjectInbound = %q, %v; want %q: the segment was not processed inline", i, got.Bytes(), terr, msg)
		}
		for lb.NumQueued() > 0 { // B's ACK
			pb := lb.Read()
			inject(la, bytes.Clone(pb.ToView().AsSlice()))
			pb.DecRef()
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
