package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/test/testbed"
)

// Bounds of the idle-connection and table cases.
const (
	idleLimit      = 60 * time.Second  // to open the idle connections
	idleWorkers    = 16                // opening them at once
	kubetunReady   = 120 * time.Second // kubetun's start with many Services
	applyLimit     = 60 * time.Second  // an endpoint change until served
	applyPoll      = 10 * time.Millisecond
	buildRounds    = 5 // endpoint changes timed per size
	firstConnCount = 50
	// servicesPerFile keeps each generated manifest near 1 MiB (about 1 KiB
	// per Service and its slice), a ConfigMap's limit and a quarter of what
	// the manifest source reads from one file.
	servicesPerFile = 1000
)

// scaleCIDR holds the generated Services' ClusterIPs, routed into kubetun
// next to the seed's service CIDR (inside the node namespace only).
var scaleCIDR = netip.MustParsePrefix("10.100.0.0/16")

// scaleIP is the i-th generated ClusterIP (i < 65000).
func scaleIP(i int) netip.Addr {
	a := scaleCIDR.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(i+1)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// probeIP is the Service whose endpoint change the table case times.
var probeIP = netip.MustParseAddr("10.100.255.254")

// memSample is kubetun's memory as its /metrics reports it.
type memSample struct {
	rss, heap, stacks, goroutines float64
	gc                            bool // taken right after a forced GC
}

// memory samples kubetun's memory, after a GC when kubetun runs with
// --profiling.
func (b *bench) memory(ctx context.Context) (memSample, error) {
	gc := forceGC(ctx, b.tb.Node)
	m, err := scrapeMetrics(ctx, b.tb.Node)
	if err != nil {
		return memSample{}, err
	}
	return memSample{rss: m[metricRSS], heap: m[metricHeapInuse], stacks: m[metricStacks], goroutines: m[metricGoroutine], gc: gc}, nil
}

// gcNote says whether the heap figures are after a GC.
func (m memSample) gcNote() string {
	if m.gc {
		return "after a forced GC"
	}
	return "without a forced GC (kubetun lacks --profiling), garbage included"
}

// measureIdle opens --idle-conns connections through kubetun, each making
// one request and then idling, and weighs them in kubetun's memory.
func (b *bench) measureIdle(ctx context.Context) error {
	name := fmt.Sprintf("memory per idle connection (%d open)", b.cfg.idleConns)
	progress("%s", name)
	// A fresh kubetun, whose heap the earlier cases left nothing in, with
	// --profiling for the forced GC before each sample.
	if err := b.startKubetun(ctx, "--profiling"); err != nil {
		return err
	}
	time.Sleep(time.Second)
	before, err := b.memory(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	conns, failed, err := openIdle(ctx, b.seed.Client.Namespace, fmt.Sprintf("%s:%d", testbed.ClusterIP, rrPort), b.cfg.idleConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) == 0 {
		return fmt.Errorf("%s: no connection opened: %v", name, err)
	}
	time.Sleep(time.Second) // the last handshakes settle
	after, err := b.memory(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	n := float64(len(conns))
	detail := fmt.Sprintf("%d open (%d failed%s); per connection: Go heap in use %.1f KiB, stacks %.1f KiB, %.1f goroutines; kubetun RSS %.0f → %.0f MiB; heap %s",
		len(conns), failed, errNote(err), (after.heap-before.heap)/n/1024, (after.stacks-before.stacks)/n/1024,
		(after.goroutines-before.goroutines)/n, before.rss/(1<<20), after.rss/(1<<20), after.gcNote())
	r := row{name: name, lowerBetter: true}
	r.results[pathKubetun] = result{value: (after.rss - before.rss) / n / 1024, unit: "KiB RSS", detail: detail}
	b.add(r)
	return nil
}

func errNote(err error) string {
	if err == nil {
		return ""
	}
	return ", first: " + err.Error()
}

// openIdle opens up to n connections to addr from namespace ns, each after
// one request and answer, within idleLimit.
func openIdle(ctx context.Context, ns, addr string, n int) (conns []net.Conn, failed int, firstErr error) {
	ctx, cancel := context.WithTimeout(ctx, idleLimit)
	defer cancel()
	var mu sync.Mutex // guards the results
	var wg sync.WaitGroup
	for range idleWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			testbed.InNamespace(ns, func() error {
				d := net.Dialer{Timeout: rrTimeout}
				for ctx.Err() == nil {
					mu.Lock()
					stop := len(conns) >= n || failed >= maxFailures
					mu.Unlock()
					if stop {
						return nil
					}
					c, err := d.DialContext(ctx, "tcp", addr)
					if err == nil {
						if err = newRRConn(c, rrSmall).exchange(); err != nil {
							c.Close()
						}
					}
					mu.Lock()
					if err != nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
					} else {
						conns = append(conns, c)
					}
					mu.Unlock()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return conns, failed, firstErr
}

// measureTable runs the table cases: resolver.Update in this process, then
// kubetun with many Services.
func (b *bench) measureTable(ctx context.Context) error {
	for _, n := range b.cfg.buildSizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.buildCost(n); err != nil {
			return err
		}
	}
	if len(b.cfg.kubetunSizes) == 0 && len(b.cfg.externalSizes) == 0 {
		return nil
	}
	// The baseline: a fresh kubetun with the bench's Service alone, as the
	// ones with many Services will be.
	if err := b.startKubetun(ctx, "--profiling"); err != nil {
		return err
	}
	time.Sleep(time.Second)
	base, err := b.memory(ctx)
	if err != nil {
		return fmt.Errorf("kubetun's memory before the table cases: %w", err)
	}
	for _, n := range b.cfg.kubetunSizes {
		if err := b.kubetunScale(ctx, n, base, false); err != nil {
			return err
		}
	}
	for _, n := range b.cfg.externalSizes {
		if err := b.kubetunScale(ctx, n, base, true); err != nil {
			return err
		}
	}
	return nil
}

// The table group's node port case: of its generated Services, the first
// externalNodePorts are of type NodePort (node ports from
// externalNodePortBase on), the first externalLBs of those LoadBalancer
// with an ingress IP each from externalLBRange, routed into kubetun.
const (
	externalNodePorts    = 2000
	externalLBs          = 1000
	externalNodePortBase = 30300
)

// externalLBRange holds the generated load-balancer IPs: the benchmarking
// range (RFC 2544), no real network's.
var externalLBRange = netip.MustParsePrefix("198.18.0.0/16")

func externalLBIP(i int) netip.Addr {
	a := externalLBRange.Addr().As4()
	a[2], a[3] = byte(i>>8), byte(i)
	return netip.AddrFrom4(a)
}

// genObjects makes n Services, each with one port and a slice of eps
// endpoints, as the API would hand them over.
func genObjects(n, eps int) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, n)
	slices := make([]*discoveryv1.EndpointSlice, n)
	tcp := corev1.ProtocolTCP
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		ip := scaleIP(i).String()
		svcs[i] = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
				IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
				Ports:      []corev1.ServicePort{{Name: "rr", Port: rrPort, Protocol: tcp, TargetPort: intstr.FromInt32(rrPort)}},
			},
		}
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: name + "-x7k2p", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("rr"), Port: ptr(int32(rrPort)), Protocol: &tcp}},
		}
		for j := range eps {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{endpointIP(i, j)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
				NodeName:   ptr(testbed.NodeName),
			})
		}
		slices[i] = es
	}
	return svcs, slices
}

// endpointIP is endpoint j of generated Service i, a made-up pod address.
func endpointIP(i, j int) string {
	return netip.AddrFrom4([4]byte{10, byte(200 + j%50), byte(i >> 8), byte(i)}).String()
}

func ptr[T any](v T) *T { return &v }

// cpuTime is this process's CPU time so far, all threads.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// buildCost times one endpoint change among n generated Services (three
// endpoints each), recorded in a change tracker as the sources record it
// and applied with resolver.Update, and weighs the snapshot.
func (b *bench) buildCost(n int) error {
	name := fmt.Sprintf("endpoint change among %d Services: resolver.Update", n)
	progress("%s", name)
	svcs, eps := genObjects(n, 3)
	tracker := resolver.NewChangeTracker() // the source's, not weighed with the snapshot
	tracker.Replace(svcs, eps)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	snap, problems := resolver.Update(nil, tracker.Take(), resolver.Topology{NodeName: testbed.NodeName})
	runtime.GC()
	runtime.ReadMemStats(&m1)
	perService := (float64(m1.HeapAlloc) - float64(m0.HeapAlloc)) / float64(n)
	var cpu, wall []time.Duration
	for k := range buildRounds {
		i := (k * 7919) % n
		es := eps[i].DeepCopy()
		es.Endpoints[0].Addresses[0] = endpointIP(i, 40+k)
		eps[i] = es
		c0, t0 := cpuTime(), time.Now()
		tracker.Slice(resolver.Key(es), es)
		snap, _ = resolver.Update(snap, tracker.Take(), resolver.Topology{NodeName: testbed.NodeName})
		cpu, wall = append(cpu, cpuTime()-c0), append(wall, time.Since(t0))
	}
	runtime.KeepAlive(snap)
	slices.Sort(cpu)
	slices.Sort(wall)
	detail := fmt.Sprintf("%d rebuilds: CPU median %v max %v, wall median %v; snapshot heap %.1f KiB per Service; this process's RSS %s",
		buildRounds, fmtDur(cpu[len(cpu)/2]), fmtDur(cpu[len(cpu)-1]), fmtDur(wall[len(wall)/2]), perService/1024, selfRSS())
	if len(problems) > 0 {
		detail += fmt.Sprintf("; %d problems, first: %v", len(problems), problems[0])
	}
	r := row{name: name + " CPU", lowerBetter: true}
	r.results[pathKubetun] = result{value: float64(cpu[len(cpu)/2]) / float64(time.Millisecond), unit: "ms", detail: detail}
	b.add(r)
	mem := row{name: fmt.Sprintf("table memory per Service, %d Services (resolver snapshot, Go heap)", n), lowerBetter: true}
	mem.results[pathKubetun] = result{value: perService / 1024, unit: "KiB"}
	b.add(mem)
	return nil
}

// selfRSS is VmRSS of this process, as /proc reports it.
func selfRSS() string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// kubetunScale restarts kubetun on a manifest directory holding the bench's
// Service, n generated Services (endpoints pod1 and pod2) and a probe
// Service without endpoints, and measures its memory, first connections,
// and how long one endpoint change (the probe's) takes to be served.
//
// With external, some of them are of type NodePort and LoadBalancer
// (externalNodePorts, externalLBs), and kubetun listens on the node ports
// and routes the load-balancer IPs.
func (b *bench) kubetunScale(ctx context.Context, n int, base memSample, external bool) error {
	label := fmt.Sprintf("%d Services", n)
	dir := filepath.Join(b.tmp, "services-"+strconv.Itoa(n))
	if external {
		label = fmt.Sprintf("%d Services, %d NodePort, %d LoadBalancer IPs", n, min(n, externalNodePorts), min(n, externalLBs))
		dir += "-external"
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	progress("%s: writing the manifests in %s", label, dir)
	m := testbed.Manifest{Ports: benchPorts, Endpoints: []testbed.Endpoint{testbed.EndpointOf(b.seed.Pod1)}}
	if err := m.Write(filepath.Join(dir, "service-test.yaml")); err != nil {
		return err
	}
	rr := []testbed.ServicePort{{Name: "rr", Port: rrPort, TargetPort: strconv.Itoa(rrPort), EndpointPort: rrPort}}
	pods := []testbed.Endpoint{testbed.EndpointOf(b.seed.Pod1), testbed.EndpointOf(b.seed.Pod2)}
	svcs := make([]testbed.Service, n)
	for i := range svcs {
		svcs[i] = testbed.Service{Name: fmt.Sprintf("svc-%05d", i), Namespace: "bench", ClusterIPs: []netip.Addr{scaleIP(i)}, Ports: rr, Endpoints: pods}
		if external && i < externalNodePorts {
			svcs[i].Type = "NodePort"
			svcs[i].Ports = []testbed.ServicePort{{Name: "rr", Port: rrPort, TargetPort: strconv.Itoa(rrPort), EndpointPort: rrPort, NodePort: externalNodePortBase + i}}
			if i < externalLBs {
				svcs[i].Type = "LoadBalancer"
				svcs[i].LoadBalancerIPs = []netip.Addr{externalLBIP(i)}
			}
		}
	}
	// In files of servicesPerFile Services: the manifest source refuses
	// files over manifest.MaxFileSize.
	for i := 0; i < n; i += servicesPerFile {
		path := filepath.Join(dir, fmt.Sprintf("generated-%03d.yaml", i/servicesPerFile))
		if err := testbed.WriteServices(path, svcs[i:min(i+servicesPerFile, n)]...); err != nil {
			return err
		}
	}
	probe := testbed.Service{Name: "probe", Namespace: "bench", ClusterIPs: []netip.Addr{probeIP}, Ports: rr}
	probePath := filepath.Join(dir, "probe.yaml")
	if err := testbed.WriteServices(probePath, probe); err != nil {
		return err
	}

	if err := b.kt.Stop(5 * time.Second); err != nil {
		return fmt.Errorf("stopping kubetun: %w", err)
	}
	flags := append(slices.Clone(b.cfg.ktFlags), "--profiling", "--service-cidr", scaleCIDR.String())
	if external {
		flags = append(flags, "--nodeport-addresses", b.seed.Client.Gateway.String()+"/32")
	}
	argv := append([]string{b.cfg.kubetun}, testbed.KubetunArgs(dir, flags...)...)
	began := time.Now()
	kt, err := b.tb.Start(b.tb.Node, "kubetun-"+strconv.Itoa(n), argv...)
	if err != nil {
		return err
	}
	b.kt = kt
	if err := kt.WaitOutput("msg=ready", kubetunReady); err != nil {
		// Too slow on this machine, perhaps: say so and go on.
		b.add(row{name: "kubetun with " + label, failures: []string{err.Error()}})
		return nil
	}
	ready := time.Since(began)
	progress("%s: kubetun ready after %v (pid %d)", label, ready.Round(time.Millisecond), kt.Pid())
	mem, err := b.memory(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	memRow := row{name: "kubetun memory per Service, " + label, lowerBetter: true}
	memRow.results[pathKubetun] = result{value: (mem.rss - base.rss) / float64(n) / 1024, unit: "KiB RSS",
		detail: fmt.Sprintf("RSS %.0f MiB, Go heap in use %.0f MiB (%.2f KiB per Service); with the bench's Service alone %.0f and %.0f MiB; heap %s; ready %v after start",
			mem.rss/(1<<20), mem.heap/(1<<20), (mem.heap-base.heap)/float64(n)/1024, base.rss/(1<<20), base.heap/(1<<20), mem.gcNote(), ready.Round(time.Millisecond))}
	b.add(memRow)

	// First connections: to Services spread over the table, each never
	// connected to before; the baseline connects to pod1 afresh as often.
	k := min(n, firstConnCount)
	first := newPercentileRows("first connection + request, "+label, "µs", micros)
	for _, p := range []int{pathDirect, pathKubetun} {
		var lat []time.Duration
		for j := range k {
			addr := netip.AddrPortFrom(b.seed.Pod1.IP, rrPort).String()
			if p == pathKubetun {
				addr = netip.AddrPortFrom(scaleIP(j*n/k), rrPort).String()
			}
			t0 := time.Now()
			c, err := rrDial(b.seed.Client.Namespace, addr, rrSmall)
			if err == nil {
				err = c.exchange()
				c.c.Close()
			}
			if err != nil {
				return fmt.Errorf("%s: first connection to %s: %w", label, addr, err)
			}
			lat = append(lat, time.Since(t0))
		}
		first.set(p, lat, fmt.Sprintf("%d connections", k))
	}
	b.addPercentiles(first)

	// One endpoint change: the probe Service gets pod1.
	probe.Endpoints = pods[:1]
	before := b.sample()
	t0 := time.Now()
	if err := testbed.WriteServices(probePath, probe); err != nil {
		return err
	}
	addr := netip.AddrPortFrom(probeIP, rrPort).String()
	tries := 0
	for {
		tries++
		c, err := testbed.DialIn(b.seed.Client.Namespace, "tcp", addr, 500*time.Millisecond)
		if err == nil {
			err = newRRConn(c, rrSmall).exchange()
			c.Close()
			if err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(t0) > applyLimit {
			b.add(row{name: "endpoint change in a manifest → served, " + label,
				failures: []string{fmt.Sprintf("not served after %v (%d tries): %v", applyLimit, tries, err)}})
			return nil
		}
		time.Sleep(applyPoll)
	}
	served := time.Since(t0)
	use := b.sample().since(before)
	r := row{name: "endpoint change in a manifest → served, " + label, lowerBetter: true}
	r.results[pathKubetun] = result{value: float64(served) / float64(time.Millisecond), unit: "ms",
		detail: fmt.Sprintf("%d tries %v apart; kubetun CPU in that time %v", tries, applyPoll, fmtDur(use.user+use.sys))}
	b.add(r)
	return nil
}
