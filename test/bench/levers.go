package main

import (
	"context"
	"strings"
	"time"
)

// levers are the data path's switchable levers: kubetun flags that turn one
// off. The levers group runs the cases each lever is for once per lever,
// with kubetun restarted without it, so that a lever's before (these rows)
// and after (the rr group's rows, kubetun's defaults) come from one run.
var levers = []struct {
	name  string // what the rows say is off
	flags []string
}{
	{"without ACK delay", []string{"--tcp-ack-delay=0"}},
	{"without inline delivery", []string{"--tcp-inline-delivery=false"}},
	{"without either (gVisor unpatched)", []string{"--tcp-ack-delay=0", "--tcp-inline-delivery=false"}},
}

// measureLevers runs, for each lever off, the 1-connection round trip and
// the 64 keep-alive connections' request rate, then restarts kubetun with
// its defaults.
func (b *bench) measureLevers(ctx context.Context) error {
	ts := b.targets(rrPort, rrPort)
	c := b.cfg
	for _, l := range levers {
		if err := b.startKubetun(ctx, l.flags...); err != nil {
			return err
		}
		suffix := ", " + l.name + " (" + strings.Join(l.flags, " ") + ")"
		if err := b.latencyRows(ctx, "RR latency, 1 connection, 64 B"+suffix, ts, 0); err != nil {
			return err
		}
		l := load{conns: 64, answer: rrSmall, n: int64(max(c.rrRequests/c.rounds, 1)), limit: c.rrTime / time.Duration(c.rounds)}
		if err := b.rateRow(ctx, "requests/s, 64 keep-alive connections, 64 B answers"+suffix, ts, l); err != nil {
			return err
		}
	}
	return b.startKubetun(ctx)
}
