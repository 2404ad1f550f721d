package testbed

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

// DialIn dials addr from inside namespace ns, for a test that wants a socket it
// controls (timing a refusal, half-closing) rather than a client program.
//
// A socket belongs to the network namespace of the thread that creates it. So
// the dial runs on a goroutine locked to its own OS thread that first joins ns
// with setns(2); the thread is never unlocked, so Go discards it when the
// goroutine ends instead of reusing a thread that sits in the wrong namespace.
// The returned connection works from any goroutine.
func DialIn(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		if err := joinNetns(ns); err != nil {
			ch <- result{nil, err}
			return
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.Dial(network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.conn, r.err
}

// InNamespace runs fn inside namespace ns and returns its error, for a
// client loop that makes many connections (DialIn would spend a thread and a
// setns(2) on each). As with DialIn, fn runs on a goroutine locked to its own
// OS thread that joined ns first, and the thread is discarded afterwards. Only
// sockets fn creates on that goroutine belong to ns: a goroutine fn starts runs
// on another thread, in the process's own namespace.
func InNamespace(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see DialIn.
		if err := joinNetns(ns); err != nil {
			ch <- err
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// joinNetns moves the calling thread into the named namespace.
func joinNetns(ns string) error {
	if sysSetns == 0 {
		return fmt.Errorf("join netns %s: setns(2) number unknown on %s", ns, runtime.GOARCH)
	}
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer f.Close()
	if _, _, errno := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return fmt.Errorf("setns(%s, CLONE_NEWNET): %w", ns, errno)
	}
	return nil
}
