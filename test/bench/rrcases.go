package main

import (
	"context"
	"fmt"
	"time"
)

// The request/response cases run over every path. Each case runs in
// --rounds rounds, every path once per round, the first path of a round
// rotating, and sums the rounds per path: a burst of load from elsewhere on
// the machine then falls on every path alike, and each ratio compares runs
// seconds apart.

// roundOrder is the order of paths in round r: paths rotated by r.
func roundOrder(r int, paths []int) []int {
	if len(paths) == 0 {
		return nil
	}
	k := r % len(paths)
	return append(append([]int(nil), paths[k:]...), paths[:k]...)
}

// present are the paths ts has a target for.
func present(ts [numPaths]target) []int {
	var ps []int
	for p, t := range ts {
		if t.ns != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

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

// pathRuns accumulates one path's rounds of a case.
type pathRuns struct {
	lat    []time.Duration // latencies, unsorted until the end
	res    loadResult      // the request-rate runs, summed
	bg     loadResult      // the busy connections alongside, summed
	use    cpuUse
	drops  drops
	rounds int
	failed string // the first failure; the path's cell stays empty
}

func (a *pathRuns) add(lat []time.Duration, res, bg loadResult, use cpuUse, d drops) {
	a.lat = append(a.lat, lat...)
	a.res = a.res.plus(res)
	a.bg = a.bg.plus(bg)
	if a.rounds == 0 {
		a.use, a.drops = use, d
	} else {
		a.use, a.drops = a.use.plus(use), a.drops.plus(d)
	}
	a.rounds++
}

// runRounds runs one case over every path of ts, round by round; run does
// one path's part of a round.
func (b *bench) runRounds(ctx context.Context, name string, ts [numPaths]target,
	run func(p int, t target) ([]time.Duration, loadResult, loadResult, error)) ([numPaths]*pathRuns, error) {
	var acc [numPaths]*pathRuns
	ps := present(ts)
	for _, p := range ps {
		acc[p] = &pathRuns{}
	}
	for r := range b.cfg.rounds {
		for _, p := range roundOrder(r, ps) {
			if acc[p].failed != "" {
				continue
			}
			progress("%s: %s, round %d of %d", name, pathNames[p], r+1, b.cfg.rounds)
			var lat []time.Duration
			var res, bg loadResult
			use, d, err := b.watched(ctx, p, func() error {
				var err error
				lat, res, bg, err = run(p, ts[p])
				return err
			})
			if err != nil {
				if ctx.Err() != nil {
					return acc, ctx.Err()
				}
				acc[p].failed = fmt.Sprintf("%s to %s: %v", pathNames[p], ts[p].addr, err)
				continue
			}
			acc[p].add(lat, res, bg, use, d)
		}
	}
	return acc, nil
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
	per := func(n int) int64 { return int64(max(n/c.rounds, 1)) }
	limit := c.rrTime / time.Duration(c.rounds)
	for _, l := range []struct {
		name string
		load load
	}{
		{"requests/s, 64 keep-alive connections, 64 B answers", load{conns: 64, answer: rrSmall, n: per(c.rrRequests), limit: limit}},
		{"requests/s, 64 keep-alive connections, 1 MiB answers", load{conns: 64, answer: rrLarge, n: per(c.rrRequests / 20), limit: limit}},
		{"requests/s, a new connection per request, 64 at a time", load{conns: 64, answer: rrSmall, n: per(c.conns), limit: limit, perRequest: true}},
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
	limit := b.cfg.rrTime / time.Duration(b.cfg.rounds)
	count := max(b.cfg.rrCount/b.cfg.rounds, 1)
	acc, err := b.runRounds(ctx, name, ts, func(p int, t target) ([]time.Duration, loadResult, loadResult, error) {
		var bg loadResult
		stop, bgDone := make(chan struct{}), make(chan error, 1)
		if busy > 0 {
			go func() {
				var err error
				bg, err = load{ns: t.ns, addr: t.addr, conns: busy, answer: rrSmall, n: 1 << 40, limit: limit + 10*time.Second}.run(ctx, stop)
				bgDone <- err
			}()
			time.Sleep(200 * time.Millisecond) // the busy connections are open and moving
		}
		lat, err := rrLatency(ctx, t.ns, t.addr, 100, count, limit)
		if busy > 0 {
			close(stop)
			if bgErr := <-bgDone; err == nil {
				err = bgErr
			}
		}
		return lat, loadResult{}, bg, err
	})
	if err != nil {
		return err
	}
	rows := newPercentileRows(name, "µs", micros)
	for p, a := range acc {
		if a == nil {
			continue
		}
		if a.failed != "" {
			rows.fail(a.failed)
			continue
		}
		detail := fmt.Sprintf("%d round trips in %d rounds", len(a.lat), a.rounds)
		if busy > 0 {
			detail += fmt.Sprintf("; alongside, %d connections made %s", busy, a.bg)
		}
		detail += a.drops.String()
		rows.set(p, a.lat, detail)
		if p == pathKubetun {
			rows.p50.results[p].linkDrops = a.drops.linkDrops()
			rows.p50.cpu = a.use.per(float64(len(a.lat))+float64(a.bg.done), "µs/req", 1e6)
		}
	}
	for _, r := range rows.rows() {
		k, d := r.results[pathKubetun], r.results[pathDirect]
		if k.unit != "" && d.unit != "" {
			r.results[pathKubetun].note = fmt.Sprintf("+%.0f", k.value-d.value)
		}
	}
	b.addPercentiles(rows)
	return nil
}

// rateRow measures requests/s of l over every path.
func (b *bench) rateRow(ctx context.Context, name string, ts [numPaths]target, l load) error {
	acc, err := b.runRounds(ctx, fmt.Sprintf("%s (at most %d requests, %v)", name, l.n, l.limit), ts,
		func(p int, t target) ([]time.Duration, loadResult, loadResult, error) {
			l.ns, l.addr = t.ns, t.addr
			res, err := l.run(ctx, nil)
			return nil, res, loadResult{}, err
		})
	if err != nil {
		return err
	}
	r := row{name: name}
	for p, a := range acc {
		if a == nil {
			continue
		}
		if a.failed != "" {
			r.failures = append(r.failures, a.failed)
			continue
		}
		r.results[p] = result{value: a.res.rate() / 1e3, unit: "k/s", detail: fmt.Sprintf("%v in %d rounds%s", a.res, a.rounds, a.drops)}
		if a.res.failed > 0 {
			r.results[p].note = fmt.Sprintf("%d failed", a.res.failed)
		}
		if p == pathKubetun {
			r.results[p].linkDrops = a.drops.linkDrops()
			r.cpu = a.use.per(float64(a.res.done), "µs/req", 1e6)
		}
	}
	b.add(r)
	return nil
}

// connectRows measures the time to connect, one connection at a time (each
// then makes one request and closes), p50 and p99.
func (b *bench) connectRows(ctx context.Context, name string, ts [numPaths]target) error {
	n := int64(max(b.cfg.connectCount/b.cfg.rounds, 1))
	limit := b.cfg.rrTime / time.Duration(b.cfg.rounds)
	acc, err := b.runRounds(ctx, fmt.Sprintf("%s (%d connections)", name, n), ts,
		func(p int, t target) ([]time.Duration, loadResult, loadResult, error) {
			res, err := load{ns: t.ns, addr: t.addr, conns: 1, answer: rrSmall, n: n, limit: limit, perRequest: true}.run(ctx, nil)
			return nil, res, loadResult{}, err
		})
	if err != nil {
		return err
	}
	rows := newPercentileRows(name, "µs", micros)
	for p, a := range acc {
		if a == nil {
			continue
		}
		if a.failed != "" {
			rows.fail(a.failed)
			continue
		}
		rows.set(p, a.res.dials, fmt.Sprintf("%v in %d rounds%s", a.res, a.rounds, a.drops))
		if p == pathKubetun {
			rows.p50.results[p].linkDrops = a.drops.linkDrops()
			rows.p50.cpu = a.use.per(float64(a.res.done), "µs/conn", 1e6)
		}
	}
	b.addPercentiles(rows)
	return nil
}
