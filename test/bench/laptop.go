package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/controlplane"
	"github.com/kubetun/kubetun/test/testbed"
)

// The laptop case: the real control plane (package controlplane) in the
// bed's node namespace, pod1 as a Pod whose port-forward the kubelet
// stand-in serves in pod1's namespace, and a laptop namespace with no route
// to any pod, reaching kube-apiserver through a relay on its 127.0.0.1. In
// the laptop, `kubetun connect --via portforward` and `kubectl port-forward`
// to the same pod carry the same clients in turn.

// laptopSubnet is the laptop's 10.0.N.0/24; the seed has 1 to 3.
const laptopSubnet = 20

// laptopNS is the Kubernetes namespace of the laptop case.
const laptopNS = "bench"

// laptopHTTPPort is podserver's port in pod1, the Service's port too.
const laptopHTTPPort = 8080

// laptopBytesPort is podserver's bytes port in pod1, the Service's port
// too: for a request "N\n" it sends the first N bytes of package pattern's
// stream and closes.
const laptopBytesPort = 9001

// laptopVersus ends the laptop rows' names: their direct column is kubectl
// port-forward, their kubetun column kubetun connect.
const laptopVersus = "kubectl port-forward vs kubetun connect"

// laptopReadyTimeout bounds each wait of the laptop case's set-up.
const laptopReadyTimeout = 30 * time.Second

// laptopObjects are pod1 as a Pod and a Service in front of it.
var laptopObjects = fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: pod1
  labels:
    app: bench
spec:
  nodeName: %s
  containers:
  - name: server
    image: kubetun/podserver # never pulled: the bench runs podserver and iperf3 in the pod's namespace
    ports:
    - name: http
      containerPort: %d
    - name: iperf
      containerPort: %d
    - name: bytes
      containerPort: %d
---
apiVersion: v1
kind: Service
metadata:
  name: bench
spec:
  selector:
    app: bench
  ports:
  - name: http
    port: %d
    targetPort: http
  - name: iperf
    port: %d
    targetPort: iperf
  - name: bytes
    port: %d
    targetPort: bytes
`, testbed.NodeName, laptopHTTPPort, iperfPort, laptopBytesPort, laptopHTTPPort, iperfPort, laptopBytesPort)

// measureLaptop runs the laptop case, or skips it with a note when the
// control-plane binaries are missing. A failure of the case is a note too,
// so that the groups after it still run: it has more parts than the others
// (a control plane, kubectl, kubetun connect).
func (b *bench) measureLaptop(ctx context.Context) error {
	bins, err := controlplane.Find()
	if err != nil {
		b.notes = append(b.notes, fmt.Sprintf("laptop: skipped, control-plane binaries missing: %v", err))
		progress("%s", b.notes[len(b.notes)-1])
		return nil
	}
	if err := b.laptop(ctx, bins); err != nil {
		if ctx.Err() != nil {
			return err
		}
		b.notes = append(b.notes, fmt.Sprintf("laptop: failed: %v", err))
		progress("%s", b.notes[len(b.notes)-1])
	}
	return nil
}

// laptop runs the laptop case with the control-plane binaries bins; it
// removes what it started, also on failure.
func (b *bench) laptop(ctx context.Context, bins controlplane.Bins) (err error) {
	progress("laptop: starting the control plane in %s", b.tb.Node)
	began := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(sctx, controlplane.Options{Namespace: b.tb.Node, Bins: bins, Dir: filepath.Join(b.tmp, "controlplane")})
	if err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	defer func() {
		if cerr := cp.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("laptop: control plane: Close: %w", cerr)
		}
	}()
	pod := b.seed.Pod1
	if err := cp.CreateNode(sctx, testbed.NodeName, nil); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	if err := cp.CreateNamespace(sctx, laptopNS); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	if _, err := cp.Apply(sctx, laptopObjects, "-n", laptopNS); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	cp.SetPodNetns(laptopNS, "pod1", pod.Namespace)
	if err := cp.SetPodRunning(sctx, laptopNS, "pod1", true, pod.IP.String()); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	clusterIP, err := cp.Kubectl(sctx, "-n", laptopNS, "get", "service", "bench", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	clusterIP = strings.TrimSpace(clusterIP)
	if err := waitEndpoints(sctx, cp); err != nil {
		return err
	}
	progress("laptop: control plane and pod1 ready in %v", time.Since(began).Round(time.Millisecond))

	lap, err := b.tb.AddHost("laptop", laptopSubnet)
	if err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	if _, err := b.tb.Run(sctx, lap.Namespace, "ip", "route", "del", "default"); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	var l net.Listener
	if err := testbed.InNamespace(lap.Namespace, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		return fmt.Errorf("laptop: listen for the apiserver relay: %w", err)
	}
	stop, err := cp.RelayAPIServer(l)
	if err != nil {
		l.Close()
		return err
	}
	defer stop()
	kubeconfig := filepath.Join(b.tmp, "laptop-kubeconfig")
	if err := cp.WriteKubeconfigFor(kubeconfig, controlplane.Kubeconfig{
		Server: "https://" + l.Addr().String(), Context: "laptop", Namespace: laptopNS}); err != nil {
		return fmt.Errorf("laptop: %w", err)
	}

	began = time.Now()
	kt, err := b.tb.Start(lap.Namespace, "kubetun-connect", b.cfg.kubetun, "connect", "--kubeconfig", kubeconfig,
		"--via", "portforward", "--tun", testbed.TUN, "--host-dns=false", "--dns-upstream", lap.Gateway.String(),
		"--health-addr", "127.0.0.1:10256", "--metrics-addr", "")
	if err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	defer kt.Stop(10 * time.Second)
	if err := kt.WaitOutput("connected to ", laptopReadyTimeout); err != nil {
		return fmt.Errorf("laptop: kubetun connect: %w; its output:\n%s", err, kt.Output())
	}
	connectReady := time.Since(began)
	// kubectl on the same ports of the laptop's loopback as the Service's.
	began = time.Now()
	pf, err := b.tb.Start(lap.Namespace, "kubectl-port-forward", bins.Kubectl, "--kubeconfig", kubeconfig,
		"--cache-dir", filepath.Join(b.tmp, "kubectl-cache"), "port-forward", "pod/pod1", "--address", "127.0.0.1",
		fmt.Sprintf("%d:%d", iperfPort, iperfPort), fmt.Sprintf("%d:%d", laptopHTTPPort, laptopHTTPPort),
		fmt.Sprintf("%d:%d", laptopBytesPort, laptopBytesPort))
	if err != nil {
		return fmt.Errorf("laptop: %w", err)
	}
	defer pf.Stop(5 * time.Second)
	if err := pf.WaitOutput(fmt.Sprintf("Forwarding from 127.0.0.1:%d", laptopBytesPort), laptopReadyTimeout); err != nil {
		return fmt.Errorf("laptop: kubectl port-forward: %w; its output:\n%s", err, pf.Output())
	}
	pfReady := time.Since(began)
	progress("laptop: kubetun connect ready in %v, kubectl port-forward in %v; Service bench at %s; kubectl port-forward on 127.0.0.1:%d, :%d and :%d",
		connectReady.Round(time.Millisecond), pfReady.Round(time.Millisecond), clusterIP, iperfPort, laptopHTTPPort, laptopBytesPort)
	b.add(row{name: "laptop: start to ready, " + laptopVersus, lowerBetter: true, results: [numPaths]result{
		pathDirect:  {value: float64(pfReady) / 1e6, unit: "ms", detail: "kubectl port-forward: start to its \"Forwarding from\" line"},
		pathKubetun: {value: float64(connectReady) / 1e6, unit: "ms", detail: "kubetun connect: start to its \"connected to\" line (Services synced, TUN up)"},
	}})

	targets := [2]string{"127.0.0.1", clusterIP} // by pathDirect, pathKubetun
	names := [2]string{"kubectl port-forward", "kubetun connect"}
	// Upload: one iperf3 stream. Download: one connection reading
	// --laptop-mib from podserver, not iperf3 -R: every flow of a
	// port-forward shares one SPDY connection, in which a stream's data
	// nobody reads holds up the others (spdystream has no per-stream flow
	// control), and iperf3's client stops reading its data connection at
	// the end of a -R test while it waits for the results on its control
	// connection; that stalled some runs until they were killed.
	up := row{name: "laptop: TCP upload laptop → pod, iperf3, " + laptopVersus}
	for i, target := range targets {
		progress("%s: %s", up.name, names[i])
		before, _ := readCPU(kt.Pid())
		res, err := b.iperf(ctx, lap.Namespace, target)
		if err != nil {
			up.failures = append(up.failures, fmt.Sprintf("%s: %v", names[i], err))
			progress("  failed: %s: %v", names[i], err)
			continue
		}
		up.results[i] = result{value: res.received.BitsPerSecond / 1e9, unit: "Gbit/s",
			detail: fmt.Sprintf("%s: %.0f MB in %.1fs, retr %d", names[i], float64(res.received.Bytes)/1e6, res.received.Seconds, res.sent.Retransmits)}
		if i == pathKubetun {
			after, _ := readCPU(kt.Pid())
			up.cpu = after.since(before).per(float64(res.received.Bytes)/1e9, "s/GB", 1)
		}
	}
	b.add(up)
	n := int64(b.cfg.laptopMiB) << 20
	down := row{name: fmt.Sprintf("laptop: TCP download pod → laptop, %d MiB on one connection, %s", b.cfg.laptopMiB, laptopVersus)}
	for i, target := range targets {
		addr := net.JoinHostPort(target, strconv.Itoa(laptopBytesPort))
		progress("%s: %s", down.name, names[i])
		before, _ := readCPU(kt.Pid())
		took, err := download(ctx, lap.Namespace, addr, n, laptopDownloadTimeout)
		if err != nil {
			down.failures = append(down.failures, fmt.Sprintf("%s: %v", names[i], err))
			progress("  failed: %s: %v", names[i], err)
			continue
		}
		down.results[i] = result{value: float64(n) * 8 / took.Seconds() / 1e9, unit: "Gbit/s",
			detail: fmt.Sprintf("%s: %d MiB in %v, request to last byte", names[i], b.cfg.laptopMiB, took.Round(time.Millisecond))}
		if i == pathKubetun {
			after, _ := readCPU(kt.Pid())
			down.cpu = after.since(before).per(float64(n)/1e9, "s/GB", 1)
		}
	}
	b.add(down)
	// New connections one at a time, and laptopParallel at a time (a
	// connection pool warming up, a browser loading a page): each is a
	// request and its whole answer on a new connection.
	for _, parallel := range []int{1, laptopParallel} {
		b.add(b.laptopConnRate(ctx, kt, lap.Namespace, targets, names, parallel))
	}
	b.notes = append(b.notes, fmt.Sprintf("laptop: in rows \"laptop: …\" column direct is kubectl port-forward pod/pod1 (127.0.0.1 in the laptop), "+
		"column kubetun is kubetun connect --via portforward (the Service's ClusterIP %s), both through kube-apiserver's pods/portforward "+
		"from a laptop namespace with no route to pods; kubetun CPU is kubetun connect's", clusterIP))
	return nil
}

// laptopParallel is the laptop case's second connection rate: connections
// at a time.
const laptopParallel = 64

// laptopConnRate measures new connections/s, parallel at a time, to
// podserver's HTTP port through each of targets (by path, named by names)
// from the laptop's namespace ns; kt is kubetun connect, whose CPU the row
// reports.
func (b *bench) laptopConnRate(ctx context.Context, kt *testbed.Process, ns string, targets, names [2]string, parallel int) row {
	r := row{name: fmt.Sprintf("laptop: TCP connections/s, %d at a time, %s", parallel, laptopVersus)}
	for i, target := range targets {
		addr := net.JoinHostPort(target, strconv.Itoa(laptopHTTPPort))
		progress("%s: %s (%d connections, at most %v)", r.name, names[i], b.cfg.laptopConns, b.cfg.connTime)
		before, _ := readCPU(kt.Pid())
		res, err := connRate(ctx, ns, addr, b.cfg.laptopConns, parallel, b.cfg.connTime)
		if err != nil {
			r.failures = append(r.failures, fmt.Sprintf("%s to %s: %v", names[i], addr, err))
			progress("  failed: %s to %s: %v", names[i], addr, err)
			continue
		}
		r.results[i] = result{value: res.rate(), unit: "conn/s", detail: names[i] + ": " + res.String()}
		if res.failed > 0 {
			r.results[i].note = fmt.Sprintf("%d failed", res.failed)
		}
		if i == pathKubetun {
			after, _ := readCPU(kt.Pid())
			r.cpu = after.since(before).per(float64(res.done), "µs/conn", 1e6)
		}
	}
	return r
}

// laptopDownloadTimeout bounds one download of the laptop case.
const laptopDownloadTimeout = time.Minute

// download asks podserver's bytes port at addr, from namespace ns, for n
// bytes and reads them to the end, within limit. It returns the time from
// the request to the end of the answer.
func download(ctx context.Context, ns, addr string, n int64, limit time.Duration) (time.Duration, error) {
	var c net.Conn
	err := testbed.InNamespace(ns, func() error {
		d := net.Dialer{Timeout: connTimeout}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("dial %s in netns %s: %w", addr, ns, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(limit))
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })()
	began := time.Now()
	if _, err := fmt.Fprintf(c, "%d\n", n); err != nil {
		return 0, fmt.Errorf("%s: write the request: %w", addr, err)
	}
	buf := make([]byte, 256<<10)
	var got int64
	for {
		m, err := c.Read(buf)
		got += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("%s: read after %d of %d bytes (limit %v): %w", addr, got, n, limit, err)
		}
	}
	took := time.Since(began)
	if got != n {
		return 0, fmt.Errorf("%s: EOF after %d bytes, want %d", addr, got, n)
	}
	return took, nil
}

// waitEndpoints waits, bounded, until the EndpointSlice controller lists
// pod1 ready behind the Service bench.
func waitEndpoints(ctx context.Context, cp *controlplane.ControlPlane) error {
	deadline := time.Now().Add(laptopReadyTimeout)
	var out string
	for time.Now().Before(deadline) {
		var err error
		out, err = cp.Kubectl(ctx, "-n", laptopNS, "get", "endpointslices", "-l", "kubernetes.io/service-name=bench", "-o",
			`jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}`)
		if err == nil && len(strings.Fields(out)) == 1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("laptop: the Service bench has no ready endpoint after %v (last: %q)", laptopReadyTimeout, out)
}
