package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// The addresses TestNodePortExternal serves the seed Service on, besides
// its ClusterIP: documentation ranges (RFC 5737), routed only inside the
// test bed's node namespace.
var (
	externalIP        = netip.MustParseAddr("192.0.2.10")
	externalIPOutside = netip.MustParseAddr("203.0.113.10") // outside --external-ip-ranges
	loadBalancerIP    = netip.MustParseAddr("198.51.100.10")
)

const (
	nodePortTCP   = 30080
	nodePortUDP   = 30007
	nodePortTaken = 30081 // held by another process on the node
	healthCheckNP = 32000
)

// TestNodePortExternal serves the seed Service from outside the cluster:
// as a NodePort on the node's address (TCP and UDP), on an externalIP and a
// load-balancer ingress IP (and not on an externalIP outside
// --external-ip-ranges), with externalTrafficPolicy: Local and its health
// check node port, and switched back to ClusterIP. The client pod sends
// everything to its gateway, the node's address 10.0.3.1.
func TestNodePortExternal(t *testing.T) {
	needKubetun(t)
	tb, seed := newBed(t)
	node := seed.Client.Gateway.String()
	path := filepath.Join(tb.Dir, "services.yaml")
	svc := testbed.Service{
		Name:       "service-test",
		ClusterIPs: []netip.Addr{netip.MustParseAddr(testbed.ClusterIP)},
		Selector:   "service_test_pod",
		Type:       "NodePort",
		Ports: []testbed.ServicePort{
			{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080, NodePort: nodePortTCP},
			{Name: "echo-udp", Port: 7, TargetPort: "9002", EndpointPort: 9002, Protocol: "UDP", NodePort: nodePortUDP},
			{Name: "echo", Port: 7, TargetPort: "9000", EndpointPort: 9000, NodePort: nodePortTaken},
		},
		Endpoints:   []testbed.Endpoint{testbed.EndpointOf(seed.Pod1), testbed.EndpointOf(seed.Pod2)},
		ExternalIPs: []netip.Addr{externalIP, externalIPOutside},
	}
	write := func() {
		t.Helper()
		if err := testbed.WriteServices(path, svc); err != nil {
			t.Fatal(err)
		}
	}
	write()
	// Another process holds one node port before kubetun starts.
	if _, err := tb.Start(tb.Node, "taker", "nc", "-lk", node, fmt.Sprint(nodePortTaken)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "nc listens", func() bool {
		out, _ := tb.Run(t.Context(), tb.Node, "ss", "-Hltn", fmt.Sprintf("sport = :%d", nodePortTaken))
		return strings.TrimSpace(out) != ""
	})
	p, err := tb.StartKubetun(path, "--node-name", testbed.NodeName,
		"--nodeport-addresses", seed.Client.Gateway.String()+"/24", "--external-ip-ranges", "192.0.2.0/24")
	t.Cleanup(func() {
		if t.Failed() && p != nil {
			t.Logf("kubetun (%s) output:\n%s", p.CommandLine(), p.Output())
		}
	})
	if err != nil {
		t.Fatalf("StartKubetun: %v", err)
	}
	client := seed.Client.Namespace

	t.Run("tcp_node_port", func(t *testing.T) {
		checkSplit(t, answers(t, tb, client, node, nodePortTCP, 40), 40, 0.30, 0.70, "pod1", "pod2")
	})
	t.Run("taken_node_port", func(t *testing.T) {
		taken := fmt.Sprintf("Service default/service-test: node port %d (TCP) on %s not served", nodePortTaken, node)
		if n := strings.Count(p.Output(), taken); n != 1 || !strings.Contains(p.Output(), "address already in use") {
			t.Errorf("kubetun's log says %q %d times, want once, with the reason", taken, n)
		}
	})
	t.Run("udp_node_port", func(t *testing.T) {
		counts := map[string]int{}
		for i := range 10 { // each nc is a new source port: a new session
			pod, err := udpEcho(t.Context(), tb, client, node, nodePortUDP, i)
			if err != nil {
				t.Fatal(err)
			}
			counts[pod]++
		}
		checkSplit(t, counts, 10, 0.30, 0.70, "pod1", "pod2")
	})
	t.Run("external_ip", func(t *testing.T) {
		checkSplit(t, answers(t, tb, client, externalIP.String(), 80, 20), 20, 0.30, 0.70, "pod1", "pod2")
		if pod, err := seedRequest(t.Context(), tb, client, externalIPOutside.String(), 80); err == nil {
			t.Errorf("externalIP %s outside --external-ip-ranges answered (%s)", externalIPOutside, pod)
		}
		if !strings.Contains(p.Output(), "externalIP "+externalIPOutside.String()+" is outside") {
			t.Errorf("kubetun's log does not say why %s is not served", externalIPOutside)
		}
	})
	t.Run("load_balancer_ip", func(t *testing.T) {
		svc.Type = "LoadBalancer"
		// The second is the node's own address (pod2's gateway): refused.
		svc.LoadBalancerIPs = []netip.Addr{loadBalancerIP, seed.Pod2.Gateway}
		write()
		waitUntil(t, 5*time.Second, "the load-balancer IP answers", func() bool {
			_, err := seedRequest(t.Context(), tb, client, loadBalancerIP.String(), 80)
			return err == nil
		})
		checkSplit(t, answers(t, tb, client, loadBalancerIP.String(), 80, 20), 20, 0.30, 0.70, "pod1", "pod2")
		refused := fmt.Sprintf("load-balancer ingress IP %s: overlaps route", seed.Pod2.Gateway)
		if n := strings.Count(p.Output(), refused); n != 1 {
			t.Errorf("kubetun's log says %q %d times, want once", refused, n)
		}
		routes, err := tb.Run(t.Context(), tb.Node, "ip", "route", "show", "dev", testbed.TUN)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{externalIP.String(), loadBalancerIP.String()} {
			if !strings.Contains(routes, want+" ") {
				t.Errorf("routes into %s = %q, want %s", testbed.TUN, routes, want)
			}
		}
		for _, not := range []string{externalIPOutside.String(), seed.Pod2.Gateway.String()} {
			if strings.Contains(routes, not+" ") {
				t.Errorf("routes into %s = %q, want no %s", testbed.TUN, routes, not)
			}
		}
	})
	t.Run("local_policy", func(t *testing.T) {
		svc.ExternalTrafficPolicy = "Local"
		svc.HealthCheckNodePort = healthCheckNP
		svc.Endpoints[1].Node = "elsewhere" // pod2 runs on another node
		write()
		waitUntil(t, 5*time.Second, "the health check node port answers 200", func() bool {
			code, _, err := healthCheck(t.Context(), tb, client, node)
			return err == nil && code == 200
		})
		code, body, _ := healthCheck(t.Context(), tb, client, node)
		if code != 200 || body.LocalEndpoints != 1 || body.Service.Name != "service-test" || !body.ServiceProxyHealthy {
			t.Errorf("health check = %d %+v, want 200 with localEndpoints 1", code, body)
		}
		for _, target := range []string{node + fmt.Sprintf(":%d", nodePortTCP), externalIP.String() + ":80", loadBalancerIP.String() + ":80"} {
			ip, port, _ := strings.Cut(target, ":")
			var n int
			fmt.Sscan(port, &n)
			counts := answers(t, tb, client, ip, n, 10)
			if counts["pod1"] != 10 {
				t.Errorf("%s with externalTrafficPolicy: Local answered by %v, want pod1 (this node's) only", target, counts)
			}
		}
		// The ClusterIP still uses both (internalTrafficPolicy is Cluster).
		checkSplit(t, answers(t, tb, client, testbed.ClusterIP, 80, 20), 20, 0.30, 0.70, "pod1", "pod2")

		svc.Endpoints[0].NotReady = true // the local pod goes unready
		write()
		waitUntil(t, 5*time.Second, "the health check node port answers 503", func() bool {
			code, body, err := healthCheck(t.Context(), tb, client, node)
			return err == nil && code == 503 && body.LocalEndpoints == 0
		})
		if pod, err := seedRequest(t.Context(), tb, client, node, nodePortTCP); err == nil {
			t.Errorf("node port with no local endpoint answered (%s)", pod)
		}
	})
	t.Run("type_back_to_cluster_ip", func(t *testing.T) {
		svc.Type, svc.ExternalTrafficPolicy, svc.HealthCheckNodePort = "", "", 0
		svc.Endpoints[0].NotReady = false
		write()
		waitUntil(t, 5*time.Second, "the node port closes", func() bool {
			out, _ := tb.Run(t.Context(), tb.Node, "ss", "-Hltnu", fmt.Sprintf("( sport = :%d or sport = :%d or sport = :%d )", nodePortTCP, nodePortUDP, healthCheckNP))
			return strings.TrimSpace(out) == ""
		})
		if pod, err := seedRequest(t.Context(), tb, client, node, nodePortTCP); err == nil {
			t.Errorf("node port answered after the Service became ClusterIP (%s)", pod)
		}
		if _, err := seedRequest(t.Context(), tb, client, testbed.ClusterIP, 80); err != nil {
			t.Errorf("ClusterIP: %v", err)
		}
	})
}

// answers sends n seed requests from ns to ip:port and counts the answering
// pods; the first failure fails t.
func answers(t *testing.T, tb *testbed.Testbed, ns, ip string, port, n int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	counts := map[string]int{}
	for i := range n {
		pod, err := seedRequest(ctx, tb, ns, ip, port)
		if err != nil {
			t.Fatalf("request %d of %d to %s:%d: %v (answers so far: %v)", i+1, n, ip, port, err, counts)
		}
		counts[pod]++
	}
	return counts
}

// udpEcho sends "hello i" from ns to ip:port with nc and returns the pod
// that echoed it.
func udpEcho(ctx context.Context, tb *testbed.Testbed, ns, ip string, port, i int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := tb.Run(ctx, ns, "sh", "-c", fmt.Sprintf("printf 'hello %d' | nc -u -w1 %s %d", i, ip, port))
	pod, rest, ok := strings.Cut(out, ": ")
	if err != nil || !ok || rest != fmt.Sprintf("hello %d", i) {
		return "", fmt.Errorf("printf 'hello %d' | nc -u -w1 %s %d = %q, %v; want \"POD: hello %d\"", i, ip, port, out, err, i)
	}
	return pod, nil
}

// healthBody is kube-proxy's health check node port answer.
type healthBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// healthCheck asks the health check node port on node from ns with curl, as
// a cloud load balancer's probe would.
func healthCheck(ctx context.Context, tb *testbed.Testbed, ns, node string) (int, healthBody, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var body healthBody
	out, err := tb.Run(ctx, ns, "curl", "-s", "-m", "3", "-w", "\n%{http_code}", fmt.Sprintf("http://%s:%d/", node, healthCheckNP))
	if err != nil {
		return 0, body, err
	}
	i := strings.LastIndexByte(out, '\n')
	var code int
	fmt.Sscan(out[i+1:], &code)
	if err := json.Unmarshal([]byte(out[:i]), &body); err != nil {
		return code, body, fmt.Errorf("health check body %q: %w", out[:i], err)
	}
	return code, body, nil
}

// waitUntil polls cond until it holds, failing t after limit.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
