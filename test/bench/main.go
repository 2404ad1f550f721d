// Command bench measures kubetun's data path against the direct path, in the
// same run, on the seed's test bed (package testbed): kubetun in the node
// namespace with the static manifest source, one pod (pod1) behind the
// Service, and the client pod.
//
// Each case runs twice back to back, first straight to pod1's address (the
// baseline: the kernel's forwarding only), then through the ClusterIP, and
// the table shows both and their ratio:
//
//   - TCP, one iperf3 stream: client pod → pod (upload), pod → client
//     (iperf3 -R, download), both also through the Service's node port on
//     the node's address (the client pod's gateway; type NodePort, kubetun
//     --nodeport-addresses) instead of the ClusterIP, and an iperf3 client
//     in the node namespace;
//   - TCP connection rate: short connections, each one HTTP request and its
//     answer from podserver, made by this program inside the client's
//     namespace, one at a time and several in parallel;
//   - UDP packets/s: iperf3 -u with small datagrams at an unlimited rate,
//     both ways: received packets/s and loss.
//
// The request/response cases (group rr) run over two more paths: the seed's
// Service programmed as kube-proxy writes it in iptables mode and in
// nftables mode, each in a test bed of its own (kubetun's node namespace
// keeps no rule), with both seed pods behind it. A small server of this
// program's own (the hidden "rrserver" command) answers in the pods:
//
//   - round-trip latency of 64-byte requests on one connection, p50 and
//     p99, alone and with 64 more connections busy on the same path;
//   - requests/s over 64 keep-alive connections, 64-byte and 1 MiB
//     answers, and with a new connection per request;
//   - connect latency, one connection at a time, p50 and p99.
//
// Each of them runs in --rounds rounds in which every path takes its turn,
// the first one rotating, so that load from elsewhere on the machine falls
// on all paths alike.
//
// Group takeover starts a second kubetun, which takes over from the running
// one: the time from its start to serving, and the round-trip latency of a
// connection of the old kubetun's, whose packets the new one passes on,
// against one of the new kubetun's own, with both kubetuns' CPU.
//
// Group idle holds many idle connections open through kubetun and reads its
// memory per connection (RSS, Go heap and stacks from its /metrics). Group
// table measures the service table: resolver.Update in this process after
// one endpoint change among 1 000 and 30 000 generated Services (CPU time,
// heap per Service), then kubetun restarted on a manifest directory with
// that many Services: its memory, the first connection to a Service, and the
// time from one endpoint change in a manifest to the connection it serves.
//
// Group laptop starts the real control plane from test/controlplane (it is
// skipped with a note when its binaries are missing, see `make
// controlplane`) and compares `kubetun connect --via portforward` with
// `kubectl port-forward` to the same pod, both in a laptop namespace without
// routes to pods: time from start to ready, TCP upload (iperf3), download
// (--laptop-mib from podserver on one connection) and new connections/s one
// and 64 at a time (--laptop-conns). There the direct column is kubectl
// port-forward's.
//
// Then, unless --also-mtu 0, kubetun is restarted with that MTU and the TCP
// stream cases run again. While kubetun carries each case, its CPU time is
// read from /proc/PID/stat: CPU seconds per GB moved, per connection or per
// packet.
//
// Every ratio is kubetun's value over a baseline measured seconds before or
// after it in the same run, so that it keeps its meaning on a loaded
// machine; the bench prints numbers and asserts none. Each case reads
// kubetun_link_dropped_packets_total from kubetun's /metrics around its run.
// --json FILE writes the table as JSON too; --short is a run under two
// minutes, with fewer and shorter runs.
//
// Traffic stays between the namespaces the bench creates; every iperf3 run
// and connection loop is bounded in count and time; everything is removed at
// the end, also on failure and on Ctrl-C. It needs root. `make bench` runs it.
//
// Usage:
//
//	bench [--kubetun bin/kubetun] [--time 5s] [--conns 2000] [--parallel 8]
//	      [--udp-len 64] [--also-mtu 1500] [--cases stream,conn,udp,rr,takeover,idle,table,api,laptop]
//	      [--kubetun-flags "--profiling"] [--gctrace] [-v]
//	      [--short] [--json FILE] [--kube-proxy iptables,nftables]
//	      [--rr-time 3s] [--rounds 3] [--rr-count 20000] [--rr-requests 200000]
//	      [--connect-count 2000] [--idle-conns 10000] [--laptop-conns 1000] [--laptop-mib 512]
//	      [--build-services 1000,30000] [--kubetun-services 1000,30000] [--external-services 10000]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// iperfPort is where iperf3 listens in pod1 and on the ClusterIP, TCP and UDP.
const iperfPort = 5201

// benchPorts is the Service the bench runs against: the seed's HTTP port for
// the connection rate, and iperf3's port in both protocols (iperf3's UDP test
// keeps its control connection on TCP).
// The Service is of type NodePort, so that iperf3 also runs through its
// node port on the node's address (iperfNodePort).
var benchPorts = []testbed.ServicePort{
	{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080, NodePort: 30080},
	{Name: "iperf", Port: iperfPort, TargetPort: strconv.Itoa(iperfPort), EndpointPort: iperfPort, NodePort: iperfNodePort},
	{Name: "iperf-udp", Port: iperfPort, TargetPort: strconv.Itoa(iperfPort), EndpointPort: iperfPort, Protocol: "UDP", NodePort: iperfNodePort},
	{Name: "rr", Port: rrPort, TargetPort: strconv.Itoa(rrPort), EndpointPort: rrPort, NodePort: 30202},
}

// iperfNodePort is iperf3's node port.
const iperfNodePort = 30201

// config is the command line.
type config struct {
	kubetun   string
	duration  time.Duration // of each iperf3 run
	conns     int           // connections per connection-rate run
	connTime  time.Duration // bounds each connection-rate run
	parallel  int
	udpLen    int
	alsoMTU   int             // 0: skip the MTU variant
	cases     map[string]bool // of caseNames
	ktFlags   []string        // added to every kubetun command line
	gctrace   bool
	verbose   bool
	keepFiles bool

	short        bool
	jsonPath     string
	kubeProxy    map[string]bool // of kubeProxyModes
	rrTime       time.Duration   // bounds each request/response case, per path
	rounds       int             // of each request/response case
	rrCount      int             // round trips per latency run
	rrRequests   int             // bounds each keep-alive request-rate run
	connectCount int             // connections per connect-latency run
	idleConns    int
	laptopConns  int   // connections per path in the laptop case
	laptopMiB    int   // download per path in the laptop case
	buildSizes   []int // Services in the in-process table cases
	kubetunSizes []int // Services in the kubetun table cases
	// externalSizes are the Services of the table group's node port case
	// (externalNodePorts NodePort, externalLBs LoadBalancer).
	externalSizes []int
	apiSizes      []int // Services in the API case, ascending
	apiChanges    int   // endpoint changes timed per API case size
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == rrServerCommand {
		os.Exit(rrServerMain(os.Args[2:]))
	}
	var cfg config
	flag.StringVar(&cfg.kubetun, "kubetun", "", "kubetun binary to run (default: build ./cmd/kubetun)")
	flag.DurationVar(&cfg.duration, "time", 5*time.Second, "length of each iperf3 run (1s to 60s)")
	flag.IntVar(&cfg.conns, "conns", 2000, "connections per connection-rate run (1 to 100000)")
	flag.DurationVar(&cfg.connTime, "conn-time", 20*time.Second, "time limit of each connection-rate run")
	flag.IntVar(&cfg.parallel, "parallel", 8, "connections in flight at once in the parallel connection-rate case (1 to 64)")
	flag.IntVar(&cfg.udpLen, "udp-len", 64, "UDP datagram payload in bytes (iperf3 needs 16 at least)")
	flag.IntVar(&cfg.alsoMTU, "also-mtu", 1500, "also run the TCP stream cases with kubetun --mtu `N` (0: skip)")
	cases := flag.String("cases", strings.Join(caseNames, ","), "comma-separated `CASES` to run: "+strings.Join(caseNames, ", "))
	ktFlags := flag.String("kubetun-flags", "", "space-separated `FLAGS` added to kubetun's command line, e.g. \"--profiling\"")
	flag.BoolVar(&cfg.gctrace, "gctrace", false, "run kubetun with GODEBUG=gctrace=1 and count its GC cycles per case")
	flag.BoolVar(&cfg.keepFiles, "keep", false, "keep the logs and manifest (printed at the end) instead of removing them")
	flag.BoolVar(&cfg.verbose, "v", false, "print every ip command that builds and removes the namespaces")
	flag.BoolVar(&cfg.short, "short", false, "a run under two minutes: every count and time below its --short default unless given")
	flag.StringVar(&cfg.jsonPath, "json", "", "also write the results as JSON to `FILE`")
	kubeProxy := flag.String("kube-proxy", "iptables,nftables", "kube-proxy `MODES` to run the request/response and connection cases through, in test beds of their own (\"\" for none)")
	flag.DurationVar(&cfg.rrTime, "rr-time", 3*time.Second, "time limit of each request/response case per path, all rounds together (--short: 1s)")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of each request/response case, the paths taking turns (--short: 2)")
	flag.IntVar(&cfg.rrCount, "rr-count", 20000, "round trips per latency run (--short: 3000)")
	flag.IntVar(&cfg.rrRequests, "rr-requests", 200000, "at most this many requests per keep-alive request-rate run, a twentieth with 1 MiB answers (--short: 40000)")
	flag.IntVar(&cfg.connectCount, "connect-count", 2000, "connections per connect-latency run (--short: 300)")
	flag.IntVar(&cfg.idleConns, "idle-conns", 10000, "idle connections held through kubetun to weigh one (--short: 2000)")
	flag.IntVar(&cfg.laptopConns, "laptop-conns", 1000, "connections per path in the laptop case's connection rate, at most --conn-time (--short: 200)")
	flag.IntVar(&cfg.laptopMiB, "laptop-mib", 512, "MiB per path in the laptop case's download (--short: 128)")
	buildSizes := flag.String("build-services", "1000,30000", "comma-separated numbers of generated Services for resolver.Update's cost")
	kubetunSizes := flag.String("kubetun-services", "1000,30000", "comma-separated numbers of generated Services kubetun is restarted with (--short: 1000)")
	externalSizes := flag.String("external-services", "10000", "comma-separated numbers of generated Services kubetun is restarted with in the table group's node port case: the first "+strconv.Itoa(externalNodePorts)+" of type NodePort, "+strconv.Itoa(externalLBs)+" of them LoadBalancer with an ingress IP each (--short: 1000)")
	apiSizes := flag.String("api-services", "1000,10000", "ascending comma-separated numbers of Services created through kube-apiserver in the api case; creating them takes about a minute per 10 000 (--short: 1000)")
	flag.IntVar(&cfg.apiChanges, "api-changes", 40, "endpoint changes timed per size in the api case (--short: 20)")
	flag.Parse()
	cfg.ktFlags = strings.Fields(*ktFlags)
	if cfg.short {
		cfg.shorten()
		if !flagGiven("kubetun-services") {
			*kubetunSizes = "1000"
		}
		if !flagGiven("external-services") {
			*externalSizes = "1000"
		}
		if !flagGiven("api-services") {
			*apiSizes = "1000"
		}
	}
	err := cfg.parseCases(*cases)
	if err == nil {
		cfg.kubeProxy, err = parseList("--kube-proxy", *kubeProxy, keys(kubeProxyModes))
	}
	if err == nil {
		cfg.buildSizes, err = parseSizes("--build-services", *buildSizes)
	}
	if err == nil {
		cfg.kubetunSizes, err = parseSizes("--kubetun-services", *kubetunSizes)
	}
	if err == nil {
		cfg.externalSizes, err = parseSizes("--external-services", *externalSizes)
	}
	if err == nil {
		cfg.apiSizes, err = parseAPISizes(*apiSizes)
	}
	if err == nil {
		err = cfg.check()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (it creates network namespaces and a TUN device); run: sudo make bench")
		os.Exit(1)
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		fmt.Fprintln(os.Stderr, "bench: iperf3 not found; 'make deps' installs it")
		os.Exit(1)
	}
	ctx := testbed.SignalContext("bench")
	b := &bench{cfg: cfg}
	err = b.run(ctx)
	if err != nil && b.kt != nil && b.kt.Exited() {
		fmt.Fprintf(os.Stderr, "bench: kubetun exited; its output:\n%s\n", b.kt.Output())
	}
	testbed.Exit("bench", err, b.cleanup())
}

// caseNames are the groups of cases --cases selects.
var caseNames = []string{"stream", "conn", "udp", "rr", "levers", "takeover", "idle", "table", "api", "laptop"}

func (c *config) parseCases(list string) error {
	c.cases = map[string]bool{}
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(caseNames, name) {
			return fmt.Errorf("--cases: unknown case %q; want some of %s", name, strings.Join(caseNames, ", "))
		}
		c.cases[name] = true
	}
	if len(c.cases) == 0 {
		return fmt.Errorf("--cases %q: name at least one of %s", list, strings.Join(caseNames, ", "))
	}
	return nil
}

func (c *config) check() error {
	switch {
	case c.duration < time.Second || c.duration > time.Minute:
		return fmt.Errorf("--time %v: want 1s to 1m", c.duration)
	case c.conns < 1 || c.conns > 100000:
		return fmt.Errorf("--conns %d: want 1 to 100000", c.conns)
	case c.connTime <= 0 || c.connTime > 2*time.Minute:
		return fmt.Errorf("--conn-time %v: want up to 2m", c.connTime)
	case c.parallel < 1 || c.parallel > 64:
		return fmt.Errorf("--parallel %d: want 1 to 64", c.parallel)
	case c.udpLen < 16 || c.udpLen > 1472:
		return fmt.Errorf("--udp-len %d: want 16 to 1472 (one datagram per packet on a 1500-byte link)", c.udpLen)
	case c.alsoMTU != 0 && (c.alsoMTU < 1280 || c.alsoMTU > 65535):
		return fmt.Errorf("--also-mtu %d: want 0 or 1280 to 65535", c.alsoMTU)
	case c.rounds < 1 || c.rounds > 20:
		return fmt.Errorf("--rounds %d: want 1 to 20", c.rounds)
	case c.rrTime < 100*time.Millisecond || c.rrTime > time.Minute:
		return fmt.Errorf("--rr-time %v: want 100ms to 1m", c.rrTime)
	case c.rrCount < 100 || c.rrCount > 1000000:
		return fmt.Errorf("--rr-count %d: want 100 to 1000000", c.rrCount)
	case c.rrRequests < 1000 || c.rrRequests > 10000000:
		return fmt.Errorf("--rr-requests %d: want 1000 to 10000000", c.rrRequests)
	case c.connectCount < 10 || c.connectCount > 20000:
		return fmt.Errorf("--connect-count %d: want 10 to 20000", c.connectCount)
	case c.apiChanges < 2 || c.apiChanges > 1000:
		return fmt.Errorf("--api-changes %d: want 2 to 1000", c.apiChanges)
	case c.idleConns < 100 || c.idleConns > 20000:
		return fmt.Errorf("--idle-conns %d: want 100 to 20000 (the client's ports to one address run out near 28000)", c.idleConns)
	case c.laptopConns < 10 || c.laptopConns > 20000:
		return fmt.Errorf("--laptop-conns %d: want 10 to 20000", c.laptopConns)
	case c.laptopMiB < 1 || c.laptopMiB > 1024:
		return fmt.Errorf("--laptop-mib %d: want 1 to 1024 (podserver sends 1 GiB at most)", c.laptopMiB)
	}
	for _, n := range slices.Concat(c.buildSizes, c.kubetunSizes, c.apiSizes, c.externalSizes) {
		if n < 1 || n > 60000 {
			return fmt.Errorf("%d Services: want 1 to 60000", n)
		}
	}
	return nil
}

// bench is one run: its settings, what it created, and what it measured.
type bench struct {
	cfg config

	tmp          string           // binaries, manifest and logs
	podserver    string           // built binary
	tb           *testbed.Testbed // nil until created
	seed         testbed.Seed
	manifestPath string
	kt           *testbed.Process // the running kubetun
	kp           [numPaths]*kpBed // the kube-proxy beds, by path
	kpVersions   []string
	start        time.Time
	ktMTU        string // kubetun0's MTU as the kernel reports it
	ktVersion    string // `kubetun version` and the work tree's commit
	defaultMTU   string // kubetun0's MTU without --mtu

	rows  []row
	notes []string // printed above the table
}

func (b *bench) run(ctx context.Context) error {
	var err error
	if b.tmp, err = os.MkdirTemp("", "kubetun-bench-"); err != nil {
		return fmt.Errorf("MkdirTemp: %w", err)
	}
	b.start = time.Now()
	loadStart, busy := loadAverage(), busyNow()
	header := b.header(loadStart, busy) // before anything of ours runs
	steps := []func(context.Context) error{b.build, b.bed, b.kubeProxyBeds, b.startDefault, b.measure}
	if b.cfg.cases["levers"] {
		steps = append(steps, b.measureLevers)
	}
	if b.cfg.cases["takeover"] {
		steps = append(steps, b.measureTakeover)
	}
	if b.cfg.cases["idle"] {
		steps = append(steps, b.measureIdle)
	}
	if b.cfg.alsoMTU != 0 && b.cfg.cases["stream"] {
		steps = append(steps, b.measureMTU)
	}
	if b.cfg.cases["laptop"] {
		steps = append(steps, b.measureLaptop)
	}
	if b.cfg.cases["table"] {
		steps = append(steps, b.measureTable) // it restarts kubetun with other manifests
	}
	if b.cfg.cases["api"] {
		steps = append(steps, b.measureAPI) // last: it restarts kubetun on a control plane
	}
	if err := testbed.RunSteps(ctx, steps...); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(header)
	fmt.Printf("kubetun: %s\n", b.ktVersion)
	fmt.Printf("bed:     veth MTU %s, %s MTU %s (N in rows marked --mtu N); only endpoint pod1 %s; direct = the same client to pod1\n",
		b.vethMTU(ctx), testbed.TUN, b.defaultMTU, b.seed.Pod1.IP)
	fmt.Printf("runs:    iperf3 %s, 1 stream, %v each; %d connections per rate case (at most %v)\n",
		iperfVersion(ctx), b.cfg.duration, b.cfg.conns, b.cfg.connTime)
	if b.cfg.cases["rr"] {
		fmt.Printf("rr:      64-byte requests, answers of 64 B or 1 MiB; per case and path %v, at most %d round trips or %d requests, in %d rounds the paths take turns in; kube-proxy beds: both seed pods behind the ClusterIP, %s\n",
			b.cfg.rrTime, b.cfg.rrCount, b.cfg.rrRequests, b.cfg.rounds, strings.Join(b.kpVersions, ", "))
	}
	if b.cfg.cases["laptop"] {
		fmt.Printf("laptop:  %d connections per path in its rate case (at most %v), %d MiB per download; direct = kubectl port-forward in the laptop rows\n",
			b.cfg.laptopConns, b.cfg.connTime, b.cfg.laptopMiB)
	}
	loadEnd := loadAverage()
	fmt.Printf("load:    %s at the end; the run took %v\n\n", loadEnd, time.Since(b.start).Round(time.Second))
	for _, n := range b.notes {
		fmt.Println(n)
	}
	if len(b.notes) > 0 {
		fmt.Println()
	}
	printTable(os.Stdout, b.rows)
	if b.cfg.jsonPath == "" {
		return nil
	}
	rep := report{Time: b.start.UTC().Format(time.RFC3339), Go: runtime.Version(), Kubetun: b.ktVersion, Short: b.cfg.short,
		Machine: map[string]string{"nproc": strconv.Itoa(runtime.NumCPU()), "load_start": loadStart, "load_end": loadEnd, "cpu_busy_start": busy}}
	rep.Notes = b.notes
	if err := writeJSON(b.cfg.jsonPath, rep, b.rows); err != nil {
		return err
	}
	progress("wrote %s", b.cfg.jsonPath)
	return nil
}

// header describes the machine and how busy it is, before the bench adds to it.
func (b *bench) header(load, busy string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "kubetun bench, %s, %s\n", b.start.Format("2006-01-02 15:04:05 MST"), runtime.Version())
	fmt.Fprintf(&s, "machine: nproc %d, load average %s at the start, CPU %s busy in the second before\n",
		runtime.NumCPU(), load, busy)
	return s.String()
}

// build builds podserver, and kubetun unless given.
func (b *bench) build(ctx context.Context) error {
	if b.cfg.kubetun == "" {
		progress("building podserver and kubetun")
	} else {
		progress("building podserver")
	}
	var err error
	if b.podserver, err = testbed.Build(ctx, b.tmp, "./test/podserver"); err != nil {
		return err
	}
	if b.cfg.kubetun == "" {
		if b.cfg.kubetun, err = testbed.Build(ctx, b.tmp, "./cmd/kubetun"); err != nil {
			return err
		}
	} else if b.cfg.kubetun, err = filepath.Abs(b.cfg.kubetun); err != nil {
		return err
	}
	return nil
}

// version is `kubetun version`, plus the work tree's commit when the binary
// carries none (a build with -buildvcs=false, or from go run).
func (b *bench) version(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.cfg.kubetun, "version").Output()
	v := strings.TrimSpace(string(out))
	if err != nil {
		v = fmt.Sprintf("(kubetun version: %v)", err)
	}
	if root, err := testbed.ModuleRoot(); err == nil {
		if desc, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
			v += ", work tree " + strings.TrimSpace(string(desc))
		}
	}
	return v
}

// bed creates the namespaces, pod1's iperf3 server and the manifest.
func (b *bench) bed(ctx context.Context) error {
	progress("creating the test bed")
	opts := testbed.Options{Podserver: b.podserver, Kubetun: b.cfg.kubetun, Dir: b.tmp}
	if b.cfg.verbose {
		opts.Trace = func(cmdline string) { fmt.Fprintln(os.Stderr, "   $", cmdline) }
	}
	tb, err := testbed.Create(opts)
	if err != nil {
		return err
	}
	b.tb = tb
	if b.seed, err = tb.AddSeed(); err != nil {
		return err
	}
	// --forceflush: iperf3 buffers its output in a pipe otherwise, and the
	// "listening" line would never be seen.
	srv, err := tb.Start(b.seed.Pod1.Namespace, "iperf3-pod1", "iperf3", "-s", "-p", strconv.Itoa(iperfPort), "--forceflush")
	if err != nil {
		return err
	}
	if err := srv.WaitOutput("Server listening", 5*time.Second); err != nil {
		return err
	}
	if err := b.startRRServers(tb, b.seed.Pod1, b.seed.Pod2); err != nil {
		return err
	}
	// Only pod1: iperf3's control connection and its data (a second TCP
	// connection, or UDP) must reach the same server.
	b.manifestPath = filepath.Join(b.tmp, "service-test.yaml")
	return testbed.WriteServices(b.manifestPath, testbed.Service{
		Name:       "service-test",
		ClusterIPs: []netip.Addr{netip.MustParseAddr(testbed.ClusterIP)},
		Selector:   "service_test_pod",
		Type:       "NodePort",
		Ports:      benchPorts,
		Endpoints:  []testbed.Endpoint{testbed.EndpointOf(b.seed.Pod1)},
	})
}

func (b *bench) startDefault(ctx context.Context) error {
	b.ktVersion = b.version(ctx)
	progress("kubetun: %s", b.ktVersion)
	if err := b.startKubetun(ctx); err != nil {
		return err
	}
	b.defaultMTU = b.ktMTU
	return nil
}

// startKubetun (re)starts kubetun with extra flags and waits until it is ready.
func (b *bench) startKubetun(ctx context.Context, extra ...string) error {
	if b.kt != nil {
		if err := b.kt.Stop(5 * time.Second); err != nil {
			return fmt.Errorf("stopping kubetun: %w", err)
		}
		b.kt = nil
	}
	// The node ports listen on the client pod's gateway, the node side of
	// its veth.
	extra = append(append(slices.Clone(b.cfg.ktFlags), "--nodeport-addresses", b.seed.Client.Gateway.String()+"/32"), extra...)
	var err error
	if b.cfg.gctrace {
		// env execs kubetun, so the pid stays kubetun's, as with StartKubetun.
		argv := append([]string{"env", "GODEBUG=gctrace=1", b.cfg.kubetun}, testbed.KubetunArgs(b.manifestPath, extra...)...)
		if b.kt, err = b.tb.Start(b.tb.Node, "kubetun", argv...); err == nil {
			err = b.kt.WaitOutput("msg=ready", testbed.ReadyTimeout)
		}
	} else {
		b.kt, err = b.tb.StartKubetun(b.manifestPath, extra...)
	}
	if err != nil {
		return err
	}
	b.ktMTU = b.linkMTU(ctx, b.tb.Node, testbed.TUN)
	progress("kubetun running (pid %d, %s MTU %s): %s", b.kt.Pid(), testbed.TUN, b.ktMTU, b.kt.CommandLine())
	return nil
}

// measure runs every case against the default kubetun.
func (b *bench) measure(ctx context.Context) error {
	client, node := b.seed.Client.Namespace, b.tb.Node
	pod := b.seed.Pod1.IP.String()
	cip := testbed.ClusterIP
	np := netip.AddrPortFrom(b.seed.Client.Gateway, iperfNodePort).String()
	streams := []struct {
		name string
		ns   string
		via  string // what the client reaches kubetun at
		args []string
	}{
		{"TCP upload, client pod → pod", client, cip, nil},
		{"TCP download, pod → client pod (-R)", client, cip, []string{"-R"}},
		{"TCP upload via NodePort, client pod → node:" + strconv.Itoa(iperfNodePort), client, np, nil},
		{"TCP download via NodePort, node:" + strconv.Itoa(iperfNodePort) + " → client pod (-R)", client, np, []string{"-R"}},
		{"TCP upload, node-local client → pod", node, cip, nil},
		{"TCP download, pod → node-local client (-R)", node, cip, []string{"-R"}},
	}
	for _, s := range streams {
		if !b.cfg.cases["stream"] {
			break
		}
		if err := b.tcpStream(ctx, s.name, s.ns, pod, s.via, s.args...); err != nil {
			return err
		}
	}
	for _, parallel := range []int{1, b.cfg.parallel} {
		name := "TCP connections/s, 1 at a time"
		if parallel > 1 {
			name = fmt.Sprintf("TCP connections/s, %d in parallel", parallel)
		} else if b.cfg.parallel == 1 {
			continue // the same case twice
		}
		if !b.cfg.cases["conn"] {
			break
		}
		if err := b.connRate(ctx, name, parallel); err != nil {
			return err
		}
	}
	if b.cfg.cases["udp"] {
		if err := b.udpRate(ctx, fmt.Sprintf("UDP %d-byte datagrams, client pod → pod", b.cfg.udpLen), client, pod); err != nil {
			return err
		}
		if err := b.udpRate(ctx, fmt.Sprintf("UDP %d-byte datagrams, pod → client pod (-R)", b.cfg.udpLen), client, pod, "-R"); err != nil {
			return err
		}
	}
	if b.cfg.cases["rr"] {
		return b.measureRR(ctx)
	}
	return nil
}

// measureMTU restarts kubetun with --mtu alsoMTU and runs the stream cases again.
func (b *bench) measureMTU(ctx context.Context) error {
	mtu := strconv.Itoa(b.cfg.alsoMTU)
	if err := b.startKubetun(ctx, "--mtu", mtu); err != nil {
		return err
	}
	client, node := b.seed.Client.Namespace, b.tb.Node
	pod := b.seed.Pod1.IP.String()
	for _, s := range []struct {
		name string
		ns   string
		args []string
	}{
		{"TCP upload, client pod → pod, --mtu " + mtu, client, nil},
		{"TCP download, pod → client pod, --mtu " + mtu, client, []string{"-R"}},
		{"TCP upload, node-local → pod, --mtu " + mtu, node, nil},
	} {
		if err := b.tcpStream(ctx, s.name, s.ns, pod, testbed.ClusterIP, s.args...); err != nil {
			return err
		}
	}
	return nil
}

// tcpStream measures one iperf3 TCP case, direct to pod and through kubetun
// at via: the ClusterIP, or a node port (ip:port).
func (b *bench) tcpStream(ctx context.Context, name, ns, pod, via string, args ...string) error {
	r := row{name: name}
	for i, target := range []string{pod, via} {
		progress("%s: %s", name, []string{"direct", "through kubetun"}[i])
		res, use, dropped, err := b.iperfWatched(ctx, ns, target, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.results[i] = result{
			value: res.received.BitsPerSecond / 1e9, unit: "Gbit/s",
			detail: fmt.Sprintf("retr %d, iperf3 CPU sender %.0f%% receiver %.0f%%%s", res.sent.Retransmits, res.senderCPU, res.receiverCPU, dropped),
		}
		if i == 1 {
			r.results[i].linkDrops = dropped.linkDrops()
			r.cpu = use.per(float64(res.received.Bytes)/1e9, "s/GB", 1)
			r.results[i].detail += use.gcNote()
		}
	}
	b.add(r)
	return nil
}

// iperfWatched is iperf with kubetun's CPU use during the run and the drops
// around it.
func (b *bench) iperfWatched(ctx context.Context, ns, target string, args ...string) (iperfResult, cpuUse, drops, error) {
	dropsBefore := b.drops(ctx)
	before := b.sample()
	res, err := b.iperf(ctx, ns, target, args...)
	if err != nil {
		return res, cpuUse{}, drops{}, err
	}
	use := b.sample().since(before)
	return res, use, b.drops(ctx).since(dropsBefore), nil
}

// udpRate measures received datagrams/s, direct to pod and through the ClusterIP.
func (b *bench) udpRate(ctx context.Context, name, ns, pod string, extra ...string) error {
	r := row{name: name}
	args := append([]string{"-u", "-b", "0", "-l", strconv.Itoa(b.cfg.udpLen)}, extra...)
	for i, target := range []string{pod, testbed.ClusterIP} {
		progress("%s: %s", name, []string{"direct", "through kubetun"}[i])
		res, use, dropped, err := b.iperfWatched(ctx, ns, target, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		got := res.received.Packets - res.received.LostPackets
		secs := res.received.Seconds
		if secs <= 0 {
			return fmt.Errorf("%s: iperf3 reported %v seconds", name, secs)
		}
		// What kubetun forwarded: some of it the pod's socket could not
		// take. With -R the receiver is the client, whose drops are not
		// counted: its CPU per packet is an upper bound.
		forwarded := got + max(dropped.podUDP, 0)
		r.results[i] = result{
			value: float64(got) / secs / 1e3, unit: "kpps",
			note:   fmt.Sprintf("loss %.0f%%", res.received.LostPercent),
			detail: fmt.Sprintf("sent %.0f kpps, iperf3 CPU sender %.0f%% receiver %.0f%%%s", float64(res.sent.Packets)/secs/1e3, res.senderCPU, res.receiverCPU, dropped),
		}
		if i == 1 {
			r.results[i].linkDrops = dropped.linkDrops()
			r.cpu = use.per(float64(forwarded), "µs/pkt", 1e6)
			r.results[i].detail += fmt.Sprintf(", kubetun forwarded %.0f kpps (CPU is per forwarded packet)", float64(forwarded)/secs/1e3)
			r.results[i].detail += use.gcNote()
		}
	}
	b.add(r)
	return nil
}

// connRate measures connections/s over every path: the seed's HTTP request
// to pod1:8080 directly and to the ClusterIP's port 80.
func (b *bench) connRate(ctx context.Context, name string, parallel int) error {
	r := row{name: name}
	for p, t := range b.targets(80, 8080) {
		if t.ns == "" {
			continue
		}
		progress("%s: %s (%d connections, at most %v)", name, pathNames[p], b.cfg.conns, b.cfg.connTime)
		var res connResult
		use, dropped, err := b.watched(ctx, p, func() error {
			var err error
			res, err = connRate(ctx, t.ns, t.addr, b.cfg.conns, parallel, b.cfg.connTime)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s, %s to %s: %w", name, pathNames[p], t.addr, err)
		}
		r.results[p] = result{value: res.rate(), unit: "conn/s", detail: res.String() + dropped.String()}
		if res.failed > 0 {
			r.results[p].note = fmt.Sprintf("%d failed", res.failed)
		}
		if p == pathKubetun {
			r.results[p].linkDrops = dropped.linkDrops()
			r.cpu = use.per(float64(res.done), "µs/conn", 1e6)
			r.results[p].detail += use.gcNote()
		}
	}
	b.add(r)
	return nil
}

func (b *bench) add(r row) {
	b.rows = append(b.rows, r)
	progress("  %s", r.summary())
}

// sample reads kubetun's CPU time and GC count now.
func (b *bench) sample() cpuSample {
	s, err := readCPU(b.kt.Pid())
	if err != nil {
		progress("reading kubetun's CPU time: %v", err)
		s.err = err
	}
	if b.cfg.gctrace {
		s.gcs, s.counted = strings.Count(b.kt.Output(), "\ngc "), true
	}
	return s
}

// linkMTU is the MTU of link in namespace ns, or "?".
func (b *bench) linkMTU(ctx context.Context, ns, link string) string {
	out, err := b.tb.Run(ctx, ns, "cat", "/sys/class/net/"+link+"/mtu")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(out)
}

func (b *bench) vethMTU(ctx context.Context) string {
	return b.linkMTU(ctx, b.seed.Client.Namespace, "eth0")
}

// cleanup stops everything and removes the namespaces and files.
func (b *bench) cleanup() error {
	var errs []error
	// The kube-proxy beds too: their pods' servers and rules go with them.
	for _, bed := range b.kp {
		if bed != nil {
			if err := bed.tb.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if b.tb != nil {
		if err := b.tb.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.tmp != "" {
		if b.cfg.keepFiles {
			fmt.Fprintf(os.Stderr, "bench: logs and manifest kept in %s\n", b.tmp)
		} else if err := os.RemoveAll(b.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// progress reports a step on stderr; the results go to stdout.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// shorten lowers, for --short, every count and time not given on the
// command line.
func (c *config) shorten() {
	set := func(name string, apply func()) {
		if !flagGiven(name) {
			apply()
		}
	}
	set("time", func() { c.duration = time.Second })
	set("conns", func() { c.conns = 500 })
	set("also-mtu", func() { c.alsoMTU = 0 })
	set("rr-time", func() { c.rrTime = time.Second })
	set("rounds", func() { c.rounds = 2 })
	set("rr-count", func() { c.rrCount = 3000 })
	set("rr-requests", func() { c.rrRequests = 40000 })
	set("connect-count", func() { c.connectCount = 300 })
	set("idle-conns", func() { c.idleConns = 2000 })
	set("api-changes", func() { c.apiChanges = 20 })
	set("laptop-conns", func() { c.laptopConns = 200 })
	set("laptop-mib", func() { c.laptopMiB = 128 })
}

// flagGiven says whether the flag was on the command line.
func flagGiven(name string) bool {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// parseList parses a comma-separated list of names out of known; "" is none.
func parseList(flagName, list string, known []string) (map[string]bool, error) {
	m := map[string]bool{}
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("%s: unknown %q; want some of %s", flagName, name, strings.Join(known, ", "))
		}
		m[name] = true
	}
	return m, nil
}

// parseSizes parses a comma-separated list of numbers.
func parseSizes(flagName, list string) ([]int, error) {
	var sizes []int
	for f := range strings.SplitSeq(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a number", flagName, f)
		}
		sizes = append(sizes, n)
	}
	return sizes, nil
}

// keys are m's keys, sorted.
func keys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
