package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Server is the predecessor's socket: a successor connects to it to take
// over.
type Server struct {
	ln   *net.UnixListener
	path string
	fi   os.FileInfo // the socket's, to remove it only while it is still this one
	me   Hello
}

// Listen opens the socket of the kubetun serving tun in dir, creating dir
// (0700) if needed. The socket replaces an earlier one atomically
// (rename(2)): a successor's replaces its predecessor's, which no new
// successor can then reach.
func Listen(dir, tun string, me Hello) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("handover: state directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("handover: state directory: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("handover: state directory %s is mode %v and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
		}
	}
	path := SocketPath(dir, tun)
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handover: listening on %s: %w", tmp, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("handover: socket %s: %w", path, err)
	}
	sfi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("handover: socket %s: %w", path, err)
	}
	return &Server{ln: ln, path: path, fi: sfi, me: me}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Accept waits for a successor and its hello. A successor that speaks
// another protocol is refused (it reports both versions) and Accept goes
// on waiting; so is a peer that is neither root nor this process's user.
// It fails once the Server is closed.
func (s *Server) Accept() (*Successor, error) {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return nil, err
		}
		succ, err := s.greet(c)
		if err != nil {
			c.Close()
			continue
		}
		return succ, nil
	}
}

func (s *Server) greet(c *net.UnixConn) (*Successor, error) {
	if err := peerAllowed(c); err != nil {
		return nil, err
	}
	setBuffers(c)
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	succ := &Successor{conn: conn{c}, me: s.me, serving: make(chan struct{}), done: make(chan struct{})}
	if _, err := succ.recvJSON(msgHello, &succ.hello); err != nil {
		return nil, err
	}
	if succ.hello.Protocol != s.me.Protocol {
		succ.Refuse(fmt.Sprintf("the new kubetun (pid %d, version %s) speaks handover protocol %d", succ.hello.PID, succ.hello.Version, succ.hello.Protocol))
		return nil, errors.New("handover protocol mismatch")
	}
	c.SetDeadline(time.Time{})
	return succ, nil
}

// Close stops accepting, and removes the socket unless a successor's has
// replaced it.
func (s *Server) Close() {
	s.ln.Close()
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
		os.Remove(s.path)
	}
}

// Successor is the predecessor's end of a handover: the new kubetun taking
// over.
type Successor struct {
	conn
	me, hello Hello
	serving   chan struct{} // closed when the successor said it serves
	done      chan struct{} // closed when the connection ended
	wg        sync.WaitGroup
}

// Hello is the successor's.
func (s *Successor) Hello() Hello { return s.hello }

// Refuse tells the successor why it cannot take over, and ends the
// conversation.
func (s *Successor) Refuse(reason string) {
	s.c.SetDeadline(time.Now().Add(time.Second))
	s.sendJSON(msgRefuse, refusal{Hello: s.me, Reason: reason})
	s.c.Close()
}

// Offer says hello and passes the descriptors of conns (a TUN's file, a
// listener), each under its name; the successor then prepares. They stay
// this process's too.
func (s *Successor) Offer(names []string, files []syscall.Conn) error {
	s.c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer s.c.SetDeadline(time.Time{})
	if err := s.sendJSON(msgHello, s.me); err != nil {
		return err
	}
	for i := 0; i < len(files); i += filesPerMessage {
		j := min(i+filesPerMessage, len(files))
		if err := s.sendJSON(msgFiles, filesMsg{Names: names[i:j]}, files[i:j]...); err != nil {
			return fmt.Errorf("passing descriptors: %w", err)
		}
	}
	return s.send(msgFilesEnd, nil)
}

// WaitCommit waits until the successor is ready to read the TUN. An error
// means it failed or went away: nothing changes.
func (s *Successor) WaitCommit() error {
	_, err := s.recvJSON(msgCommit, nil)
	return err
}

// Release reports what this process holds once it stopped reading the TUN,
// and starts receiving the packets of its flows, which inject gets, until
// the successor goes. Serving is closed once the successor serves, Done
// when it has gone.
func (s *Successor) Release(h handed, inject func(pkt []byte)) error {
	if err := s.sendJSON(msgReleased, h); err != nil {
		return err
	}
	s.wg.Add(1)
	go s.receive(inject)
	return nil
}

func (s *Successor) receive(inject func(pkt []byte)) {
	defer s.wg.Done()
	defer close(s.done)
	buf := make([]byte, maxMessage)
	served := false
	for {
		t, payload, files, err := s.recv(buf)
		closeAll(files)
		if err != nil {
			return
		}
		switch t {
		case msgPacket:
			inject(payload)
		case msgServing:
			if !served {
				served = true
				close(s.serving)
			}
		}
	}
}

// Serving is closed once the successor serves the TUN.
func (s *Successor) Serving() <-chan struct{} { return s.serving }

// Done is closed once the successor has gone.
func (s *Successor) Done() <-chan struct{} { return s.done }

// Forward passes a packet back to the successor without waiting: a
// datagram of a session this process no longer has, for the successor to
// serve. It implements netstack.Forwarder.
func (s *Successor) Forward(pkt []byte) bool { return sendPacket(s.c, pkt) }

// SendStats reports this process's flows left to the successor.
func (s *Successor) SendStats(st Stats) error { return s.sendJSON(msgStats, st) }

// Close ends the conversation and waits for the receiving goroutine.
func (s *Successor) Close() {
	s.c.Close()
	s.wg.Wait()
}
