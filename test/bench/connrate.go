package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The connection-rate client's request and its bounds.
const (
	// request is the seed client's request; podserver answers with its
	// page and closes (after the client closes too, see lingeringClose).
	request = "GET / HTTP/1.1\r\n\r\n"
	// connTimeout bounds each connection, dial to close.
	connTimeout = 3 * time.Second
	// maxFailures ends a run early: past it, something is broken and the
	// rate would mean nothing.
	maxFailures = 20
)

// want is in every correct answer.
var want = []byte("<p>Hello from ")

// connResult is one connection-rate run.
type connResult struct {
	done, failed int
	elapsed      time.Duration
	latencies    []time.Duration // of the connections that succeeded, sorted
	firstErr     error
}

func (r connResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

func (r connResult) String() string {
	s := fmt.Sprintf("%d in %v", r.done, r.elapsed.Round(time.Millisecond))
	if n := len(r.latencies); n > 0 {
		s += fmt.Sprintf(", latency p50 %v p99 %v", r.latencies[n/2].Round(time.Microsecond), r.latencies[n*99/100].Round(time.Microsecond))
	}
	if r.firstErr != nil {
		s += fmt.Sprintf(", first failure: %v", r.firstErr)
	}
	return s
}

// connRate makes n connections to addr from inside namespace ns, parallel
// at a time, each sending the request and reading the answer to its end,
// and stops early after limit or maxFailures failures. It fails only when no
// connection succeeded.
func connRate(ctx context.Context, ns, addr string, n, parallel int, limit time.Duration) (connResult, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var (
		left   atomic.Int64 // connections not yet started
		failed atomic.Int64
		mu     sync.Mutex // guards res.latencies, res.firstErr
		res    connResult
		wg     sync.WaitGroup
	)
	left.Store(int64(n))
	errs := make(chan error, parallel)
	start := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			// Every socket is made on this goroutine, so in ns.
			errs <- testbed.InNamespace(ns, func() error {
				buf := make([]byte, 512)
				for left.Add(-1) >= 0 && ctx.Err() == nil && failed.Load() < maxFailures {
					began := time.Now()
					if err := exchange(ctx, addr, buf); err != nil {
						if ctx.Err() != nil {
							break // the time limit, or Ctrl-C: not the connection's fault
						}
						failed.Add(1)
						mu.Lock()
						if res.firstErr == nil {
							res.firstErr = err
						}
						mu.Unlock()
						continue
					}
					lat = append(lat, time.Since(began))
				}
				return nil
			})
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			return res, err
		}
	}
	slices.Sort(res.latencies)
	res.done, res.failed = len(res.latencies), int(failed.Load())
	if res.done == 0 {
		if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return res, err // interrupted
		}
		return res, fmt.Errorf("no connection succeeded (%d failed): %v", res.failed, res.firstErr)
	}
	return res, nil
}

// exchange makes one connection: request, the whole answer, close. buf is
// scratch space for reading.
func exchange(ctx context.Context, addr string, buf []byte) error {
	d := net.Dialer{Timeout: connTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(connTimeout))
	if _, err := io.WriteString(c, request); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	n, ok := 0, false
	for {
		m, err := c.Read(buf[n:])
		n += m
		ok = ok || bytes.Contains(buf[:n], want)
		if n == len(buf) { // keep the tail, where want may start
			n = copy(buf, buf[n-len(want):])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
	if !ok {
		return fmt.Errorf("answer without %q", want)
	}
	return nil
}
