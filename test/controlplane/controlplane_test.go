package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubetun/kubetun/test/prereq"
)

// seedManifest is the seed's Service and two Pods with a container port
// named http, bound to node "node".
const seedManifest = `apiVersion: v1
kind: Service
metadata:
  name: service-test
spec:
  selector:
    app: service_test_pod
  ports:
  - port: 80
    targetPort: http
---
apiVersion: v1
kind: Pod
metadata:
  name: pod1
  labels:
    app: service_test_pod
spec:
  nodeName: node
  containers:
  - name: server
    image: kubetun/podserver
    ports:
    - name: http
      containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: pod2
  labels:
    app: service_test_pod
spec:
  nodeName: node
  containers:
  - name: server
    image: kubetun/podserver
    ports:
    - name: http
      containerPort: 8080
`

// TestSeedEndpointSlices starts the control plane in a namespace of its own,
// plays kubelet for the seed's two Pods and checks that the real EndpointSlice
// controller lists them; then flips a Pod's readiness and restarts
// kube-apiserver. It needs root and the built binaries (make controlplane):
// without them it skips, or fails with CI set.
func TestSeedEndpointSlices(t *testing.T) {
	prereq.Root(t, "network namespaces")
	bins, err := Find()
	prereq.Require(t, "the control plane binaries (make controlplane)", err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	netns := newNetns(t)

	begin := time.Now()
	cp, err := Start(ctx, Options{Namespace: netns, Bins: bins, Logf: t.Logf})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v", time.Since(begin).Round(time.Millisecond))
	defer func() {
		begin := time.Now()
		if err := cp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		t.Logf("Close took %v", time.Since(begin).Round(time.Millisecond))
	}()

	if err := cp.CreateNamespace(ctx, "default"); err != nil {
		t.Fatalf("CreateNamespace: %v", err)
	}
	if err := cp.CreateNode(ctx, "node", nil); err != nil {
		t.Fatalf("CreateNode: %v", err)
	}
	if out, err := cp.Apply(ctx, seedManifest); err != nil {
		t.Fatalf("Apply: %v", err)
	} else {
		t.Logf("kubectl apply:\n%s", out)
	}
	begin = time.Now()
	for pod, ip := range map[string]string{"pod1": "10.0.1.2", "pod2": "10.0.2.2"} {
		if err := cp.SetPodRunning(ctx, "default", pod, true, ip); err != nil {
			t.Fatalf("SetPodRunning(%s): %v", pod, err)
		}
	}
	t.Logf("both Pods Running and Ready after %v", time.Since(begin).Round(time.Millisecond))
	want := map[string]bool{"10.0.1.2": true, "10.0.2.2": true}
	waitSlice(ctx, t, cp, want)
	t.Logf("EndpointSlice lists both ready endpoints %v after the first status post", time.Since(begin).Round(time.Millisecond))

	// client-go from the root namespace, through RESTConfig's dialer.
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatalf("kubernetes.NewForConfig: %v", err)
	}
	list, err := client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=service-test"})
	if err != nil {
		t.Fatalf("client-go: list EndpointSlices: %v", err)
	}
	if len(list.Items) != 1 || len(list.Items[0].Endpoints) != 2 {
		t.Errorf("client-go: EndpointSlices of service-test: %d slices, want 1 with 2 endpoints", len(list.Items))
	}

	out, err := cp.Kubectl(ctx, "get", "endpointslices", "-o", "yaml")
	if err != nil {
		t.Fatalf("Kubectl: %v", err)
	}
	t.Logf("kubectl get endpointslices -o yaml:\n%s", out)
	out, err = cp.Kubectl(ctx, "describe", "svc", "service-test")
	if err != nil {
		t.Fatalf("Kubectl: %v", err)
	}
	t.Logf("kubectl describe svc service-test:\n%s", out)
	if got := strings.Join(DescribedEndpoints(out), ","); got != "10.0.1.2:8080,10.0.2.2:8080" {
		t.Errorf("kubectl describe svc service-test: endpoints %q, want 10.0.1.2:8080 and 10.0.2.2:8080 in any order", got)
	}
	if out, err := cp.Kubectl(ctx, "get", "pods,nodes,servicecidrs", "-o", "wide"); err != nil {
		t.Errorf("Kubectl: %v", err)
	} else {
		t.Logf("kubectl get pods,nodes,servicecidrs:\n%s", out)
	}

	begin = time.Now()
	if err := cp.SetPodReady(ctx, "default", "pod1", false); err != nil {
		t.Fatalf("SetPodReady(pod1, false): %v", err)
	}
	waitSlice(ctx, t, cp, map[string]bool{"10.0.1.2": false, "10.0.2.2": true})
	t.Logf("pod1 not ready in the slice %v after SetPodReady", time.Since(begin).Round(time.Millisecond))

	begin = time.Now()
	if err := cp.StopAPIServer(); err != nil {
		t.Fatalf("StopAPIServer: %v", err)
	}
	t.Logf("StopAPIServer took %v", time.Since(begin).Round(time.Millisecond))
	if _, err := cp.Kubectl(ctx, "get", "pods", "--request-timeout", "2s"); err == nil {
		t.Errorf("kubectl get pods with kube-apiserver stopped: no error")
	}
	begin = time.Now()
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("StartAPIServer: %v", err)
	}
	t.Logf("StartAPIServer took %v", time.Since(begin).Round(time.Millisecond))
	if err := cp.SetPodReady(ctx, "default", "pod1", true); err != nil {
		t.Fatalf("SetPodReady(pod1, true) after restart: %v", err)
	}
	waitSlice(ctx, t, cp, want)

	if err := cp.FinishPodTermination(ctx, "default", "pod2"); err != nil {
		t.Fatalf("FinishPodTermination(pod2): %v", err)
	}
	waitSlice(ctx, t, cp, map[string]bool{"10.0.1.2": true})
}

// waitSlice waits until the EndpointSlices of service-test list exactly the
// addresses in want, each with ready as want says, on port http 8080.
func waitSlice(ctx context.Context, t *testing.T, cp *ControlPlane, want map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	path := "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dservice-test"
	var last string
	for {
		data, err := cp.Do(ctx, "GET", path, "", nil)
		if err == nil {
			var list discoveryv1.EndpointSliceList
			if err := json.Unmarshal(data, &list); err != nil {
				t.Fatalf("decode EndpointSliceList: %v", err)
			}
			got := map[string]bool{}
			for _, s := range list.Items {
				if !slices.ContainsFunc(s.Ports, func(p discoveryv1.EndpointPort) bool {
					return p.Name != nil && *p.Name == "" && p.Port != nil && *p.Port == 8080
				}) {
					continue
				}
				for _, e := range s.Endpoints {
					got[e.Addresses[0]] = e.Conditions.Ready == nil || *e.Conditions.Ready
				}
			}
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			last = fmt.Sprint(got)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("EndpointSlices of service-test: want %v, last %s", want, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newNetns creates a network namespace with a unique name and deletes it when
// the test ends.
func newNetns(t *testing.T) string {
	t.Helper()
	prereq.Commands(t, "ip")
	b := make([]byte, 3)
	rand.Read(b)
	ns := "ktcp" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	return ns
}
