package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// controlPort is a Service port whose pods are the test's own listeners
// (listenIn), for a backend that misbehaves on purpose.
var controlPort = testbed.ServicePort{Name: "control", Port: 8081, TargetPort: "9100", EndpointPort: 9100}

// listenIn listens on addr inside namespace ns and serves each connection
// with serve until the test ends.
func listenIn(t *testing.T, ns, addr string, serve func(*net.TCPConn)) {
	t.Helper()
	var ln net.Listener
	if err := testbed.InNamespace(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); serve(c.(*net.TCPConn)) })
		}
	})
}

// TestPodResetReachesClient: a pod that resets its connection in the middle
// of a download resets the client's too (curl: exit 56, "connection reset"),
// where a clean end of stream would pass a truncated download off as whole.
// A pod that ends cleanly still ends the client's connection with a FIN.
func TestPodResetReachesClient(t *testing.T) {
	c := startCluster(t, append(slices.Clone(testbed.TestPorts), controlPort))
	chunk := bytes.Repeat([]byte("kubetun "), 8<<10) // 64 KiB
	const chunks = 64                                // 4 MiB
	serve := func(reset bool) func(*net.TCPConn) {
		return func(conn *net.TCPConn) {
			for range chunks {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
			if reset {
				conn.SetLinger(0) // close(2) now sends a RST
			}
		}
	}
	for _, tc := range []struct {
		name  string
		reset bool
	}{{"reset", true}, {"clean", false}} {
		t.Run(tc.name, func(t *testing.T) {
			for _, pod := range []*testbed.Host{c.Pod1, c.Pod2} {
				listenIn(t, pod.Namespace, ":9100", serve(tc.reset))
			}
			conn, err := testbed.DialIn(c.Client.Namespace, "tcp", fmt.Sprintf("%s:%d", testbed.ClusterIP, controlPort.Port), 5*time.Second)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := io.Copy(io.Discard, conn)
			switch {
			case tc.reset && !errors.Is(err, syscall.ECONNRESET):
				t.Errorf("download of a pod that reset: %d bytes, then %v; want ECONNRESET", n, err)
			case !tc.reset && (err != nil || n != chunks*int64(len(chunk))):
				t.Errorf("download of a pod that ended cleanly: %d bytes, %v; want %d and EOF", n, err, chunks*len(chunk))
			}
			t.Logf("%d bytes, then %v", n, err)
		})
	}
}

// TestSIGTERMTellsEveryClient: with 20 connections open that never end,
// SIGTERM makes kubetun drain: the connections go on and a new one is
// refused; at --drain-timeout it tells every client (FIN or RST) before its
// TUN goes away, and exits 0; none is left waiting on a connection that no
// longer exists.
func TestSIGTERMTellsEveryClient(t *testing.T) {
	c := startCluster(t, testbed.TestPorts, "--drain-timeout", "1s")
	const n = 20
	var conns []net.Conn
	for i := range n {
		conn, err := testbed.DialIn(c.Client.Namespace, "tcp", testbed.ClusterIP+":7", 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte("x")); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			t.Fatalf("connection %d: echo: %v", i, err)
		}
		conns = append(conns, conn)
	}
	if err := c.Kubetun.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Kubetun.WaitOutput("draining: refusing new connections", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dialFails(t, c.Client.Namespace, testbed.ClusterIP+":7")
	// The open connections still work during the drain.
	for i, conn := range conns {
		if _, err := conn.Write([]byte("y")); err != nil {
			t.Fatalf("connection %d: write during the drain: %v", i, err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			t.Fatalf("connection %d: echo during the drain: %v", i, err)
		}
	}
	if err := c.Kubetun.Wait(10 * time.Second); err != nil {
		t.Fatalf("kubetun after SIGTERM: %v, want exit 0", err)
	}
	if out := c.Kubetun.Output(); !strings.Contains(out, "drain timeout") {
		t.Errorf("kubetun's log does not say the drain timed out:\n%s", out)
	}
	told := 0
	for i, conn := range conns {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := conn.Read(make([]byte, 1))
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			t.Errorf("connection %d: neither FIN nor RST within 5s of kubetun's exit", i)
		case err == nil:
			t.Errorf("connection %d: read a byte after kubetun's exit", i)
		default:
			told++
		}
	}
	t.Logf("%d of %d clients told", told, n)
}

// TestSIGTERMDrains: SIGTERM with 5 connections in the middle of a slow
// transfer (about 2 s each): a new connection is refused at once, the open
// ones finish byte-complete within the drain timeout, and kubetun exits 0
// as soon as they did.
func TestSIGTERMDrains(t *testing.T) {
	c := startCluster(t, testbed.TestPorts, "--drain-timeout", "20s")
	const (
		n      = 5
		chunks = 10
		chunk  = 32 << 10
		pause  = 200 * time.Millisecond // chunks*pause: about 2 s per transfer
	)
	var conns []net.Conn
	for i := range n {
		conn, err := testbed.DialIn(c.Client.Namespace, "tcp", testbed.ClusterIP+":7", 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	// Each connection sends its chunks through the echo port, one every
	// pause, reads back each echo whole, then half-closes and reads to EOF.
	errs := make(chan error, n)
	started := make(chan struct{}, n)
	for i, conn := range conns {
		go func() {
			errs <- func() error {
				conn.SetDeadline(time.Now().Add(30 * time.Second))
				buf := make([]byte, chunk)
				got := make([]byte, chunk)
				for k := range chunks {
					for j := range buf {
						buf[j] = byte(i*chunks + k + j)
					}
					if _, err := conn.Write(buf); err != nil {
						return fmt.Errorf("connection %d: chunk %d: write: %w", i, k, err)
					}
					if _, err := io.ReadFull(conn, got); err != nil {
						return fmt.Errorf("connection %d: chunk %d: read: %w", i, k, err)
					}
					if !bytes.Equal(got, buf) {
						return fmt.Errorf("connection %d: chunk %d: echo differs", i, k)
					}
					if k == 0 {
						started <- struct{}{}
					}
					time.Sleep(pause)
				}
				conn.(interface{ CloseWrite() error }).CloseWrite()
				if rest, err := io.ReadAll(conn); err != nil || len(rest) > 0 {
					return fmt.Errorf("connection %d: after the half-close: %d bytes, %v; want EOF", i, len(rest), err)
				}
				return nil
			}()
		}()
	}
	for range n {
		select {
		case <-started:
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("the transfers did not start")
		}
	}
	if err := c.Kubetun.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Kubetun.WaitOutput("draining: refusing new connections", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dialFails(t, c.Client.Namespace, testbed.ClusterIP+":7")
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := c.Kubetun.Wait(15 * time.Second); err != nil {
		t.Fatalf("kubetun after SIGTERM: %v, want exit 0", err)
	}
	if out := c.Kubetun.Output(); !strings.Contains(out, "drained: every connection finished") {
		t.Errorf("kubetun's log does not say every connection finished:\n%s", out)
	}
}

// TestTUNDeleted: the TUN deleted underneath (ip link del) is noticed at
// once: kubetun logs it and exits non-zero, for its supervisor to restart
// it.
func TestTUNDeleted(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if out, err := c.Run(ctx, c.Node, "ip", "link", "del", testbed.TUN); err != nil {
		t.Fatalf("ip link del %s: %v: %s", testbed.TUN, err, out)
	}
	err := c.Kubetun.Wait(10 * time.Second)
	if !c.Kubetun.Exited() {
		t.Fatalf("kubetun still running 10s after its TUN was deleted: %v", err)
	}
	if code := testbed.ExitCode(err); code <= 0 {
		t.Errorf("kubetun exit code %d (%v), want non-zero", code, err)
	}
	if out := c.Kubetun.Output(); !strings.Contains(out, "TUN device lost") {
		t.Errorf("kubetun's log does not say the TUN was lost:\n%s", out)
	}
}
