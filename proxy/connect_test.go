package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/connection"
)

// headless is a headless Service db with pod db-0 at 10.0.9.2, and, if
// extra, pod db-1 at 10.0.9.3 too.
func headless(extra bool) (*corev1.Service, *discoveryv1.EndpointSlice) {
	ready := true
	port, name, proto := int32(5432), "", corev1.ProtocolTCP
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone,
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: 5432}}},
	}
	ep := func(ip, pod string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: pod}}
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db-abc", Labels: map[string]string{
			discoveryv1.LabelServiceName: "db", corev1.IsHeadlessService: ""}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{ep("10.0.9.2", "db-0")},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	if extra {
		es.Endpoints = append(es.Endpoints, ep("10.0.9.3", "db-1"))
	}
	return svc, es
}

// TestRoutePods checks that with RoutePods the pod IPs of headless
// Services are routed with the service CIDRs, follow the EndpointSlices,
// and that the seed's pods behind a ClusterIP are not; and that OnReady is
// called once, with the status.
func TestRoutePods(t *testing.T) {
	cidrs := prefixes("10.3.240.0/20")
	var ready []Status
	b := newBed(t, Config{Mode: "connect", ServiceCIDRs: cidrs, TUN: "kubetun0", RoutePods: true, PodsVia: "portforward",
		DNS: DNSConfig{Domain: "cluster.local"}, OnReady: func(st Status) { ready = append(ready, st) }})
	b.run(t)
	state := func(extra bool) State {
		st := seed()
		svc, es := headless(extra)
		st.Services = append(st.Services, svc)
		st.Slices = append(st.Slices, es)
		return st
	}
	b.src.do(t, func(r Receiver) { r.Apply(state(false)) })
	if got, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20", "10.0.9.2/32"); !slices.Equal(got, want) {
		t.Errorf("routes = %v, want %v", got, want)
	}
	b.src.do(t, func(r Receiver) { r.Apply(state(true)) })
	if got, want := b.dp.lastRoutes(), prefixes("10.3.240.0/20", "10.0.9.2/32", "10.0.9.3/32"); !slices.Equal(got, want) {
		t.Errorf("routes after db-1 joined = %v, want %v", got, want)
	}
	b.src.do(t, func(r Receiver) { r.Apply(seed()) })
	if got := b.dp.lastRoutes(); !slices.Equal(got, cidrs) {
		t.Errorf("routes after the headless Service left = %v, want %v", got, cidrs)
	}
	if len(ready) != 1 || ready[0].Pods != "portforward" || !slices.Equal(ready[0].ServiceCIDRs, []string{"10.3.240.0/20"}) || ready[0].DNS == nil {
		t.Errorf("OnReady calls = %+v, want one, with pods via portforward, the CIDR and the DNS", ready)
	}
}

// TestRefuseExistingTUN checks that connect refuses a device name that is
// taken, naming it and the way out, and goes on when it is free.
func TestRefuseExistingTUN(t *testing.T) {
	for _, tt := range []struct {
		name   string
		kind   string
		exists bool
		err    error
		want   []string // substrings of the error; none: no error
	}{
		{name: "free"},
		{name: "a TUN", kind: "tuntap", exists: true, want: []string{"TUN kubetun0 exists already", "--tun NAME", "kubetun cleanup --tun kubetun0"}},
		{name: "another kind of device", kind: "veth", exists: true, want: []string{"a network device kubetun0 exists already (veth, not a TUN)", "--tun NAME"}},
		{name: "the lookup fails", err: errors.New("netlink: permission denied"), want: []string{"TUN kubetun0: netlink: permission denied"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := refuseExistingTUN("kubetun0", func(name string) (string, bool, error) {
				if name != "kubetun0" {
					t.Errorf("looked up %q, want kubetun0", name)
				}
				return tt.kind, tt.exists, tt.err
			})
			if len(tt.want) == 0 {
				if err != nil {
					t.Errorf("refuseExistingTUN = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("refuseExistingTUN = nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refuseExistingTUN = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestConnectRefusesExistingDevice runs Connect with --tun naming a device
// every host has (lo): it must refuse at once, naming it, before it reads
// the kubeconfig (which does not exist) or touches the device.
func TestConnectRefusesExistingDevice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := Connect(ctx, Config{TUN: "lo", MTU: 1500}, ConnectOptions{
		Kube: KubeOptions{Kubeconfig: filepath.Join(t.TempDir(), "none")},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "network device lo exists already") || !strings.Contains(err.Error(), "--tun NAME") {
		t.Errorf("Connect with --tun lo = %v, want lo refused, naming --tun NAME", err)
	}
}

// silentAPIServer listens on loopback, accepts every connection and never
// answers: an apiserver that hangs. It returns a kubeconfig for it, with
// scheme http or https.
func silentAPIServer(t *testing.T, scheme string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: silent
  cluster: {server: "%s://%s", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: t}
contexts:
- name: silent
  context: {cluster: silent, user: u}
current-context: silent
`, scheme, l.Addr())
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nopReceiver is a Receiver that takes nothing.
type nopReceiver struct{}

func (nopReceiver) Changed()                  {}
func (nopReceiver) Apply(State)               {}
func (nopReceiver) ApplyCIDRs([]netip.Prefix) {}

// returnsSoon runs f with a context cancelled after a moment, as Ctrl-C
// would, and fails t unless f returns within bound of it.
func returnsSoon(t *testing.T, what string, bound time.Duration, f func(ctx context.Context)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); f(ctx) }()
	time.Sleep(300 * time.Millisecond) // f is waiting for the apiserver by now
	cancel()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("%s: still running %v after its context ended, with an apiserver that never answers", what, bound)
	}
}

// TestSilentAPIServerInterrupted checks that every wait of connect on the
// apiserver ends with its context, against one that accepts and never
// answers (over TLS: not even the handshake; over plain HTTP: no
// response): the ServiceCIDR check, the --via auto probe, Connect as a
// whole, which then sets nothing up, and the informers.
func TestSilentAPIServerInterrupted(t *testing.T) {
	const bound = 3 * time.Second
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	schemes := []string{"https", "http"}
	sources := map[string]*KubeSource{}
	for _, scheme := range schemes {
		kubeconfig := silentAPIServer(t, scheme)
		t.Run(scheme, func(t *testing.T) {
			returnsSoon(t, "NewKubeSource (ServiceCIDR check)", bound, func(ctx context.Context) {
				if _, err := NewKubeSource(ctx, KubeOptions{Kubeconfig: kubeconfig, FollowCIDRs: true}, log); err == nil {
					t.Error("NewKubeSource against a silent apiserver succeeded")
				}
			})
			src, err := NewKubeSource(t.Context(), KubeOptions{Kubeconfig: kubeconfig}, log)
			if err != nil {
				t.Fatal(err)
			}
			sources[scheme] = src
			returnsSoon(t, "ProbeDirect", bound, func(ctx context.Context) {
				if ok, detail := src.ProbeDirect(ctx, time.Second); ok {
					t.Errorf("ProbeDirect against a silent apiserver = ok, %q", detail)
				}
			})
			for _, cidrs := range [][]netip.Prefix{nil, prefixes("10.3.240.0/20")} {
				returnsSoon(t, fmt.Sprintf("Connect with service CIDRs %v", cidrs), bound, func(ctx context.Context) {
					err := Connect(ctx, Config{TUN: "kt-unit-none", MTU: 1500, ServiceCIDRs: cidrs}, ConnectOptions{
						Kube: KubeOptions{Kubeconfig: kubeconfig}, Via: ViaAuto}, log)
					if err != nil {
						t.Errorf("Connect interrupted = %v, want nil: nothing was set up", err)
					}
				})
			}
		})
	}
	// Last: a reflector leaves its list request to end by itself when its
	// context ends, and that request reads client-go's logger, which
	// NewKubeSource sets.
	for _, scheme := range schemes {
		t.Run("informers/"+scheme, func(t *testing.T) {
			src := sources[scheme]
			if src == nil {
				t.Skip("no source")
			}
			returnsSoon(t, "KubeSource.Run", bound, func(ctx context.Context) {
				src.Run(ctx, nopReceiver{})
			})
		})
	}
}

// TestNameDomains checks the domains of a connection: the first keeps the
// cluster domain and answers under its own too; the next, while another
// has the cluster domain, answers under its own first; --domain picks it,
// none gives none.
func TestNameDomains(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	free, taken := t.TempDir(), t.TempDir()
	if _, err := connection.Register(taken, connection.Record{PID: os.Getpid(), Context: "kind-a", TUN: "kt-kind-a",
		Domains: []string{"cluster.local", "kind-a"}, Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		dir, domain string
		wantOwner   bool
		want        DNSConfig
	}{
		{name: "first", dir: free, wantOwner: true, want: DNSConfig{Domain: "cluster.local", Aliases: []string{"kind-b"}}},
		{name: "first, --domain", dir: free, domain: "b.example.", wantOwner: true, want: DNSConfig{Domain: "cluster.local", Aliases: []string{"b.example"}}},
		{name: "first, --domain none", dir: free, domain: DomainNone, wantOwner: true, want: DNSConfig{Domain: "cluster.local"}},
		{name: "second", dir: taken, wantOwner: false, want: DNSConfig{Domain: "kind-b", Aliases: []string{"cluster.local"}}},
		{name: "second, --domain", dir: taken, domain: "B.example", wantOwner: false, want: DNSConfig{Domain: "b.example", Aliases: []string{"cluster.local"}}},
		// No domain of its own: it shares the cluster domain, warned.
		{name: "second, --domain none", dir: taken, domain: DomainNone, wantOwner: true, want: DNSConfig{Domain: "cluster.local"}},
	} {
		dns := DNSConfig{Domain: "cluster.local"}
		owner := nameDomains(&dns, ConnectOptions{RecordDirs: []string{tt.dir}, Domain: tt.domain}, "kind-b", log)
		if owner != tt.wantOwner || dns.Domain != tt.want.Domain || !slices.Equal(dns.Aliases, tt.want.Aliases) {
			t.Errorf("%s: nameDomains = %v, %+v; want %v, %+v", tt.name, owner, dns, tt.wantOwner, tt.want)
		}
		st := DNSStatus{Domain: dns.Domain, Aliases: dns.Aliases}
		routed := routedDomains(st, owner)
		if !owner && (len(routed) != 1 || routed[0] != dns.Domain) {
			t.Errorf("%s: routed domains = %v, want its own alone", tt.name, routed)
		}
	}
}
