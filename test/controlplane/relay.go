package controlplane

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"
)

// RelayAPIServer relays every connection l accepts to kube-apiserver inside
// the control plane's namespace, for a client in another namespace (a
// laptop) that has no route to it. kube-apiserver's certificate names
// 127.0.0.1, so l on a 127.0.0.1 of any namespace serves as the apiserver's
// address. stop closes l and every relayed connection and waits for the
// relay's goroutines.
func (cp *ControlPlane) RelayAPIServer(l net.Listener) (stop func(), err error) {
	server, err := url.Parse(cp.Server)
	if err != nil {
		return nil, fmt.Errorf("controlplane: RelayAPIServer: parse %q: %w", cp.Server, err)
	}
	return Relay(l, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cp.DialContext(ctx, "tcp", server.Host)
	}), nil
}

// Relay relays every connection l accepts to a connection dial makes, both
// ways with half-close. stop closes l and every relayed connection and
// waits for the relay's goroutines.
func Relay(l net.Listener, dial func() (net.Conn, error)) (stop func()) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns[c] = true
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() {
				defer c.Close()
				up, err := dial()
				if err != nil {
					return
				}
				track(up)
				defer up.Close()
				done := make(chan struct{})
				go func() {
					io.Copy(up, c)
					up.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			})
		}
	})
	return func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}
