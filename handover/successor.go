package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/netstack"
)

// Predecessor is the successor's end of a handover: the running kubetun it
// takes over from. Dial finds it, Take hands out its descriptors, Commit
// stops it reading the TUN, Serving lets it drain; from then on Forward
// passes it the packets of its flows until Done.
type Predecessor struct {
	conn
	hello Hello
	files map[string]*os.File // not taken yet

	stats    atomic.Pointer[Stats]
	packets  atomic.Uint64 // passed to it
	bytes    atomic.Uint64
	done     chan struct{} // closed when the connection ended: the predecessor exited
	wg       sync.WaitGroup
	closeErr sync.Once
}

var _ netstack.Forwarder = (*Predecessor)(nil)

// Dial connects to the kubetun serving tun, says me, and receives its
// descriptors. It returns nil and no error when no kubetun serves tun
// there: no socket, or one nobody listens on any more (a crashed kubetun
// left it; it is removed). A predecessor that refuses, or speaks another
// handover protocol, is a *RefusedError: nothing was changed.
func Dial(dir, tun string, me Hello) (*Predecessor, error) {
	path := SocketPath(dir, tun)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		os.Remove(path) // stale: its kubetun is gone
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("handover: connecting to %s: %w", path, err)
	}
	p := &Predecessor{conn: conn{c}, files: make(map[string]*os.File), done: make(chan struct{})}
	if err := p.greet(me); err != nil {
		c.Close()
		p.closeFiles()
		return nil, err
	}
	return p, nil
}

// greet exchanges hellos and receives the descriptors.
func (p *Predecessor) greet(me Hello) error {
	if err := peerAllowed(p.c); err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	setBuffers(p.c)
	p.c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer p.c.SetDeadline(time.Time{})
	if err := p.sendJSON(msgHello, me); err != nil {
		return fmt.Errorf("handover: hello: %w", err)
	}
	if _, err := p.recvJSON(msgHello, &p.hello); err != nil {
		return err
	}
	if p.hello.Protocol != me.Protocol {
		return &RefusedError{Predecessor: p.hello, Reason: fmt.Sprintf("this kubetun (version %s) speaks handover protocol %d", me.Version, me.Protocol)}
	}
	buf := make([]byte, maxMessage)
	for {
		t, payload, files, err := p.recv(buf)
		if err != nil {
			return fmt.Errorf("handover: receiving descriptors: %w", err)
		}
		switch t {
		case msgFilesEnd:
			return nil
		case msgFiles:
			var m filesMsg
			if err := json.Unmarshal(payload, &m); err != nil || len(m.Names) != len(files) {
				closeAll(files)
				return fmt.Errorf("handover: %d descriptors for names %q", len(files), m.Names)
			}
			for i, n := range m.Names {
				p.files[n] = files[i]
			}
		default:
			closeAll(files)
			return fmt.Errorf("handover: got message %q while receiving descriptors", t)
		}
	}
}

// Hello is the predecessor's.
func (p *Predecessor) Hello() Hello { return p.hello }

// Take returns the descriptor the predecessor passed under name, which the
// caller owns from now on; nil if there is none.
func (p *Predecessor) Take(name string) *os.File {
	f := p.files[name]
	delete(p.files, name)
	return f
}

// Names lists the descriptors not taken yet.
func (p *Predecessor) Names() []string {
	out := make([]string, 0, len(p.files))
	for n := range p.files {
		out = append(out, n)
	}
	return out
}

// Commit has the predecessor stop reading the TUN, and returns what it
// holds. Read the TUN, then call Serving: if this process fails before
// that, the predecessor reads the TUN again.
func (p *Predecessor) Commit() (netstack.Handed, error) {
	p.closeFiles() // what was not taken stays the predecessor's
	var h netstack.Handed
	p.c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer p.c.SetDeadline(time.Time{})
	if err := p.send(msgCommit, nil); err != nil {
		return h, fmt.Errorf("handover: commit: %w", err)
	}
	_, err := p.recvJSON(msgReleased, &h)
	if err != nil {
		return h, fmt.Errorf("handover: waiting for the predecessor to stop reading the TUN: %w", err)
	}
	return h, nil
}

// Serving tells the predecessor that this process serves the TUN, and
// starts receiving what it sends: datagrams it has no session for, which
// returned gets (the successor serves them), and its stats.
func (p *Predecessor) Serving(returned func(pkt []byte)) error {
	if err := p.send(msgServing, nil); err != nil {
		return fmt.Errorf("handover: serving: %w", err)
	}
	p.wg.Add(1)
	go p.receive(returned)
	return nil
}

func (p *Predecessor) receive(returned func(pkt []byte)) {
	defer p.wg.Done()
	defer close(p.done)
	buf := make([]byte, maxMessage)
	for {
		t, payload, files, err := p.recv(buf)
		closeAll(files)
		if err != nil {
			return
		}
		switch t {
		case msgPacket:
			returned(payload)
		case msgStats:
			var st Stats
			if json.Unmarshal(payload, &st) == nil {
				p.stats.Store(&st)
			}
		}
	}
}

// Forward implements netstack.Forwarder: it passes pkt to the predecessor
// without waiting.
func (p *Predecessor) Forward(pkt []byte) bool {
	if !sendPacket(p.c, pkt) {
		return false
	}
	p.packets.Add(1)
	p.bytes.Add(uint64(len(pkt)))
	return true
}

// Stats returns what the predecessor last reported of itself.
func (p *Predecessor) Stats() Stats {
	if st := p.stats.Load(); st != nil {
		return *st
	}
	return Stats{}
}

// Done is closed when the predecessor has gone (it exited, or crashed).
func (p *Predecessor) Done() <-chan struct{} { return p.done }

// Close ends the conversation and waits for the receiving goroutine.
func (p *Predecessor) Close() {
	p.c.Close()
	p.closeFiles()
	p.wg.Wait()
}

func (p *Predecessor) closeFiles() {
	for n, f := range p.files {
		f.Close()
		delete(p.files, n)
	}
}
