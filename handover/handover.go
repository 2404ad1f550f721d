// Package handover lets a new kubetun take over from the one running on the
// same TUN without closing anything: the running one (the predecessor)
// passes its descriptors — the TUN, its listening sockets — to the new one
// (the successor) over a Unix socket, and keeps the flows it holds until
// they end. The successor, from then on the TUN's only reader, passes the
// packets of those flows back to it over the same socket.
//
// This is how Envoy hands over QUIC flows it terminates in userspace on a
// shared UDP socket during a hot restart (envoyproxy/envoy pull requests
// 29585 and 31130): one process reads, and the packets of flows it does not
// own go to the other over a Unix socket.
//
// The conversation, on one SOCK_SEQPACKET connection (one message per
// send, each starting with its type byte):
//
//	successor                      predecessor
//	hello           ─────────▶
//	                ◀─────────     hello, or refusal (and the connection ends)
//	                ◀─────────     files ... (descriptors, SCM_RIGHTS), files done
//	(prepares: source synced, table built, routes checked)
//	commit          ─────────▶     stops reading the TUN; lists its flows
//	                ◀─────────     released (the flows)
//	(reads the TUN)
//	serving         ─────────▶     stops its source and listening; drains
//	packet ...      ◀────────▶     packet ... (its flows'; datagrams it has no session for)
//	                ◀─────────     stats ... (its flows left), until it exits
//
// Until serving, the predecessor has changed nothing it cannot undo: if the
// successor fails or dies before, the predecessor reads the TUN again and
// serves as if nothing happened.
package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubetun/kubetun/netstack"
)

// Protocol is the version of the conversation above. A predecessor and a
// successor hand over only if they speak the same one.
const Protocol = 1

// DefaultStateDir is where the sockets are, one per TUN name.
const DefaultStateDir = "/run/kubetun"

// Message types, the first byte of every message.
const (
	msgHello    = 'H'
	msgRefuse   = 'E'
	msgFiles    = 'F'
	msgFilesEnd = 'f'
	msgCommit   = 'C'
	msgReleased = 'R'
	msgServing  = 'S'
	msgPacket   = 'P'
	msgStats    = 'N'
)

// maxMessage is the largest message: a TUN frame's IP packet (64 KiB) and
// its type byte.
const maxMessage = 1 + 65535

// filesPerMessage stays under the kernel's SCM_MAX_FD (253).
const filesPerMessage = 200

// handshakeTimeout bounds each step of the conversation but the
// successor's preparation, which waits for its source.
const handshakeTimeout = 10 * time.Second

// Hello introduces a process to the other.
type Hello struct {
	Protocol int    `json:"protocol"`
	Version  string `json:"version"` // kubetun's, as `kubetun version` prints it
	PID      int    `json:"pid"`
}

func (h Hello) String() string {
	return fmt.Sprintf("pid %d, version %s, handover protocol %d", h.PID, h.Version, h.Protocol)
}

// Stats is what a draining predecessor reports of itself.
type Stats struct {
	TCPFlows    int `json:"tcpFlows"`
	UDPSessions int `json:"udpSessions"`
}

// SocketPath is the socket of the kubetun serving tun in this process's
// network namespace: TUN names are per namespace, and a kubetun in another
// one (a test bed, a pod of its own) is no predecessor of this one.
func SocketPath(dir, tun string) string {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return filepath.Join(dir, tun+".sock")
	}
	return filepath.Join(dir, fmt.Sprintf("%s.netns-%d.sock", tun, st.Ino))
}

// RefusedError is a predecessor's refusal to hand over, or a protocol
// mismatch: nothing was changed.
type RefusedError struct {
	Predecessor Hello
	Reason      string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the running kubetun (%s) does not hand over: %s", e.Predecessor, e.Reason)
}

// conn is one end of the conversation.
type conn struct {
	c *net.UnixConn
}

// send writes one message of type t, passing the descriptors of conns
// with it (SCM_RIGHTS). Their descriptors are read through SyscallConn,
// never os.File.Fd, which may put a descriptor the poller uses into
// blocking mode; the open file's flags are shared with the process that
// receives it.
func (c conn) send(t byte, payload []byte, conns ...syscall.Conn) error {
	var oob []byte
	if len(conns) > 0 {
		fds := make([]int, len(conns))
		for i, sc := range conns {
			rc, err := sc.SyscallConn()
			if err != nil {
				return err
			}
			if err := rc.Control(func(fd uintptr) { fds[i] = int(fd) }); err != nil {
				return err
			}
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.c.WriteMsgUnix(append([]byte{t}, payload...), oob, nil)
	return err
}

// sendJSON writes one message of type t carrying v.
func (c conn) sendJSON(t byte, v any, conns ...syscall.Conn) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.send(t, b, conns...)
}

// recv reads one message, and the descriptors it carries as files.
func (c conn) recv(buf []byte) (t byte, payload []byte, files []*os.File, err error) {
	oob := make([]byte, unix.CmsgSpace(filesPerMessage*4))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return 0, nil, nil, err
	}
	if oobn > 0 {
		files, err = parseRights(oob[:oobn])
		if err != nil {
			return 0, nil, nil, err
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeAll(files)
		return 0, nil, nil, errors.New("handover: message truncated")
	}
	if n == 0 {
		return 0, nil, nil, errors.New("handover: connection closed") // SOCK_SEQPACKET: a 0-byte read is the peer's close
	}
	return buf[0], buf[1:n], files, nil
}

// recvJSON reads one message, which must be of type want, into v; a
// refusal is returned as a RefusedError.
func (c conn) recvJSON(want byte, v any) ([]*os.File, error) {
	buf := make([]byte, maxMessage)
	t, payload, files, err := c.recv(buf)
	if err != nil {
		return nil, err
	}
	if t == msgRefuse {
		closeAll(files)
		var r refusal
		if err := json.Unmarshal(payload, &r); err != nil {
			return nil, fmt.Errorf("handover: unreadable refusal: %w", err)
		}
		return nil, &RefusedError{Predecessor: r.Hello, Reason: r.Reason}
	}
	if t != want {
		closeAll(files)
		return nil, fmt.Errorf("handover: got message %q, want %q", t, want)
	}
	if v != nil {
		if err := json.Unmarshal(payload, v); err != nil {
			closeAll(files)
			return nil, fmt.Errorf("handover: message %q: %w", t, err)
		}
	}
	return files, nil
}

// refusal is the payload of msgRefuse.
type refusal struct {
	Hello  Hello  `json:"hello"`
	Reason string `json:"reason"`
}

// filesMsg names the descriptors a msgFiles carries, in order.
type filesMsg struct {
	Names []string `json:"names"`
}

func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover: control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "handed over"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// peerAllowed checks who is on the other end: root, or the user this
// process runs as. The socket's directory is 0700 already; this holds also
// where a directory of the wrong mode was found.
func peerAllowed(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("peer pid %d runs as uid %d, neither root nor this process's uid %d", cred.Pid, cred.Uid, os.Getuid())
	}
	return nil
}

// sendPacket passes pkt on without waiting: false if the socket's buffer
// is full (the packet is dropped, as a full queue drops; TCP retransmits)
// or the connection is gone.
func sendPacket(c *net.UnixConn, pkt []byte) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	typ := [1]byte{msgPacket}
	var sendErr error
	err = rc.Write(func(fd uintptr) bool {
		_, sendErr = unix.SendmsgBuffers(int(fd), [][]byte{typ[:], pkt}, nil, nil, unix.MSG_DONTWAIT)
		return true // never wait
	})
	return err == nil && sendErr == nil
}

// socketBuffer is the send and receive buffer of the connection: room for
// bursts of packets of the predecessor's flows (a 64 KiB segment each, at
// most), so that a burst is not dropped while the other side is busy.
const socketBuffer = 8 << 20

// setBuffers sizes the connection's buffers, beyond the sysctl limits as
// root (SO_SNDBUFFORCE).
func setBuffers(c *net.UnixConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
		}
	})
}

// handed is the payload of msgReleased.
type handed = netstack.Handed
