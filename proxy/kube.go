package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/connrotation"
	"k8s.io/klog/v2"

	"github.com/kubetun/kubetun/nodeport"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/kube"
)

// KubeOptions say which cluster a KubeSource watches, and how.
type KubeOptions struct {
	// Kubeconfig is the kubeconfig file; "" means kubectl's discovery
	// order after the in-cluster config: $KUBECONFIG, then ~/.kube/config.
	Kubeconfig string
	// Context overrides the kubeconfig's current context.
	Context string
	// FollowCIDRs makes the source report the cluster's ServiceCIDRs
	// (networking.k8s.io/v1); NewKubeSource fails if they cannot be read.
	FollowCIDRs bool
	// NodeName is this node, whose zone is read for topology hints.
	NodeName string
	// ProxyName, if set, limits the Services to those labelled
	// service.kubernetes.io/service-proxy-name=ProxyName (kube.Options).
	ProxyName string
}

// KubeSource is the Kubernetes API as a Source: informers over Services,
// EndpointSlices and, optionally, ServiceCIDRs (resolver/kube).
type KubeSource struct {
	client kubernetes.Interface
	config *rest.Config
	// conns are the client's connections to the API server (not the
	// port-forward dialer's), for CloseConnections.
	conns *connrotation.ConnectionTracker
	reach *kube.Reachability
	opts  KubeOptions
	info  SourceInfo
	log   *slog.Logger
}

var _ Source = (*KubeSource)(nil)

// NewKubeSource builds the client and, with FollowCIDRs, checks that the
// ServiceCIDR API can be read. client-go's own log goes to log from now on.
func NewKubeSource(ctx context.Context, opts KubeOptions, log *slog.Logger) (*KubeSource, error) {
	reach := kube.NewReachability(log)
	conns := connrotation.NewConnectionTracker()
	client, config, info, err := kubeClient(opts, reach, conns)
	if err != nil {
		return nil, err
	}
	// One log format: client-go's klog output through kubetun's logger.
	klog.SetSlogLogger(log.With("from", "client-go"))
	log.Info("using the Kubernetes API", "config", info.Path, "context", info.Context, "server", info.Server, "node", opts.NodeName)
	if opts.FollowCIDRs {
		if err := checkServiceCIDRAPI(ctx, client, reach); err != nil {
			return nil, err
		}
	}
	return &KubeSource{client: client, config: config, conns: conns, reach: reach, opts: opts, info: info, log: log}, nil
}

// apiRetryMax bounds the wait between two tries of an API server that does
// not answer at start.
const apiRetryMax = 30 * time.Second

// checkServiceCIDRAPI checks that the ServiceCIDR API can be read. An API
// server that does not answer (a laptop offline, a VPN not up yet) is tried
// again, with backoff, until it answers or ctx ends; reach says so once.
// An answer that refuses is the error.
func checkServiceCIDRAPI(ctx context.Context, client kubernetes.Interface, reach *kube.Reachability) error {
	wait := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := kube.CheckServiceCIDRAPI(cctx, client)
		timedOut := cctx.Err() != nil
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case timedOut:
			reach.Failed(err) // the transport took it for kubetun's own cancel
		case reach.Reachable():
			return fmt.Errorf("no --service-cidr given, and the cluster's ServiceCIDRs (networking.k8s.io/v1 servicecidrs) cannot be read: %v; give --service-cidr", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, apiRetryMax)
	}
}

// CloseConnections closes the client's connections to the API server: its
// watches fail at once and start again on new connections, with
// credentials client-go refreshes as needed (exec plugins, token files).
// After the host slept or changed networks, a watch on a connection that
// died without a sign would otherwise wait for the HTTP/2 health check.
func (k *KubeSource) CloseConnections() { k.conns.CloseAll() }

// Run implements Source: it delivers only after both informer caches have
// synced.
func (k *KubeSource) Run(ctx context.Context, r Receiver) error {
	src := kube.New(k.client, kube.Options{ServiceCIDRs: k.opts.FollowCIDRs, OnChange: r.Changed, Reachability: k.reach, ProxyName: k.opts.ProxyName}, k.log)
	return src.Run(ctx, func(st kube.State) {
		changes := st.Changes
		if changes == nil {
			changes = &resolver.Changes{} // nothing the table reads changed
		}
		r.Apply(State{Changes: changes})
	}, func(cidrs []netip.Prefix) {
		r.ApplyCIDRs(cidrs)
	})
}

// Info implements Source.
func (k *KubeSource) Info() SourceInfo { return k.info }

// RESTConfig returns a copy of the client's configuration, e.g. for a
// port-forward dialer to the same API server.
func (k *KubeSource) RESTConfig() *rest.Config { return rest.CopyConfig(k.config) }

// ProbeDirect reports whether this host reaches pods directly: it dials
// ready endpoints (TCP) of the cluster's EndpointSlices, a few of them,
// each within timeout, and succeeds at the first that answers. Only
// endpoints the target policy lets kubetun dial are tried (probeTargets). It
// returns what it dialled, or why it gave up, for the log.
func (k *KubeSource) ProbeDirect(ctx context.Context, timeout time.Duration) (ok bool, detail string) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	list, err := k.client.DiscoveryV1().EndpointSlices("").List(lctx, metav1.ListOptions{Limit: 50})
	cancel()
	if err != nil {
		return false, fmt.Sprintf("listing EndpointSlices: %v", err)
	}
	targets, refused := probeTargets(list.Items)
	if len(targets) == 0 {
		if refused > 0 {
			return false, fmt.Sprintf("no ready TCP endpoint to probe (%d left out: loopback, link-local, unspecified or multicast addresses are never dialled)", refused)
		}
		return false, "no ready TCP endpoint to probe"
	}
	var last error
	for _, a := range targets[:min(len(targets), 3)] {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err == nil {
			c.Close()
			return true, "dialled " + a.String()
		}
		last = err
	}
	return false, last.Error()
}

// probeTargets returns the addresses of the ready TCP endpoints of
// slices, the first address of each as kube-proxy uses it, that the target
// policy lets kubetun dial (resolver.RefuseHostAddr: an EndpointSlice may
// name any address, and a probe must not become a way into the host's own
// loopback or link-local services), and how many it left out for it.
// Addresses that are no IP address (an FQDN slice) are skipped.
func probeTargets(slices []discoveryv1.EndpointSlice) (targets []netip.AddrPort, refused int) {
	for _, es := range slices {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			for _, e := range es.Endpoints {
				if (e.Conditions.Ready != nil && !*e.Conditions.Ready) || len(e.Addresses) == 0 {
					continue
				}
				a, err := netip.ParseAddr(e.Addresses[0])
				if err != nil {
					continue
				}
				if a = a.Unmap(); resolver.RefuseHostAddr(a) != "" {
					refused++
					continue
				}
				targets = append(targets, netip.AddrPortFrom(a, uint16(*p.Port)))
			}
		}
	}
	return targets, refused
}

// Topology reads this node's zone from its Node object. A node that cannot
// be read only disables zone hints (with a warning): kubetun on a laptop
// has no Node.
func (k *KubeSource) Topology(ctx context.Context) resolver.Topology {
	topo, _ := k.Node(ctx)
	return topo
}

// Node is Topology, and also returns the node's primary addresses for node
// ports (nodeport.NodeAddresses); when the Node cannot be read or lists
// none, the default routes' source addresses.
func (k *KubeSource) Node(ctx context.Context) (resolver.Topology, []netip.Addr) {
	name := k.opts.NodeName
	topo := resolver.Topology{NodeName: name}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	node, err := k.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		k.log.Warn("cannot read this node's Node object; topology hints by zone are off", "node", name, "err", err)
		return topo, nodeport.DefaultRouteAddresses()
	}
	topo.Zone = node.Labels[corev1.LabelTopologyZone]
	primary := nodeport.NodeAddresses(node)
	if len(primary) == 0 {
		primary = nodeport.DefaultRouteAddresses()
	}
	return topo, primary
}

// kubeClient builds a client from opts.Kubeconfig, or when that is empty
// from the first of: the in-cluster config, $KUBECONFIG, ~/.kube/config. It
// also says which it used. reach observes every request the client makes.
func kubeClient(opts KubeOptions, reach *kube.Reachability, conns *connrotation.ConnectionTracker) (kubernetes.Interface, *rest.Config, SourceInfo, error) {
	var (
		cfg  *rest.Config
		info = SourceInfo{Kind: "kubernetes"}
		err  error
	)
	overrides := &clientcmd.ConfigOverrides{CurrentContext: opts.Context}
	fromFile := func(rules *clientcmd.ClientConfigLoadingRules) {
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
		cfg, err = cc.ClientConfig()
		if ns, _, nsErr := cc.Namespace(); nsErr == nil {
			info.Namespace = ns
		}
		if raw, rawErr := cc.RawConfig(); rawErr == nil {
			info.Context = raw.CurrentContext
			if opts.Context != "" {
				info.Context = opts.Context
			}
		}
	}
	switch {
	case opts.Kubeconfig != "":
		info.Path = opts.Kubeconfig
		fromFile(&clientcmd.ClientConfigLoadingRules{ExplicitPath: opts.Kubeconfig})
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "" && opts.Context == "":
		info.Path = "in-cluster"
		cfg, err = rest.InClusterConfig()
	case os.Getenv("KUBECONFIG") != "":
		info.Path = "$KUBECONFIG=" + os.Getenv("KUBECONFIG")
		fromFile(clientcmd.NewDefaultClientConfigLoadingRules()) // honours the $KUBECONFIG list
	default:
		p := filepath.Join(homeDir(), ".kube", "config")
		if _, statErr := os.Stat(p); statErr != nil {
			return nil, nil, info, errors.New("no service source: not running in a cluster, $KUBECONFIG is unset and " + p +
				" does not exist; give --kubeconfig PATH, or --manifests PATH with --service-cidr for a static source")
		}
		info.Path = p
		fromFile(&clientcmd.ClientConfigLoadingRules{ExplicitPath: p})
	}
	if err != nil {
		return nil, nil, info, fmt.Errorf("loading Kubernetes client config (%s): %w", info.Path, err)
	}
	info.Server = cfg.Host
	cfg.UserAgent = "kubetun"
	cfg.Wrap(reach.WrapTransport)
	// The client's connections are tracked; the config returned (for
	// port-forward) dials as it says.
	ccfg := rest.CopyConfig(cfg)
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if cfg.Dial != nil {
		dial = cfg.Dial
	}
	ccfg.Dial = connrotation.NewDialerWithTracker(dial, conns).DialContext
	client, err := kubernetes.NewForConfig(ccfg)
	if err != nil {
		return nil, nil, info, fmt.Errorf("creating Kubernetes client (%s): %w", info.Path, err)
	}
	return client, cfg, info, nil
}

// homeDir is the home directory whose ~/.kube/config kubectl would read:
// under sudo, the invoking user's ($SUDO_USER), not root's, so that `sudo
// kubetun connect` uses the cluster the user's kubectl talks to.
func homeDir() string {
	if u := os.Getenv("SUDO_USER"); u != "" && os.Geteuid() == 0 {
		if pw, err := user.Lookup(u); err == nil && pw.HomeDir != "" {
			return pw.HomeDir
		}
	}
	home, _ := os.UserHomeDir()
	return home
}
