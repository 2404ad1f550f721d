package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// randomEcho sends size random bytes on c, to an echo server, while
// reading, half-closes, and checks that the same bytes came back before
// EOF, within limit.
func randomEcho(c net.Conn, size int, limit time.Duration) error {
	msg := make([]byte, size)
	rand.Read(msg)
	got, err := pfRoundTrip(c, msg, limit)
	if err != nil || !bytes.Equal(got, msg) {
		return fmt.Errorf("got %d bytes back (identical: %v), %v", len(got), bytes.Equal(got, msg), err)
	}
	return nil
}

// parallelEchoes makes n echo round trips of size bytes at once, each on a
// connection of its own from dial, and reports each that failed, naming it
// as what and its number ("stream 7: ..."). It returns how long all took.
func parallelEchoes(t *testing.T, n, size int, what string, limit time.Duration, dial func() (net.Conn, error)) time.Duration {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	began := time.Now()
	for i := range n {
		wg.Go(func() {
			c, err := dial()
			if err != nil {
				errs <- fmt.Errorf("%s %d: %w", what, i, err)
				return
			}
			defer c.Close()
			if err := randomEcho(c, size, limit); err != nil {
				errs <- fmt.Errorf("%s %d: %w", what, i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return time.Since(began)
}
