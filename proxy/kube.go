package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/kube"
)

type (
	corev1Service    = corev1.Service
	discoveryv1Slice = discoveryv1.EndpointSlice
)

// kubeClient builds a client from path, or when path is empty from the first
// of: the in-cluster config, $KUBECONFIG, ~/.kube/config. It also says which
// it used. reach observes every request the client makes.
func kubeClient(path string, reach *kube.Reachability) (kubernetes.Interface, string, error) {
	var (
		cfg  *rest.Config
		from string
		err  error
	)
	switch {
	case path != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
		from = path
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
		from = "in-cluster"
	case os.Getenv("KUBECONFIG") != "":
		rules := clientcmd.NewDefaultClientConfigLoadingRules() // honours the $KUBECONFIG list
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
		from = "$KUBECONFIG=" + os.Getenv("KUBECONFIG")
	default:
		home, _ := os.UserHomeDir()
		p := filepath.Join(home, ".kube", "config")
		if _, statErr := os.Stat(p); statErr != nil {
			return nil, "", errors.New("no service source: not running in a cluster, $KUBECONFIG is unset and " + p +
				" does not exist; give --kubeconfig PATH, or --manifests PATH with --service-cidr for a static source")
		}
		cfg, err = clientcmd.BuildConfigFromFlags("", p)
		from = p
	}
	if err != nil {
		return nil, "", fmt.Errorf("loading Kubernetes client config (%s): %w", from, err)
	}
	cfg.UserAgent = "kubetun"
	cfg.Wrap(reach.WrapTransport)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("creating Kubernetes client (%s): %w", from, err)
	}
	return client, from, nil
}

// routeLog sends client-go's klog output through kubetun's logger, so there
// is one log format.
func routeLog(log *slog.Logger) {
	klog.SetSlogLogger(log.With("from", "client-go"))
}

// nodeTopology reads this node's zone from its Node object. A node that
// cannot be read only disables zone hints (with a warning): kubetun on a
// laptop has no Node.
func nodeTopology(ctx context.Context, client kubernetes.Interface, name string, log *slog.Logger) resolver.Topology {
	topo := resolver.Topology{NodeName: name}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		log.Warn("cannot read this node's Node object; topology hints by zone are off", "node", name, "err", err)
		return topo
	}
	topo.Zone = node.Labels[corev1.LabelTopologyZone]
	return topo
}
