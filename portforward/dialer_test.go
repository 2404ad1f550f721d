package portforward

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	streaming "k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/streaming/pkg/httpstream"
)

// The tests run kubectl's protocol against the kubelet's own port-forward
// server (k8s.io/cri-streaming), standing in for the API server, which only
// relays it: TLS on loopback, no root.

// podMap is a Pods of fixed entries.
type podMap map[netip.Addr][2]string

func (m podMap) PodByIP(ip netip.Addr) (string, string, bool) {
	p, ok := m[ip]
	return p[0], p[1], ok
}

// loopbackForwarder forwards every pod's port to 127.0.0.1:port, as a
// container runtime forwards to localhost in the pod's network namespace,
// passing half-closes on.
type loopbackForwarder struct{}

func (loopbackForwarder) PortForward(ctx context.Context, name, uid string, port int32, stream io.ReadWriteCloser) error {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(c, stream)
		c.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(stream, c)
	stream.Close() // half-close: the client reads EOF
	<-done
	return nil
}

// kubeletServer serves pods/portforward for every pod; it counts the
// connections (upgrades) it served.
type kubeletServer struct {
	*httptest.Server
	upgrades atomic.Int32

	mu    sync.Mutex // guards conns
	conns []net.Conn // every connection accepted, for cut
}

// trackingListener records the connections it accepts: httptest forgets
// hijacked ones, and an upgraded connection is one.
type trackingListener struct {
	net.Listener
	k *kubeletServer
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.k.mu.Lock()
		l.k.conns = append(l.k.conns, c)
		l.k.mu.Unlock()
	}
	return c, err
}

// cut closes every connection the server accepted.
func (k *kubeletServer) cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func newKubeletServer(t testing.TB) *kubeletServer {
	t.Helper()
	return newIdleKubeletServer(t, 0)
}

// newIdleKubeletServer is newKubeletServer closing a connection that
// carried no frame for idle, as the kubelet's
// --streaming-connection-idle-timeout does; zero never does.
func newIdleKubeletServer(t testing.TB, idle time.Duration) *kubeletServer {
	t.Helper()
	k := &kubeletServer{}
	k.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		if len(parts) != 7 || parts[6] != "portforward" {
			http.NotFound(w, r)
			return
		}
		opts, err := streaming.NewV4Options(r)
		if err != nil {
			// The WebSocket tunnel is the API server's (KEP-4006); a kubelet
			// speaks SPDY, or WebSocket with ports in the query.
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		k.upgrades.Add(1)
		streaming.ServePortForward(w, r, loopbackForwarder{}, parts[5], "", opts, idle, 30*time.Second, streaming.SupportedProtocols)
	}))
	k.Listener = trackingListener{k.Listener, k}
	k.StartTLS()
	t.Cleanup(func() { k.cut(); k.Close() })
	return k
}

func (k *kubeletServer) config() *rest.Config {
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.Certificate().Raw})
	return &rest.Config{Host: k.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}

var podIP = netip.MustParseAddr("10.0.1.2")

// newTestDialer returns a Dialer for k where podIP is pod default/pod1,
// closed when t ends.
func newTestDialer(t *testing.T, k *kubeletServer, opts Options) *Dialer {
	t.Helper()
	opts.Logf = t.Logf
	d, err := New(k.config(), podMap{podIP: {"default", "pod1"}}, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// echoServer answers each connection with "echo: " and what it read until
// EOF, then closes.
func echoServer(t testing.TB) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.WriteString(c, "echo: ")
				io.Copy(c, c)
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return port
}

func addr(port uint16) string { return netip.AddrPortFrom(podIP, port).String() }

// roundTrip sends msg, half-closes, and reads the answer to EOF.
func roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, fmt.Errorf("write: %w", werr)
	}
	return got, err
}

func TestDialEcho(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	port := echoServer(t)
	for i := range 3 {
		c, err := d.DialContext(t.Context(), "tcp", addr(port))
		if err != nil {
			t.Fatalf("DialContext(%s) #%d: %v", addr(port), i, err)
		}
		got, err := roundTrip(c, []byte("hello"))
		c.Close()
		if err != nil || string(got) != "echo: hello" {
			t.Fatalf("round trip #%d = %q, %v, want %q", i, got, err, "echo: hello")
		}
	}
	if n := k.upgrades.Load(); n != 1 {
		t.Errorf("the kubelet served %d connections for 3 flows to one pod, want 1", n)
	}
}

func TestDialBulk(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	c, err := d.DialContext(t.Context(), "tcp", addr(echoServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 4<<20)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	got, err := roundTrip(c, msg)
	if err != nil || !bytes.Equal(got, append([]byte("echo: "), msg...)) {
		t.Fatalf("4 MiB round trip: %d bytes, %v; want the 4 MiB back byte for byte", len(got), err)
	}
}

func TestDialParallel(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	port := echoServer(t)
	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := d.DialContext(t.Context(), "tcp", addr(port))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("flow %d", i)
			got, err := roundTrip(c, []byte(msg))
			if err != nil || string(got) != "echo: "+msg {
				errs <- fmt.Errorf("flow %d: %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := k.upgrades.Load(); got != 1 {
		t.Errorf("the kubelet served %d connections for %d parallel flows, want 1", got, n)
	}
}

func TestDialRefused(t *testing.T) {
	k := newKubeletServer(t)
	// A generous margin: the refusal must beat it on a loaded machine.
	d := newTestDialer(t, k, Options{Confirm: 5 * time.Second})
	began := time.Now()
	c, err := d.DialContext(t.Context(), "tcp", addr(closedPort(t)))
	took := time.Since(began)
	var refused *RefusedError
	if !errors.As(err, &refused) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("DialContext to a closed port = %v, want a RefusedError", err)
	}
	t.Logf("refused in %v: %v", took.Round(time.Millisecond), err)
	if took > 4*time.Second {
		t.Errorf("refusal took %v; the kubelet's message did not end the wait", took)
	}
	// The connection survives a refused flow.
	c, err = d.DialContext(t.Context(), "tcp", addr(echoServer(t)))
	if err != nil {
		t.Fatalf("DialContext after a refusal: %v", err)
	}
	c.Close()
	if n := k.upgrades.Load(); n != 1 {
		t.Errorf("the kubelet served %d connections, want 1", n)
	}
}

func TestDialErrors(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	for _, tc := range []struct{ network, address, want string }{
		{"udp", addr(53), "TCP only"},
		{"tcp", "10.9.9.9:80", "no pod has IP 10.9.9.9"},
		{"tcp", "nonsense", "nonsense"},
	} {
		if c, err := d.DialContext(t.Context(), tc.network, tc.address); err == nil || !strings.Contains(err.Error(), tc.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("DialContext(%s, %s) = %v, want an error containing %q", tc.network, tc.address, err, tc.want)
		}
	}
}

// TestRedialAfterCut: when the pod's connection breaks, the next flow makes
// a new one.
func TestRedialAfterCut(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	port := echoServer(t)
	for i := range 3 {
		c, err := d.DialContext(t.Context(), "tcp", addr(port))
		if err != nil {
			t.Fatalf("DialContext after %d cuts: %v", i, err)
		}
		got, err := roundTrip(c, []byte("x"))
		c.Close()
		if err != nil || string(got) != "echo: x" {
			t.Fatalf("round trip after %d cuts = %q, %v", i, got, err)
		}
		k.cut()
	}
	if n := k.upgrades.Load(); n != 3 {
		t.Errorf("the kubelet served %d connections over 3 cuts, want 3", n)
	}
}

// TestCutFlowIsNoCleanEnd: a flow whose connection is cut under it reads
// ErrConnectionLost, not EOF, so that its client is reset rather than told
// the answer was whole.
func TestCutFlowIsNoCleanEnd(t *testing.T) {
	k := newKubeletServer(t)
	d := newTestDialer(t, k, Options{})
	c, err := d.DialContext(t.Context(), "tcp", addr(echoServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, len("echo: "))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the greeting: %v", err)
	}
	k.cut()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrConnectionLost) {
			t.Fatalf("Read after the cut = %v, want ErrConnectionLost (not EOF)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10 s after the connection was cut")
	}
}

// silentConn is a pod connection that never answers a stream open.
type silentConn struct {
	closed chan bool
	once   sync.Once
}

func (s *silentConn) CreateStream(http.Header) (httpstream.Stream, error) {
	<-s.closed
	return nil, errors.New("connection closed")
}
func (s *silentConn) Close() error                       { s.once.Do(func() { close(s.closed) }); return nil }
func (s *silentConn) CloseChan() <-chan bool             { return s.closed }
func (s *silentConn) SetIdleTimeout(time.Duration)       {}
func (s *silentConn) RemoveStreams(...httpstream.Stream) {}

// TestSilentConnection: a connection that stops answering is closed after
// OpenTimeout, and a flow that found it open gets a second try on a new one.
func TestSilentConnection(t *testing.T) {
	var connects atomic.Int32
	d := newDialer(func(_ context.Context, namespace, name string) (httpstream.Connection, error) {
		connects.Add(1)
		return &silentConn{closed: make(chan bool)}, nil
	}, podMap{podIP: {"default", "pod1"}}, Options{OpenTimeout: 100 * time.Millisecond, Logf: t.Logf})
	defer d.Close()
	if _, err := d.DialContext(t.Context(), "tcp", addr(80)); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("DialContext on a silent connection = %v, want no answer", err)
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("%d connections made for a flow to a new pod, want 1", n)
	}
	// The next flow finds no connection (the silent one was closed) and makes one.
	if _, err := d.DialContext(t.Context(), "tcp", addr(80)); err == nil {
		t.Fatal("DialContext on a silent connection succeeded")
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("%d connections made after the silent one was dropped, want 2", n)
	}
}

// TestCloseWaits: Close ends the connections and every goroutine.
func TestCloseWaits(t *testing.T) {
	k := newKubeletServer(t)
	before := runtime.NumGoroutine()
	d, err := New(k.config(), podMap{podIP: {"default", "pod1"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.DialContext(t.Context(), "tcp", addr(echoServer(t)))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	read := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		read <- err
	}()
	select {
	case <-read:
	case <-time.After(5 * time.Second):
		t.Errorf("Read on a flow still blocks 5 s after Close")
	}
	c.Close()
	if _, err := d.DialContext(t.Context(), "tcp", addr(80)); !errors.Is(err, ErrClosed) {
		t.Errorf("DialContext after Close = %v, want ErrClosed", err)
	}
	k.cut()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestSilentConnectionShortDeadline: a caller whose dial deadline is shorter
// than OpenTimeout (kubetun's proxy dials with a few seconds) still gets the
// second try on a new connection when the one it found open is silent, as
// after a cut on the kubelet's side.
func TestSilentConnectionShortDeadline(t *testing.T) {
	k := newKubeletServer(t)
	real := newTestDialer(t, k, Options{}).connect
	port := echoServer(t)
	var connects atomic.Int32
	d := newDialer(func(ctx context.Context, namespace, name string) (httpstream.Connection, error) {
		if connects.Add(1) == 1 {
			return &silentConn{closed: make(chan bool)}, nil
		}
		return real(ctx, namespace, name)
	}, podMap{podIP: {"default", "pod1"}}, Options{OpenTimeout: time.Minute, Logf: t.Logf})
	defer d.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	_, err := d.DialContext(ctx, "tcp", addr(port))
	cancel()
	if err == nil {
		t.Fatal("DialContext on a new silent connection succeeded")
	}
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr(port))
	if err != nil {
		t.Fatalf("DialContext with a 2 s deadline on a silent connection found open = %v, want a second try on a new one", err)
	}
	defer c.Close()
	if got, err := roundTrip(c, []byte("x")); err != nil || string(got) != "echo: x" {
		t.Fatalf("round trip on the new connection = %q, %v", got, err)
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("%d connections made, want 2", n)
	}
}

// TestCloseDuringStubbornConnect: a connect that ignores its context (as
// client-go's SPDY dialer does while it waits for the API server's answer)
// does not hold up Close, and the connection it makes afterwards is closed.
func TestCloseDuringStubbornConnect(t *testing.T) {
	called, release := make(chan struct{}), make(chan struct{})
	late := &silentConn{closed: make(chan bool)}
	d := newDialer(func(context.Context, string, string) (httpstream.Connection, error) {
		close(called)
		<-release
		return late, nil
	}, podMap{podIP: {"default", "pod1"}}, Options{Logf: t.Logf})
	defer close(release)
	dialed := make(chan error, 1)
	go func() {
		_, err := d.DialContext(context.Background(), "tcp", addr(80))
		dialed <- err
	}()
	<-called
	closed := make(chan struct{})
	go func() { d.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close still waits 2 s for a connect that ignores its context")
	}
	select {
	case err := <-dialed:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("DialContext during Close = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("DialContext still waits 2 s after Close")
	}
	release <- struct{}{}
	select {
	case <-late.closed:
	case <-time.After(2 * time.Second):
		t.Error("the connection made after Close was not closed")
	}
}

// TestConnectTimeout: a connect that gets no answer fails the flows waiting
// for it after ConnectTimeout, however long their own contexts, and the
// next flow to the pod connects anew.
func TestConnectTimeout(t *testing.T) {
	var connects atomic.Int32
	d := newDialer(func(ctx context.Context, _, _ string) (httpstream.Connection, error) {
		connects.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}, podMap{podIP: {"default", "pod1"}}, Options{ConnectTimeout: 100 * time.Millisecond, Logf: t.Logf})
	defer d.Close()
	for i := range 2 {
		began := time.Now()
		_, err := d.DialContext(t.Context(), "tcp", addr(80))
		if err == nil || !strings.Contains(err.Error(), "no answer within 100ms") {
			t.Errorf("DialContext %d = %v, want no answer within 100ms", i, err)
		}
		if took := time.Since(began); took > 2*time.Second {
			t.Errorf("DialContext %d took %v, want about 100ms", i, took)
		}
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("%d connects for two flows to a pod whose connect timed out, want 2", n)
	}
}

// TestCloseSilentAPIServer runs the real dialers against loopback servers
// that never answer: one that accepts TCP and says nothing (not even TLS),
// and one that completes TLS but never answers the upgrade. A flow fails
// within its context, Close returns at once, and the connects end too: the
// first when Close cancels their context, the second at ConnectTimeout.
func TestCloseSilentAPIServer(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tls), func(t *testing.T) {
			var host string
			hold := make(chan struct{})
			if tls {
				srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-hold:
					case <-r.Context().Done():
					}
				}))
				srv.StartTLS()
				defer srv.Close()
				defer close(hold)
				host = srv.URL
			} else {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				var conns []net.Conn
				var mu sync.Mutex
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						mu.Lock()
						conns = append(conns, c)
						mu.Unlock()
					}
				}()
				defer func() {
					l.Close()
					mu.Lock()
					for _, c := range conns {
						c.Close()
					}
					mu.Unlock()
				}()
				host = "https://" + l.Addr().String()
			}
			before := runtime.NumGoroutine()
			d, err := New(&rest.Config{Host: host, TLSClientConfig: rest.TLSClientConfig{Insecure: true}},
				podMap{podIP: {"default", "pod1"}}, Options{ConnectTimeout: time.Second, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			_, err = d.DialContext(ctx, "tcp", addr(80))
			cancel()
			if err == nil {
				t.Fatal("DialContext through a silent API server succeeded")
			}
			began := time.Now()
			d.Close()
			if took := time.Since(began); took > time.Second {
				t.Errorf("Close took %v with a connect to a silent API server under way", took)
			}
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > before+2 {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines 5 s after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}
