package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/testbed"
)

// TestClusterConnectTwoClusters is a laptop connected to two clusters at
// once that share a service range (10.3.240.0/20) and a DNS domain
// (cluster.local), each with a Service web of its own pods:
//
//	laptop (no route to pods)
//	  kt-laptop   10.3.240.0/20          cluster A (the shared control plane)
//	  kt-clusterb 240.x.y.0/20 (mapped)  cluster B (a control plane in a namespace of its own)
//
// The first connection keeps the range and cluster.local; the second
// finds the range routed and serves it mapped into class E, its names
// under svc.clusterb. Both are reached by address and by name; status
// lists both; stopping one, and kill -9 of another, leaves the rest
// serving and nothing of the stopped one behind. A third connection,
// whose range overlaps a route of the laptop's own (a LAN), is mapped too.
func TestClusterConnectTwoClusters(t *testing.T) {
	ct := newClusterTest(t, "mc", 0)
	ctx := t.Context()

	// Cluster A: the shared control plane.
	ct.apply(webService("web", "mca"))
	ct.addPod(podSpec{Name: "mca-1", App: "mca"})
	ct.waitReadyEndpoints("web", 1)
	ipA := ct.clusterIP("web")

	b := ct.addCluster("mc-cpb", "mcb-1", "mcb")
	ipB := b.webIP
	t.Logf("web is %s in cluster A, %s in cluster B", ipA, ipB)

	// The laptop: no route to pods, a kubeconfig per cluster, the
	// connections' records in a directory of the test's.
	lap, kubeconfigA := ct.addLaptop("mc-lap", false)
	kubeconfigB := b.kubeconfig(lap, "clusterb")
	runtimeDir := t.TempDir()
	connect := func(kubeconfig string, extra ...string) []string {
		return append([]string{"env", "KUBETUN_RUNTIME_DIR=" + runtimeDir, kubetunBin, "connect", "--kubeconfig", kubeconfig,
			"--host-dns=false", "--dns-upstream", lap.Gateway.String()}, extra...)
	}
	status := func(args ...string) string {
		t.Helper()
		out, err := ct.tb.Run(ctx, lap.Namespace, append([]string{"env", "KUBETUN_RUNTIME_DIR=" + runtimeDir, kubetunBin, "status"}, args...)...)
		must(t, err)
		return out
	}
	dig := func(server string, query ...string) string {
		t.Helper()
		out, err := ct.tb.Run(ctx, lap.Namespace, append([]string{"dig", "+short", "+time=2", "+tries=2", "@" + server}, query...)...)
		must(t, err)
		return strings.TrimSpace(out)
	}

	var err error
	pA, sumA, took := ct.startConnect(lap, connect(kubeconfigA)...)
	t.Logf("connection A ready in %v: %s", took.Round(time.Millisecond), sumA)
	for _, want := range []string{"connected to laptop", "services 10.3.240.0/20,", "DNS cluster.local at " + laptopDNS} {
		if !strings.Contains(sumA, want) {
			t.Errorf("A's summary %q does not contain %q", sumA, want)
		}
	}
	pB, sumB, took := ct.startConnect(lap, connect(kubeconfigB)...)
	t.Logf("connection B ready in %v: %s", took.Round(time.Millisecond), sumB)
	m := regexp.MustCompile(`services (\S+) \(10\.3\.240\.0/20 of clusterb\), .*DNS clusterb at (\S+), `).FindStringSubmatch(sumB)
	if m == nil {
		t.Fatalf("B's summary %q: want 10.3.240.0/20 served mapped, for clusterb, and DNS under clusterb", sumB)
	}
	mappedB, dnsB := netip.MustParsePrefix(m[1]), m[2]
	if !netip.MustParsePrefix("240.0.0.0/4").Contains(mappedB.Addr()) || mappedB.Bits() != 20 {
		t.Errorf("B's range is served on %s, want a /20 in 240.0.0.0/4", mappedB)
	}
	if !strings.Contains(pB.Output(), "overlaps route 10.3.240.0/20 dev kt-laptop") {
		t.Errorf("B did not say why it maps its range:\n%s", pB.Output())
	}

	// Names: each connection's DNS under its domains; B's answers carry
	// the mapped address, its PTR names are under clusterb.
	nameA, nameB := "web."+ct.NS+".svc.cluster.local", "web."+ct.NS+".svc.clusterb"
	if got := dig(laptopDNS, nameA); got != ipA {
		t.Errorf("dig @%s %s = %q, want %s", laptopDNS, nameA, got, ipA)
	}
	if got := dig(laptopDNS, "web."+ct.NS+".svc.laptop"); got != ipA {
		t.Errorf("dig @%s web.%s.svc.laptop = %q, want %s (A's own domain)", laptopDNS, ct.NS, got, ipA)
	}
	servedB := dig(dnsB, nameB)
	if a, err := netip.ParseAddr(servedB); err != nil || !mappedB.Contains(a) {
		t.Fatalf("dig @%s %s = %q, want an address in %s", dnsB, nameB, servedB, mappedB)
	}
	if got := dig(dnsB, "web."+ct.NS+".svc.cluster.local"); got != servedB {
		t.Errorf("dig @%s web.%s.svc.cluster.local = %q, want %s (B answers cluster.local when asked directly)", dnsB, ct.NS, got, servedB)
	}
	if got := dig(dnsB, "-x", servedB); got != nameB+"." {
		t.Errorf("dig @%s -x %s = %q, want %s.", dnsB, servedB, got, nameB)
	}
	t.Logf("names: %s = %s, %s = %s (cluster B's %s mapped)", nameA, ipA, nameB, servedB, ipB)

	// Addresses and names reach each cluster's own pods.
	check := func(what, url, want string) {
		t.Helper()
		if pod, err := ct.curlHello(lap.Namespace, url); err != nil || pod != want {
			t.Errorf("%s: curl %s = %q, %v; want Hello from %s", what, url, pod, err, want)
		}
	}
	check("A by address", "http://"+ipA+"/", "mca-1")
	check("B by mapped address", "http://"+servedB+"/", "mcb-1")
	removeConf, err := ct.tb.WriteResolvConf(lap, "nameserver "+dnsB+"\n")
	must(t, err)
	t.Cleanup(func() { removeConf() })
	check("B by name", "http://"+nameB+"/", "mcb-1")
	_, err = ct.tb.WriteResolvConf(lap, "nameserver "+laptopDNS+"\nsearch "+ct.NS+".svc.cluster.local\n")
	must(t, err)
	check("A by name", "http://"+nameA+"/", "mca-1")
	check("A by short name", "http://web/", "mca-1")

	// Status lists both, the mapped range with the real one and its
	// cluster.
	st := status()
	for _, want := range []string{"=== Context laptop: TUN kt-laptop", "=== Context clusterb: TUN kt-clusterb",
		"(10.3.240.0/20 of clusterb)", servedB + " (" + ipB + ")"} {
		if !strings.Contains(st, want) {
			t.Errorf("kubetun status does not contain %q:\n%s", want, st)
		}
	}
	if js := status("-o", "json"); !strings.Contains(js, `"connections": [`) || strings.Count(js, `"pid": `) != 2 {
		t.Errorf("kubetun status -o json: want two connections:\n%s", js)
	}

	// Stopping A leaves B serving, and nothing of A behind.
	must(t, pA.Stop(10*time.Second))
	checkGone(t, ct, lap, "kt-laptop", "10.3.240.0/20", "after A's SIGTERM")
	check("B after A stopped", "http://"+servedB+"/", "mcb-1")

	// A third connection, to cluster A again, on a laptop that now has a
	// LAN route over the range: mapped, though no other connection has it.
	_, err = ct.tb.Run(ctx, lap.Namespace, "ip", "route", "add", "10.3.0.0/16", "via", lap.Gateway.String())
	must(t, err)
	pC, sumC, took := ct.startConnect(lap, connect(kubeconfigA, "--domain", "a2")...)
	t.Logf("connection C ready in %v: %s", took.Round(time.Millisecond), sumC)
	// A is gone: C has cluster.local again, and a2 beside it.
	m = regexp.MustCompile(`services (\S+) \(10\.3\.240\.0/20 of laptop\), .*DNS cluster\.local at (\S+), `).FindStringSubmatch(sumC)
	if m == nil || !strings.Contains(pC.Output(), "overlaps route 10.3.0.0/16 via "+lap.Gateway.String()) {
		t.Fatalf("C's summary %q: want 10.3.240.0/20 mapped as it overlaps the LAN route:\n%s", sumC, pC.Output())
	}
	mappedC, dnsC := netip.MustParsePrefix(m[1]), m[2]
	if mappedC.Overlaps(mappedB) {
		t.Errorf("C's mapped range %s overlaps B's %s", mappedC, mappedB)
	}
	servedA := dig(dnsC, "web."+ct.NS+".svc.a2")
	if a, err := netip.ParseAddr(servedA); err != nil || !mappedC.Contains(a) {
		t.Errorf("dig web.%s.svc.a2 at C's DNS = %q, want an address in %s", ct.NS, servedA, mappedC)
	} else {
		check("A through C", "http://"+servedA+"/", "mca-1")
	}
	if st := status(); !strings.Contains(st, "(10.3.240.0/20 of laptop)") || !strings.Contains(st, "=== Context clusterb") {
		t.Errorf("kubetun status with B and C:\n%s", st)
	}

	// kill -9 of C: its TUN and routes go with it, its record is stale;
	// B serves on.
	must(t, pC.Signal(syscall.SIGKILL))
	pC.Wait(10 * time.Second)
	checkGone(t, ct, lap, "kt-laptop", mappedC.String(), "after C's kill -9")
	check("B after C was killed", "http://"+servedB+"/", "mcb-1")
	if st := status(); strings.Contains(st, "kt-laptop") || !strings.Contains(st, "kt-clusterb") {
		t.Errorf("kubetun status after C's kill -9 lists it, or not B:\n%s", st)
	}
	must(t, pB.Stop(10*time.Second))
	checkGone(t, ct, lap, "kt-clusterb", mappedB.String(), "after B's SIGTERM")
}

// checkGone fails t if the laptop still has the TUN tun or a route to
// prefix.
func checkGone(t *testing.T, ct *clusterTest, h *testbed.Host, tun, prefix, when string) {
	t.Helper()
	links, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "-o", "link", "show")
	must(t, err)
	routes, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "route", "show", "table", "all")
	must(t, err)
	if strings.Contains(links, tun+":") || strings.Contains(routes, "dev "+tun) || strings.Contains(routes, prefix+" ") {
		t.Errorf("%s: the laptop still has %s or a route to %s:\n%s\n%s", when, tun, prefix, links, routes)
	}
}

// otherCluster is a control plane besides the shared one, with the same
// service range and DNS domain, a Node, the test's namespace, and a
// Service web of one pod.
type otherCluster struct {
	ct    *clusterTest
	cp    *controlplane.ControlPlane
	webIP string // web's ClusterIP in this cluster
}

// addCluster starts a control plane in a namespace of its own, host (the
// kubelet stand-in takes the kubelet's fixed port there), and gives it a
// Service web with selector app=app and one ready pod, pod, whose
// podserver runs in a namespace of the test bed. Everything is removed
// when the test ends.
func (ct *clusterTest) addCluster(host, pod, app string) *otherCluster {
	t := ct.t
	t.Helper()
	ctx := t.Context()
	h := ct.addHost(host, 0)
	began := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{Namespace: h.Namespace, Bins: ct.cp.Bins})
	must(t, err)
	t.Cleanup(func() {
		if err := cp.Close(); err != nil {
			t.Errorf("closing control plane %s: %v", h.Namespace, err)
		}
	})
	t.Logf("control plane started in %v in namespace %s, service CIDR %s", time.Since(began).Round(time.Millisecond), h.Namespace, cp.ServiceCIDR)
	if cp.ServiceCIDR != ct.cp.ServiceCIDR {
		t.Fatalf("control plane %s's service CIDR %s, the shared one's %s: want one range", h.Namespace, cp.ServiceCIDR, ct.cp.ServiceCIDR)
	}
	must(t, cp.CreateNode(ctx, testbed.NodeName, nil))
	must(t, cp.CreateNamespace(ctx, ct.NS))
	o := &otherCluster{ct: ct, cp: cp}
	o.apply(webService("web", app))
	server := ct.addServer(pod, 0, "--addr", ":8080")
	o.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels:
    app: %s
spec:
  nodeName: %s
  containers:
  - name: server
    image: kubetun/podserver
    ports:
    - name: http
      containerPort: 8080
    - name: echo
      containerPort: 9000
`, pod, app, testbed.NodeName))
	must(t, cp.SetPodRunning(ctx, ct.NS, pod, true, server.IP.String()))
	eventually(t, 10*time.Second, 20*time.Millisecond, "web has a ready endpoint in "+h.Namespace, func() (bool, string) {
		out := o.kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o",
			`jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}`)
		return len(strings.Fields(out)) == 1, out
	})
	o.webIP = strings.TrimSpace(o.kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"))
	return o
}

// kubectl runs kubectl against o in the test's namespace and fails the
// test on error.
func (o *otherCluster) kubectl(args ...string) string {
	t := o.ct.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	out, err := o.cp.Kubectl(ctx, append([]string{"-n", o.ct.NS}, args...)...)
	must(t, err)
	return out
}

func (o *otherCluster) apply(manifest string) {
	t := o.ct.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), kubectlTimeout)
	defer cancel()
	_, err := o.cp.Apply(ctx, manifest, "-n", o.ct.NS)
	must(t, err)
}

// kubeconfig returns a kubeconfig for o with context kubeContext (and the
// test's namespace) that reaches its kube-apiserver from h through a relay
// on h's 127.0.0.1.
func (o *otherCluster) kubeconfig(h *testbed.Host, kubeContext string) string {
	t := o.ct.t
	t.Helper()
	var l net.Listener
	must(t, testbed.InNamespace(h.Namespace, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}))
	stop, err := o.cp.RelayAPIServer(l)
	must(t, err)
	t.Cleanup(stop)
	path := filepath.Join(t.TempDir(), "kubeconfig-"+kubeContext)
	must(t, o.cp.WriteKubeconfigFor(path, controlplane.Kubeconfig{Server: "https://" + l.Addr().String(), Context: kubeContext, Namespace: o.ct.NS}))
	return path
}

// TestClusterConnectTwoClustersHostDNS runs the real systemd-resolved on a
// laptop connected to two clusters that both use cluster.local and one
// service range: the first connection gets cluster.local and its search
// domains (and ~laptop), the second only ~clusterb, on its own TUN, whose
// address is in its class E range. Through resolved's stub each name
// reaches its own cluster's kubetun, a short name the first cluster's only;
// stopping one, and kill -9 of the other, takes its domains off the host.
func TestClusterConnectTwoClustersHostDNS(t *testing.T) {
	needRoot(t)
	needResolved(t)
	ct := newClusterTest(t, "mcdns", 0)
	ct.apply(webService("web", "mcdnsa"))
	ct.addPod(podSpec{Name: "mcdnsa-1", App: "mcdnsa"})
	ct.waitReadyEndpoints("web", 1)
	ipA := ct.clusterIP("web")
	b := ct.addCluster("mcdns-cpb", "mcdnsb-1", "mcdnsb")

	lap, kubeconfigA := ct.addLaptop("mcdns-lap", true)
	kubeconfigB := b.kubeconfig(lap, "clusterb")
	up := ct.addHost("mcdns-up", 0)
	upstream, err := ct.tb.StartDNSServer(up, "laptop.example.com. 30 IN A 192.0.2.7")
	must(t, err)
	t.Cleanup(func() { upstream.Close() })
	resolved, err := ct.tb.StartResolved(lap.Namespace, up.IP)
	must(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("systemd-resolved output:\n%s", resolved.Process.Output())
		}
	})
	runtimeDir := t.TempDir()
	connect := func(kubeconfig string) []string {
		return []string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + resolved.BusAddress, "KUBETUN_RUNTIME_DIR=" + runtimeDir,
			kubetunBin, "connect", "--kubeconfig", kubeconfig, "--dns-upstream", up.IP.String()}
	}
	ask := func(name string) digResult {
		t.Helper()
		got, err := dig(t.Context(), ct.tb, lap.Namespace, "127.0.0.53", "+time=8", name, "A")
		if err != nil {
			t.Logf("dig @127.0.0.53 %s: %v", name, err)
		}
		return got
	}
	nameA, nameAOwn, nameB := "web."+ct.NS+".svc.cluster.local.", "web."+ct.NS+".svc.laptop.", "web."+ct.NS+".svc.clusterb."

	pA, sumA, _ := ct.startConnect(lap, connect(kubeconfigA)...)
	pB, sumB, _ := ct.startConnect(lap, connect(kubeconfigB)...)
	t.Logf("connected:\n  %s\n  %s", sumA, sumB)
	if !strings.Contains(pB.Output(), "host DNS: this cluster's own domain goes to kubetun") {
		t.Fatalf("B did not set its own domain on the host:\n%s", pB.Output())
	}
	m := regexp.MustCompile(`services (\S+) \(10\.3\.240\.0/20 of clusterb\)`).FindStringSubmatch(sumB)
	if m == nil {
		t.Fatalf("B's summary %q: want its range mapped", sumB)
	}
	mappedB := netip.MustParsePrefix(m[1])

	if got := ask(nameA); got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A " + ipA}) {
		t.Errorf("dig @127.0.0.53 %s = %s %q, want A %s (cluster A)", nameA, got.Status, got.Answer, ipA)
	}
	if got := ask(nameAOwn); got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A " + ipA}) {
		t.Errorf("dig @127.0.0.53 %s = %s %q, want A %s (cluster A, its own domain)", nameAOwn, got.Status, got.Answer, ipA)
	}
	got := ask(nameB)
	if got.Status != "NOERROR" || len(got.Answer) != 1 || !strings.HasPrefix(got.Answer[0], "A ") {
		t.Fatalf("dig @127.0.0.53 %s = %s %q, want one A record from B", nameB, got.Status, got.Answer)
	}
	servedB := strings.TrimPrefix(got.Answer[0], "A ")
	if a, err := netip.ParseAddr(servedB); err != nil || !mappedB.Contains(a) {
		t.Errorf("%s = %s, want an address in B's mapped %s", nameB, servedB, mappedB)
	}
	// Short names search cluster.local, A's only: B adds no search domain.
	conf, err := resolved.ResolvConf()
	must(t, err)
	if !strings.Contains(conf, ct.NS+".svc.cluster.local") || strings.Contains(conf, "clusterb") {
		t.Errorf("resolved's search domains: want A's, none of B's:\n%s", conf)
	}
	stub, err := os.ReadFile(filepath.Join(resolved.RunDir, "resolve", "stub-resolv.conf"))
	must(t, err)
	removeConf, err := ct.tb.WriteResolvConf(lap, string(stub))
	must(t, err)
	t.Cleanup(func() { removeConf() })
	for _, tc := range []struct{ url, want string }{
		{"http://web/", "mcdnsa-1"},
		{"http://" + strings.TrimSuffix(nameB, ".") + "/", "mcdnsb-1"},
		{"http://" + strings.TrimSuffix(nameAOwn, ".") + "/", "mcdnsa-1"},
	} {
		if pod, err := ct.curlHello(lap.Namespace, tc.url); err != nil || pod != tc.want {
			t.Errorf("curl %s through resolved = %q, %v; want Hello from %s", tc.url, pod, err, tc.want)
		}
	}

	// A stops: its domains leave the host, B's stays.
	must(t, pA.Stop(10*time.Second))
	eventually(t, 5*time.Second, 50*time.Millisecond, "cluster.local gone from resolved after A's SIGTERM", func() (bool, string) {
		got := ask(nameA)
		return got.Status != "NOERROR", got.Status
	})
	if got := ask(nameB); got.Status != "NOERROR" || len(got.Answer) != 1 {
		t.Errorf("after A stopped: dig %s = %s %q, want B still answering", nameB, got.Status, got.Answer)
	}
	// kill -9 of B: resolved forgets its link with it.
	must(t, pB.Signal(syscall.SIGKILL))
	pB.Wait(10 * time.Second)
	eventually(t, 5*time.Second, 50*time.Millisecond, "clusterb gone from resolved after B's kill -9", func() (bool, string) {
		got := ask(nameB)
		return got.Status != "NOERROR", got.Status
	})
	checkGone(t, ct, lap, "kt-clusterb", mappedB.String(), "after B's kill -9")
}
