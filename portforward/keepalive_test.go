package portforward

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/streaming/pkg/httpstream"
)

// TestFastAccept: the first flow to a port waits for the pod's answer;
// once the port accepted, later flows return before their streams open,
// and work as any other.
func TestFastAccept(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	port := echoServer(t)
	for i := range 3 {
		c, err := d.DialContext(t.Context(), "tcp", addr(port))
		if err != nil {
			t.Fatalf("DialContext #%d: %v", i, err)
		}
		_, later := c.(*laterConn)
		if later != (i > 0) {
			t.Errorf("flow #%d returned before its streams opened: %v, want %v", i, later, i > 0)
		}
		got, err := roundTrip(c, []byte("hi"))
		c.Close()
		if err != nil || string(got) != "echo: hi" {
			t.Fatalf("round trip #%d = %q, %v", i, got, err)
		}
	}
	if n := k.upgrades.Load(); n != 1 {
		t.Errorf("the kubelet served %d connections, want 1", n)
	}
}

// TestFastAcceptRefusedAfterAll: a port that accepted and then closed
// refuses the next flow through its Read (a reset for a proxied client,
// not a clean end), and is forgotten: the flow after that is refused by
// DialContext itself, before a handshake would complete.
func TestFastAcceptRefusedAfterAll(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write bool // the client speaks first
	}{{"client waits", false}, {"client speaks first", true}} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKubeletServer(t)
			d := newTestDialer(t, k, Options{Confirm: 5 * time.Second})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := uint16(l.Addr().(*net.TCPAddr).Port)
			go func() {
				if c, err := l.Accept(); err == nil {
					c.Write([]byte("x"))
					c.Close()
				}
			}()
			c, err := d.DialContext(t.Context(), "tcp", addr(port))
			if err != nil {
				t.Fatalf("first DialContext: %v", err)
			}
			c.Close()
			l.Close()

			c, err = d.DialContext(t.Context(), "tcp", addr(port))
			if err != nil {
				t.Fatalf("DialContext to a port that accepted before = %v, want a connection at once", err)
			}
			if _, ok := c.(*laterConn); !ok {
				t.Errorf("DialContext to a port that accepted before returned a %T, want a *laterConn", c)
			}
			if tc.write {
				c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			}
			_, err = c.Read(make([]byte, 1))
			c.Close()
			var refused *RefusedError
			if !errors.As(err, &refused) {
				t.Fatalf("Read on a flow the pod refused = %v, want a RefusedError", err)
			}
			c, err = d.DialContext(t.Context(), "tcp", addr(port))
			if !errors.As(err, &refused) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("DialContext after a refusal = %v, want a RefusedError", err)
			}
		})
	}
}

// TestPingsKeepIdleConnection: a connection idle for longer than the
// kubelet's idle timeout stays up when pinged, and the next flow uses it.
func TestPingsKeepIdleConnection(t *testing.T) {
	const idle = 500 * time.Millisecond
	for _, tc := range []struct {
		name     string
		interval time.Duration
		kept     bool // one connection served both flows
	}{
		{"pinged", idle / 5, true},
		{"not pinged", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newIdleKubeletServer(t, idle)
			d := newTestDialer(t, k, Options{PingInterval: tc.interval})
			port := echoServer(t)
			for i := range 2 {
				c, err := d.DialContext(t.Context(), "tcp", addr(port))
				if err != nil {
					t.Fatalf("DialContext #%d: %v", i, err)
				}
				got, err := roundTrip(c, []byte("x"))
				c.Close()
				if err != nil || string(got) != "echo: x" {
					t.Fatalf("round trip #%d = %q, %v", i, got, err)
				}
				time.Sleep(3 * idle)
			}
			// Without pings the kubelet closes the idle connection, which
			// is made again ahead of need.
			if n := k.upgrades.Load(); (n == 1) != tc.kept {
				t.Errorf("the kubelet served %d connections over two flows %v apart; want one kept: %v", n, 3*idle, tc.kept)
			}
			if tc.kept {
				st := d.Status()
				if len(st.Conns) != 1 || st.Conns[0].PingRTT <= 0 || st.Conns[0].Transport != TransportSPDY {
					t.Errorf("Status = %+v, want one SPDY connection with a ping round trip", st)
				}
			}
		})
	}
}

// hangingPings is a pod connection whose pings go unanswered once hang is
// set.
type hangingPings struct {
	*pingConn
	hang *atomic.Bool
}

func (h hangingPings) Ping(timeout time.Duration) (time.Duration, error) {
	if h.hang.Load() {
		time.Sleep(timeout)
		return 0, errPingTimeout
	}
	return h.pingConn.Ping(timeout)
}

// TestUnansweredPingReplaces: a connection whose ping goes unanswered is
// closed, its flows end with ErrConnectionLost, and a new one is made
// before any flow asks, which the next flow uses.
func TestUnansweredPingReplaces(t *testing.T) {
	k := newKubeletServer(t)
	real := newTestDialer(t, k, Options{}).connect
	var hang atomic.Bool
	var connects atomic.Int32
	d := newDialer(func(ctx context.Context, ns, name string) (httpstream.Connection, error) {
		connects.Add(1)
		c, err := real(ctx, ns, name)
		if err != nil {
			return nil, err
		}
		return hangingPings{c.(*pingConn), &hang}, nil
	}, podMap{podIP: {"default", "pod1"}}, Options{PingInterval: 50 * time.Millisecond, PingTimeout: 100 * time.Millisecond, Logf: t.Logf})
	defer d.Close()
	port := echoServer(t)
	c, err := d.DialContext(t.Context(), "tcp", addr(port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, len("echo: "))); err != nil {
		t.Fatal(err)
	}
	hang.Store(true)
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	select {
	case err := <-read:
		if !errors.Is(err, ErrConnectionLost) {
			t.Errorf("Read on a flow whose connection's ping went unanswered = %v, want ErrConnectionLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a flow still reads 10 s after its connection's ping went unanswered")
	}
	hang.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for connects.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := connects.Load(); n < 2 {
		t.Fatalf("%d connections made, want a second one made ahead of need", n)
	}
	st := d.Status()
	if st.LastReconnect == nil || !strings.Contains(st.LastReconnect.Cause, "ping") {
		t.Errorf("Status().LastReconnect = %+v, want one caused by the ping", st.LastReconnect)
	}
	c2, err := d.DialContext(t.Context(), "tcp", addr(port))
	if err != nil {
		t.Fatalf("DialContext after the replacement: %v", err)
	}
	got, err := roundTrip(c2, []byte("y"))
	c2.Close()
	if err != nil || string(got) != "echo: y" {
		t.Fatalf("round trip on the new connection = %q, %v", got, err)
	}
}

// TestCheckAndReset: Check replaces a connection whose ping goes
// unanswered and keeps one that answers; Reset replaces every one, resetting
// its flows, and makes it again ahead of need.
func TestCheckAndReset(t *testing.T) {
	k := newKubeletServer(t)
	real := newTestDialer(t, k, Options{}).connect
	var hang atomic.Bool
	var connects atomic.Int32
	d := newDialer(func(ctx context.Context, ns, name string) (httpstream.Connection, error) {
		connects.Add(1)
		c, err := real(ctx, ns, name)
		if err != nil {
			return nil, err
		}
		return hangingPings{c.(*pingConn), &hang}, nil
	}, podMap{podIP: {"default", "pod1"}}, Options{PingInterval: -1, PingTimeout: 100 * time.Millisecond, Logf: t.Logf})
	defer d.Close()
	port := echoServer(t)
	waitConnects := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for connects.Load() < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := connects.Load(); got != n {
			t.Fatalf("%d connections made, want %d", got, n)
		}
	}
	flow := func() net.Conn {
		t.Helper()
		c, err := d.DialContext(t.Context(), "tcp", addr(port))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, len("echo: "))); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := flow()
	d.Check() // answered: kept
	time.Sleep(300 * time.Millisecond)
	waitConnects(1)

	hang.Store(true)
	d.Check()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("Read after Check found the connection dead = %v, want ErrConnectionLost", err)
	}
	c.Close()
	hang.Store(false)
	waitConnects(2)

	c = flow()
	d.Reset("test")
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("Read after Reset = %v, want ErrConnectionLost", err)
	}
	c.Close()
	waitConnects(3)
	if st := d.Status(); st.LastReconnect == nil || st.LastReconnect.Cause != "test" {
		t.Errorf("Status().LastReconnect = %+v, want cause test", st.LastReconnect)
	}
	c = flow()
	c.Close()
}

// BenchmarkNewFlow is one new flow at a time to a port that accepted
// before, as a client that speaks first makes them (an HTTP request and its
// answer), against the kubelet's own port-forward server on loopback.
func BenchmarkNewFlow(b *testing.B) {
	k := newKubeletServer(b)
	d, err := New(k.config(), podMap{podIP: {"default", "pod1"}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	port := answerServer(b)
	for b.Loop() {
		c, err := d.DialContext(b.Context(), "tcp", addr(port))
		if err != nil {
			b.Fatal(err)
		}
		if got, err := roundTrip(c, []byte("x")); err != nil || string(got) != "answer" {
			b.Fatalf("round trip = %q, %v", got, err)
		}
		c.Close()
	}
}

// answerServer answers each connection's first bytes with "answer", then
// closes: it never speaks first.
func answerServer(t testing.TB) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := c.Read(make([]byte, 64)); err == nil {
					io.WriteString(c, "answer")
				}
			})
		}
	})
	return uint16(l.Addr().(*net.TCPAddr).Port)
}
