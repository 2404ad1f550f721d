package controlplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetns runs f on a goroutine locked to an OS thread that has joined the
// named network namespace, and returns f's error. A socket belongs to the
// namespace of the thread that creates it and keeps it afterwards, so f may
// return sockets usable from any goroutine. The thread is never unlocked: Go
// then discards it when the goroutine ends, instead of reusing a thread that
// sits in the wrong namespace.
func inNetns(ns string, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		fd, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer fd.Close()
		if err := unix.Setns(int(fd.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns(%s, CLONE_NEWNET): %w", ns, err)
			return
		}
		ch <- f()
	}()
	return <-ch
}

// dialIn dials addr from inside namespace ns.
func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// freePorts returns n distinct TCP ports free on 127.0.0.1 inside namespace
// ns, as the kernel picks them for port 0. They stay free until a process
// binds them unless something else in ns races for them, which the
// namespace's owner controls.
func freePorts(ns string, n int) ([]int, error) {
	var ports []int
	err := inNetns(ns, func() error {
		for range n {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return fmt.Errorf("listen 127.0.0.1:0 in netns %s: %w", ns, err)
			}
			// Held open until all are picked, so they differ.
			defer l.Close()
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	return ports, err
}

// listenIn listens on addr inside namespace ns.
func listenIn(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}
