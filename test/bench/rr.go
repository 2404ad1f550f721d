package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The request/response protocol of the latency and request-rate cases, a
// minimal stand-in for a keep-alive RPC: the client sends rrRequestLen
// bytes, the first four the length of the answer it wants (big endian); the
// server answers with that many bytes; the connection stays open for the
// next request.
const (
	rrRequestLen = 64
	rrSmall      = 64      // the small answer
	rrLarge      = 1 << 20 // the large answer
	rrMaxAnswer  = rrLarge
	// rrTimeout bounds one request/response exchange, and a dial.
	rrTimeout = 5 * time.Second
	// rrPort is where the server listens in the pods, and the Service port
	// that leads to it.
	rrPort = 7000
)

// rrServerCommand is the hidden first argument that makes this program the
// request/response server (started in the pods' namespaces).
const rrServerCommand = "rrserver"

// rrServerMain serves the protocol on --addr until SIGTERM.
func rrServerMain(args []string) int {
	fs := flag.NewFlagSet(rrServerCommand, flag.ContinueOnError)
	addr := fs.String("addr", fmt.Sprintf(":%d", rrPort), "listen address")
	name := fs.String("name", "", "name in the log")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log.SetFlags(0)
	log.SetPrefix(rrServerCommand + " " + *name + ": ")
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Printf("listen %s: %v", *addr, err)
		return 1
	}
	answer := make([]byte, rrMaxAnswer)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Fatalf("accept on %s: %v", *addr, err)
			}
			go rrServe(c, answer)
		}
	}()
	log.Printf("ready on %s", *addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return 0
}

// rrServe answers the requests of one connection until it ends or sends a
// bad request.
func rrServe(c net.Conn, answer []byte) {
	defer c.Close()
	req := make([]byte, rrRequestLen)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(req)
		if n > uint32(len(answer)) {
			return
		}
		if _, err := c.Write(answer[:n]); err != nil {
			return
		}
	}
}

// rrConn is the client side of one connection.
type rrConn struct {
	c   net.Conn
	req []byte
	buf []byte
}

func newRRConn(c net.Conn, answer int) *rrConn {
	r := &rrConn{c: c, req: make([]byte, rrRequestLen), buf: make([]byte, min(answer, 64<<10))}
	binary.BigEndian.PutUint32(r.req, uint32(answer))
	return r
}

// exchange sends one request and reads its whole answer.
func (r *rrConn) exchange() error {
	r.c.SetDeadline(time.Now().Add(rrTimeout))
	if _, err := r.c.Write(r.req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for left := int(binary.BigEndian.Uint32(r.req)); left > 0; {
		n, err := r.c.Read(r.buf[:min(left, len(r.buf))])
		left -= n
		if err != nil {
			return fmt.Errorf("read (%d bytes of the answer left): %w", left, err)
		}
	}
	return nil
}

// rrDial connects to addr from namespace ns; the connection can then be used
// from any goroutine.
func rrDial(ns, addr string, answer int) (*rrConn, error) {
	c, err := testbed.DialIn(ns, "tcp", addr, rrTimeout)
	if err != nil {
		return nil, err
	}
	return newRRConn(c, answer), nil
}

// rrLatency times exchanges on one connection: up to warm of them first
// (for at most a fifth of limit), then up to n timed ones until limit. The
// result is sorted.
func rrLatency(ctx context.Context, ns, addr string, warm, n int, limit time.Duration) ([]time.Duration, error) {
	c, err := rrDial(ns, addr, rrSmall)
	if err != nil {
		return nil, err
	}
	defer c.c.Close()
	warmEnd := time.Now().Add(limit / 5)
	for i := 0; i < warm && time.Now().Before(warmEnd); i++ {
		if err := c.exchange(); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(limit)
	lat := make([]time.Duration, 0, n)
	for len(lat) < n && ctx.Err() == nil && (len(lat) == 0 || time.Now().Before(deadline)) {
		began := time.Now()
		if err := c.exchange(); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(began))
	}
	slices.Sort(lat)
	return lat, ctx.Err()
}

// loadResult is a request-rate run.
type loadResult struct {
	done, failed int64
	elapsed      time.Duration
	firstErr     error
	// dials are the connect times of a connection-per-request run, sorted.
	dials []time.Duration
}

func (r loadResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

// plus is r and o together, as one run as long as both.
func (r loadResult) plus(o loadResult) loadResult {
	s := loadResult{done: r.done + o.done, failed: r.failed + o.failed, elapsed: r.elapsed + o.elapsed, firstErr: r.firstErr}
	if s.firstErr == nil {
		s.firstErr = o.firstErr
	}
	s.dials = sorted(append(slices.Clone(r.dials), o.dials...))
	return s
}

func (r loadResult) String() string {
	s := fmt.Sprintf("%d requests in %v", r.done, r.elapsed.Round(time.Millisecond))
	if len(r.dials) > 0 {
		s += fmt.Sprintf(", connect p50 %v p99 %v", fmtDur(percentile(r.dials, 50)), fmtDur(percentile(r.dials, 99)))
	}
	if r.failed > 0 {
		s += fmt.Sprintf(", %d failed, first: %v", r.failed, r.firstErr)
	}
	return s
}

// load is a request-rate run: conns keep-alive connections, each sending
// requests for answer bytes back to back, until n requests are done, limit
// passed or stop is closed.
type load struct {
	ns, addr string
	conns    int
	answer   int
	n        int64
	limit    time.Duration
	// perRequest makes a new connection for each request (and records its
	// connect time) instead of keeping conns open.
	perRequest bool
}

// run runs l. Each connection or worker stops at its first failure; the run
// fails only when no request succeeded.
func (l load) run(ctx context.Context, stop <-chan struct{}) (loadResult, error) {
	var (
		left  atomic.Int64
		res   loadResult
		mu    sync.Mutex // guards res.failed, res.firstErr, res.dials
		wg    sync.WaitGroup
		fails atomic.Int64
	)
	left.Store(l.n)
	fail := func(err error) {
		fails.Add(1)
		mu.Lock()
		if res.firstErr == nil {
			res.firstErr = err
		}
		mu.Unlock()
	}
	more := func() bool {
		select {
		case <-stop:
			return false
		default:
		}
		return ctx.Err() == nil && left.Add(-1) >= 0 && fails.Load() < maxFailures
	}
	// Keep-alive connections are all made before the clock starts.
	var conns []*rrConn
	if !l.perRequest {
		for range l.conns {
			c, err := rrDial(l.ns, l.addr, l.answer)
			if err != nil {
				for _, c := range conns {
					c.c.Close()
				}
				return res, fmt.Errorf("connecting %d connections: %w", l.conns, err)
			}
			conns = append(conns, c)
		}
	}
	// The clock, and the time limit, start once they are open.
	ctx, cancel := context.WithTimeout(ctx, l.limit)
	defer cancel()
	var done atomic.Int64
	start := time.Now()
	for i := range l.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !l.perRequest {
				c := conns[i]
				defer c.c.Close()
				for more() {
					if err := c.exchange(); err != nil {
						if ctx.Err() == nil {
							fail(err)
						}
						return
					}
					done.Add(1)
				}
				return
			}
			var dials []time.Duration
			err := testbed.InNamespace(l.ns, func() error {
				d := net.Dialer{Timeout: rrTimeout}
				for more() {
					began := time.Now()
					nc, err := d.DialContext(ctx, "tcp", l.addr)
					if err != nil {
						if ctx.Err() == nil {
							fail(err)
						}
						continue
					}
					dials = append(dials, time.Since(began))
					err = newRRConn(nc, l.answer).exchange()
					nc.Close()
					if err != nil {
						fail(err)
						continue
					}
					done.Add(1)
				}
				return nil
			})
			if err != nil {
				fail(err)
			}
			mu.Lock()
			res.dials = append(res.dials, dials...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.done, res.failed = done.Load(), fails.Load()
	slices.Sort(res.dials)
	if res.done == 0 {
		if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return res, err
		}
		return res, fmt.Errorf("no request succeeded (%d failed): %v", res.failed, res.firstErr)
	}
	return res, nil
}
