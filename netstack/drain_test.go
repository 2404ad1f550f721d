package netstack

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"
)

// TestDrain: after Drain starts, a new connection is refused while an open
// one goes on; Drain returns true once it ends, and false at its deadline
// while one is still open.
func TestDrain(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	svc := netip.AddrPortFrom(clusterIP, 80)
	c, err := dialService(t, cs, svc)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if ns.Drain(ctx) {
		t.Fatal("Drain = true with a connection open")
	}
	if c2, err := dialService(t, cs, svc); err == nil {
		c2.Close()
		t.Fatal("a new connection during the drain was accepted")
	}
	// The open connection still works.
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo during the drain: %v", err)
	}
	c.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if !ns.Drain(ctx2) {
		t.Fatal("Drain = false after the last connection closed")
	}
}
