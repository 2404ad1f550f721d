package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestClusterSessionAffinity serves a Service with sessionAffinity: ClientIP:
// 15 consecutive requests from one client reach one pod. Switched off with
// kubectl patch, both pods answer again.
func TestClusterSessionAffinity(t *testing.T) {
	ct := newClusterTest(t, "affinity", 0)
	ct.apply(webService("web", "affinity", "sessionAffinity: ClientIP"))
	ct.addPod(podSpec{Name: "affinity-1", App: "affinity"})
	ct.addPod(podSpec{Name: "affinity-2", App: "affinity"})
	ct.waitReadyEndpoints("web", 2)
	ct.startKubetun()
	ip := ct.clusterIP("web")
	t.Logf("sessionAffinityConfig as the apiserver defaulted it: %s",
		ct.kubectl("get", "service", "web", "-o", "jsonpath={.spec.sessionAffinityConfig}"))

	counts := map[string]int{}
	for i := range 15 {
		pod, err := seedRequest(t.Context(), ct.tb, ct.Client.Namespace, ip, 80)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		counts[pod]++
	}
	t.Logf("15 requests (the seed's nc) from %s with ClientIP affinity: %v", ct.Client.IP, counts)
	if len(counts) != 1 {
		t.Errorf("15 requests with ClientIP affinity reached %v, want one pod", counts)
	}

	ct.kubectl("patch", "service", "web", "--type=merge",
		"-p", `{"spec":{"sessionAffinity":"None","sessionAffinityConfig":null}}`)
	took := ct.waitServed(ip+":80", 5*time.Second, "affinity-1", "affinity-2")
	t.Logf("affinity off: both pods answered within %v of the patch", took.Round(time.Millisecond))
}

// TestClusterNamedTargetPort gives the container port named http a
// different number on each pod (8080 and 8081): the Service's targetPort
// http resolves per endpoint, through the EndpointSlices, and both are served.
func TestClusterNamedTargetPort(t *testing.T) {
	ct := newClusterTest(t, "named", 0)
	ct.apply(webService("web", "named"))
	ct.addPod(podSpec{Name: "named-8080", App: "named", HTTPPort: 8080})
	ct.addPod(podSpec{Name: "named-8081", App: "named", HTTPPort: 8081})
	ct.waitReadyEndpoints("web", 2)
	slices := ct.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o",
		`jsonpath={range .items[*]}{.metadata.name}: {.endpoints[*].addresses[0]} ports {.ports[*].name}={.ports[*].port}{"\n"}{end}`)
	t.Logf("EndpointSlices of web:\n%s", slices)
	if !strings.Contains(slices, "8080") || !strings.Contains(slices, "8081") {
		t.Fatalf("the EndpointSlices do not resolve http to both 8080 and 8081:\n%s", slices)
	}
	ct.startKubetun()
	// named-8081 listens on 8081 only: its answer proves kubetun dialled
	// 8081 (a dial to 8080 would be refused and retried on the other pod).
	took := ct.waitServed(ct.clusterIP("web")+":80", 5*time.Second, "named-8080", "named-8081")
	t.Logf("both pods answered on ClusterIP:80 within %v", took.Round(time.Millisecond))
}

// TestClusterMultiPortSlices serves a selector-less Service with two ports
// (http 80 → 8080, echo 7 → 9000) whose endpoints are spread over two
// hand-made EndpointSlices (not managed by the controller): every endpoint is
// served on both ports.
func TestClusterMultiPortSlices(t *testing.T) {
	ct := newClusterTest(t, "slices", 0)
	a := ct.addServer("slices-a", 0)
	b := ct.addServer("slices-b", 0)
	ct.apply(`apiVersion: v1
kind: Service
metadata:
  name: split
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: echo
    port: 7
    targetPort: 9000
`)
	for _, h := range []*testbed.Host{a, b} {
		ct.apply(fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: split-%s
  labels:
    kubernetes.io/service-name: split
    endpointslice.kubernetes.io/managed-by: kubetun-e2e
addressType: IPv4
endpoints:
- addresses:
  - %s
  conditions:
    ready: true
  nodeName: %s
ports:
- name: http
  port: 8080
  protocol: TCP
- name: echo
  port: 9000
  protocol: TCP
`, h.Name, h.IP, testbed.NodeName))
	}
	t.Logf("EndpointSlices of split:\n%s", ct.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=split"))
	ct.startKubetun()
	ip := ct.clusterIP("split")

	t.Run("http", func(t *testing.T) {
		took := ct.sub(t).waitServed(ip+":80", 5*time.Second, a.Name, b.Name)
		t.Logf("both slices' pods answered on %s:80 within %v", ip, took.Round(time.Millisecond))
	})

	t.Run("echo", func(t *testing.T) {
		// 16 connections held open: each pod gets at least one unless the
		// picks are all alike (2 in 65536 for a fair pick).
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := range 16 {
			c, err := testbed.DialIn(ct.Client.Namespace, "tcp", ip+":7", 2*time.Second)
			if err != nil {
				t.Fatalf("echo connection %d: %v", i+1, err)
			}
			conns = append(conns, c)
			if err := echoRoundTrip(c, fmt.Sprintf("echo %d\n", i+1)); err != nil {
				t.Fatalf("echo connection %d: %v", i+1, err)
			}
		}
		for _, h := range []*testbed.Host{a, b} {
			out, err := ct.tb.Run(t.Context(), h.Namespace, "ss", "-Htn", "state", "established", "( sport = :9000 )")
			if err != nil {
				t.Fatal(err)
			}
			n := len(strings.Fields(out)) / 4 // ss -H prints 4 columns per socket in one state
			t.Logf("%s (%s) holds %d of the 16 echo connections", h.Name, h.IP, n)
			if n == 0 {
				t.Errorf("%s holds none of the 16 echo connections; ss:\n%s", h.Name, out)
			}
		}
	})
}
