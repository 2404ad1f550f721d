package sockopt

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSetUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	if err := SetUserTimeout(tc, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	rc, _ := tc.SyscallConn()
	var got int
	rc.Control(func(fd uintptr) { got, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) })
	if got != 120000 {
		t.Errorf("TCP_USER_TIMEOUT = %d ms, want 120000", got)
	}
}
