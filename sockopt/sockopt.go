// Package sockopt sets the options of the host TCP sockets kubetun splices,
// the same on every path: a ClusterIP flow's pod leg, a node port's client
// and pod legs.
package sockopt

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// SetUserTimeout sets TCP_USER_TIMEOUT (RFC 5482, tcp(7)) on c: data it
// sent that the peer has not acknowledged for d ends the connection, where
// Linux would retransmit for about 15 minutes. A peer that vanished while
// data was outstanding, which keepalive does not probe, is noticed.
func SetUserTimeout(c *net.TCPConn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var setErr error
	if err := rc.Control(func(fd uintptr) {
		setErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	}); err != nil {
		return err
	}
	return setErr
}
