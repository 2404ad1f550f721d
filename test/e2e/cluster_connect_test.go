package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

// The tests of `kubetun connect` run it in a namespace of its own that plays
// a developer's laptop, beside the shared cluster's node namespace:
//
//	laptop 10.0.N.2 ── node (kube-apiserver on its 127.0.0.1, the pods' veths)
//	  kubetun connect, its TUN and routes
//	  127.0.0.1:P ── relay ── kube-apiserver
//
// The laptop reaches kube-apiserver at 127.0.0.1:P, a relay the test runs
// inside the laptop's namespace (kube-apiserver listens on the node's
// loopback only). With its default route via the node it also reaches the
// pods (direct mode); without, it has no route to any pod and connect must
// go through the API server's pods/portforward.

// connectReadyTimeout bounds the wait for connect's summary line.
const connectReadyTimeout = 30 * time.Second

// laptopDNS is where connect's cluster DNS answers: the 10th address of the
// cluster's ServiceCIDR 10.3.240.0/20.
const laptopDNS = "10.3.240.10"

// addLaptop adds the laptop host, with a default route via the node only if
// podRoutes, and returns it with a kubeconfig for it (context "laptop",
// namespace the test's) that reaches kube-apiserver through a relay on the
// laptop's 127.0.0.1.
func (ct *clusterTest) addLaptop(name string, podRoutes bool) (*testbed.Host, string) {
	t := ct.t
	t.Helper()
	h := ct.addHost(name, 0)
	if !podRoutes {
		_, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "route", "del", "default")
		must(t, err)
	}
	var l net.Listener
	must(t, testbed.InNamespace(h.Namespace, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}))
	ct.relayAPIServer(l)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, ct.cp.WriteKubeconfigFor(kubeconfig, controlplane.Kubeconfig{
		Server: "https://" + l.Addr().String(), Context: "laptop", Namespace: ct.NS}))
	return h, kubeconfig
}

// startConnect runs `kubetun connect` (argv[0] the binary, the rest its
// flags) in the laptop's namespace and waits for its summary line, which it
// returns with the time from start to it. The process is stopped when t
// ends; its output is shown if t failed.
func (ct *clusterTest) startConnect(h *testbed.Host, argv ...string) (*testbed.Process, string, time.Duration) {
	t := ct.t
	t.Helper()
	began := time.Now()
	p, err := ct.tb.Start(h.Namespace, "kubetun-connect", argv...)
	must(t, err)
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("kubetun connect (%s) output:\n%s", p.CommandLine(), p.Output())
		}
	})
	if err := p.WaitOutput("connected to ", connectReadyTimeout); err != nil {
		t.Fatalf("kubetun connect: no summary line: %v", err)
	}
	took := time.Since(began)
	for _, line := range strings.Split(p.Output(), "\n") {
		if strings.HasPrefix(line, "connected to ") {
			return p, line, took
		}
	}
	t.Fatalf("kubetun connect: summary line not found in:\n%s", p.Output())
	return nil, "", 0
}

// connectArgs is the command line of kubetun connect for the laptop, with
// extra flags.
// stallTimeout is TestClusterConnectPortForward's
// --portforward-stall-timeout: short, so that the stalled-client check is.
const stallTimeout = 3 * time.Second

func connectArgs(kubeconfig string, extra ...string) []string {
	return append([]string{kubetunBin, "connect", "--kubeconfig", kubeconfig, "--tun", testbed.TUN,
		"--health-addr", healthAddr, "--metrics-addr", ""}, extra...)
}

// curlHello runs curl in ns for url and returns the answering pod.
func (ct *clusterTest) curlHello(ns, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ct.t.Context(), 15*time.Second)
	defer cancel()
	out, err := ct.tb.Run(ctx, ns, "curl", "-sS", "--max-time", "10", url)
	if err != nil {
		return "", err
	}
	m := helloRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("curl %s: not podserver's answer: %q", url, out)
	}
	return m[1], nil
}

// checkNothingLeft fails t if the laptop still has connect's TUN or a route
// through it.
func (ct *clusterTest) checkNothingLeft(t *testing.T, h *testbed.Host, when string) {
	t.Helper()
	links, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "-o", "link", "show")
	must(t, err)
	routes, err := ct.tb.Run(t.Context(), h.Namespace, "ip", "route", "show", "table", "all")
	must(t, err)
	if strings.Contains(links, testbed.TUN) || strings.Contains(routes, testbed.TUN) || strings.Contains(routes, "10.3.240.0/20") {
		t.Errorf("%s: the laptop still has kubetun's TUN or routes:\n%s\n%s", when, links, routes)
	}
}

// TestClusterConnectPortForward is a laptop with no route to any pod:
// `kubetun connect` (--via auto) finds pods unreachable and goes through the
// API server's pods/portforward to the kubelet stand-in's real port-forward
// server. Names resolve through kubetun's DNS (the laptop's resolv.conf
// names it, as systemd-resolved's split DNS would for the cluster domain).
func TestClusterConnectPortForward(t *testing.T) {
	ct := newClusterTest(t, "conn", 0)
	ct.apply(webService("web", "conn"))
	ct.apply(`apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector:
    app: conndb
  ports:
  - name: http
    port: 8080
`)
	ct.apply(`apiVersion: v1
kind: Service
metadata:
  name: stats
spec:
  selector:
    app: conn
  ports:
  - name: statsd
    protocol: UDP
    port: 8125
    targetPort: 9000
`)
	c1 := ct.addPod(podSpec{Name: "conn-1", App: "conn"})
	ct.addPod(podSpec{Name: "conn-2", App: "conn"})
	db0 := ct.addPod(podSpec{Name: "db-0", App: "conndb", Hostname: "db-0", Subdomain: "db"})
	ct.waitReadyEndpoints("web", 2)
	ct.waitReadyEndpoints("db", 1)
	webIP := ct.clusterIP("web")
	statsIP := ct.clusterIP("stats")

	lap, kubeconfig := ct.addLaptop("conn-lap", false)
	if _, err := ask(lap.Namespace, hostPort(c1.IP.String(), 8080), time.Second); err == nil {
		t.Fatalf("the laptop reaches pod conn-1 at %s directly; want no route to pods", c1.IP)
	}
	removeConf, err := ct.tb.WriteResolvConf(lap, fmt.Sprintf("nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\n", laptopDNS, ct.NS))
	must(t, err)
	t.Cleanup(func() { removeConf() })

	p, summary, took := ct.startConnect(lap, connectArgs(kubeconfig, "--host-dns=false", "--dns-upstream", lap.Gateway.String(),
		"--portforward-stall-timeout", stallTimeout.String())...)
	t.Logf("kubetun connect ready in %v: %s", took.Round(time.Millisecond), summary)
	for _, want := range []string{"connected to laptop (https://127.0.0.1:", "services 10.3.240.0/20", "DNS cluster.local at " + laptopDNS, "pods via portforward"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary line %q does not contain %q", summary, want)
		}
	}
	if !strings.Contains(p.Output(), "pods reached portforward (--via auto)") {
		t.Errorf("kubetun connect did not say it chose port-forward:\n%s", p.Output())
	}
	status, err := ct.tb.Run(t.Context(), lap.Namespace, kubetunBin, "status", "--addr", healthAddr)
	if err != nil || !regexp.MustCompile(`Mode:\s+connect`).MatchString(status) || !regexp.MustCompile(`Pods:\s+portforward`).MatchString(status) {
		t.Errorf("kubetun status = %v, want mode connect and pods via portforward:\n%s", err, status)
	}

	t.Run("curl by name, split", func(t *testing.T) {
		ct := ct.sub(t)
		counts := map[string]int{}
		const n = 30
		for range n {
			pod, err := ct.curlHello(lap.Namespace, "http://web/")
			if err != nil {
				t.Fatalf("curl http://web/ from the laptop: %v", err)
			}
			counts[pod]++
		}
		t.Logf("%d × curl http://web/ (web.%s.svc.cluster.local, %s) through port-forward: %v", n, ct.NS, webIP, counts)
		checkSplit(t, counts, n, 0.15, 0.85, "conn-1", "conn-2")
		if pod, err := ct.curlHello(lap.Namespace, "http://web."+ct.NS+".svc.cluster.local/"); err != nil {
			t.Errorf("curl by the full name: %s, %v", pod, err)
		}
	})

	t.Run("10MiB", func(t *testing.T) {
		const size = 10 << 20
		c, err := testbed.DialIn(lap.Namespace, "tcp", hostPort(webIP, 7), 10*time.Second)
		must(t, err)
		defer c.Close()
		began := time.Now()
		err = randomEcho(c, size, time.Minute)
		took := time.Since(began)
		if err != nil {
			t.Fatalf("10 MiB up and back through the Service's echo port: %v", err)
		}
		t.Logf("10 MiB up and 10 MiB down, byte-identical, through kubetun and port-forward in %v (%.1f MiB/s each way)",
			took.Round(time.Millisecond), float64(size)/(1<<20)/took.Seconds())
	})

	t.Run("parallel", func(t *testing.T) {
		const n = 50
		took := parallelEchoes(t, n, 64<<10, "connection", 30*time.Second, func() (net.Conn, error) {
			return testbed.DialIn(lap.Namespace, "tcp", hostPort(webIP, 7), 20*time.Second)
		})
		t.Logf("%d parallel connections of 64 KiB each way in %v", n, took.Round(time.Millisecond))
	})

	t.Run("stalled client", func(t *testing.T) {
		// Flow A asks db-0's bytes port for 1 GiB and reads none of it. Every
		// flow to db-0 shares one port-forward connection, whose streams have
		// no flow control of their own: A's unread stream stops it. Flow B, to
		// the same pod, finds the connection not answering its stream open,
		// and gets a new one (kubectl port-forward would wait for ever); A,
		// cut with the old one, is reset, not ended as if the pod had
		// finished. Had no new flow come, --portforward-stall-timeout would
		// have reset A.
		a, err := testbed.DialIn(lap.Namespace, "tcp", hostPort(db0.IP.String(), 9001), 10*time.Second)
		must(t, err)
		defer a.Close()
		fmt.Fprintf(a, "%d\n", 1<<30)
		time.Sleep(time.Second) // the buffers on the way fill
		began := time.Now()
		pod, err := ct.curlHello(lap.Namespace, "http://"+hostPort(db0.IP.String(), 8080)+"/")
		if err != nil || pod != "db-0" {
			t.Fatalf("with flow A stalled, curl to db-0 = %q, %v; want Hello from db-0 within curl's 10 s", pod, err)
		}
		t.Logf("with a flow to db-0 whose client reads nothing, a new flow there answered in %v (stall timeout %v)",
			time.Since(began).Round(time.Millisecond), stallTimeout)
		a.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := io.Copy(io.Discard, a)
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("flow A ended after %d bytes with %v; want a reset", n, err)
		}
	})

	t.Run("headless pod name", func(t *testing.T) {
		ct := ct.sub(t)
		name := "db-0.db." + ct.NS + ".svc.cluster.local"
		pod, err := ct.curlHello(lap.Namespace, "http://"+name+":8080/")
		if err != nil || pod != "db-0" {
			t.Fatalf("curl http://%s:8080/ = %q, %v; want Hello from db-0", name, pod, err)
		}
		t.Logf("curl http://%s:8080/ answered by db-0, its pod IP routed into the TUN", name)
	})

	t.Run("UDP refused", func(t *testing.T) {
		c, err := testbed.DialIn(lap.Namespace, "udp", hostPort(statsIP, 8125), time.Second)
		must(t, err)
		defer c.Close()
		began := time.Now()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hits:1|c"))
		_, err = c.Read(make([]byte, 16))
		took := time.Since(began)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("UDP to the Service stats at %s:8125: %v, want connection refused (ICMP port unreachable)", statsIP, err)
		}
		t.Logf("UDP to %s:8125 refused in %v", statsIP, took.Round(time.Microsecond))
		if took > 2*time.Second {
			t.Errorf("UDP refusal took %v, want it at once", took)
		}
		if err := p.WaitOutput("service="+ct.NS+"/stats", 5*time.Second); err != nil || !strings.Contains(p.Output(), "UDP to this Service is refused") {
			t.Errorf("kubetun logged no line for the stats Service's refused UDP: %v", err)
		}
		if n := strings.Count(p.Output(), "service="+ct.NS+"/stats"); n != 1 {
			c.Write([]byte("hits:1|c"))
			t.Errorf("the UDP refusal of stats logged %d times, want once", n)
		}
	})

	t.Run("pod deleted", func(t *testing.T) {
		ct := ct.sub(t)
		ct.kubectl("delete", "pod", "conn-1", "--grace-period=0", "--force", "--wait=false")
		took := eventually(t, 10*time.Second, 20*time.Millisecond, "web answered by conn-2 only", func() (bool, string) {
			for i := range 6 {
				pod, err := ask(lap.Namespace, hostPort(webIP, 80), 5*time.Second)
				if err != nil || pod != "conn-2" {
					return false, fmt.Sprintf("request %d: %q, %v", i, pod, err)
				}
			}
			return true, ""
		})
		t.Logf("conn-1 deleted: every request went to conn-2 %v later", took.Round(time.Millisecond))
	})

	t.Run("nothing left", func(t *testing.T) {
		ct := ct.sub(t)
		must(t, p.Stop(10*time.Second))
		ct.checkNothingLeft(t, lap, "after SIGTERM")
		p2, _, took := ct.startConnect(lap, connectArgs(kubeconfig, "--host-dns=false", "--dns-upstream", lap.Gateway.String())...)
		t.Logf("second start ready in %v", took.Round(time.Millisecond))
		must(t, p2.Signal(syscall.SIGKILL))
		p2.Wait(10 * time.Second)
		ct.checkNothingLeft(t, lap, "after kill -9")
		p3, _, took := ct.startConnect(lap, connectArgs(kubeconfig, "--host-dns=false", "--dns-upstream", lap.Gateway.String())...)
		t.Logf("start after kill -9 ready in %v", took.Round(time.Millisecond))
		if pod, err := ct.curlHello(lap.Namespace, "http://web/"); err != nil || pod != "conn-2" {
			t.Errorf("after kill -9 and a new start: curl http://web/ = %q, %v", pod, err)
		}
		must(t, p3.Stop(10*time.Second))
		ct.checkNothingLeft(t, lap, "after the last SIGTERM")
	})
}

// TestClusterConnectDirect is a laptop that routes to pods through the
// node, as over a VPN: `kubetun connect` (--via auto) dials pods directly.
// The seed Service answers by ClusterIP and by name, split over both pods.
func TestClusterConnectDirect(t *testing.T) {
	ct := newClusterTest(t, "cdir", 0)
	ct.apply(seedService)
	ct.addPod(podSpec{Name: "cd-1", App: "service_test_pod"})
	ct.addPod(podSpec{Name: "cd-2", App: "service_test_pod"})
	ct.waitReadyEndpoints("service-test", 2)
	lap, kubeconfig := ct.addLaptop("cdir-lap", true)
	removeConf, err := ct.tb.WriteResolvConf(lap, fmt.Sprintf("nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\n", laptopDNS, ct.NS))
	must(t, err)
	t.Cleanup(func() { removeConf() })

	_, summary, took := ct.startConnect(lap, connectArgs(kubeconfig, "--host-dns=false", "--dns-upstream", lap.Gateway.String())...)
	t.Logf("kubetun connect ready in %v: %s", took.Round(time.Millisecond), summary)
	if !strings.Contains(summary, "pods via direct") {
		t.Errorf("summary line %q: want pods via direct", summary)
	}
	const n = 40
	counts := countAnswers(t, ct.tb, lap.Namespace, n, time.Minute)
	t.Logf("%d requests to %s:80 from the laptop: %v", n, testbed.ClusterIP, counts)
	checkSplit(t, counts, n, 0.2, 0.8, "cd-1", "cd-2")
	byName := map[string]int{}
	for range 20 {
		pod, err := ct.curlHello(lap.Namespace, "http://service-test/")
		if err != nil {
			t.Fatalf("curl http://service-test/: %v", err)
		}
		byName[pod]++
	}
	t.Logf("20 × curl http://service-test/: %v", byName)
	checkSplit(t, byName, 20, 0.1, 0.9, "cd-1", "cd-2")

	t.Run("an existing TUN refused", func(t *testing.T) {
		// kt-keep is a persistent TUN nothing is attached to, as a node's
		// kubetun run --persist leaves it between two runs; testbed.TUN is
		// the running connect's. connect must refuse both, naming them,
		// and leave them as they are.
		const keep = "kt-keep"
		_, err := ct.tb.Run(t.Context(), lap.Namespace, "ip", "tuntap", "add", "dev", keep, "mode", "tun")
		must(t, err)
		t.Cleanup(func() { ct.tb.Run(context.Background(), lap.Namespace, "ip", "link", "del", keep) })
		for _, tun := range []string{keep, testbed.TUN} {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			began := time.Now()
			out, err := ct.tb.Run(ctx, lap.Namespace, append(connectArgs(kubeconfig, "--host-dns=false"), "--tun", tun, "--health-addr", "")...)
			cancel()
			var re *testbed.RunError
			if !errors.As(err, &re) {
				t.Fatalf("kubetun connect --tun %s = %v, %q; want it refused", tun, err, out)
			}
			for _, want := range []string{"TUN " + tun + " exists already", "--tun NAME"} {
				if !strings.Contains(re.Stderr, want) {
					t.Errorf("kubetun connect --tun %s said %q, want it to contain %q", tun, re.Stderr, want)
				}
			}
			t.Logf("kubetun connect --tun %s refused in %v: %s", tun, time.Since(began).Round(time.Millisecond), strings.TrimSpace(re.Stderr))
			if _, err := ct.tb.Run(t.Context(), lap.Namespace, "ip", "link", "show", tun); err != nil {
				t.Errorf("%s is gone after connect refused it: %v", tun, err)
			}
		}
		if pod, err := ct.curlHello(lap.Namespace, "http://service-test/"); err != nil {
			t.Errorf("the running connect, after the refused ones: curl http://service-test/ = %q, %v", pod, err)
		}
	})
}

// hostPort joins ip and port into an address for a dial.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

// TestClusterConnectHostDNS runs the real systemd-resolved (unpacked, see
// testbed.StartResolved) on the laptop, with the laptop's own DNS server as
// its upstream, and `kubetun connect` setting split DNS on its TUN:
//
//	laptop: systemd-resolved (stub 127.0.0.53), kubetun connect (kubetun0)
//	  └─ default via the node ── upstream 10.0.M.2: the laptop's own DNS
//
// A cluster name asked through the stub reaches kubetun (the answer is the
// Service's ClusterIP, which only kubetun knows) and the upstream is not
// asked; a name outside the cluster domain still goes to the upstream. After
// exit, and after kill -9, resolved no longer sends the cluster domain
// anywhere.
func TestClusterConnectHostDNS(t *testing.T) {
	needRoot(t)
	needResolved(t)
	ct := newClusterTest(t, "cdns", 0)
	ct.apply(webService("web", "cdns"))
	ct.addPod(podSpec{Name: "cdns-1", App: "cdns"})
	ct.waitReadyEndpoints("web", 1)
	webIP := ct.clusterIP("web")
	lap, kubeconfig := ct.addLaptop("cdns-lap", true)
	up := ct.addHost("cdns-up", 0)
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
	removeConf, err := ct.tb.WriteResolvConf(lap, "nameserver 127.0.0.53\noptions edns0 trust-ad\n")
	must(t, err)
	t.Cleanup(func() { removeConf() })

	clusterName := "web." + ct.NS + ".svc.cluster.local."
	ask := func(name string) (digResult, int64) {
		t.Helper()
		before := upstream.Queries()
		got, err := dig(t.Context(), ct.tb, lap.Namespace, "127.0.0.53", "+time=8", name, "A")
		if err != nil {
			t.Logf("dig @127.0.0.53 %s: %v", name, err)
		}
		return got, upstream.Queries() - before
	}
	wantOutside := func(when string) {
		t.Helper()
		if got, n := ask("laptop.example.com."); got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A 192.0.2.7"}) || n == 0 {
			t.Errorf("%s: dig @127.0.0.53 laptop.example.com. = %s %q, upstream asked %d times; want 192.0.2.7 from the upstream", when, got.Status, got.Answer, n)
		}
	}
	wantGone := func(when string) {
		t.Helper()
		eventually(t, 5*time.Second, 50*time.Millisecond, when+": resolved's resolv.conf without the cluster's search domains", func() (bool, string) {
			conf, err := resolved.ResolvConf()
			return err == nil && !strings.Contains(conf, ct.NS+".svc.cluster.local"), conf
		})
		if got, _ := ask(clusterName); got.Status == "NOERROR" {
			t.Errorf("%s: dig @127.0.0.53 %s = %s %q; want no answer from kubetun any more", when, clusterName, got.Status, got.Answer)
		}
		wantOutside(when)
	}
	start := func() *testbed.Process {
		t.Helper()
		argv := append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + resolved.BusAddress}, connectArgs(kubeconfig, "--dns-upstream", up.IP.String())...)
		p, summary, took := ct.startConnect(lap, argv...)
		t.Logf("kubetun connect ready in %v: %s", took.Round(time.Millisecond), summary)
		if !strings.Contains(p.Output(), "host DNS: the cluster domain goes to kubetun") {
			t.Fatalf("kubetun connect did not set the host's DNS:\n%s", p.Output())
		}
		return p
	}

	wantOutside("before connect")
	p := start()
	t.Run("cluster names reach kubetun", func(t *testing.T) {
		got, n := ask(clusterName)
		if got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A " + webIP}) || n != 0 {
			t.Errorf("dig @127.0.0.53 %s = %s %q, upstream asked %d times; want A %s from kubetun only\n%s", clusterName, got.Status, got.Answer, n, webIP, got.Raw)
		}
		// A laptop's /etc/resolv.conf is resolved's stub-resolv.conf: the
		// stub, and the search domains, the TUN's among them.
		stub, err := os.ReadFile(filepath.Join(resolved.RunDir, "resolve", "stub-resolv.conf"))
		must(t, err)
		if !strings.Contains(string(stub), ct.NS+".svc.cluster.local") {
			t.Errorf("resolved's stub-resolv.conf has no search domain %s.svc.cluster.local:\n%s", ct.NS, stub)
		}
		_, err = ct.tb.WriteResolvConf(lap, string(stub))
		must(t, err)
		pod, err := ct.curlHello(lap.Namespace, "http://web/")
		if err != nil || pod != "cdns-1" {
			t.Errorf("curl http://web/ (the kubeconfig namespace's search domain) = %q, %v", pod, err)
		}
	})
	t.Run("other names go to the laptop's DNS", func(t *testing.T) { wantOutside("while connected") })
	must(t, p.Stop(10*time.Second))
	wantGone("after SIGTERM")
	ct.checkNothingLeft(t, lap, "after SIGTERM")

	p = start()
	if got, _ := ask(clusterName); got.Status != "NOERROR" {
		t.Errorf("second start: dig @127.0.0.53 %s = %s", clusterName, got.Status)
	}
	must(t, p.Signal(syscall.SIGKILL))
	p.Wait(10 * time.Second)
	wantGone("after kill -9")
	ct.checkNothingLeft(t, lap, "after kill -9")
}

// TestClusterConnectUnprivileged runs `kubetun connect` as the user nobody
// holding only CAP_NET_ADMIN (as `setcap cap_net_admin+ep` on the binary
// gives an ordinary user), on a laptop without routes to pods.
func TestClusterConnectUnprivileged(t *testing.T) {
	ct := newClusterTest(t, "cusr", 0)
	ct.apply(webService("web", "cusr"))
	ct.addPod(podSpec{Name: "cusr-1", App: "cusr"})
	ct.waitReadyEndpoints("web", 1)
	webIP := ct.clusterIP("web")
	lap, kubeconfig := ct.addLaptop("cusr-lap", false)

	// A copy of the binary and the kubeconfig that nobody may read.
	dir, err := os.MkdirTemp("", "kubetun-nobody-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	for _, f := range []struct {
		from, to string
		mode     os.FileMode
	}{{kubetunBin, "kubetun", 0o755}, {kubeconfig, "kubeconfig", 0o644}} {
		b, err := os.ReadFile(f.from)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, f.to), b, f.mode))
	}
	// Distributions make /dev/net/tun 0666; this machine's is 0600. A
	// node of the same device that anyone may open stands in for it, bound
	// over /dev/net/tun in a mount namespace of kubetun's own: the host's
	// is left alone.
	tunNode := filepath.Join(dir, "tun")
	must(t, syscall.Mknod(tunNode, syscall.S_IFCHR|0o666, int(10<<8|200)))
	must(t, os.Chmod(tunNode, 0o666))
	argv := connectArgs(filepath.Join(dir, "kubeconfig"), "--host-dns=false", "--dns-upstream", lap.Gateway.String())
	argv[0] = filepath.Join(dir, "kubetun")
	argv = append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /dev/net/tun && exec "$@"`, tunNode,
		"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
		"--inh-caps=-all,+net_admin", "--ambient-caps=+net_admin", "--bounding-set=-all,+net_admin"}, argv...)
	p, summary, took := ct.startConnect(lap, argv...)
	t.Logf("kubetun connect as nobody with CAP_NET_ADMIN only, ready in %v: %s", took.Round(time.Millisecond), summary)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	must(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "CapEff:") {
			t.Logf("kubetun's %s", strings.Join(strings.Fields(line), " "))
		}
		// CAP_NET_ADMIN is bit 12: 0x1000.
		if rest, ok := strings.CutPrefix(line, "CapEff:"); ok && strings.TrimSpace(rest) != "0000000000001000" {
			t.Errorf("kubetun's effective capabilities %s, want CAP_NET_ADMIN (0x1000) only", strings.TrimSpace(rest))
		}
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok && strings.Fields(rest)[1] == "0" {
			t.Errorf("kubetun runs as root (Uid:%s)", rest)
		}
	}
	for range 3 {
		if pod, err := ask(lap.Namespace, hostPort(webIP, 80), 10*time.Second); err != nil || pod != "cusr-1" {
			t.Fatalf("GET / at %s:80 from the laptop = %q, %v", webIP, pod, err)
		}
	}
	must(t, p.Stop(10*time.Second))
	ct.checkNothingLeft(t, lap, "after SIGTERM")
}
