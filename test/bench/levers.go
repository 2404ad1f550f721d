package main

import (
	"context"
	"strings"
	"time"
)

// levers are the data path's switchable levers: kubetun flags that turn
// one on or off. The levers group runs the cases they are for with
// kubetun's defaults and once per other setting, kubetun restarted each
// time, back to back, so that a lever's before and after come from the same
// minute.
var levers = []struct {
	name  string // what the rows say is different
	flags []string
}{
	{"kubetun's defaults (ACK delay on, inline delivery off)", nil},
	{"without ACK delay (gVisor unpatched)", []string{"--tcp-ack-delay=0"}},
	{"with inline delivery too", []string{"--tcp-inline-delivery"}},
	{"with inline delivery, without ACK delay", []string{"--tcp-inline-delivery", "--tcp-ack-delay=0"}},
}

// measureLevers runs, for each setting, the 1-connection round trip and
// the 64 keep-alive connections' request rate, then restarts kubetun with
// its defaults.
func (b *bench) measureLevers(ctx context.Context) error {
	ts := b.targets(rrPort, rrPort)
	c := b.cfg
	for _, l := range levers {
		if err := b.startKubetun(ctx, l.flags...); err != nil {
			return err
		}
		suffix := ", " + l.name
		if len(l.flags) > 0 {
			suffix += " (" + strings.Join(l.flags, " ") + ")"
		}
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
