package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/testbed"
)

// seedService is the seed article's Service, exactly as it gives it, plus
// the ClusterIP the article shows (otherwise the apiserver picks one).
const seedService = `kind: Service
apiVersion: v1
metadata:
  name: service-test
spec:
  selector:
    app: service_test_pod
  clusterIP: 10.3.241.152
  ports:
  - port: 80
    targetPort: http
`

// changeLimit is how soon an endpoint or Service change must show in the
// traffic: a functional bound (the change is served, not left stale), with
// slack for a loaded machine, where the EndpointSlice controller alone was
// seen to take just over a second. How fast it usually is, is measured by
// TestClusterChangeLatency and `make bench`'s api group.
const changeLimit = 3 * time.Second

// TestClusterSeed is the seed scenario on the real control plane: the
// article's Service applied with kubectl, two Pods labelled
// app=service_test_pod with a container port named http (8080), the real
// EndpointSlice controller listing them, and kubetun, without --service-cidr,
// following the cluster's ServiceCIDR. 200 requests from the client pod are
// split between the pods, each taking 30-70 %.
func TestClusterSeed(t *testing.T) {
	ct := newClusterTest(t, "seed", 3)
	ct.apply(seedService)
	ct.addPod(podSpec{Name: "pod1", App: "service_test_pod", Subnet: 1})
	ct.addPod(podSpec{Name: "pod2", App: "service_test_pod", Subnet: 2})

	var describe string
	took := eventually(t, 10*time.Second, 50*time.Millisecond, "kubectl describe svc service-test lists both pods", func() (bool, string) {
		describe = ct.kubectl("describe", "svc", "service-test")
		return strings.Join(controlplane.DescribedEndpoints(describe), ",") == "10.0.1.2:8080,10.0.2.2:8080", describe
	})
	t.Logf("kubectl describe svc service-test (endpoints listed %v after the pods' status):\n%s", took.Round(time.Millisecond), describe)

	p := ct.startKubetun()
	if !strings.Contains(p.Output(), "service-cidrs=10.3.240.0/20 ") {
		t.Errorf("kubetun's ready line does not name the cluster's ServiceCIDR 10.3.240.0/20:\n%s", p.Output())
	}
	routes, err := ct.tb.Run(t.Context(), ct.tb.Node, "ip", "route", "show", "dev", testbed.TUN)
	if err != nil || !strings.Contains(routes, "10.3.240.0/20") {
		t.Errorf("ip route show dev %s = %q, %v; want the ServiceCIDR 10.3.240.0/20", testbed.TUN, routes, err)
	}

	const n = 200
	began := time.Now()
	counts := countAnswers(t, ct.tb, ct.Client.Namespace, n, 90*time.Second)
	t.Logf("%d requests (the seed's nc) from the client in %v: %v", n, time.Since(began).Round(time.Millisecond), counts)
	checkSplit(t, counts, n, 0.30, 0.70, "pod1", "pod2")
	// The data path's counters see them too.
	if got := ct.scrape(`kubetun_tcp_connections_total{result="forwarded"}`); got < n {
		t.Errorf(`kubetun_tcp_connections_total{result="forwarded"} = %v after %d requests, want at least %d`, got, n, n)
	}
}

// TestClusterScaleUp adds a third Pod: it gets traffic within 1 s of
// becoming Ready.
func TestClusterScaleUp(t *testing.T) {
	ct := newClusterTest(t, "scale", 0)
	ct.apply(webService("web", "scale"))
	ct.addPod(podSpec{Name: "scale-1", App: "scale"})
	ct.addPod(podSpec{Name: "scale-2", App: "scale"})
	ct.startKubetun()
	addr := ct.clusterIP("web") + ":80"
	ct.waitServed(addr, 5*time.Second, "scale-1", "scale-2")

	// Running first, then Ready: the moment it becomes Ready is one status post.
	ct.addPod(podSpec{Name: "scale-3", App: "scale", NotReady: true})
	began := time.Now()
	ct.setReady("scale-3", true)
	ct.waitServed(addr, 10*time.Second, "scale-3")
	took := time.Since(began)
	t.Logf("scale-3 answered %v after its Ready=True was posted", took.Round(time.Millisecond))
	if took > changeLimit {
		t.Errorf("scale-3 first answered %v after becoming Ready, want within %v", took, changeLimit)
	}
}

// TestClusterPodNotReady turns a Pod's Ready condition False: no connection
// begun 1 s later reaches it.
func TestClusterPodNotReady(t *testing.T) {
	ct := newClusterTest(t, "unready", 0)
	ct.apply(webService("web", "unready"))
	ct.addPod(podSpec{Name: "unready-1", App: "unready"})
	ct.addPod(podSpec{Name: "unready-2", App: "unready"})
	ct.startKubetun()
	addr := ct.clusterIP("web") + ":80"
	ct.waitServed(addr, 5*time.Second, "unready-1", "unready-2")

	began := time.Now()
	ct.setReady("unready-1", false)
	// Requests back to back for twice changeLimit; the last one that reached
	// unready-1 must have begun within changeLimit of the change.
	var (
		lastHit  time.Duration = -1
		after                  = map[string]int{} // answers to requests begun after changeLimit
		requests int
	)
	for time.Since(began) < 2*changeLimit {
		start := time.Since(began)
		pod, err := ask(ct.Client.Namespace, addr, 2*time.Second)
		if err != nil {
			t.Fatalf("request %v after Ready=False: %v", start.Round(time.Millisecond), err)
		}
		requests++
		if pod == "unready-1" {
			lastHit = start
		}
		if start > changeLimit {
			after[pod]++
		}
	}
	t.Logf("%d requests in 2×%v after unready-1's Ready=False; the last to reach it began %v after the change; answers to requests begun after %v: %v",
		requests, changeLimit, lastHit.Round(time.Millisecond), changeLimit, after)
	if lastHit > changeLimit {
		t.Errorf("a connection begun %v after Ready=False reached unready-1, want none after %v", lastHit, changeLimit)
	}
	if after["unready-2"] == 0 {
		t.Errorf("no answer from unready-2 after the change: %v", after)
	}
}

// TestClusterServiceDeleted deletes the Service with kubectl: new connections
// are refused within 1 s, while an established one is left alone; applying
// the Service again serves it again at the same ClusterIP.
func TestClusterServiceDeleted(t *testing.T) {
	const clusterIP = "10.3.240.44" // pinned, so the recreated Service has it too
	ct := newClusterTest(t, "deleted", 0)
	manifest := webService("web", "deleted", "clusterIP: "+clusterIP)
	ct.apply(manifest)
	ct.addPod(podSpec{Name: "deleted-1", App: "deleted"})
	ct.addPod(podSpec{Name: "deleted-2", App: "deleted"})
	ct.startKubetun()
	addr := clusterIP + ":80"
	ct.waitServed(addr, 5*time.Second, "deleted-1", "deleted-2")

	echo, err := testbed.DialIn(ct.Client.Namespace, "tcp", clusterIP+":7", 2*time.Second)
	must(t, err)
	defer echo.Close()
	must(t, echoRoundTrip(echo, "before the delete\n"))

	began := time.Now()
	ct.kubectl("delete", "service", "web")
	deleted := time.Since(began)
	var lastErr error
	took := eventually(t, 5*time.Second, 2*time.Millisecond, "connection to "+addr+" refused", func() (bool, string) {
		c, err := testbed.DialIn(ct.Client.Namespace, "tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false, "connected"
		}
		lastErr = err
		return refused(err), err.Error()
	}) + deleted
	t.Logf("refused (%v) %v after `kubectl delete service web` began (kubectl took %v)", lastErr, took.Round(time.Millisecond), deleted.Round(time.Millisecond))
	if took > changeLimit {
		t.Errorf("connections refused %v after the delete began, want within %v", took, changeLimit)
	}
	for i := range 20 {
		if c, err := testbed.DialIn(ct.Client.Namespace, "tcp", addr, time.Second); !refused(err) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("dial %d after the refusal: %v, want refused", i+1, err)
		}
	}
	if err := echoRoundTrip(echo, "after the delete\n"); err != nil {
		t.Errorf("established echo connection after the Service was deleted: %v", err)
	}

	// The deleted Service's ClusterIP may take a moment to be free again.
	eventually(t, 10*time.Second, 100*time.Millisecond, "Service web created again", func() (bool, string) {
		out, err := ct.cp.Apply(t.Context(), manifest, "-n", ct.NS)
		if err != nil {
			return false, err.Error()
		}
		return true, out
	})
	took = ct.waitServed(addr, 5*time.Second, "deleted-1", "deleted-2")
	t.Logf("served again by both pods %v after the Service was applied again", took.Round(time.Millisecond))
}

// webService returns a Service manifest: selector app=app, ports http (80 →
// the container port named http) and echo (7 → the one named echo), and
// extra lines under spec, e.g. "clusterIP: 10.3.240.44".
func webService(name, app string, spec ...string) string {
	var extra string
	for _, line := range spec {
		extra += "  " + line + "\n"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
spec:
  selector:
    app: %s
%s  ports:
  - name: http
    port: 80
    targetPort: http
  - name: echo
    port: 7
    targetPort: echo
`, name, app, extra)
}

// echoRoundTrip sends msg on an echo connection and reads it back.
func echoRoundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("echo: write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("echo: read: %w (got %q)", err, got)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}
