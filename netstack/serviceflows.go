package netstack

import (
	"math"
	"sync"
	"sync/atomic"
)

// serviceFlows counts the TCP flows being spliced and the UDP sessions open
// now, per Service. A flow takes its Service's counter once, when it starts
// forwarding, and keeps it: its end is one atomic add. Nothing is counted per
// packet, and no lock is taken.
type serviceFlows struct {
	m sync.Map // Service ("namespace/name") -> *atomic.Int64
}

// retired is the value of a counter that snapshot took out of m at zero: a
// start that finds it (it held the counter from before) takes a new one.
// Far enough below zero that no number of such starts lifts it back.
const retired = math.MinInt64 / 2

// start counts a flow of service and returns its counter, which end takes
// it off. A flow of no Service ("") is not counted: nil.
func (c *serviceFlows) start(service string) *atomic.Int64 {
	if service == "" {
		return nil
	}
	for {
		v, ok := c.m.Load(service)
		if !ok {
			v, _ = c.m.LoadOrStore(service, new(atomic.Int64))
		}
		n := v.(*atomic.Int64)
		if n.Add(1) > 0 {
			return n
		}
		// Retired between the Load and the Add: make sure it is out of
		// the map, and take a new one.
		c.m.CompareAndDelete(service, n)
	}
}

// end takes one flow off n, a counter start returned (nil: none).
func (c *serviceFlows) end(n *atomic.Int64) {
	if n != nil {
		n.Add(-1)
	}
}

// snapshot returns the Services with flows now and their counts, never nil.
// It takes the counters at zero out of the map, so that the Services which
// come and go do not pile up: a counter is retired only while no flow holds
// it, as every flow holding one counts in it.
func (c *serviceFlows) snapshot() map[string]int {
	out := make(map[string]int)
	c.m.Range(func(k, v any) bool {
		n := v.(*atomic.Int64)
		if cnt := n.Load(); cnt > 0 {
			out[k.(string)] = int(cnt)
		} else if n.CompareAndSwap(0, retired) {
			c.m.CompareAndDelete(k, n)
		}
		return true
	})
	return out
}

// prune takes the counters at zero out of the map, as snapshot does, so
// that the Services which come and go do not pile up when nobody asks for
// the counts.
func (c *serviceFlows) prune() {
	c.m.Range(func(k, v any) bool {
		if n := v.(*atomic.Int64); n.CompareAndSwap(0, retired) {
			c.m.CompareAndDelete(k, n)
		}
		return true
	})
}

// ActiveFlowsByService returns, by Service ("namespace/name"), the TCP
// connections being spliced and the UDP sessions open now; a Service with
// none is left out, and the map is never nil. Connections to a pod's own
// address (Config.Pods) count under no Service: the Pods a Stack is given
// name only the pod. It takes no lock the packet path takes.
func (s *Stack) ActiveFlowsByService() map[string]int { return s.byService.snapshot() }
