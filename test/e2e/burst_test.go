package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestBurstOneClient: one client opens 3 000 connections at once, to a
// ClusterIP and to a node port, as a connection pool warming up or a load
// test does; every one is established and answered. A burst is not an
// attack: what kubetun cannot set up at once waits (its SYNs dropped and
// retransmitted, or queued in the kernel's accept queue), nothing is
// refused.
func TestBurstOneClient(t *testing.T) {
	b := newTakeoverBed(t)
	b.start(t, "kubetun")
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{
		{"ClusterIP", netip.MustParseAddrPort(testbed.ClusterIP + ":80")},
		{"NodePort", netip.AddrPortFrom(netip.MustParseAddr(b.node), takeoverNodePortHTTP)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 3000
			took, errs := burst(t, b.seed.Client.Namespace, tc.addr, n, 90*time.Second)
			slices.Sort(took)
			for i, err := range errs {
				if i == 5 {
					t.Errorf("... and %d more", len(errs)-5)
					break
				}
				t.Error(err)
			}
			if len(took) > 0 {
				t.Logf("%d connections at once from one client to %s: %d established and answered, %d failed; connect p50 %v, p99 %v, longest %v",
					n, tc.addr, len(took), len(errs), took[len(took)/2].Round(time.Millisecond),
					took[len(took)*99/100].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
			}
		})
	}
}

// burst starts n non-blocking connects from namespace ns to addr at once,
// waits until each is established (within limit), then sends the seed's
// request on each and checks the answer. It returns the connect times of
// those answered, and an error for every other.
func burst(t *testing.T, ns string, addr netip.AddrPort, n int, limit time.Duration) ([]time.Duration, []error) {
	t.Helper()
	var fds []int
	sa := &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	began := time.Now()
	err := testbed.InNamespace(ns, func() error {
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			fds = append(fds, fd)
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				return fmt.Errorf("connect: %w", err)
			}
		}
		return nil
	})
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if err != nil {
		t.Fatalf("starting %d connects: %v", n, err)
	}

	// Wait for each connect to end, as the kernel retransmits SYNs.
	var errs []error
	took := make([]time.Duration, len(fds))
	pending := slices.Clone(fds)
	deadline := began.Add(limit)
	for len(pending) > 0 && time.Now().Before(deadline) {
		pfds := make([]unix.PollFd, len(pending))
		for i, fd := range pending {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		}
		if _, err := unix.Poll(pfds, 100); err != nil && err != unix.EINTR {
			t.Fatalf("poll: %v", err)
		}
		next := pending[:0]
		for i, p := range pfds {
			if p.Revents == 0 {
				next = append(next, pending[i])
				continue
			}
			fd := pending[i]
			idx := slices.Index(fds, fd)
			if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
				errs = append(errs, fmt.Errorf("connection %d: connect: %v", idx, cmpErrno(err, soErr)))
				unix.Close(fd)
				fds[idx] = -1
				continue
			}
			took[idx] = time.Since(began)
		}
		pending = next
	}
	for _, fd := range pending {
		idx := slices.Index(fds, fd)
		errs = append(errs, fmt.Errorf("connection %d: not established within %v", idx, limit))
		unix.Close(fd)
		fds[idx] = -1
	}

	// A request on every established connection, 64 at a time.
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		answered []time.Duration
		next     atomic.Int64
	)
	for range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(fds) {
					return
				}
				if fds[i] < 0 {
					continue
				}
				err := request(fds[i])
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("connection %d: %w", i, err))
				} else {
					answered = append(answered, took[i])
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return answered, errs
}

func cmpErrno(err error, soErr int) error {
	if err != nil {
		return err
	}
	return unix.Errno(soErr)
}

// request sends the seed's request on the connected socket fd and checks
// podserver's answer.
func request(fd int) error {
	dup, err := unix.Dup(fd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), "burst")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if !helloRE.Match(b) {
		return fmt.Errorf("answer is not podserver's: %q", b)
	}
	return nil
}

// TestSYNFloodNodePort floods a node port with SYNs from one source, as
// TestSYNFlood does a ClusterIP, while another client connects: the
// kernel's SYN queue (and its cookies) take the flood, kubetun's node port
// listener sees no connection of it, and the other client's connects are
// answered.
func TestSYNFloodNodePort(t *testing.T) {
	b := newTakeoverBed(t)
	b.start(t, "kubetun")
	client2, err := b.AddHost("client2", 4)
	if err != nil {
		t.Fatalf("AddHost: %v", err)
	}
	node := netip.MustParseAddr(b.node)
	const floodFor = 5 * time.Second
	flooder := netip.MustParseAddr("10.0.3.99")
	floodDone := make(chan error, 1)
	var sent atomic.Int64
	go func() {
		floodDone <- testbed.InNamespace(b.seed.Client.Namespace, func() error {
			return synFlood(flooder, netip.AddrPortFrom(node, takeoverNodePortHTTP), floodFor, &sent)
		})
	}()
	time.Sleep(500 * time.Millisecond)
	// client2 reaches the node port on the node's address of the
	// flooder's link, through its own.
	addr := netip.AddrPortFrom(node, takeoverNodePortHTTP).String()
	var took []time.Duration
	for i := range 100 {
		_, d, connErr, err := servedRequest(client2.Namespace, addr, 5*time.Second)
		if err := cmpErr(connErr, err, addr); err != nil {
			t.Fatalf("connection %d of client2 during the flood: %v", i, err)
		}
		took = append(took, d)
	}
	if err := <-floodDone; err != nil {
		t.Fatalf("flood: %v", err)
	}
	slices.Sort(took)
	t.Logf("flood: %d SYNs in %v from %s to node port %d; client2: 100 requests, connect p50 %v p99 %v max %v",
		sent.Load(), floodFor, flooder, takeoverNodePortHTTP, took[49], took[98], took[99])
	if took[99] > 3*time.Second {
		t.Errorf("client2's slowest connect took %v during the flood, want well under 3s", took[99])
	}
}
