package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/testbed"
)

// The API case: how long an endpoint change made through kube-apiserver
// takes to be served, with many Services in the cluster. The real control
// plane (package controlplane) runs in the node namespace, `kubetun run
// --kubeconfig` watches it as a node daemon does, the bench creates the
// generated Services with their EndpointSlices through the API, and then
// gives a probe Service's EndpointSlice pod1's address and takes it away, in
// turn: from the update's return until a connection to the probe's ClusterIP
// is answered (or, once the address is gone, refused).

// Bounds of the API case.
const (
	apiStartLimit  = 2 * time.Minute  // the control plane's start
	apiCreateLimit = 5 * time.Minute  // creating the Services and slices of all sizes
	apiServedLimit = 2 * time.Minute  // kubetun serving every Service created
	apiChangeLimit = 10 * time.Second // one change until served
	apiPoll        = 2 * time.Millisecond
	apiWorkers     = 8 // creating objects at once
	apiNamespace   = "bench"
)

// measureAPI runs the API case, or skips it with a note when the
// control-plane binaries are missing.
func (b *bench) measureAPI(ctx context.Context) (err error) {
	bins, err := controlplane.Find()
	if err != nil {
		note := fmt.Sprintf("api: skipped, control-plane binaries missing ('make controlplane' builds them): %v", err)
		progress("%s", note)
		b.notes = append(b.notes, note)
		return nil
	}
	progress("api: starting the control plane in %s", b.tb.Node)
	began := time.Now()
	sctx, cancel := context.WithTimeout(ctx, apiStartLimit)
	defer cancel()
	cp, err := controlplane.Start(sctx, controlplane.Options{Namespace: b.tb.Node, Bins: bins,
		ServiceCIDR: scaleCIDR.String(), Dir: filepath.Join(b.tmp, "controlplane-api")})
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	defer func() {
		if cerr := cp.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("api: control plane: Close: %w", cerr)
		}
	}()
	if err := cp.CreateNamespace(sctx, apiNamespace); err != nil {
		return fmt.Errorf("api: %w", err)
	}
	rc := cp.RESTConfig()
	rc.QPS, rc.Burst = 5000, 5000 // the bench's own writes; kube-apiserver's limits still hold
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("api: client: %w", err)
	}
	probe, probeSlice := apiProbe()
	if _, err := cs.CoreV1().Services(apiNamespace).Create(sctx, probe, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("api: create Service probe: %w", err)
	}
	if probeSlice, err = cs.DiscoveryV1().EndpointSlices(apiNamespace).Create(sctx, probeSlice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("api: create EndpointSlice of probe: %w", err)
	}
	progress("api: control plane ready in %v", time.Since(began).Round(time.Millisecond))

	if err := b.kt.Stop(5 * time.Second); err != nil {
		return fmt.Errorf("stopping kubetun: %w", err)
	}
	argv := append([]string{b.cfg.kubetun, "run", "--kubeconfig", cp.Kubeconfig, "--node-name", testbed.NodeName,
		"--service-cidr", scaleCIDR.String(), "--tun", testbed.TUN, "--profiling"}, b.cfg.ktFlags...)
	kt, err := b.tb.Start(b.tb.Node, "kubetun-api", argv...)
	if err != nil {
		return err
	}
	b.kt = kt
	if err := kt.WaitOutput("msg=ready", kubetunReady); err != nil {
		return fmt.Errorf("api: kubetun: %w; its output:\n%s", err, kt.Output())
	}
	time.Sleep(time.Second)
	base, err := b.memory(ctx)
	if err != nil {
		return fmt.Errorf("api: kubetun's memory before the Services: %w", err)
	}

	cctx, cancel := context.WithTimeout(ctx, apiCreateLimit)
	defer cancel()
	created := 0
	for _, n := range b.cfg.apiSizes {
		label := fmt.Sprintf("%d Services", n)
		t0 := time.Now()
		if err := b.apiCreate(cctx, cs, created, n); err != nil {
			b.add(row{name: "endpoint change through the API → served, " + label, failures: []string{err.Error()}})
			return nil
		}
		progress("api: %s: created %d Services and their EndpointSlices in %v", label, n-created, time.Since(t0).Round(time.Millisecond))
		created = n
		// Served: the last one created answers.
		if err := b.apiWait(ctx, netip.AddrPortFrom(apiIP(n-1), rrPort).String(), true, apiServedLimit); err != nil {
			b.add(row{name: "endpoint change through the API → served, " + label, failures: []string{err.Error()}})
			return nil
		}
		progress("api: %s: kubetun serves all %v after the first create", label, time.Since(t0).Round(time.Millisecond))
		if mem, err := b.memory(ctx); err == nil {
			r := row{name: "kubetun memory per Service through the API, " + label, lowerBetter: true}
			r.results[pathKubetun] = result{value: (mem.rss - base.rss) / float64(n) / 1024, unit: "KiB RSS",
				detail: fmt.Sprintf("RSS %.0f → %.0f MiB, Go heap in use %.0f → %.0f MiB (%.2f KiB per Service; the informers' caches included); heap %s",
					base.rss/(1<<20), mem.rss/(1<<20), base.heap/(1<<20), mem.heap/(1<<20), (mem.heap-base.heap)/float64(n)/1024, mem.gcNote())}
			b.add(r)
		}
		if err := b.apiChanges(ctx, cs, &probeSlice, label); err != nil {
			return err
		}
	}
	return nil
}

// apiProbe is the probe Service, at probeIP, and its EndpointSlice, empty.
func apiProbe() (*corev1.Service, *discoveryv1.EndpointSlice) {
	svcs, slices := apiObjects(0, 1, netip.Addr{})
	svc, es := svcs[0], slices[0]
	svc.Name, es.Name = "probe", "probe-x7k2p"
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = probeIP.String(), []string{probeIP.String()}
	es.Labels[discoveryv1.LabelServiceName] = "probe"
	es.Endpoints = nil
	return svc, es
}

// apiObjects makes the generated Services from..to, selector-less (the
// EndpointSlice controller leaves their slices alone), each with one slice
// of one endpoint, pod.
func apiObjects(from, to int, pod netip.Addr) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	tcp := corev1.ProtocolTCP
	var svcs []*corev1.Service
	var slices []*discoveryv1.EndpointSlice
	for i := from; i < to; i++ {
		name := fmt.Sprintf("svc-%05d", i)
		ip := apiIP(i).String()
		svcs = append(svcs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: apiNamespace, Name: name},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "rr", Port: rrPort, Protocol: tcp, TargetPort: intstr.FromInt32(rrPort)}},
			},
		})
		slices = append(slices, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: apiNamespace, Name: name + "-x7k2p", Labels: map[string]string{
				discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench.kubetun.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("rr"), Port: ptr(int32(rrPort)), Protocol: &tcp}},
			Endpoints:   apiEndpoints(pod),
		})
	}
	return svcs, slices
}

// apiIP is generated Service i's ClusterIP: scaleIP(i+1), as kube-apiserver
// gives the range's first address to the Service kubernetes.
func apiIP(i int) netip.Addr { return scaleIP(i + 1) }

// apiEndpoints is one ready endpoint at pod on the bench's node.
func apiEndpoints(pod netip.Addr) []discoveryv1.Endpoint {
	return []discoveryv1.Endpoint{{
		Addresses:  []string{pod.String()},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
		NodeName:   ptr(testbed.NodeName),
	}}
}

// apiCreate creates the generated Services from..to and their slices,
// apiWorkers at a time.
func (b *bench) apiCreate(ctx context.Context, cs kubernetes.Interface, from, to int) error {
	svcs, slices := apiObjects(from, to, b.seed.Pod1.IP)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	var done atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a line every 10 s: creating 10 000 takes a minute or more
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				progress("api: created %d of %d Services", from+int(done.Load()), to)
			}
		}
	}()
	for range apiWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				_, err := cs.CoreV1().Services(apiNamespace).Create(ctx, svcs[i], metav1.CreateOptions{})
				if err == nil {
					_, err = cs.DiscoveryV1().EndpointSlices(apiNamespace).Create(ctx, slices[i], metav1.CreateOptions{})
				}
				done.Add(1)
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("api: create %s: %w", svcs[i].Name, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range svcs {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = fmt.Errorf("api: creating Services %d to %d: %w", from, to, ctx.Err())
	}
	return first
}

// apiChanges gives the probe's slice pod1 and takes it away, in turn, and
// times each change from the update's return until it is served.
func (b *bench) apiChanges(ctx context.Context, cs kubernetes.Interface, es **discoveryv1.EndpointSlice, label string) error {
	addr := netip.AddrPortFrom(probeIP, rrPort).String()
	var lat []time.Duration
	before := b.sample()
	for i := range b.cfg.apiChanges {
		add := i%2 == 0
		next := (*es).DeepCopy()
		next.Endpoints = nil
		if add {
			next.Endpoints = apiEndpoints(b.seed.Pod1.IP)
		}
		updated, err := cs.DiscoveryV1().EndpointSlices(apiNamespace).Update(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("api: update EndpointSlice of probe: %w", err)
		}
		t0 := time.Now()
		*es = updated
		if err := b.apiWait(ctx, addr, add, apiChangeLimit); err != nil {
			b.add(row{name: "endpoint change through the API → served, " + label, failures: []string{err.Error()}})
			return nil
		}
		lat = append(lat, time.Since(t0))
	}
	use := b.sample().since(before)
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rows := newPercentileRows("endpoint change through the API → served, "+label, "ms", ms)
	rows.set(pathKubetun, lat, fmt.Sprintf("%d changes (endpoint added, removed in turn), probed every %v; max %v; kubetun CPU %v per change, the probes' connections included",
		len(lat), apiPoll, lat[len(lat)-1].Round(time.Microsecond), fmtDur((use.user+use.sys)/time.Duration(len(lat)))))
	b.addPercentiles(rows)
	return nil
}

// apiWait waits, bounded by limit, until a connection to addr from the
// client is answered (served) or refused (!served).
func (b *bench) apiWait(ctx context.Context, addr string, served bool, limit time.Duration) error {
	t0 := time.Now()
	var last error
	for tries := 1; ; tries++ {
		c, err := rrDial(b.seed.Client.Namespace, addr, rrSmall)
		if err == nil {
			err = c.exchange()
			c.c.Close()
		}
		switch {
		case served && err == nil:
			return nil
		case !served && errors.Is(err, syscall.ECONNREFUSED):
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(t0) > limit {
			want := "answered"
			if !served {
				want = "refused"
			}
			return fmt.Errorf("%s not %s after %v (%d tries; last: %v)", addr, want, limit, tries, last)
		}
		time.Sleep(apiPoll)
	}
}

// parseAPISizes is --api-services: ascending, the Services are created once.
func parseAPISizes(s string) ([]int, error) {
	sizes, err := parseSizes("--api-services", s)
	if err != nil {
		return nil, err
	}
	if !slices.IsSorted(sizes) {
		return nil, fmt.Errorf("--api-services %q: want ascending sizes (each adds Services to the last)", s)
	}
	return sizes, nil
}
