package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

// wait bounds every wait for something the Source does in the background.
const wait = 5 * time.Second

// logBuffer is a log sink the test reads while the Source writes to it.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) Count(s string) int { return strings.Count(b.String(), s) }

func testLogger() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func svc(ns, name string, labels map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: "10.96.0.10",
			Ports:     []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
}

func endpointSlice(ns, name, service string, extra map[string]string) *discoveryv1.EndpointSlice {
	labels := map[string]string{discoveryv1.LabelServiceName: service}
	for k, v := range extra {
		labels[k] = v
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.1.2"}}},
	}
}

func serviceCIDR(name string, cidrs ...string) *networkingv1.ServiceCIDR {
	return &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: cidrs},
	}
}

// whole is the whole state the States applied so far add up to, as the
// table is built from them.
type whole struct {
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
}

// accumulator adds States up into the whole state.
type accumulator struct {
	svcs   map[string]*corev1.Service
	slices map[string]*discoveryv1.EndpointSlice
}

// add applies st's changes and returns the whole state.
func (a *accumulator) add(st State) whole {
	if a.svcs == nil || st.Changes != nil && st.Changes.All {
		a.svcs, a.slices = make(map[string]*corev1.Service), make(map[string]*discoveryv1.EndpointSlice)
	}
	if ch := st.Changes; ch != nil {
		for k, c := range ch.Services {
			if c.Current == nil {
				delete(a.svcs, k)
			} else {
				a.svcs[k] = c.Current
			}
		}
		for k, c := range ch.Slices {
			if c.Current == nil {
				delete(a.slices, k)
			} else {
				a.slices[k] = c.Current
			}
		}
	}
	return whole{Services: slices.Collect(maps.Values(a.svcs)), Slices: slices.Collect(maps.Values(a.slices))}
}

// names returns "ns/name" of every Service and slice in st, sorted.
func names(st whole) (services, sliceNames []string) {
	for _, s := range st.Services {
		services = append(services, s.Namespace+"/"+s.Name)
	}
	for _, es := range st.Slices {
		sliceNames = append(sliceNames, es.Namespace+"/"+es.Name)
	}
	slices.Sort(services)
	slices.Sort(sliceNames)
	return services, sliceNames
}

// running is a Source running in the background, its callbacks feeding
// channels.
type running struct {
	src    *Source
	log    *logBuffer
	states chan whole
	cidrs  chan []netip.Prefix
	cancel context.CancelFunc
	exited chan struct{} // closed when Run has returned err
	err    error
}

// start runs a Source over client until the test ends.
func start(tb testing.TB, client *fake.Clientset, opts Options) *running {
	tb.Helper()
	log, buf := testLogger()
	r := &running{
		src:    New(client, opts, log),
		log:    buf,
		states: make(chan whole, 100),
		cidrs:  make(chan []netip.Prefix, 100),
		exited: make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.exited)
		var acc accumulator
		r.err = r.src.Run(ctx,
			func(st State) { r.states <- acc.add(st) },
			func(p []netip.Prefix) { r.cidrs <- slices.Clone(p) })
	}()
	tb.Cleanup(func() { r.stop(tb) })
	return r
}

// stop cancels the Source and waits for Run to return nil.
func (r *running) stop(tb testing.TB) {
	tb.Helper()
	r.cancel()
	select {
	case <-r.exited:
		if r.err != nil {
			tb.Errorf("Run after sync, then cancel = %v, want nil", r.err)
		}
	case <-time.After(wait):
		tb.Fatalf("Run did not return within %v of its context's end", wait)
	}
}

// next returns the next state applied, failing after the bounded wait.
func (r *running) next(tb testing.TB) whole {
	tb.Helper()
	select {
	case st := <-r.states:
		return st
	case <-r.exited:
		tb.Fatalf("Run returned %v while waiting for apply", r.err)
	case <-time.After(wait):
		tb.Fatalf("no apply within %v", wait)
	}
	return whole{}
}

// waitFor waits for an applied state whose Services and slices are as
// given (sorted "ns/name").
func (r *running) waitFor(tb testing.TB, services, sliceNames []string) {
	tb.Helper()
	deadline := time.After(wait)
	var gotSvc, gotSlices []string
	for {
		select {
		case st := <-r.states:
			gotSvc, gotSlices = names(st)
			if slices.Equal(gotSvc, services) && slices.Equal(gotSlices, sliceNames) {
				return
			}
		case <-deadline:
			tb.Fatalf("no apply of Services %v, slices %v within %v; last: %v, %v", services, sliceNames, wait, gotSvc, gotSlices)
		}
	}
}

// quiet checks that nothing is applied for a while.
func (r *running) quiet(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case st := <-r.states:
		s, e := names(st)
		tb.Errorf("apply(%v, %v), want none", s, e)
	case <-time.After(d):
	}
}

func TestRunInitialState(t *testing.T) {
	client := fake.NewClientset(
		svc("default", "web", nil),
		svc("kube-system", "dns", map[string]string{"app": "dns"}),
		svc("default", "other-proxy", map[string]string{LabelServiceProxyName: "someone-else"}),
		endpointSlice("default", "web-abc", "web", nil),
		endpointSlice("kube-system", "dns-xyz", "dns", nil),
		endpointSlice("default", "headless-abc", "headless", map[string]string{LabelHeadless: ""}),
		endpointSlice("default", "other-proxy-abc", "other-proxy", nil),
	)
	r := start(t, client, Options{})
	st := r.next(t)
	gotSvc, gotSlices := names(st)
	if want := []string{"default/web", "kube-system/dns"}; !slices.Equal(gotSvc, want) {
		t.Errorf("first apply: Services %v, want %v (not the one labelled %s)", gotSvc, want, LabelServiceProxyName)
	}
	// The slices of a Service another proxy owns are still listed: Build
	// finds no Service to join them to. Headless slices are listed for DNS;
	// Build keeps them out of the proxy's table.
	if want := []string{"default/headless-abc", "default/other-proxy-abc", "default/web-abc", "kube-system/dns-xyz"}; !slices.Equal(gotSlices, want) {
		t.Errorf("first apply: slices %v, want %v", gotSlices, want)
	}
	if n := r.log.Count("informer caches synced"); n != 1 {
		t.Errorf("log has %d \"informer caches synced\", want 1:\n%s", n, r.log)
	}
	r.quiet(t, 200*time.Millisecond)
}

// TestRunSelectors checks what the Source asks the API for. The fake
// clientset applies label selectors to List but not to Watch, so what is
// filtered out later is the apiserver's business: check the selectors sent.
func TestRunSelectors(t *testing.T) {
	client := fake.NewClientset(serviceCIDR("kubernetes", "10.96.0.0/16"))
	var (
		mu   sync.Mutex // guards seen
		seen = make(map[string][]string)
	)
	record := func(verb, resource, selector string) {
		mu.Lock()
		defer mu.Unlock()
		key := verb + " " + resource
		seen[key] = append(seen[key], selector)
	}
	client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, kruntime.Object, error) {
		record("list", a.GetResource().Resource, a.(k8stesting.ListActionImpl).ListOptions.LabelSelector)
		return false, nil, nil
	})
	client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		record("watch", a.GetResource().Resource, a.(k8stesting.WatchActionImpl).ListOptions.LabelSelector)
		return false, nil, nil
	})
	r := start(t, client, Options{ServiceCIDRs: true})
	r.next(t)

	const kubeProxy = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	tests := []struct {
		call string
		want string
	}{
		{"list services", kubeProxy},
		{"watch services", kubeProxy},
		// Headless slices too: DNS answers with them.
		{"list endpointslices", "!service.kubernetes.io/service-proxy-name"},
		{"watch endpointslices", "!service.kubernetes.io/service-proxy-name"},
		// ServiceCIDRs carry none of the labels: nothing to select.
		{"list servicecidrs", ""},
		{"watch servicecidrs", ""},
	}
	mu.Lock()
	defer mu.Unlock()
	for _, tt := range tests {
		got := seen[tt.call]
		if len(got) == 0 {
			t.Errorf("%s: not called (calls: %v)", tt.call, seen)
			continue
		}
		for _, sel := range got {
			if sel != tt.want {
				t.Errorf("%s: labelSelector %q, want %q", tt.call, sel, tt.want)
			}
		}
	}
}

// TestRunProxyName: with ProxyName, only the Services labelled with it (and
// their slices) are listed, the ones kube-proxy leaves alone.
func TestRunProxyName(t *testing.T) {
	client := fake.NewClientset(
		svc("default", "web", nil),
		svc("default", "moved", map[string]string{LabelServiceProxyName: "kubetun"}),
		svc("default", "other-proxy", map[string]string{LabelServiceProxyName: "someone-else"}),
		endpointSlice("default", "web-abc", "web", nil),
		endpointSlice("default", "moved-abc", "moved", map[string]string{LabelServiceProxyName: "kubetun"}),
	)
	r := start(t, client, Options{ProxyName: "kubetun"})
	gotSvc, gotSlices := names(r.next(t))
	if want := []string{"default/moved"}; !slices.Equal(gotSvc, want) {
		t.Errorf("Services %v, want %v (only those labelled %s=kubetun)", gotSvc, want, LabelServiceProxyName)
	}
	if want := []string{"default/moved-abc"}; !slices.Equal(gotSlices, want) {
		t.Errorf("slices %v, want %v", gotSlices, want)
	}
}

func TestRunChanges(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(svc("default", "web", nil), endpointSlice("default", "web-abc", "web", nil))
	r := start(t, client, Options{})
	r.waitFor(t, []string{"default/web"}, []string{"default/web-abc"})

	steps := []struct {
		name     string
		do       func() error
		services []string
		slices   []string
	}{
		{
			name: "create a Service",
			do: func() error {
				_, err := client.CoreV1().Services("default").Create(ctx, svc("default", "api", nil), metav1.CreateOptions{})
				return err
			},
			services: []string{"default/api", "default/web"},
			slices:   []string{"default/web-abc"},
		},
		{
			name: "create a slice",
			do: func() error {
				_, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, endpointSlice("default", "api-1", "api", nil), metav1.CreateOptions{})
				return err
			},
			services: []string{"default/api", "default/web"},
			slices:   []string{"default/api-1", "default/web-abc"},
		},
		{
			name: "update a slice",
			do: func() error {
				es := endpointSlice("default", "api-1", "api", nil)
				// The fake clientset leaves resourceVersion as given (the
				// apiserver would bump it): set it, or the update looks like
				// a resync.
				es.ResourceVersion = "2"
				es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.2.2"}})
				_, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{})
				return err
			},
			services: []string{"default/api", "default/web"},
			slices:   []string{"default/api-1", "default/web-abc"},
		},
		{
			name: "delete a Service",
			do: func() error {
				return client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{})
			},
			services: []string{"default/api"},
			slices:   []string{"default/api-1", "default/web-abc"},
		},
		{
			name: "delete a slice",
			do: func() error {
				return client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-abc", metav1.DeleteOptions{})
			},
			services: []string{"default/api"},
			slices:   []string{"default/api-1"},
		},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		r.waitFor(t, s.services, s.slices)
	}

	// The update is in the state, not just announced.
	if err := client.CoreV1().Services("default").Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	st := r.next(t)
	for len(st.Services) != 0 {
		st = r.next(t)
	}
	if len(st.Slices) != 1 || len(st.Slices[0].Endpoints) != 2 {
		t.Errorf("state after the update: slices %+v, want default/api-1 with 2 endpoints", st.Slices)
	}

	// A burst of changes ends in one state with all of them.
	var want []string
	for i := range 20 {
		name := fmt.Sprintf("burst-%02d", i)
		want = append(want, "default/"+name)
		if _, err := client.CoreV1().Services("default").Create(ctx, svc("default", name, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r.waitFor(t, want, []string{"default/api-1"})
}

// TestNotifier checks the event handlers: every add, delete and real update
// notes a change and calls onChange; an update that keeps the
// resourceVersion does neither; any number of changes leave one notice.
func TestNotifier(t *testing.T) {
	withRV := func(rv string) *corev1.Service {
		s := svc("default", "web", nil)
		s.ResourceVersion = rv
		return s
	}
	tests := []struct {
		name  string
		event func(cache.ResourceEventHandlerFuncs)
		want  int // onChange calls; a change is pending if > 0
	}{
		{"add", func(h cache.ResourceEventHandlerFuncs) { h.AddFunc(withRV("1")) }, 1},
		{"update with a new resourceVersion", func(h cache.ResourceEventHandlerFuncs) { h.UpdateFunc(withRV("1"), withRV("2")) }, 1},
		{"update with the same resourceVersion", func(h cache.ResourceEventHandlerFuncs) { h.UpdateFunc(withRV("1"), withRV("1")) }, 0},
		{"update of a slice with the same resourceVersion", func(h cache.ResourceEventHandlerFuncs) {
			a, b := endpointSlice("default", "web-1", "web", nil), endpointSlice("default", "web-1", "web", nil)
			a.ResourceVersion, b.ResourceVersion = "7", "7"
			h.UpdateFunc(a, b)
		}, 0},
		{"update of something without metadata", func(h cache.ResourceEventHandlerFuncs) { h.UpdateFunc("a", "b") }, 1},
		{"delete", func(h cache.ResourceEventHandlerFuncs) { h.DeleteFunc(withRV("1")) }, 1},
		{"delete of a tombstone", func(h cache.ResourceEventHandlerFuncs) {
			h.DeleteFunc(cache.DeletedFinalStateUnknown{Key: "default/web", Obj: withRV("1")})
		}, 1},
		{"many changes", func(h cache.ResourceEventHandlerFuncs) {
			for i := range 10 {
				h.AddFunc(withRV(fmt.Sprint(i)))
				h.UpdateFunc(withRV(fmt.Sprint(i)), withRV(fmt.Sprint(i+1)))
				h.UpdateFunc(withRV(fmt.Sprint(i)), withRV(fmt.Sprint(i)))
				h.DeleteFunc(withRV(fmt.Sprint(i)))
			}
		}, 30},
	}
	for _, tt := range tests {
		for _, withOnChange := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/onChange %v", tt.name, withOnChange), func(t *testing.T) {
				ch := make(chan struct{}, 1)
				calls := 0
				var onChange func()
				if withOnChange {
					onChange = func() { calls++ }
				}
				done := make(chan struct{})
				go func() { // a handler that blocked would hang the informer
					defer close(done)
					tt.event(notifier(ch, onChange))
				}()
				select {
				case <-done:
				case <-time.After(wait):
					t.Fatalf("event handler blocked for %v", wait)
				}
				if got, want := len(ch) == 1, tt.want > 0; got != want {
					t.Errorf("change pending = %v, want %v", got, want)
				}
				if withOnChange && calls != tt.want {
					t.Errorf("onChange called %d times, want %d", calls, tt.want)
				}
			})
		}
	}
}

func TestRunServiceCIDRs(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(
		serviceCIDR("kubernetes", "10.96.0.0/16", "fd00:10:96::/112"),
		serviceCIDR("extra", "10.96.0.0/16", "10.0.0.0/24", "10.96.7.7/16", "10.0.0.0/8"),
		serviceCIDR("broken", "not-a-cidr"),
		svc("default", "web", nil),
	)
	r := start(t, client, Options{ServiceCIDRs: true})
	r.waitFor(t, []string{"default/web"}, nil)

	next := func() []netip.Prefix {
		t.Helper()
		select {
		case p := <-r.cidrs:
			return p
		case <-time.After(wait):
			t.Fatalf("no applyCIDRs within %v", wait)
		}
		return nil
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	want := pfx("10.0.0.0/8", "10.0.0.0/24", "10.96.0.0/16", "fd00:10:96::/112")
	if got := next(); !slices.Equal(got, want) {
		t.Errorf("first applyCIDRs(%v), want %v", got, want)
	}
	if n := r.log.Count("ServiceCIDR has a bad range"); n == 0 || !strings.Contains(r.log.String(), "not-a-cidr") {
		t.Errorf("log does not name the bad range:\n%s", r.log)
	}

	// A new ServiceCIDR is followed, without a Service change.
	if _, err := client.NetworkingV1().ServiceCIDRs().Create(ctx, serviceCIDR("more", "10.200.0.0/16"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want = pfx("10.0.0.0/8", "10.0.0.0/24", "10.96.0.0/16", "10.200.0.0/16", "fd00:10:96::/112")
	for got := next(); !slices.Equal(got, want); got = next() {
		t.Logf("applyCIDRs(%v), waiting for %v", got, want)
	}
	if err := client.NetworkingV1().ServiceCIDRs().Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want = pfx("10.96.0.0/16", "10.200.0.0/16", "fd00:10:96::/112")
	for got := next(); !slices.Equal(got, want); got = next() {
		t.Logf("applyCIDRs(%v), waiting for %v", got, want)
	}
	// ServiceCIDR changes do not rebuild the service table.
	r.quiet(t, 200*time.Millisecond)
}

// TestRunNotSynced checks that Run gives up, with an error and without
// applying anything, when its context ends before the caches synced.
func TestRunNotSynced(t *testing.T) {
	client := fake.NewClientset(svc("default", "web", nil))
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, kruntime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	log, buf := testLogger()
	src := New(client, Options{}, log)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	applied := make(chan State, 1)
	go func() {
		done <- src.Run(ctx, func(st State) { applied <- st }, nil)
	}()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run with the Service list failing = %v, want an error wrapping %v", err, context.DeadlineExceeded)
		}
	case <-time.After(wait):
		t.Fatalf("Run did not return within %v of its context's end", wait)
	}
	if len(applied) != 0 {
		t.Errorf("apply called before the caches synced")
	}
	if n := buf.Count("Kubernetes API unreachable"); n != 1 {
		t.Errorf("log has %d \"unreachable\" lines after the list failed, want 1:\n%s", n, buf)
	}
	if src.Reachable() {
		t.Errorf("Reachable() = true after the list failed, want false")
	}
}

func TestWatchFailed(t *testing.T) {
	quiet := []error{
		io.EOF,
		io.ErrUnexpectedEOF,
		fmt.Errorf("watch: %w", io.EOF),
		apierrors.NewResourceExpired("too old resource version"),
		apierrors.NewGone("gone"),
	}
	outage := []error{
		errors.New("dial tcp 127.0.0.1:6443: connect: connection refused"),
		apierrors.NewServiceUnavailable("etcd down"),
		apierrors.NewInternalError(errors.New("boom")),
	}

	log, buf := testLogger()
	s := New(fake.NewClientset(), Options{}, log)
	ctx := t.Context()
	for _, err := range quiet {
		s.watchFailed(ctx, nil, err)
		if !s.Reachable() {
			t.Errorf("watchFailed(%v): Reachable() = false, want true", err)
		}
	}
	if got := buf.String(); got != "" {
		t.Errorf("watchFailed of closed or expired watches logged:\n%s", got)
	}
	for _, err := range outage {
		s.watchFailed(ctx, nil, err)
		if s.Reachable() {
			t.Errorf("watchFailed(%v): Reachable() = true, want false", err)
		}
	}
	if n := buf.Count("unreachable"); n != 1 {
		t.Errorf("log has %d \"unreachable\" lines after %d errors, want 1:\n%s", n, len(outage), buf)
	}
	if !strings.Contains(buf.String(), "connection refused") {
		t.Errorf("log does not name the first error:\n%s", buf)
	}
	// A closed watch during the outage does not end it.
	s.watchFailed(ctx, nil, io.EOF)
	if s.Reachable() {
		t.Errorf("watchFailed(EOF) during an outage: Reachable() = true, want false")
	}
}

// TestRunReachableAgain checks that the Source notices the API is back
// after an outage, says so once, and says so again at the next outage.
func TestRunReachableAgain(t *testing.T) {
	client := fake.NewClientset()
	r := start(t, client, Options{})
	r.next(t)
	ctx := t.Context()

	r.src.watchFailed(ctx, nil, errors.New("connection refused"))
	r.src.watchFailed(ctx, nil, errors.New("connection refused"))
	deadline := time.Now().Add(wait)
	for !r.src.Reachable() {
		if time.Now().After(deadline) {
			t.Fatalf("Reachable() = false %v after the API answered again", wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.log.Count("reachable again"); n != 1 {
		t.Errorf("log has %d \"reachable again\" lines, want 1:\n%s", n, r.log)
	}
	r.src.watchFailed(ctx, nil, errors.New("connection refused"))
	if n := r.log.Count("Kubernetes API unreachable"); n != 2 {
		t.Errorf("log has %d \"unreachable\" lines after two outages, want 2:\n%s", n, r.log)
	}
}

func TestCheckServiceCIDRAPI(t *testing.T) {
	client := fake.NewClientset()
	if err := CheckServiceCIDRAPI(t.Context(), client); err != nil {
		t.Errorf("CheckServiceCIDRAPI with the API served = %v, want nil", err)
	}
	client.PrependReactor("list", "servicecidrs", func(k8stesting.Action) (bool, kruntime.Object, error) {
		return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "networking.k8s.io", Resource: "servicecidrs"}, "")
	})
	if err := CheckServiceCIDRAPI(t.Context(), client); !apierrors.IsNotFound(err) {
		t.Errorf("CheckServiceCIDRAPI without the API = %v, want NotFound", err)
	}
}

// TestRunOnChange checks that Options.OnChange hears of every Service and
// EndpointSlice change before it is applied, and of no ServiceCIDR change:
// those are applied by applyCIDRs, which does not bring the service table up
// to date, so a health tracker told of them would wait for an apply that
// never comes and report kubetun unhealthy.
func TestRunOnChange(t *testing.T) {
	ctx := t.Context()
	client := fake.NewClientset(serviceCIDR("kubernetes", "10.96.0.0/16"))
	var (
		mu    sync.Mutex // guards calls
		calls int
	)
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
	r := start(t, client, Options{ServiceCIDRs: true, OnChange: func() {
		mu.Lock()
		defer mu.Unlock()
		calls++
	}})
	r.next(t)
	select {
	case <-r.cidrs:
	case <-time.After(wait):
		t.Fatalf("no applyCIDRs within %v", wait)
	}
	if n := count(); n != 0 {
		t.Errorf("OnChange called %d times for the initial ServiceCIDR, want 0", n)
	}

	if _, err := client.NetworkingV1().ServiceCIDRs().Create(ctx, serviceCIDR("more", "10.200.0.0/16"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.cidrs:
	case <-time.After(wait):
		t.Fatalf("no applyCIDRs within %v of a new ServiceCIDR", wait)
	}
	if n := count(); n != 0 {
		t.Errorf("OnChange called %d times for a new ServiceCIDR, want 0", n)
	}

	if _, err := client.CoreV1().Services("default").Create(ctx, svc("default", "web", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, []string{"default/web"}, nil)
	if n := count(); n != 1 {
		t.Errorf("OnChange called %d times for a new Service, want 1", n)
	}
}

// TestRunStops checks that Run, once its context ends, returns only after
// every goroutine it started has stopped.
func TestRunStops(t *testing.T) {
	before := runtime.NumGoroutine()
	client := fake.NewClientset(svc("default", "web", nil), serviceCIDR("kubernetes", "10.96.0.0/16"))
	r := start(t, client, Options{ServiceCIDRs: true})
	r.next(t)
	r.src.watchFailed(t.Context(), nil, errors.New("connection refused")) // the prober is busy
	r.stop(t)
	deadline := time.Now().Add(wait)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines %v after Run returned, %d before:\n%s", n, wait, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchFailedForbidden checks that a 403 is reported as a permission
// problem naming the verb and resource, once however often the reflector
// retries, and not as an outage.
func TestWatchFailedForbidden(t *testing.T) {
	gr := schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}
	denied := apierrors.NewForbidden(gr, "", errors.New(`User "system:serviceaccount:e2e:nobody" cannot list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope`))
	log, buf := testLogger()
	s := New(fake.NewClientset(), Options{}, log)
	for range 5 {
		s.watchFailed(t.Context(), nil, fmt.Errorf("failed to list *v1.EndpointSlice: %w", denied))
	}
	if !s.Reachable() {
		t.Errorf("Reachable() = false after a 403, want true: the API answered")
	}
	want := `not allowed to list endpointslices.discovery.k8s.io at the cluster scope (403, User \"system:serviceaccount:e2e:nobody\")`
	if n := buf.Count(want); n != 1 {
		t.Errorf("log has %d lines with %q after 5 refusals, want 1:\n%s", n, want, buf)
	}
	if n := buf.Count("unreachable"); n != 0 {
		t.Errorf("log says unreachable after a 403:\n%s", buf)
	}
	// Another refusal is news.
	s.watchFailed(t.Context(), nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New(`User "u" cannot watch resource "services" in API group "" at the cluster scope`)))
	if n := buf.Count("not allowed to watch services at the cluster scope"); n != 1 {
		t.Errorf("log has %d lines for the second refusal, want 1:\n%s", n, buf)
	}
}

func TestRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New(`User "u" cannot list resource "services" in API group "" in the namespace "default"`)),
			`not allowed to list services in the namespace "default" (403, User "u")`},
		{apierrors.NewForbidden(schema.GroupResource{Group: "networking.k8s.io", Resource: "servicecidrs"}, "", errors.New("webhook said no")),
			"not allowed to read servicecidrs.networking.k8s.io (403)"},
		{apierrors.NewUnauthorized("bad token"), "does not accept kubetun's credentials (401)"},
	} {
		if got := Refusal(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("Refusal(%v) = %q, want it to contain %q", tc.err, got, tc.want)
		}
	}
}
