package e2e

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterDeployManifests sends deploy/ to the real kube-apiserver as an
// operator applies it, `kubectl apply --dry-run=server -k deploy/`, and the
// example outside the kustomization (sidecar.yaml) with -f: the schema,
// unknown fields (kubectl validates strictly), the priority class and the
// admission chain are checked, and nothing is created. (cmd/kubetun
// TestDeployArgs checks kubetun's flags and the DaemonSet's settings.)
func TestClusterDeployManifests(t *testing.T) {
	env := sharedCluster(t)
	// The sidecar Pod runs as namespace default's default ServiceAccount,
	// which the ServiceAccount admission plugin looks up; the controller
	// that makes it does not run in the test's control plane.
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	if _, err := env.cp.Kubectl(ctx, "get", "serviceaccount", "default", "-n", "default"); err != nil {
		if _, err := env.cp.Kubectl(ctx, "create", "serviceaccount", "default", "-n", "default"); err != nil {
			t.Fatal(err)
		}
	}
	deploy, err := filepath.Abs("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // objects that must be in the output
	}{
		{"kustomization", []string{"-k", deploy}, []string{
			"serviceaccount/kubetun", "clusterrole.rbac.authorization.k8s.io/kubetun",
			"clusterrolebinding.rbac.authorization.k8s.io/kubetun", "configmap/kubetun-kubeconfig", "daemonset.apps/kubetun"}},
		{"sidecar.yaml", []string{"-f", filepath.Join(deploy, "sidecar.yaml")}, []string{"pod/app-with-kubetun"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
			defer cancel()
			args := append([]string{"apply", "--dry-run=server"}, tc.args...)
			out, err := env.cp.Kubectl(ctx, args...)
			if err != nil {
				t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for _, obj := range tc.want {
				if !strings.Contains(out, obj+" created (server dry run)") && !strings.Contains(out, obj+" configured (server dry run)") &&
					!strings.Contains(out, obj+" unchanged (server dry run)") {
					t.Errorf("kubectl %s printed %q, want %s (server dry run)", strings.Join(args, " "), out, obj)
				}
			}
			t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		})
	}
}

// TestClusterDeployRBAC runs kubetun as the ServiceAccount deploy/rbac.yaml
// makes, with a token from `kubectl create token`, and nothing else: the
// ClusterRole must let it follow the ServiceCIDRs, read its Node, and watch
// Services and EndpointSlices, and serve them on ClusterIPs and node ports
// alike. A forbidden request would leave it unready or log it.
func TestClusterDeployRBAC(t *testing.T) {
	ct := newClusterTest(t, "rbac", 0)
	rbac, err := filepath.Abs("../../deploy/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	if _, err := ct.cp.Kubectl(ctx, "apply", "-f", rbac); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
		defer cancel()
		if _, err := ct.cp.Kubectl(ctx, "delete", "-f", rbac, "--wait=false"); err != nil {
			t.Errorf("deleting deploy/rbac.yaml's objects: %v", err)
		}
	})
	out, err := ct.cp.Kubectl(ctx, "create", "token", "kubetun", "-n", "kube-system", "--duration", "1h")
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(out)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := ct.cp.WriteKubeconfig(kubeconfig, token); err != nil {
		t.Fatal(err)
	}

	ct.apply(webService("web", "rbac", "type: NodePort"))
	ct.addPod(podSpec{Name: "rbac-1", App: "rbac"})
	ct.addPod(podSpec{Name: "rbac-2", App: "rbac"})
	nodePort := strings.TrimSpace(ct.kubectl("get", "service", "web", "-o", `jsonpath={.spec.ports[?(@.name=="http")].nodePort}`))
	if nodePort == "" {
		t.Fatal("Service web of type NodePort has no nodePort")
	}
	// The node port listens on the node side of the client's veth, where
	// the client reaches the node.
	gw := ct.Client.Gateway
	p := ct.startKubetunAs(kubeconfig, "--nodeport-addresses", netip.PrefixFrom(gw, gw.BitLen()).String())
	ct.waitServed(ct.clusterIP("web")+":80", 5*time.Second, "rbac-1", "rbac-2")
	ct.waitServed(net.JoinHostPort(gw.String(), nodePort), 5*time.Second, "rbac-1", "rbac-2")
	if out := p.Output(); strings.Contains(strings.ToLower(out), "forbidden") {
		t.Errorf("kubetun, as the ServiceAccount of deploy/rbac.yaml, was refused something:\n%s", out)
	}
}
