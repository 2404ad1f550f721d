package handover

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/netstack"
)

func hello(proto int) Hello { return Hello{Protocol: proto, Version: "test", PID: os.Getpid()} }

// TestHandover walks the whole conversation: descriptors passed and
// usable, the flows released, packets both ways, the end seen by both.
func TestHandover(t *testing.T) {
	dir := t.TempDir()
	srv, err := Listen(dir, "kt0", hello(Protocol))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	want := netstack.Handed{TCPSetups: []netstack.FlowID{{Src: netip.MustParseAddrPort("10.0.3.2:40000"), Dst: netip.MustParseAddrPort("10.3.241.152:80")}}}
	injected := make(chan []byte, 1)
	type result struct {
		succ *Successor
		err  error
	}
	res := make(chan result, 1)
	go func() {
		succ, err := srv.Accept()
		if err == nil {
			err = succ.Offer([]string{"pipe"}, []syscall.Conn{w})
		}
		if err == nil {
			err = succ.WaitCommit()
		}
		if err == nil {
			err = succ.Release(want, func(p []byte) { injected <- bytes.Clone(p) })
		}
		res <- result{succ, err}
	}()

	pred, err := Dial(dir, "kt0", hello(Protocol))
	if err != nil || pred == nil {
		t.Fatalf("Dial = %v, %v", pred, err)
	}
	defer pred.Close()
	f := pred.Take("pipe")
	if f == nil {
		t.Fatalf("Take(pipe) = nil; names %q", pred.Names())
	}
	if _, err := f.Write([]byte("through the passed descriptor")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b := make([]byte, len("through the passed descriptor"))
	if _, err := io.ReadFull(r, b); err != nil || string(b) != "through the passed descriptor" {
		t.Errorf("read %q, %v through the pipe", b, err)
	}

	got, err := pred.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.TCPSetups) != 1 || got.TCPSetups[0] != want.TCPSetups[0] {
		t.Errorf("Commit() = %+v, want %+v", got, want)
	}
	rs := <-res
	if rs.err != nil {
		t.Fatal(rs.err)
	}
	succ := rs.succ
	defer succ.Close()
	returned := make(chan []byte, 1)
	if err := pred.Serving(func(p []byte) { returned <- bytes.Clone(p) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-succ.Serving():
	case <-time.After(5 * time.Second):
		t.Fatal("the predecessor never heard serving")
	}

	big := bytes.Repeat([]byte{0x45}, 65535)
	if !pred.Forward(big) {
		t.Fatal("Forward(64 KiB) = false")
	}
	if p := <-injected; !bytes.Equal(p, big) {
		t.Errorf("injected %d bytes, want %d", len(p), len(big))
	}
	if !succ.Forward([]byte("back")) {
		t.Fatal("Successor.Forward = false")
	}
	if p := <-returned; string(p) != "back" {
		t.Errorf("returned %q", p)
	}
	if err := succ.SendStats(Stats{TCPFlows: 3}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pred.Stats().TCPFlows != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if pred.Stats().TCPFlows != 3 {
		t.Errorf("Stats() = %+v", pred.Stats())
	}

	succ.Close()
	select {
	case <-pred.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the successor never saw the predecessor go")
	}
}

// TestProtocolMismatch: both versions named, nothing passed, and the
// predecessor goes on accepting.
func TestProtocolMismatch(t *testing.T) {
	dir := t.TempDir()
	srv, err := Listen(dir, "kt0", hello(Protocol))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	accepted := make(chan *Successor, 1)
	go func() {
		s, err := srv.Accept()
		if err == nil {
			accepted <- s
		}
	}()
	_, err = Dial(dir, "kt0", hello(Protocol+1))
	var ref *RefusedError
	if !errors.As(err, &ref) {
		t.Fatalf("Dial with protocol %d = %v, want a RefusedError", Protocol+1, err)
	}
	t.Logf("refused: %v", err)
	if ref.Predecessor.Protocol != Protocol {
		t.Errorf("refusal names protocol %d, want %d", ref.Predecessor.Protocol, Protocol)
	}
	// The same server still takes a successor of its protocol.
	go Dial(dir, "kt0", hello(Protocol))
	select {
	case s := <-accepted:
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("no successor accepted after a refusal")
	}
}

// TestDialNothing: no socket, or a stale one, is no predecessor.
func TestDialNothing(t *testing.T) {
	dir := t.TempDir()
	if p, err := Dial(dir, "kt0", hello(Protocol)); p != nil || err != nil {
		t.Fatalf("Dial with no socket = %v, %v", p, err)
	}
	srv, err := Listen(dir, "kt0", hello(Protocol))
	if err != nil {
		t.Fatal(err)
	}
	srv.ln.Close() // as a crash leaves it: the file stays, nobody listens
	if p, err := Dial(dir, "kt0", hello(Protocol)); p != nil || err != nil {
		t.Fatalf("Dial with a stale socket = %v, %v", p, err)
	}
	if _, err := os.Stat(SocketPath(dir, "kt0")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale socket left: %v", err)
	}
}

// TestCommitFailure: a successor that goes before serving leaves the
// predecessor's Done closed and Serving open: it takes back the TUN.
func TestSuccessorGoesBeforeServing(t *testing.T) {
	dir := t.TempDir()
	srv, err := Listen(dir, "kt0", hello(Protocol))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	res := make(chan *Successor, 1)
	go func() {
		s, err := srv.Accept()
		if err == nil && s.Offer(nil, nil) == nil && s.WaitCommit() == nil && s.Release(netstack.Handed{}, func([]byte) {}) == nil {
			res <- s
		}
	}()
	pred, err := Dial(dir, "kt0", hello(Protocol))
	if err != nil || pred == nil {
		t.Fatal(err)
	}
	if _, err := pred.Commit(); err != nil {
		t.Fatal(err)
	}
	succ := <-res
	defer succ.Close()
	pred.Close() // dies before serving
	select {
	case <-succ.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("predecessor did not see the successor go")
	}
	select {
	case <-succ.Serving():
		t.Fatal("Serving closed though the successor never served")
	default:
	}
}
