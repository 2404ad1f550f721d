package netstack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestHandshakeTimeout: a client that never sends its final ACK gets a RST
// after the handshake timeout, not two minutes of SYN-ACKs; its pod
// connection is closed, and its slot is free again.
func TestHandshakeTimeout(t *testing.T) {
	d := new(fakeDialer)
	podSaw := make(chan error, 1)
	startPod(t, d, pod1, func(c net.Conn) {
		_, err := c.Read(make([]byte, 1))
		podSaw <- err
	})
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	inject(link, tcpPacket(client, netip.AddrPortFrom(clusterIP, 80), 1000, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("reply to SYN: flags %v, want SYN|ACK", seg.Flags())
	}
	if st := ns.Stats(); st.TCPSetups != 1 || st.TCPSetupsMax != 1 {
		t.Errorf("Stats() during the handshake: %d setups, %d from one source; want 1, 1", st.TCPSetups, st.TCPSetupsMax)
	}
	start := time.Now()
	for {
		_, seg := readSegment(t, link) // SYN-ACK retransmissions, then the RST
		if seg.Flags()&header.TCPFlagRst != 0 {
			break
		}
		if time.Since(start) > 4*time.Second {
			t.Fatal("no RST within 4s of a 300ms handshake timeout")
		}
	}
	select {
	case err := <-podSaw:
		if err == nil {
			t.Errorf("pod read a byte; want its connection closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pod connection of a failed handshake is still open after 5s")
	}
	waitFor(t, "the setup slot freed", func() bool {
		st := ns.Stats()
		return st.TCPSetups == 0 && st.TCPAborted == 1
	})
}

// TestRSTCancelsDial: a client that resets its connection while the pod is
// being dialled cancels the dial.
func TestRSTCancelsDial(t *testing.T) {
	d := &blockingDialer{started: make(chan struct{}, 1)}
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500, func(c *Config) {
		c.DialTimeout = time.Minute
	})
	svc := netip.AddrPortFrom(clusterIP, 80)
	inject(link, tcpPacket(client, svc, 1000, 0, header.TCPFlagSyn, nil))
	select {
	case <-d.started:
	case <-time.After(5 * time.Second):
		t.Fatal("no dial within 5s of the SYN")
	}
	inject(link, tcpPacket(client, svc, 1001, 0, header.TCPFlagRst, nil))
	waitFor(t, "the dial cancelled", func() bool {
		st := ns.Stats()
		return st.TCPAborted == 1 && st.TCPSetups == 0
	})
}

// blockingDialer's dials wait until their context ends.
type blockingDialer struct{ started chan struct{} }

func (d *blockingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestFlowCap: past MaxTCPFlows spliced flows, a SYN gets a RST.
func TestFlowCap(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500, func(c *Config) { c.MaxTCPFlows = 1 })
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	defer c.Close()
	waitFor(t, "one flow", func() bool { return ns.Stats().TCPActive == 1 })
	if c2, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80)); err == nil {
		c2.Close()
		t.Fatal("second connection accepted past MaxTCPFlows = 1")
	}
	if st := ns.Stats(); st.TCPLimited != 1 {
		t.Errorf("Stats().TCPLimited = %d, want 1", st.TCPLimited)
	}
}

// TestPodResetResetsClient: a pod that resets its connection mid-stream
// resets the client's too: the client must not read a clean end of stream.
func TestPodResetResetsClient(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, func(c net.Conn) {
		c.Write([]byte("partial"))
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	_, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err == nil || isTimeout(err) {
		t.Fatalf("ReadAll = %q, %v; want a reset", got, err)
	}
	if !strings.Contains(err.Error(), "reset") {
		t.Errorf("ReadAll error %v, want a connection reset", err)
	}
}

// TestPodCleanEndFIN: a pod that ends cleanly still ends the client's
// connection with a FIN, after all its bytes.
func TestPodCleanEndFIN(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, func(c net.Conn) { c.Write([]byte("whole")) })
	_, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(c); err != nil || string(got) != "whole" {
		t.Fatalf("ReadAll = %q, %v; want %q, nil", got, err, "whole")
	}
}

// streamDialer returns connections that half-close but are not
// *net.TCPConn, as a port-forward stream: the splice's generic path.
type streamDialer struct{ d *fakeDialer }

// stream hides the *net.TCPConn behind it.
type stream struct{ halfCloser }

func (d streamDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return stream{c.(halfCloser)}, nil
}

// TestStreamBackend: a backend connection that is not a TCP socket is
// spliced too, half-close and all.
func TestStreamBackend(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	_, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), streamDialer{d}, nil, 1500, nil)
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("ReadAll = %q, %v; want %q", got, err, "ping")
	}
}

// plainDialer returns connections that cannot half-close.
type plainDialer struct{ d *fakeDialer }

func (d plainDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{c}, nil
}

// TestBackendMustHalfClose: a dialer whose connections cannot half-close is
// refused, with a RST to the client and a dial failure counted.
func TestBackendMustHalfClose(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), plainDialer{d}, nil, 1500, nil)
	inject(link, tcpPacket(client, netip.AddrPortFrom(clusterIP, 80), 1000, 0, header.TCPFlagSyn, nil))
	if _, seg := readSegment(t, link); seg.Flags()&header.TCPFlagRst == 0 {
		t.Fatalf("reply to SYN: flags %v, want RST", seg.Flags())
	}
	if st := ns.Stats(); st.DialFailures == 0 || st.TCPUnreachable != 1 {
		t.Errorf("Stats() = %+v, want a dial failure and one unreachable", st)
	}
}

// TestHalfClosedTimeout: a flow whose client shut its write side, and whose
// pod then says nothing, is reset after the half-closed timeout.
func TestHalfClosedTimeout(t *testing.T) {
	d := new(fakeDialer)
	// The pod reads the client's FIN, then stays silent until the test ends.
	silent := make(chan struct{})
	startPod(t, d, pod1, func(c net.Conn) { io.Copy(io.Discard, c); <-silent })
	t.Cleanup(func() { close(silent) }) // runs before startPod's cleanup waits
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500, func(c *Config) {
		c.HalfClosedTimeout = 300 * time.Millisecond
	})
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) || errors.Is(err, io.EOF) {
		t.Fatalf("Read = %v, want a reset once the half-closed flow idled out", err)
	}
	waitFor(t, "the flow gone", func() bool { return ns.Stats().TCPActive == 0 })
}

// TestCloseResetsClients: Close resets every client and the RSTs are on the
// link when it returns.
func TestCloseResetsClients(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, func(c net.Conn) { io.Copy(io.Discard, c) })
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	const n = 5
	var conns []net.Conn
	for range n {
		c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, "every flow", func() bool { return ns.Stats().TCPActive == n })
	ns.Close()
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) || !errors.Is(err, syscall.ECONNRESET) && !strings.Contains(err.Error(), "reset") {
			t.Errorf("connection %d: Read after Close = %v, want a reset", i, err)
		}
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("not %s within 5s", what)
}

// TestStalledClientReset: with a backend that is not a TCP socket (a
// port-forward stream), a client that reads nothing while the pod sends is
// reset after StalledClientTimeout, so that it cannot hold up the
// connection its stream shares with other flows; a TCP backend is left to
// the kernel's flow control, as before.
func TestStalledClientReset(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stream    bool
		wantReset bool
	}{
		{"stream backend", true, true},
		{"TCP backend", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := new(fakeDialer)
			stop := make(chan struct{})
			// The pod sends until its writes block, then waits for the test's end.
			startPod(t, d, pod1, func(c net.Conn) {
				go func() { <-stop; c.Close() }()
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
			t.Cleanup(func() { close(stop) }) // runs before startPod's cleanup waits
			var dialer Dialer = d
			if tc.stream {
				dialer = streamDialer{d}
			}
			ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), dialer, nil, 1500, func(c *Config) {
				c.StalledClientTimeout = 300 * time.Millisecond
			})
			cs := clientStack(t, link)
			c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if !tc.wantReset {
				time.Sleep(time.Second)
				if st := ns.Stats(); st.TCPActive != 1 {
					t.Fatalf("Stats().TCPActive = %d after a second of a client reading nothing, want 1 (no reset)", st.TCPActive)
				}
				return
			}
			waitFor(t, "the stalled flow reset", func() bool { return ns.Stats().TCPActive == 0 })
		})
	}
}

// TestCloseWaitsForTheLinkUnlocked: while Close waits for the link to pass
// the clients' RSTs on, it holds no lock that the packet path or Stats
// (metric scrapes) need; and each client still gets its RST before Close
// returns.
func TestCloseWaitsForTheLinkUnlocked(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, func(c net.Conn) { io.Copy(io.Discard, c) })
	link := channel.New(4*linkRoom, 1500, "")
	ns, err := New(Config{Link: link, Services: seedTable(t, []netip.AddrPort{pod1}), Dialer: d, DialTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		link.Close()
		checkNoLeaks(t)
	})
	svc := netip.AddrPortFrom(clusterIP, 80)
	const iss = 1000
	inject(link, tcpPacket(client, svc, iss, 0, header.TCPFlagSyn, nil))
	_, synack := readSegment(t, link)
	inject(link, tcpPacket(client, svc, iss+1, synack.SequenceNumber()+1, header.TCPFlagAck, nil))
	waitFor(t, "the flow spliced", func() bool { return ns.Stats().TCPActive == 1 })

	// More packets than linkRoom wait for a reader that is not there yet:
	// Close must wait for the link before it returns.
	filler, _ := ipPacket(client.Addr(), clusterIP, header.UDPProtocolNumber, header.UDPMinimumSize)
	for range 2 * linkRoom {
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(filler)})
		var l stack.PacketBufferList
		l.PushBack(pb)
		if n, err := link.WritePackets(l); n != 1 || err != nil {
			t.Fatalf("queueing a packet on the link: %d, %v", n, err)
		}
		pb.DecRef()
	}
	closed := make(chan struct{})
	go func() { ns.Close(); close(closed) }()
	waitFor(t, "Close begun", func() bool { return ns.ctx.Err() != nil })
	stats := make(chan Stats, 1)
	go func() { stats <- ns.Stats() }()
	select {
	case <-stats:
	case <-time.After(drainWait / 2):
		t.Fatalf("Stats blocked for %v while Close waited for the link", drainWait/2)
	}
	select {
	case <-closed:
		t.Fatal("Close returned before the link passed on what was queued")
	default:
	}

	// The link's reader comes: the client's RST is among what it reads, by
	// the time Close returns.
	var rst atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			pb := link.ReadContext(ctx)
			if pb == nil {
				return
			}
			b := pb.ToView().AsSlice()
			if ip := header.IPv4(b); ip.IsValid(len(b)) && ip.TransportProtocol() == header.TCPProtocolNumber {
				seg := header.TCP(ip.Payload())
				if seg.DestinationPort() == client.Port() && seg.Flags()&header.TCPFlagRst != 0 {
					rst.Store(true)
				}
			}
			pb.DecRef()
		}
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5 s of the link being read")
	}
	if link.NumQueued() != 0 {
		t.Errorf("Close returned with %d packets still queued on the link", link.NumQueued())
	}
	waitFor(t, "the client's RST read from the link", rst.Load)
}
