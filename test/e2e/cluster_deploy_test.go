package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterDeployManifests sends every manifest in deploy/ to the real
// kube-apiserver with `kubectl apply --dry-run=server`: the schema, unknown
// fields (kubectl validates strictly), the priority class and the admission
// chain are checked as a user's `kubectl apply -f deploy/` would be, and
// nothing is created. (cmd/kubetun TestDeployArgs checks kubetun's flags in
// them.)
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
	files, err := filepath.Glob("../../deploy/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/*.yaml: %v", err)
	}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
			defer cancel()
			out, err := env.cp.Kubectl(ctx, "apply", "--dry-run=server", "-f", abs)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server -f deploy/%s: %v\n%s", filepath.Base(f), err, out)
			}
			if !strings.Contains(out, "(server dry run)") {
				t.Errorf("kubectl apply --dry-run=server -f deploy/%s printed %q, want every object (server dry run)", filepath.Base(f), out)
			}
			t.Logf("deploy/%s:\n%s", filepath.Base(f), out)
		})
	}
}

// TestClusterDeployRBAC runs kubetun as the ServiceAccount deploy/rbac.yaml
// makes, with a token from `kubectl create token`, and nothing else: the
// ClusterRole must let it follow the ServiceCIDRs, read its Node, and watch
// Services and EndpointSlices. A forbidden request would leave it unready
// or log it.
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

	ct.apply(webService("web", "rbac"))
	ct.addPod(podSpec{Name: "rbac-1", App: "rbac"})
	ct.addPod(podSpec{Name: "rbac-2", App: "rbac"})
	p := ct.startKubetunAs(kubeconfig)
	ct.waitServed(ct.clusterIP("web")+":80", 5*time.Second, "rbac-1", "rbac-2")
	if out := p.Output(); strings.Contains(strings.ToLower(out), "forbidden") {
		t.Errorf("kubetun, as the ServiceAccount of deploy/rbac.yaml, was refused something:\n%s", out)
	}
}
