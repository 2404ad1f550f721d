package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The ServiceCIDR TestClusterServiceCIDRAdded adds. 10.4.0.0/24 overlaps
// nothing in the node namespace: not the first ServiceCIDR 10.3.240.0/20
// (which holds 10.3.250.0/24, say), not the pods' 10.0.N.0/24.
const (
	extraCIDRName = "kubetun-e2e-extra"
	extraCIDR     = "10.4.0.0/24"
	extraIP       = "10.4.0.10"
)

// TestClusterServiceCIDRAdded applies a second ServiceCIDR under a running
// kubetun started without --service-cidr: it routes the new range into its
// TUN without a restart, serves a Service allocated from it, and removes the
// route once the ServiceCIDR is deleted.
func TestClusterServiceCIDRAdded(t *testing.T) {
	ct := newClusterTest(t, "cidr", 0)
	ct.startKubetun()
	routes := func(t *testing.T) string {
		out, err := ct.tb.Run(t.Context(), ct.tb.Node, "ip", "route", "show", "dev", testbed.TUN)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := routes(t)
	if !strings.Contains(before, "10.3.240.0/20") || strings.Contains(before, extraCIDR) {
		t.Fatalf("ip route show dev %s before = %q, want 10.3.240.0/20 alone", testbed.TUN, before)
	}

	t.Cleanup(func() { // cluster-scoped: newClusterTest's clean-up does not see it
		ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
		defer cancel()
		if _, err := ct.cp.Kubectl(ctx, "delete", "servicecidr", extraCIDRName, "--ignore-not-found", "--wait=false"); err != nil {
			t.Errorf("deleting ServiceCIDR %s: %v", extraCIDRName, err)
		}
	})
	applied := time.Now()
	ct.apply(`apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: ` + extraCIDRName + `
spec:
  cidrs:
  - ` + extraCIDR + `
`)
	took := eventually(t, 5*time.Second, 10*time.Millisecond, extraCIDR+" routed into "+testbed.TUN, func() (bool, string) {
		r := routes(t)
		return strings.Contains(r, extraCIDR), r
	})
	t.Logf("%s routed into %s %v after kubectl apply returned (%v after it began); routes:\n%s",
		extraCIDR, testbed.TUN, took.Round(time.Millisecond), time.Since(applied).Round(time.Millisecond), routes(t))

	t.Run("served", func(t *testing.T) {
		ct := ct.sub(t)
		ct.addPod(podSpec{Name: "cidr-1", App: "cidr"})
		manifest := webService("web", "cidr", "clusterIP: "+extraIP)
		// kube-apiserver allocates from a ServiceCIDR only once its
		// controller marked it Ready.
		eventually(t, 10*time.Second, 100*time.Millisecond, "Service web created at "+extraIP, func() (bool, string) {
			out, err := ct.cp.Apply(t.Context(), manifest, "-n", ct.NS)
			if err != nil {
				return false, err.Error()
			}
			return true, out
		})
		took := ct.waitServed(extraIP+":80", 5*time.Second, "cidr-1")
		t.Logf("%s:80 served %v after the Service was created", extraIP, took.Round(time.Millisecond))
		ct.kubectl("delete", "service", "web")
	})

	t.Run("route_removed_with_the_servicecidr", func(t *testing.T) {
		// A deleted ServiceCIDR stays, with its finalizer, until the
		// service-cidr-controller's 10-s deletion grace period has passed;
		// kubetun keeps routing it until then, as its addresses may still be
		// allocated. The route must go once the object is gone.
		ct := ct.sub(t)
		ct.kubectl("delete", "servicecidr", extraCIDRName, "--wait=false")
		held := eventually(t, 30*time.Second, 50*time.Millisecond, "ServiceCIDR "+extraCIDRName+" gone", func() (bool, string) {
			out := ct.kubectl("get", "servicecidrs", "-o", "name")
			return !strings.Contains(out, extraCIDRName), out
		})
		took := eventually(t, 5*time.Second, 10*time.Millisecond, extraCIDR+" no longer routed", func() (bool, string) {
			r := routes(t)
			return !strings.Contains(r, extraCIDR) && strings.Contains(r, "10.3.240.0/20"), r
		})
		t.Logf("ServiceCIDR %s gone %v after kubectl delete; %s unrouted %v after that", extraCIDRName, held.Round(time.Millisecond), extraCIDR, took.Round(time.Millisecond))
		if took > changeLimit {
			t.Errorf("%s still routed %v after its ServiceCIDR was gone, want within %v", extraCIDR, took, changeLimit)
		}
	})
}
