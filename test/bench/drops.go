package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/kubetun/kubetun/test/testbed"
)

// drops are the counters of the places, outside the clients' view, where a
// packet of a run can be dropped for want of a reader fast enough.
type drops struct {
	// link is kubetun_link_dropped_packets_total: packets from gVisor to
	// the TUN dropped because the queue between them was full. linkRead
	// says it was read (kubetun's metrics answered).
	link     int64
	linkRead bool
	// tun is kubetun0's tx_dropped: packets the kernel routed into the TUN
	// while its queue was full, kubetun not reading fast enough.
	tun int64
	// podUDP is pod1's UDP RcvbufErrors: datagrams dropped because the
	// iperf3 server's socket buffer was full.
	podUDP int64
	err    error
}

// drops reads the counters; a TUN that does not exist counts zero.
func (b *bench) drops(ctx context.Context) drops {
	var d drops
	if m, err := scrapeMetrics(ctx, b.tb.Node); err == nil {
		if v, ok := m[metricLinkDrops]; ok {
			d.link, d.linkRead = int64(v), true
		}
	}
	if out, err := b.tb.Run(ctx, b.tb.Node, "cat", "/sys/class/net/"+testbed.TUN+"/statistics/tx_dropped"); err == nil {
		d.tun, d.err = strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	}
	out, err := b.tb.Run(ctx, b.seed.Pod1.Namespace, "cat", "/proc/net/snmp")
	if err != nil {
		d.err = err
		return d
	}
	if n, err := snmpCounter(out, "Udp", "RcvbufErrors"); err != nil {
		d.err = err
	} else {
		d.podUDP = n
	}
	return d
}

// since is what was dropped after before.
func (d drops) since(before drops) drops {
	delta := drops{tun: d.tun - before.tun, podUDP: d.podUDP - before.podUDP, err: d.err,
		link: d.link - before.link, linkRead: d.linkRead && before.linkRead}
	if delta.err == nil {
		delta.err = before.err
	}
	return delta
}

// plus is two deltas together.
func (d drops) plus(o drops) drops {
	s := drops{tun: d.tun + o.tun, podUDP: d.podUDP + o.podUDP, link: d.link + o.link, linkRead: d.linkRead && o.linkRead, err: d.err}
	if s.err == nil {
		s.err = o.err
	}
	return s
}

// String describes a delta, e.g. ", TUN queue drops 1203".
func (d drops) String() string {
	if d.err != nil {
		return ", drops ?"
	}
	var s string
	if d.linkRead {
		s += fmt.Sprintf(", link drops %d", d.link)
	}
	if d.tun > 0 {
		s += fmt.Sprintf(", TUN queue drops %d", d.tun)
	}
	if d.podUDP > 0 {
		s += fmt.Sprintf(", pod UDP buffer drops %d", d.podUDP)
	}
	return s
}

// snmpCounter finds counter name of protocol proto in /proc/net/snmp, which
// holds a line of names and then a line of values for each protocol.
func snmpCounter(snmp, proto, name string) (int64, error) {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != proto+":" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == name && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
		break
	}
	return 0, fmt.Errorf("/proc/net/snmp: no %s %s", proto, name)
}

// linkDrops is the link counter's delta for a row's JSON, nil if unread.
func (d drops) linkDrops() *int64 {
	if !d.linkRead {
		return nil
	}
	n := d.link
	return &n
}
