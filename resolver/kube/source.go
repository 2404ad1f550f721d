// Package kube is kubetun's service source backed by the Kubernetes API:
// shared informers for Services, EndpointSlices and (optionally)
// ServiceCIDRs, filtered the way kube-proxy filters them.
//
// Like kube-proxy, its event handlers record each object's change in a
// change tracker (resolver.ChangeTracker) and note that something changed;
// one loop takes the changes and hands them on, so bursts of events
// coalesce and relists or duplicate events change nothing.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kubetun/kubetun/resolver"
)

// Labels kube-proxy honours when choosing what to watch.
const (
	// LabelServiceProxyName marks a Service handled by another proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of a headless Service.
	LabelHeadless = corev1.IsHeadlessService
)

// State is what changed in the part of the cluster kubetun serves since
// the last State: the first says All, with every object. Its objects
// belong to the informer caches: read them, never modify them.
type State struct {
	Changes *resolver.Changes // nil: nothing the table reads changed
}

// Options configure a Source.
type Options struct {
	// Resync is the informers' resync period; 0 disables resyncs, which
	// kubetun does not need (it never loses an event it must act on).
	Resync time.Duration
	// ServiceCIDRs makes the Source also follow networking.k8s.io/v1
	// ServiceCIDRs, for a kubetun started without --service-cidr.
	ServiceCIDRs bool
	// Reachability, if set, is told of failed watches and of probes; give
	// the same one to the client's transport (WrapTransport). Nil: the
	// Source makes its own, which hears of watch errors only.
	Reachability *Reachability
	// OnChange, if set, is called from the informers' handlers whenever a
	// change arrives, before it is applied (for health tracking). It must
	// not block.
	OnChange func()
	// ProxyName, if set, makes the Source serve only the Services labelled
	// service.kubernetes.io/service-proxy-name=ProxyName (and their slices):
	// the ones kube-proxy leaves alone, for running beside it. Empty: the
	// unlabelled ones, as kube-proxy serves.
	ProxyName string
}

// Source watches the API and reports the state after every change.
type Source struct {
	client  kubernetes.Interface
	log     *slog.Logger
	opts    Options
	factory informers.SharedInformerFactory

	services  cache.SharedIndexInformer
	slices    cache.SharedIndexInformer
	cidrs     cache.SharedIndexInformer // nil unless opts.ServiceCIDRs
	tracker   *resolver.ChangeTracker
	changed   chan struct{} // a change is pending; capacity 1
	cidrsDiff chan struct{} // a ServiceCIDR change is pending; capacity 1

	reach *Reachability

	deniedMu sync.Mutex      // guards denied
	denied   map[string]bool // permission problems reported, by what was refused
}

// New returns a Source reading through client. Nothing is watched until Run.
func New(client kubernetes.Interface, opts Options, log *slog.Logger) *Source {
	// kube-proxy's selection: not Services another proxy owns, not the
	// slices of headless Services. kubetun watches the latter all the same,
	// because its DNS answers headless names with them; the table's build
	// (resolver.Update) leaves them out of the proxy's table, as kube-proxy
	// does.
	noProxyName, _ := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if opts.ProxyName != "" {
		// kubetun run checks the name is a label value; a bad one here keeps
		// kube-proxy's selection.
		if r, err := labels.NewRequirement(LabelServiceProxyName, selection.Equals, []string{opts.ProxyName}); err == nil {
			noProxyName = r
		}
	}
	noHeadless, _ := labels.NewRequirement(LabelHeadless, selection.DoesNotExist, nil)
	withSelector := func(sel labels.Selector) informers.SharedInformerFactory {
		return informers.NewSharedInformerFactoryWithOptions(client, opts.Resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	}
	factory := withSelector(labels.NewSelector().Add(*noProxyName, *noHeadless))
	sliceFactory := withSelector(labels.NewSelector().Add(*noProxyName))

	s := &Source{
		client:    client,
		log:       log,
		opts:      opts,
		factory:   factory,
		services:  factory.Core().V1().Services().Informer(),
		slices:    sliceFactory.Discovery().V1().EndpointSlices().Informer(),
		changed:   make(chan struct{}, 1),
		cidrsDiff: make(chan struct{}, 1),
		reach:     opts.Reachability,
	}
	if s.reach == nil {
		s.reach = NewReachability(log)
	}
	s.tracker = resolver.NewChangeTracker()
	// Managed fields are often the largest part of an object and kubetun
	// reads none of them (kube-proxy drops them too).
	for _, inf := range []cache.SharedIndexInformer{s.services, s.slices} {
		_ = inf.SetTransform(stripManagedFields) // fails only once started
	}
	if opts.ServiceCIDRs {
		// ServiceCIDRs carry none of those labels, but the factory's
		// selector would still apply: give them an informer of their own.
		s.cidrs = informers.NewSharedInformerFactory(client, opts.Resync).Networking().V1().ServiceCIDRs().Informer()
	}
	return s
}

// Run watches until ctx is done. After the caches have synced it calls
// apply with the whole state (a change set that says All), and with what
// changed after every change; with
// Options.ServiceCIDRs it also calls applyCIDRs with every ServiceCIDR
// range. The callbacks run on one goroutine, never concurrently. Run
// returns an error only if ctx ends before the caches synced.
func (s *Source) Run(ctx context.Context, apply func(State), applyCIDRs func([]netip.Prefix)) error {
	informersList := []cache.SharedIndexInformer{s.services, s.slices}
	if s.cidrs != nil {
		informersList = append(informersList, s.cidrs)
	}
	synced, err := s.addHandlers(informersList)
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, inf := range informersList {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	wg.Go(func() { s.probeWhileUnreachable(ctx) })

	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("waiting for the informer caches: %w", context.Cause(ctx))
	}
	s.log.Info("informer caches synced", "after", time.Since(start).Round(time.Millisecond))

	// The first state goes out at once and covers every event so far, the
	// initial listing's included (a new tracker's first change set says
	// All): drop their notices, or an empty change would follow at once.
	drain(s.changed)
	drain(s.cidrsDiff)
	apply(s.state())
	if s.cidrs != nil {
		applyCIDRs(s.serviceCIDRs())
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			apply(s.state())
		case <-s.cidrsDiff:
			applyCIDRs(s.serviceCIDRs())
		}
	}
}

// addHandlers gives each informer its event handler and watch error
// handler, and returns what says that each handler has had every object
// of the initial listing (the tracker then holds them all).
func (s *Source) addHandlers(informersList []cache.SharedIndexInformer) ([]cache.InformerSynced, error) {
	synced := make([]cache.InformerSynced, 0, len(informersList))
	for _, inf := range informersList {
		ch, onChange := s.changed, s.opts.OnChange
		if inf == s.cidrs {
			// A ServiceCIDR change goes to applyCIDRs, not apply: it does
			// not wait for the service table, so OnChange must not hear of
			// it (a health tracker would wait for a sync that never comes).
			ch, onChange = s.cidrsDiff, nil
		}
		var h cache.ResourceEventHandlerFuncs
		switch inf {
		case s.services:
			h = trackingNotifier(ch, onChange, s.recordService, sameService)
		case s.slices:
			h = trackingNotifier(ch, onChange, s.recordSlice, sameSlice)
		default:
			h = notifier(ch, onChange)
		}
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return nil, fmt.Errorf("adding event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
		if err := inf.SetWatchErrorHandlerWithContext(s.watchFailed); err != nil {
			return nil, fmt.Errorf("setting watch error handler: %w", err)
		}
	}
	return synced, nil
}

// notifier returns event handlers that only record that a change is pending.
// An update that does not change the object's resourceVersion (a resync, a
// relist) is not a change.
func notifier(ch chan struct{}, onChange func()) cache.ResourceEventHandlerFuncs {
	return trackingNotifier(ch, onChange, nil, nil)
}

// trackingNotifier is notifier that also records each changed object
// (record: its key, and the object or nil when deleted), and takes an
// update that same says changes nothing kubetun reads for no change
// (CoreDNS's endpointsEquivalent idea: a slice's annotation or a Service's
// managed fields changing must not rebuild the table).
func trackingNotifier(ch chan struct{}, onChange func(), record func(key string, obj any), same func(a, b any) bool) cache.ResourceEventHandlerFuncs {
	poke := func(obj any, deleted bool) {
		if record != nil {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				if deleted {
					obj = nil
				}
				record(key, obj)
			}
		}
		if onChange != nil {
			onChange()
		}
		select {
		case ch <- struct{}{}:
		default: // one pending notice covers any number of changes
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { poke(obj, false) },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(metav1.Object)
			n, ok2 := newObj.(metav1.Object)
			if ok1 && ok2 && o.GetResourceVersion() == n.GetResourceVersion() {
				return
			}
			if same != nil && same(oldObj, newObj) {
				return
			}
			poke(newObj, false)
		},
		DeleteFunc: func(obj any) { poke(obj, true) },
	}
}

// drain drops a pending notice, if any.
func drain(ch chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// state takes what changed since the last state from the tracker.
func (s *Source) state() State {
	return State{Changes: s.tracker.Take()}
}

// recordService records in the tracker that the Service with key is now
// obj; nil: deleted.
func (s *Source) recordService(key string, obj any) {
	svc, _ := obj.(*corev1.Service)
	s.tracker.Service(key, svc)
}

// recordSlice records in the tracker that the EndpointSlice with key is
// now obj; nil: deleted.
func (s *Source) recordSlice(key string, obj any) {
	es, _ := obj.(*discoveryv1.EndpointSlice)
	s.tracker.Slice(key, es)
}

// sameService reports whether an update of a Service changes nothing
// kubetun reads (resolver.SameService).
func sameService(a, b any) bool {
	o, ok1 := a.(*corev1.Service)
	n, ok2 := b.(*corev1.Service)
	return ok1 && ok2 && resolver.SameService(o, n)
}

// sameSlice reports whether an update of an EndpointSlice changes nothing
// kubetun reads (resolver.SameSlice).
func sameSlice(a, b any) bool {
	o, ok1 := a.(*discoveryv1.EndpointSlice)
	n, ok2 := b.(*discoveryv1.EndpointSlice)
	return ok1 && ok2 && resolver.SameSlice(o, n)
}

// stripManagedFields is the informers' transform.
func stripManagedFields(obj any) (any, error) {
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	return obj, nil
}

// serviceCIDRs returns every range of every ServiceCIDR, sorted, without
// duplicates. A ServiceCIDR being deleted still counts: its addresses stay
// allocated to Services until the last of them is gone.
func (s *Source) serviceCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, o := range s.cidrs.GetStore().List() {
		sc, ok := o.(*networkingv1.ServiceCIDR)
		if !ok {
			continue
		}
		for _, c := range sc.Spec.CIDRs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				s.log.Warn("ServiceCIDR has a bad range; ignored", "servicecidr", sc.Name, "cidr", c)
				continue
			}
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// watchFailed is the informers' watch error handler. The reflector retries
// with backoff by itself; this only tells the user, once per outage rather
// than once per retry, that kubetun now serves its last known state.
func (s *Source) watchFailed(_ context.Context, r *cache.Reflector, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		return // a watch closed normally or expired: the reflector relists
	}
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		// The API answered: it is reachable, and retrying will not help
		// until someone changes the credentials or the RBAC rules.
		s.refused(err)
		return
	}
	s.reach.Failed(err)
}

// refused reports a permission problem once per thing refused, however
// often the reflector's backoff retries it.
func (s *Source) refused(err error) {
	msg := Refusal(err)
	s.deniedMu.Lock()
	first := !s.denied[msg]
	if s.denied == nil {
		s.denied = make(map[string]bool)
	}
	s.denied[msg] = true
	s.deniedMu.Unlock()
	if first {
		s.log.Error(msg+"; kubetun serves nothing from the API until it may, and retries with backoff", "err", err)
	}
}

// rbacDenial matches the RBAC authorizer's reason for a 403, e.g. `User
// "system:serviceaccount:kube-system:kubetun" cannot list resource
// "endpointslices" in API group "discovery.k8s.io" at the cluster scope`.
var rbacDenial = regexp.MustCompile(`(User "[^"]*") cannot (\S+) resource "([^"]+)"(?: in API group "([^"]*)")?(?: (at the cluster scope|in the namespace "[^"]*"))?`)

// Refusal says what a 401 or 403 from the API refused, as a user can act
// on it: the verb, the resource and the scope, and what to check.
func Refusal(err error) string {
	if apierrors.IsUnauthorized(err) {
		return "the Kubernetes API does not accept kubetun's credentials (401): check the token or certificate in the kubeconfig"
	}
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return "not allowed by the Kubernetes API (403)"
	}
	st := status.Status()
	if m := rbacDenial.FindStringSubmatch(st.Message); m != nil {
		resource := m[3]
		if m[4] != "" {
			resource += "." + m[4]
		}
		scope := m[5]
		if scope == "" {
			scope = "at the cluster scope"
		}
		return fmt.Sprintf("not allowed to %s %s %s (403, %s): check the ClusterRole bound to it (deploy/rbac.yaml lists what kubetun needs)",
			m[2], resource, scope, m[1])
	}
	what := "the resource"
	if d := st.Details; d != nil && d.Kind != "" {
		what = d.Kind
		if d.Group != "" {
			what += "." + d.Group
		}
	}
	return fmt.Sprintf("not allowed to read %s (403): check the ClusterRole bound to kubetun's user (deploy/rbac.yaml lists what kubetun needs)", what)
}

// probeWhileUnreachable notices when the API is back after an outage, to
// say so once.
func (s *Source) probeWhileUnreachable(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.reach.Reachable() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := discovery.ToDiscoveryInterfaceWithContext(s.client.Discovery()).ServerVersionWithContext(pctx)
		cancel()
		if err == nil {
			s.reach.Succeeded()
		}
	}
}

// Reachable reports whether the last contact with the API succeeded.
func (s *Source) Reachable() bool { return s.reach.Reachable() }

// CheckServiceCIDRAPI returns nil if the cluster serves the ServiceCIDR API.
func CheckServiceCIDRAPI(ctx context.Context, client kubernetes.Interface) error {
	_, err := client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{Limit: 1})
	return err
}
