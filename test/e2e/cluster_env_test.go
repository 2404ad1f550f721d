package e2e

// The TestCluster tests run kubetun against a real control plane (package
// controlplane: etcd, kube-apiserver, kube-controller-manager with the real
// EndpointSlice controller), driven by the real kubectl.
//
// How they share it:
//
//   - One control plane per test binary, started lazily by the first
//     TestCluster test (sharedCluster, a sync.Once) and closed by TestMain after
//     m.Run. It runs inside the node namespace of one test bed that also lives
//     for the whole binary.
//   - Every TestCluster test uses that same node namespace: its pods' veths end
//     there, and its kubetun, which reaches kube-apiserver on the namespace's
//     127.0.0.1, runs there. kubetun watches every Kubernetes namespace and owns
//     the TUN kubetun0 and the routes of the service CIDRs, so two of them cannot
//     share a node namespace: the TestCluster tests run one after the other
//     (none calls t.Parallel), each starting its own kubetun and stopping it
//     when it ends, with the default health and metrics addresses.
//   - Each test has its own Kubernetes namespace, its own client host and pods
//     whose /24s come from a counter, so pod IPs never repeat within the binary;
//     the seed test alone takes the seed's 10.0.1.0/24, 10.0.2.0/24 and
//     10.0.3.0/24. When a test ends, its Services, EndpointSlices and Pods are
//     deleted (no namespace controller runs, so the namespace itself would stay
//     Terminating; it is left alone) and its hosts are removed, so the next
//     test's kubetun serves only what that test made.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/prereq"
	"github.com/kubetun/kubetun/test/testbed"
)

// The addresses kubetun serves health and metrics on: kube-proxy's defaults,
// given explicitly. One kubetun runs at a time in the node namespace.
const (
	healthAddr  = "127.0.0.1:10256"
	metricsAddr = "127.0.0.1:10249"
)

// Pod subnets: the seed test uses 1, 2 and 3; the others count up from here.
const firstSubnet = 10

// kubectlTimeout bounds one kubectl command.
const kubectlTimeout = 30 * time.Second

// sharedCluster's state: the test bed and control plane of the whole binary.
var (
	clusterOnce sync.Once
	clusterEnv  *sharedEnv
	clusterErr  error
)

// sharedEnv is the node namespace and the control plane running in it.
type sharedEnv struct {
	tb    *testbed.Testbed
	cp    *controlplane.ControlPlane
	steps *stepLog // the test bed's and control plane's steps, per test

	mu         sync.Mutex // guards nextSubnet
	nextSubnet int
}

// sharedCluster returns the binary's control plane, starting it on first use.
// It stops t as needRoot does without root or without the control plane's
// binaries, and fails it when kubetun does not build or the control plane
// cannot start.
func sharedCluster(t *testing.T) *sharedEnv {
	t.Helper()
	needKubetun(t)
	_, err := controlplane.Find()
	prereq.Require(t, "the control plane binaries", err)
	clusterOnce.Do(func() {
		began := time.Now()
		clusterEnv, clusterErr = startSharedEnv()
		if clusterErr == nil {
			t.Logf("shared control plane: started in %v in node namespace %s (kube-apiserver %s)",
				time.Since(began).Round(time.Millisecond), clusterEnv.tb.Node, clusterEnv.cp.Server)
		}
	})
	if clusterErr != nil {
		t.Fatalf("shared control plane: %v", clusterErr)
	}
	return clusterEnv
}

func startSharedEnv() (_ *sharedEnv, err error) {
	bins, err := controlplane.Find()
	if err != nil {
		return nil, err
	}
	env := &sharedEnv{steps: &stepLog{}, nextSubnet: firstSubnet}
	env.tb, err = testbed.Create(testbed.Options{Podserver: podserverBin, Kubetun: kubetunBin, Logf: env.steps.logf})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			env.close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env.cp, err = controlplane.Start(ctx, controlplane.Options{Namespace: env.tb.Node, Bins: bins, Logf: env.steps.logf})
	if err != nil {
		return nil, err
	}
	if err := env.cp.CreateNode(ctx, testbed.NodeName, nil); err != nil {
		return nil, err
	}
	return env, nil
}

// closeSharedCluster stops the control plane and removes the test bed, if
// a test started them. TestMain calls it after m.Run.
func closeSharedCluster() error {
	if clusterEnv == nil {
		return nil
	}
	return clusterEnv.close()
}

func (env *sharedEnv) close() error {
	var errs []error
	if env.cp != nil {
		if err := env.cp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("control plane: Close: %w", err))
		}
	}
	if err := env.tb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: Close: %w", env.tb.Prefix, err))
	}
	return errors.Join(errs...)
}

// subnet returns a pod subnet no other host of this binary has had.
func (env *sharedEnv) subnet(t *testing.T) int {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.nextSubnet > 254 {
		t.Fatalf("out of pod subnets (10.0.%d.0/24 would be next)", env.nextSubnet)
	}
	n := env.nextSubnet
	env.nextSubnet++
	return n
}

// stepLog keeps the test bed's and control plane's step lines of the current
// test, shown only if it fails (as testbed.New does for its own test beds).
type stepLog struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *stepLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, format+"\n", args...)
}

// take returns the lines so far and forgets them.
func (l *stepLog) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	l.b.Reset()
	return s
}

// clusterTest is one TestCluster test's share of the shared cluster: its
// Kubernetes namespace, its client host, its pods and its kubetun.
type clusterTest struct {
	*sharedEnv
	t *testing.T
	// NS is the test's Kubernetes namespace.
	NS string
	// tag prefixes the test's host names, which the test bed wants unique.
	tag string
	// Client is the test's client host, in a namespace of its own.
	Client *testbed.Host
	// Kubetun is the running kubetun, once startKubetun was called.
	Kubetun *testbed.Process
	// KubetunStarted is when startKubetun started it.
	KubetunStarted time.Time
}

// newClusterTest gives t the namespace e2e-tag and a client host (named
// "client" for the seed, tag+"-c" otherwise); subnet 0 means the next free
// one. Everything is removed when t ends.
func newClusterTest(t *testing.T, tag string, clientSubnet int) *clusterTest {
	t.Helper()
	env := sharedCluster(t)
	env.steps.take() // what earlier tests left
	ct := &clusterTest{sharedEnv: env, t: t, NS: "e2e-" + tag, tag: tag}
	t.Cleanup(func() { // registered first, runs last
		if t.Failed() {
			t.Logf("test bed and control plane steps:\n%s", env.steps.take())
		}
	})
	if err := env.cp.CreateNamespace(t.Context(), ct.NS); err != nil {
		t.Fatalf("CreateNamespace(%s): %v", ct.NS, err)
	}
	t.Cleanup(ct.deleteObjects)
	name := "client"
	if tag != "seed" {
		name = tag + "-c"
	}
	ct.Client = ct.addHost(name, clientSubnet)
	return ct
}

// sub returns ct for subtest t: its helpers then fail t, not the parent
// (FailNow must run on the failing test's goroutine).
func (ct *clusterTest) sub(t *testing.T) *clusterTest {
	c := *ct
	c.t = t
	return &c
}

// addHost adds a host in subnet (0: the next free one) that t's end removes.
func (ct *clusterTest) addHost(name string, subnet int) *testbed.Host {
	ct.t.Helper()
	if subnet == 0 {
		subnet = ct.subnet(ct.t)
	}
	h, err := ct.tb.AddHost(name, subnet)
	if err != nil {
		ct.t.Fatalf("AddHost(%s, %d): %v", name, subnet, err)
	}
	ct.t.Cleanup(func() {
		if err := ct.tb.RemoveHost(h); err != nil {
			ct.t.Errorf("RemoveHost(%s): %v", h.Name, err)
		}
	})
	return h
}

// addServer adds a host running podserver with extra flags.
func (ct *clusterTest) addServer(name string, subnet int, extra ...string) *testbed.Host {
	ct.t.Helper()
	h := ct.addHost(name, subnet)
	if err := ct.tb.StartServer(h, extra...); err != nil {
		ct.t.Fatalf("StartServer(%s): %v", name, err)
	}
	return h
}

// podSpec is a Pod as the tests create it.
type podSpec struct {
	Name     string // the Pod's name, and its host's
	App      string // the label app=App
	HTTPPort int    // the container port named http; 0 means 8080
	Subnet   int    // 0: the next free one
	NotReady bool   // posted as Running but not Ready
	// Hostname and Subdomain, if set, are the Pod's spec.hostname and
	// spec.subdomain: with a headless Service called Subdomain, its name
	// Hostname.Subdomain.NS.svc.cluster.local resolves to the pod.
	Hostname, Subdomain string
}

// addPod plays kubelet for one Pod: it creates the Pod with kubectl (bound
// to the node, container ports http and echo), starts its namespace and
// podserver (--addr :HTTPPort), then posts its status: Running, podIP
// 10.0.N.2, Ready unless NotReady.
func (ct *clusterTest) addPod(p podSpec) *testbed.Host {
	ct.t.Helper()
	if p.HTTPPort == 0 {
		p.HTTPPort = 8080
	}
	var naming string
	if p.Hostname != "" {
		naming = fmt.Sprintf("  hostname: %s\n  subdomain: %s\n", p.Hostname, p.Subdomain)
	}
	ct.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels:
    app: %s
spec:
  nodeName: %s
%s  containers:
  - name: server
    image: kubetun/podserver # never pulled: the harness runs podserver in the pod's namespace
    ports:
    - name: http
      containerPort: %d
    - name: echo
      containerPort: 9000
`, p.Name, p.App, testbed.NodeName, naming, p.HTTPPort))
	h := ct.addServer(p.Name, p.Subnet, "--addr", fmt.Sprintf(":%d", p.HTTPPort))
	if err := ct.cp.SetPodRunning(ct.t.Context(), ct.NS, p.Name, !p.NotReady, h.IP.String()); err != nil {
		ct.t.Fatalf("SetPodRunning(%s): %v", p.Name, err)
	}
	return h
}

// setReady flips Pod name's readiness, as its kubelet would.
func (ct *clusterTest) setReady(name string, ready bool) {
	ct.t.Helper()
	if err := ct.cp.SetPodReady(ct.t.Context(), ct.NS, name, ready); err != nil {
		ct.t.Fatalf("SetPodReady(%s, %v): %v", name, ready, err)
	}
}

// startKubetun starts kubetun on the API source, following the cluster's
// ServiceCIDRs (no --service-cidr), and waits until it logs msg=ready. It
// stops it when t ends, and shows its log if t failed.
func (ct *clusterTest) startKubetun() *testbed.Process {
	ct.t.Helper()
	return ct.startKubetunAs(ct.cp.Kubeconfig)
}

// startKubetunAs is startKubetun with the kubeconfig given, e.g. one for
// kubetun's own ServiceAccount.
func (ct *clusterTest) startKubetunAs(kubeconfig string, extra ...string) *testbed.Process {
	ct.t.Helper()
	ct.KubetunStarted = time.Now()
	args := append([]string{"run",
		"--kubeconfig", kubeconfig,
		"--node-name", testbed.NodeName,
		"--tun", testbed.TUN,
		"--health-addr", healthAddr,
		"--metrics-addr", metricsAddr}, extra...)
	p, err := ct.tb.StartKubetunArgs(args...)
	ct.Kubetun = p
	if p != nil {
		ct.t.Cleanup(func() {
			if err := p.Stop(10 * time.Second); err != nil {
				ct.t.Errorf("stopping kubetun: %v", err)
			}
			if ct.t.Failed() {
				ct.t.Logf("kubetun (%s) output:\n%s", p.CommandLine(), p.Output())
			}
		})
	}
	if err != nil {
		ct.t.Fatalf("StartKubetunArgs: %v", err)
	}
	ct.t.Logf("kubetun ready %v after start", time.Since(ct.KubetunStarted).Round(time.Millisecond))
	return p
}

// deleteObjects deletes what the test made in its namespace, so that the
// next test's kubetun does not serve it.
func (ct *clusterTest) deleteObjects() {
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	if _, err := ct.cp.Kubectl(ctx, "-n", ct.NS, "delete", "services,endpointslices,pods", "--all",
		"--grace-period=0", "--force", "--wait=false"); err != nil {
		ct.t.Errorf("deleting the objects of namespace %s: %v", ct.NS, err)
	}
}

// kubectl runs kubectl in the test's namespace and fails t on error.
func (ct *clusterTest) kubectl(args ...string) string {
	ct.t.Helper()
	ctx, cancel := context.WithTimeout(ct.t.Context(), kubectlTimeout)
	defer cancel()
	out, err := ct.cp.Kubectl(ctx, append([]string{"-n", ct.NS}, args...)...)
	if err != nil {
		ct.t.Fatal(err)
	}
	return out
}

// apply runs kubectl apply with manifest in the test's namespace.
func (ct *clusterTest) apply(manifest string) string {
	ct.t.Helper()
	ctx, cancel := context.WithTimeout(ct.t.Context(), kubectlTimeout)
	defer cancel()
	out, err := ct.cp.Apply(ctx, manifest, "-n", ct.NS)
	if err != nil {
		ct.t.Fatal(err)
	}
	return out
}

// clusterIP returns Service name's ClusterIP, as the apiserver allocated it.
func (ct *clusterTest) clusterIP(name string) string {
	ct.t.Helper()
	ip := strings.TrimSpace(ct.kubectl("get", "service", name, "-o", "jsonpath={.spec.clusterIP}"))
	if net.ParseIP(ip) == nil {
		ct.t.Fatalf("Service %s/%s: clusterIP %q", ct.NS, name, ip)
	}
	return ip
}

// waitReadyEndpoints waits until the EndpointSlices of Service svc list n
// ready endpoints, as the EndpointSlice controller writes them.
func (ct *clusterTest) waitReadyEndpoints(svc string, n int) {
	ct.t.Helper()
	eventually(ct.t, 10*time.Second, 20*time.Millisecond, fmt.Sprintf("EndpointSlices of %s list %d ready endpoints", svc, n), func() (bool, string) {
		ctx, cancel := context.WithTimeout(ct.t.Context(), kubectlTimeout)
		defer cancel()
		// A slice the controller made before any endpoint has "endpoints":
		// null, where kubectl's jsonpath filter fails: not yet, not an error.
		out, err := ct.cp.Kubectl(ctx, "-n", ct.NS, "get", "endpointslices", "-l", "kubernetes.io/service-name="+svc, "-o",
			`jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}`)
		if err != nil {
			return false, err.Error()
		}
		return len(strings.Fields(out)) == n, out
	})
}

// ask sends the seed's request to addr from the client over a socket of its
// own and returns the answering pod's name. It is the fast twin of
// seedRequest (no process per request), for loops that measure time.
func ask(ns, addr string, timeout time.Duration) (string, error) {
	c, err := testbed.DialIn(ns, "tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		return "", fmt.Errorf("%s: write: %w", addr, err)
	}
	c.(*net.TCPConn).CloseWrite()
	answer, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("%s: read: %w (got %q)", addr, err, answer)
	}
	m := helloRE.FindSubmatch(answer)
	if m == nil {
		return "", fmt.Errorf("%s: answer is not podserver's: %q", addr, answer)
	}
	return string(m[1]), nil
}

// refused reports whether err is a connection refused (kubetun's RST).
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// eventually calls check every interval until it returns done, and fails t
// if that takes longer than limit; it returns how long it took. check's
// second result says what it last saw, for the failure message.
func eventually(t *testing.T, limit, interval time.Duration, what string, check func() (done bool, seen string)) time.Duration {
	t.Helper()
	began := time.Now()
	var seen string
	for {
		var done bool
		done, seen = check()
		if done {
			return time.Since(began)
		}
		if time.Since(began) > limit || t.Context().Err() != nil {
			t.Fatalf("%s: not within %v; last seen: %s", what, limit, seen)
		}
		time.Sleep(interval)
	}
}

// waitServed asks addr from the client until each of pods has answered, and
// fails t after limit.
func (ct *clusterTest) waitServed(addr string, limit time.Duration, pods ...string) time.Duration {
	ct.t.Helper()
	answered := map[string]int{}
	var lastErr error
	return eventually(ct.t, limit, 5*time.Millisecond, fmt.Sprintf("%s answered by each of %v", addr, pods), func() (bool, string) {
		pod, err := ask(ct.Client.Namespace, addr, 2*time.Second)
		if err != nil {
			lastErr = err
		} else {
			answered[pod]++
		}
		for _, p := range pods {
			if answered[p] == 0 {
				return false, fmt.Sprintf("answers %v, last error %v", answered, lastErr)
			}
		}
		return true, ""
	})
}

// scrape returns the value of the sample called name (e.g.
// "kubeproxy_network_programming_duration_seconds_count") in kubetun's
// /metrics, read with curl inside the node namespace.
func (ct *clusterTest) scrape(name string) float64 {
	ct.t.Helper()
	ctx, cancel := context.WithTimeout(ct.t.Context(), 5*time.Second)
	defer cancel()
	out, err := ct.tb.Run(ctx, ct.tb.Node, "curl", "-sS", "--max-time", "2", "http://"+metricsAddr+"/metrics")
	if err != nil {
		ct.t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				ct.t.Fatalf("/metrics: %q: %v", line, err)
			}
			return v
		}
	}
	ct.t.Fatalf("/metrics has no sample %s:\n%s", name, out)
	return 0
}

// must fails t if err is not nil.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
