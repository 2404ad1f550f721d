package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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
}

// KubeSource is the Kubernetes API as a Source: informers over Services,
// EndpointSlices and, optionally, ServiceCIDRs (resolver/kube).
type KubeSource struct {
	client kubernetes.Interface
	reach  *kube.Reachability
	opts   KubeOptions
	info   SourceInfo
	log    *slog.Logger
}

var _ Source = (*KubeSource)(nil)

// NewKubeSource builds the client and, with FollowCIDRs, checks that the
// ServiceCIDR API can be read. client-go's own log goes to log from now on.
func NewKubeSource(ctx context.Context, opts KubeOptions, log *slog.Logger) (*KubeSource, error) {
	reach := kube.NewReachability(log)
	client, info, err := kubeClient(opts, reach)
	if err != nil {
		return nil, err
	}
	// One log format: client-go's klog output through kubetun's logger.
	klog.SetSlogLogger(log.With("from", "client-go"))
	log.Info("using the Kubernetes API", "config", info.Path, "context", info.Context, "server", info.Server, "node", opts.NodeName)
	if opts.FollowCIDRs {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := kube.CheckServiceCIDRAPI(cctx, client)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("no --service-cidr given, and the cluster's ServiceCIDRs (networking.k8s.io/v1 servicecidrs) cannot be read: %v; give --service-cidr", err)
		}
	}
	return &KubeSource{client: client, reach: reach, opts: opts, info: info, log: log}, nil
}

// Run implements Source: it delivers only after both informer caches have
// synced.
func (k *KubeSource) Run(ctx context.Context, r Receiver) error {
	src := kube.New(k.client, kube.Options{ServiceCIDRs: k.opts.FollowCIDRs, OnChange: r.Changed, Reachability: k.reach}, k.log)
	return src.Run(ctx, func(st kube.State) {
		r.Apply(State{Services: st.Services, Slices: st.Slices})
	}, func(cidrs []netip.Prefix) {
		r.ApplyCIDRs(cidrs)
	})
}

// Info implements Source.
func (k *KubeSource) Info() SourceInfo { return k.info }

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
func kubeClient(opts KubeOptions, reach *kube.Reachability) (kubernetes.Interface, SourceInfo, error) {
	var (
		cfg  *rest.Config
		info = SourceInfo{Kind: "kubernetes"}
		err  error
	)
	overrides := &clientcmd.ConfigOverrides{CurrentContext: opts.Context}
	fromFile := func(rules *clientcmd.ClientConfigLoadingRules) {
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
		cfg, err = cc.ClientConfig()
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
		home, _ := os.UserHomeDir()
		p := filepath.Join(home, ".kube", "config")
		if _, statErr := os.Stat(p); statErr != nil {
			return nil, info, errors.New("no service source: not running in a cluster, $KUBECONFIG is unset and " + p +
				" does not exist; give --kubeconfig PATH, or --manifests PATH with --service-cidr for a static source")
		}
		info.Path = p
		fromFile(&clientcmd.ClientConfigLoadingRules{ExplicitPath: p})
	}
	if err != nil {
		return nil, info, fmt.Errorf("loading Kubernetes client config (%s): %w", info.Path, err)
	}
	info.Server = cfg.Host
	cfg.UserAgent = "kubetun"
	cfg.Wrap(reach.WrapTransport)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, info, fmt.Errorf("creating Kubernetes client (%s): %w", info.Path, err)
	}
	return client, info, nil
}
