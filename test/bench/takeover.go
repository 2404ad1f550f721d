package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// measureTakeover is group takeover: a second kubetun takes over from the
// running one (package handover), and then:
//
//   - the time from the new process's start to its "ready" (it has the old
//     one's descriptors, its table loaded, and reads the TUN);
//   - the round-trip latency of 64-byte requests on a connection opened
//     before the takeover, whose packets the new kubetun passes to the old
//     one, against a connection of the new one's own (the direct column
//     in these rows), with the CPU both kubetuns spend per round trip.
//
// The new kubetun serves the cases after this one; the old one exits once
// its connection has closed.
func (b *bench) measureTakeover(ctx context.Context) error {
	addr := fmt.Sprintf("%s:%d", testbed.ClusterIP, rrPort)
	ns := b.seed.Client.Namespace
	progress("takeover: a second kubetun takes over from the running one")
	old := b.kt
	passed, err := rrDial(ns, addr, rrSmall)
	if err != nil {
		return fmt.Errorf("takeover: connecting before it: %w", err)
	}
	defer passed.c.Close()
	if err := passed.exchange(); err != nil {
		return fmt.Errorf("takeover: a request before it: %w", err)
	}
	extra := append(slices.Clone(b.cfg.ktFlags), "--nodeport-addresses", b.seed.Client.Gateway.String()+"/32")
	began := time.Now()
	next, err := b.tb.StartKubetun(b.manifestPath, extra...)
	if err != nil {
		return fmt.Errorf("takeover: the second kubetun: %w", err)
	}
	took := time.Since(began)
	b.kt = next
	if !strings.Contains(next.Output(), "took over") {
		return fmt.Errorf("takeover: the second kubetun did not take over:\n%s", next.Output())
	}
	start := row{name: "takeover: new kubetun, start to serving (descriptors, table, TUN)", lowerBetter: true}
	start.results[pathKubetun] = result{value: float64(took) / float64(time.Millisecond), unit: "ms"}
	b.add(start)

	own, err := rrDial(ns, addr, rrSmall)
	if err != nil {
		return fmt.Errorf("takeover: connecting after it: %w", err)
	}
	defer own.c.Close()
	n := b.cfg.rrCount
	timed := func(c *rrConn) ([]time.Duration, cpuUse, cpuUse, error) {
		for range 200 { // warm
			if err := c.exchange(); err != nil {
				return nil, cpuUse{}, cpuUse{}, err
			}
		}
		oldBefore, _ := readCPU(old.Pid())
		newBefore, _ := readCPU(next.Pid())
		deadline := time.Now().Add(b.cfg.rrTime)
		lat := make([]time.Duration, 0, n)
		for len(lat) < n && ctx.Err() == nil && (len(lat) == 0 || time.Now().Before(deadline)) {
			t := time.Now()
			if err := c.exchange(); err != nil {
				return nil, cpuUse{}, cpuUse{}, err
			}
			lat = append(lat, time.Since(t))
		}
		oldAfter, _ := readCPU(old.Pid())
		newAfter, _ := readCPU(next.Pid())
		slices.Sort(lat)
		return lat, oldAfter.since(oldBefore), newAfter.since(newBefore), ctx.Err()
	}
	ownLat, _, ownCPU, err := timed(own)
	if err != nil {
		return fmt.Errorf("takeover: the new kubetun's own flow: %w", err)
	}
	passedLat, oldCPU, newCPU, err := timed(passed)
	if err != nil {
		return fmt.Errorf("takeover: the old kubetun's flow, passed on: %w", err)
	}
	for _, p := range []float64{50, 99} {
		r := row{name: fmt.Sprintf("takeover: RR latency p%.0f, old kubetun's flow passed on (direct = new kubetun's own flow)", p), lowerBetter: true}
		r.results[pathDirect] = result{value: micros(percentile(ownLat, p)), unit: "µs"}
		r.results[pathKubetun] = result{value: micros(percentile(passedLat, p)), unit: "µs"}
		if p == 50 {
			r.cpu = fmt.Sprintf("own flow: new %s; passed on: new %s + old %s",
				ownCPU.per(float64(len(ownLat)), "µs/rt", 1e6), newCPU.per(float64(len(passedLat)), "µs/rt", 1e6),
				oldCPU.per(float64(len(passedLat)), "µs/rt", 1e6))
		}
		b.add(r)
	}
	passed.c.Close()
	if err := old.Wait(10 * time.Second); err != nil {
		b.notes = append(b.notes, fmt.Sprintf("takeover: the old kubetun did not exit after its last flow: %v", err))
		old.Stop(5 * time.Second)
	}
	return nil
}
