package main

import (
	"context"
	"fmt"
	"time"
)

// The request/response cases run over every path, one after the other for
// each case, so that each ratio compares runs seconds apart on the same
// machine.

// watched runs fn for path p; on kubetun's path it also reads kubetun's CPU
// time and the drop counters around it.
func (b *bench) watched(ctx context.Context, p int, fn func() error) (cpuUse, drops, error) {
	if p != pathKubetun {
		return cpuUse{}, drops{}, fn()
	}
	dropsBefore, before := b.drops(ctx), b.sample()
	if err := fn(); err != nil {
		return cpuUse{}, drops{}, err
	}
	return b.sample().since(before), b.drops(ctx).since(dropsBefore), nil
}

// measureRR runs the request/response cases.
func (b *bench) measureRR(ctx context.Context) error {
	ts := b.targets(rrPort, rrPort)
	c := b.cfg
	if err := b.latencyRows(ctx, "RR latency, 1 connection, 64 B", ts, 0); err != nil {
		return err
	}
	if err := b.latencyRows(ctx, "RR latency, 1 connection, 64 others busy", ts, 64); err != nil {
		return err
	}
	for _, l := range []struct {
		name string
		load load
	}{
		{"requests/s, 64 keep-alive connections, 64 B answers", load{conns: 64, answer: rrSmall, n: int64(c.rrRequests), limit: c.rrTime}},
		{"requests/s, 64 keep-alive connections, 1 MiB answers", load{conns: 64, answer: rrLarge, n: int64(c.rrRequests / 20), limit: c.rrTime}},
		{"requests/s, a new connection per request, 64 at a time", load{conns: 64, answer: rrSmall, n: int64(c.conns), limit: c.rrTime, perRequest: true}},
	} {
		if err := b.rateRow(ctx, l.name, ts, l.load); err != nil {
			return err
		}
	}
	return b.connectRows(ctx, "connect latency, 1 at a time", ts)
}

// latencyRows measures round trips of small requests on one connection,
// p50 and p99, with busy more connections of the same path loaded alongside.
func (b *bench) latencyRows(ctx context.Context, name string, ts [numPaths]target, busy int) error {
	p50, p99 := row{name: name + ", p50", lowerBetter: true}, row{name: name + ", p99", lowerBetter: true}
	for p, t := range ts {
		if t.ns == "" {
			continue
		}
		progress("%s: %s", name, pathNames[p])
		var lat []time.Duration
		var bg loadResult
		use, dropped, err := b.watched(ctx, p, func() error {
			stop, bgDone := make(chan struct{}), make(chan error, 1)
			if busy > 0 {
				go func() {
					var err error
					bg, err = load{ns: t.ns, addr: t.addr, conns: busy, answer: rrSmall, n: 1 << 40, limit: b.cfg.rrTime + 10*time.Second}.run(ctx, stop)
					bgDone <- err
				}()
				time.Sleep(200 * time.Millisecond) // the busy connections are open and moving
			}
			var err error
			lat, err = rrLatency(ctx, t.ns, t.addr, 100, b.cfg.rrCount, b.cfg.rrTime)
			if busy > 0 {
				close(stop)
				if bgErr := <-bgDone; err == nil {
					err = bgErr
				}
			}
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p50.failures = append(p50.failures, fmt.Sprintf("%s to %s: %v", pathNames[p], t.addr, err))
			continue
		}
		detail := fmt.Sprintf("%d round trips", len(lat))
		if busy > 0 {
			detail += fmt.Sprintf("; alongside, %d connections made %s", busy, bg)
		}
		detail += dropped.String()
		p50.results[p] = result{value: micros(percentile(lat, 50)), unit: "µs", detail: detail}
		p99.results[p] = result{value: micros(percentile(lat, 99)), unit: "µs"}
		if p == pathKubetun {
			p50.results[p].linkDrops = dropped.linkDrops()
			p50.cpu = use.per(float64(len(lat))+float64(bg.done), "µs/req", 1e6)
		}
	}
	for _, r := range []*row{&p50, &p99} {
		k, d := r.results[pathKubetun], r.results[pathDirect]
		if k.unit != "" && d.unit != "" {
			r.results[pathKubetun].note = fmt.Sprintf("+%.0f", k.value-d.value)
		}
		b.add(*r)
	}
	return nil
}

// rateRow measures requests/s of l over every path.
func (b *bench) rateRow(ctx context.Context, name string, ts [numPaths]target, l load) error {
	r := row{name: name}
	for p, t := range ts {
		if t.ns == "" {
			continue
		}
		progress("%s: %s (at most %d requests, %v)", name, pathNames[p], l.n, l.limit)
		l.ns, l.addr = t.ns, t.addr
		var res loadResult
		use, dropped, err := b.watched(ctx, p, func() error {
			var err error
			res, err = l.run(ctx, nil)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.failures = append(r.failures, fmt.Sprintf("%s to %s: %v", pathNames[p], t.addr, err))
			continue
		}
		r.results[p] = result{value: res.rate() / 1e3, unit: "k/s", detail: res.String() + dropped.String()}
		if res.failed > 0 {
			r.results[p].note = fmt.Sprintf("%d failed", res.failed)
		}
		if p == pathKubetun {
			r.results[p].linkDrops = dropped.linkDrops()
			r.cpu = use.per(float64(res.done), "µs/req", 1e6)
		}
	}
	b.add(r)
	return nil
}

// connectRows measures the time to connect, one connection at a time (each
// then makes one request and closes), p50 and p99.
func (b *bench) connectRows(ctx context.Context, name string, ts [numPaths]target) error {
	p50, p99 := row{name: name + ", p50", lowerBetter: true}, row{name: name + ", p99", lowerBetter: true}
	for p, t := range ts {
		if t.ns == "" {
			continue
		}
		progress("%s: %s (%d connections)", name, pathNames[p], b.cfg.connectCount)
		var res loadResult
		use, dropped, err := b.watched(ctx, p, func() error {
			var err error
			res, err = load{ns: t.ns, addr: t.addr, conns: 1, answer: rrSmall, n: int64(b.cfg.connectCount), limit: b.cfg.rrTime, perRequest: true}.run(ctx, nil)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p50.failures = append(p50.failures, fmt.Sprintf("%s to %s: %v", pathNames[p], t.addr, err))
			continue
		}
		p50.results[p] = result{value: micros(percentile(res.dials, 50)), unit: "µs", detail: res.String() + dropped.String()}
		p99.results[p] = result{value: micros(percentile(res.dials, 99)), unit: "µs"}
		if p == pathKubetun {
			p50.results[p].linkDrops = dropped.linkDrops()
			p50.cpu = use.per(float64(res.done), "µs/conn", 1e6)
		}
	}
	b.add(p50)
	b.add(p99)
	return nil
}
