package netstack

import (
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitFlows waits until ns.ActiveFlowsByService() is want, or fails after 5 s.
func waitFlows(t testing.TB, ns *Stack, want map[string]int) {
	t.Helper()
	var got map[string]int
	for range 500 {
		if got = ns.ActiveFlowsByService(); got != nil && maps.Equal(got, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("ActiveFlowsByService() = %v after 5s, want %v", got, want)
}

// TestActiveFlowsTCP: a connection counts under its Service while it is
// spliced, and no longer once the client closed it.
func TestActiveFlowsTCP(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	startPod(t, d, pod2, echo)
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1, pod2}), d)
	cs := clientStack(t, link)
	if got := ns.ActiveFlowsByService(); got == nil || len(got) != 0 {
		t.Errorf("ActiveFlowsByService() = %v before any flow, want an empty map", got)
	}

	var conns []net.Conn
	for range 2 {
		c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFlows(t, ns, map[string]int{"default/service-test": 2})
	conns[0].Close()
	waitFlows(t, ns, map[string]int{"default/service-test": 1})
	conns[1].Close()
	waitFlows(t, ns, map[string]int{})
	if st := ns.Stats(); st.TCPActive != 0 {
		t.Errorf("Stats().TCPActive = %d, want 0", st.TCPActive)
	}
}

// TestActiveFlowsPodReset: a flow the pod resets while the client is idle
// stops counting.
func TestActiveFlowsPodReset(t *testing.T) {
	reset := make(chan struct{})
	d := new(fakeDialer)
	startPod(t, d, pod1, func(c net.Conn) {
		<-reset
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	ns, link := newTestStack(t, seedTable(t, []netip.AddrPort{pod1}), d)
	cs := clientStack(t, link)
	c, err := dialService(t, cs, netip.AddrPortFrom(clusterIP, 80))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	waitFlows(t, ns, map[string]int{"default/service-test": 1})
	close(reset)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("Read after the pod's reset = %v, want the connection reset", err)
	}
	waitFlows(t, ns, map[string]int{})
}

// TestActiveFlowsUDP: a UDP session counts under its Service until it ends,
// here by its idle timeout.
func TestActiveFlowsUDP(t *testing.T) {
	const idle = 200 * time.Millisecond
	d := new(fakeDialer)
	startUDPPod(t, d, pod1, "pod1")
	ns, link := newTestStackTimers(t, buildTable(t, udpService(clusterIP, pod1)), d, &udpTimers{idle: idle, dnsIdle: idle, tick: 20 * time.Millisecond})
	c := udpClient(t, clientStack(t, link), client)
	exchange(t, c, netip.AddrPortFrom(clusterIP, 80), "x")
	waitFlows(t, ns, map[string]int{"default/udp-test": 1})
	waitSessions(t, ns, 0)
	waitFlows(t, ns, map[string]int{})
}

// TestActiveFlowsClose: Close ends every flow and session, and none counts
// afterwards.
func TestActiveFlowsClose(t *testing.T) {
	d := new(fakeDialer)
	startPod(t, d, pod1, echo)
	startUDPPod(t, d, pod1, "pod1")
	ns, link := newTestStack(t, buildTable(t,
		testService{name: "both", ip: clusterIP, eps: []netip.Addr{pod1.Addr()},
			ports: []testPort{{"TCP", 80, 8080}, {"UDP", 80, 8080}}}), d)
	cs := clientStack(t, link)
	svc := netip.AddrPortFrom(clusterIP, 80)
	c, err := dialService(t, cs, svc)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	exchange(t, udpClient(t, cs, client), svc, "x")
	waitFlows(t, ns, map[string]int{"default/both": 2})
	ns.Close()
	if got := ns.ActiveFlowsByService(); got == nil || len(got) != 0 {
		t.Errorf("ActiveFlowsByService() after Close = %v, want an empty map", got)
	}
}

// TestActiveFlowsPodAddress: a connection to a pod's own address
// (Config.Pods) is spliced but counts under no Service.
func TestActiveFlowsPodAddress(t *testing.T) {
	db0 := netip.MustParseAddrPort("10.0.9.2:5432")
	d := new(fakeDialer)
	startPod(t, d, db0, echo)
	ns, link := newTestStackConfig(t, seedTable(t, []netip.AddrPort{pod1}), d, nil, 1500,
		func(c *Config) { c.Pods = fakePods{db0.Addr(): "db-0"} })
	c, err := dialService(t, clientStack(t, link), db0)
	if err != nil {
		t.Fatalf("dial %v: %v", db0, err)
	}
	defer c.Close()
	waitFor(t, "the flow spliced", func() bool { return ns.Stats().TCPActive == 1 })
	if got := ns.ActiveFlowsByService(); len(got) != 0 {
		t.Errorf("ActiveFlowsByService() = %v, want none", got)
	}
}

// TestServiceFlowsRetire: reading the counts retires the counters at zero
// while flows start and end, and never loses a flow: each round, with every
// worker holding one flow, the count is the number of workers, and then 0.
func TestServiceFlowsRetire(t *testing.T) {
	const workers, rounds = 8, 200
	var (
		c    serviceFlows
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() { // a reader retiring counters all along
		for {
			select {
			case <-stop:
				return
			default:
				c.snapshot()
			}
		}
	})
	for r := range rounds {
		held := make(chan struct{})
		var started, ended sync.WaitGroup
		for range workers {
			started.Add(1)
			ended.Go(func() {
				n := c.start("ns/a")
				started.Done()
				<-held
				c.end(n)
			})
		}
		started.Wait()
		if got := c.snapshot(); got["ns/a"] != workers || len(got) != 1 {
			t.Fatalf("round %d: snapshot() = %v with %d flows held, want ns/a: %d", r, got, workers, workers)
		}
		close(held)
		ended.Wait()
		if got := c.snapshot(); len(got) != 0 {
			t.Fatalf("round %d: snapshot() = %v with no flow held, want none", r, got)
		}
	}
	close(stop)
	wg.Wait()
	c.snapshot()
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d counters left in the map at zero after a snapshot, want 0", n)
	}
}

// TestServiceFlowsStartRetired: a start that finds a retired counter (one a
// snapshot retired after the start loaded it) counts in a new one instead.
func TestServiceFlowsStartRetired(t *testing.T) {
	var c serviceFlows
	old := new(atomic.Int64)
	old.Store(retired)
	c.m.Store("ns/a", old)
	n := c.start("ns/a")
	if n == old || n.Load() != 1 {
		t.Fatalf("start on a retired counter returned it (%v) or a count of %d, want a new counter at 1", n == old, n.Load())
	}
	if v, _ := c.m.Load("ns/a"); v != n {
		t.Errorf("the map holds %v, want the new counter", v)
	}
	if got := c.snapshot(); got["ns/a"] != 1 {
		t.Errorf("snapshot() = %v, want ns/a: 1", got)
	}
	c.end(n)
	c.end(c.start("")) // counts under no Service: no-op
	if got := c.snapshot(); len(got) != 0 {
		t.Errorf("snapshot() = %v after the end, want none", got)
	}
}

// BenchmarkServiceFlows is the cost a flow pays to be counted: its start
// and its end.
func BenchmarkServiceFlows(b *testing.B) {
	var c serviceFlows
	c.end(c.start("default/service-test"))
	for b.Loop() {
		c.end(c.start("default/service-test"))
	}
}
