// Command demo replays the seed scenario on this machine with kubetun in place
// of kube-proxy: two pods behind the Service 10.3.241.152:80, a client that
// asks it 20 times the seed's way, and no netfilter rule anywhere.
//
// It needs root (network namespaces, a TUN device) and removes everything it
// created when it ends, also on failure and on Ctrl-C. `make demo` runs it.
//
// Usage:
//
//	demo [--kubetun bin/kubetun] [--requests 20] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// seedCommand is the seed client's command; sh is dash, whose echo turns \r\n
// into CR LF. netcat-openbsd (1.219) exits by itself once the server closes,
// so it needs neither -N nor -q.
const seedCommand = `echo 'GET / HTTP/1.1\r\n\r\n' | nc %s 80`

func main() {
	kubetun := flag.String("kubetun", "", "kubetun binary to run (default: build ./cmd/kubetun)")
	requests := flag.Int("requests", 20, "requests the client sends")
	verbose := flag.Bool("v", false, "print every ip command that builds and removes the namespaces")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces and a TUN device); run: sudo make demo")
		os.Exit(1)
	}
	ctx := testbed.SignalContext("demo")
	d := &demo{kubetun: *kubetun, requests: *requests, verbose: *verbose}
	err := d.run(ctx)
	testbed.Exit("demo", err, d.cleanup())
}

// demo is one run: its settings and what it created.
type demo struct {
	kubetun  string
	requests int
	verbose  bool

	tmp  string           // binaries, manifest and logs
	tb   *testbed.Testbed // nil until created
	seed testbed.Seed
	kt   *testbed.Process // kubetun, once started

	removeResolvConf func() error // undoes byName's resolv.conf; nil if none
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.tmp, err = os.MkdirTemp("", "kubetun-demo-"); err != nil {
		return fmt.Errorf("MkdirTemp: %w", err)
	}
	return testbed.RunSteps(ctx, d.build, d.namespaces, d.start, d.ask, d.byName, d.netfilter)
}

// build builds podserver, and kubetun unless given.
func (d *demo) build(ctx context.Context) error {
	heading("1. Build the binaries")
	pkgs := []string{"./test/podserver"}
	if d.kubetun == "" {
		pkgs = append(pkgs, "./cmd/kubetun")
	} else if abs, err := filepath.Abs(d.kubetun); err != nil {
		return err
	} else {
		d.kubetun = abs
		fmt.Printf("   kubetun:   %s (given)\n", d.kubetun)
	}
	for _, pkg := range pkgs {
		bin, err := testbed.Build(ctx, d.tmp, pkg)
		if err != nil {
			return err
		}
		fmt.Printf("   %-10s %s (go build %s)\n", filepath.Base(pkg)+":", bin, pkg)
		if pkg == "./cmd/kubetun" {
			d.kubetun = bin
		}
	}
	return nil
}

// namespaces builds the seed's cluster out of network namespaces.
func (d *demo) namespaces(ctx context.Context) error {
	heading("2. The seed's cluster, as network namespaces")
	opts := testbed.Options{
		Podserver: filepath.Join(d.tmp, "podserver"),
		Kubetun:   d.kubetun,
		Dir:       d.tmp,
	}
	if d.verbose {
		opts.Trace = func(cmdline string) { fmt.Println("   $", cmdline) }
	}
	tb, err := testbed.Create(opts)
	if err != nil {
		return err
	}
	d.tb = tb
	if d.seed, err = tb.AddSeed(); err != nil {
		return err
	}
	s := d.seed
	fmt.Printf(`   Each pod and the client is a network namespace joined to the node's by a
   veth pair; each gets its own /24, as kubenet gives each node a range.

   namespace           role    address       what runs there
   %-19s node    10.0.N.1/24   ip_forward=1; kubetun will run here
   %-19s pod1    %-13s podserver: <p>Hello from pod1</p> on :8080
   %-19s pod2    %-13s podserver: <p>Hello from pod2</p> on :8080
   %-19s client  %-13s nc, like the seed's client pod

   Pods and client route everything via the node (default via 10.0.N.1). The
   service network %s exists nowhere yet: no device, no route.
`, tb.Node, s.Pod1.Namespace, s.Pod1.IP.String()+"/24", s.Pod2.Namespace, s.Pod2.IP.String()+"/24",
		s.Client.Namespace, s.Client.IP.String()+"/24", testbed.ServiceCIDR)
	return nil
}

// start writes the manifest and runs kubetun in the node namespace.
func (d *demo) start(ctx context.Context) error {
	heading("3. The Service and the EndpointSlice, as the API server would hold them")
	m := testbed.Manifest{
		Ports:     testbed.SeedPorts,
		Endpoints: []testbed.Endpoint{testbed.EndpointOf(d.seed.Pod1), testbed.EndpointOf(d.seed.Pod2)},
	}
	path := filepath.Join(d.tmp, "service-test.yaml")
	if err := m.Write(path); err != nil {
		return err
	}
	yaml, _ := m.YAML()
	yamlText := strings.TrimRight(string(yaml), "\n")
	fmt.Printf("   %s (the EndpointSlice controller resolved targetPort http to 8080):\n\n%s\n",
		path, indent(yamlText, "     "))

	heading("4. kubetun in the node namespace")
	fmt.Printf("   $ ip netns exec %s %s\n", d.tb.Node, strings.Join(append([]string{d.kubetun}, testbed.KubetunArgs(path)...), " "))
	began := time.Now()
	p, err := d.tb.StartKubetun(path)
	d.kt = p
	if err != nil {
		return err
	}
	fmt.Printf("   ready after %v (log: %s)\n\n", time.Since(began).Round(time.Millisecond), p.LogPath)
	for _, argv := range [][]string{{"ip", "route"}, {"ip", "addr", "show", testbed.TUN}} {
		if err := d.show(ctx, d.tb.Node, argv...); err != nil {
			return err
		}
	}
	fmt.Println("   The only new route sends the service network into kubetun's TUN; no pod route does.")
	return nil
}

// ask sends the requests from the client and prints each answer and the split.
func (d *demo) ask(ctx context.Context) error {
	heading(fmt.Sprintf("5. %d requests from the client, the seed's way", d.requests))
	cmd := fmt.Sprintf(seedCommand, testbed.ClusterIP)
	fmt.Printf("   $ ip netns exec %s sh -c \"%s\"\n\n", d.seed.Client.Namespace, cmd)
	hello := regexp.MustCompile(`<p>Hello from ([^<]+)</p>`)
	counts := map[string]int{}
	began := time.Now()
	for i := 1; i <= d.requests; i++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := d.tb.Run(rctx, d.seed.Client.Namespace, "sh", "-c", cmd)
		cancel()
		m := hello.FindStringSubmatch(out)
		if err != nil || m == nil {
			return fmt.Errorf("request %d: got %q, error %v", i, out, err)
		}
		if i == 1 {
			fmt.Printf("   answer 1, in full:\n%s\n", indent(strings.TrimRight(out, "\n"), "     | "))
		} else {
			fmt.Printf("   answer %-2d %s\n", i, m[0])
		}
		counts[m[1]]++
	}
	elapsed := time.Since(began)
	var pods []string
	for pod := range counts {
		pods = append(pods, pod)
	}
	sort.Strings(pods)
	var split []string
	for _, pod := range pods {
		split = append(split, fmt.Sprintf("%s %d (%d%%)", pod, counts[pod], 100*counts[pod]/d.requests))
	}
	fmt.Printf("\n   split: %s, in %v (each request starts a shell and nc)\n",
		strings.Join(split, ", "), elapsed.Round(time.Millisecond))
	return nil
}

// byName repeats the seed's second client: the same request to the
// Service's name, resolved by kubetun's own DNS on 10.3.240.10.
func (d *demo) byName(ctx context.Context) error {
	heading("5b. The same by name: the seed's `nc service-test 80`, through kubetun's DNS")
	const resolv = "nameserver 10.3.240.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	remove, err := d.tb.WriteResolvConf(d.seed.Client, resolv)
	if err != nil {
		return err
	}
	d.removeResolvConf = remove
	fmt.Printf("   the client's resolv.conf (/etc/netns/%s/resolv.conf), as kubelet writes it for a pod:\n%s",
		d.seed.Client.Namespace, indent(strings.TrimRight(resolv, "\n"), "     | ")+"\n")
	fmt.Printf("\n   $ dig +short service-test.default.svc.cluster.local   (in %s)\n", d.seed.Client.Namespace)
	out, err := d.tb.Run(ctx, d.seed.Client.Namespace, "dig", "+short", "+tries=2", "+timeout=2", "service-test.default.svc.cluster.local")
	if err != nil {
		return fmt.Errorf("dig: %w", err)
	}
	fmt.Print(indent(strings.TrimSpace(out), "     ") + "\n")
	cmd := fmt.Sprintf(seedCommand, "service-test")
	fmt.Printf("\n   $ ip netns exec %s sh -c \"%s\"   (4 times)\n", d.seed.Client.Namespace, cmd)
	hello := regexp.MustCompile(`<p>Hello from ([^<]+)</p>`)
	for i := 1; i <= 4; i++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := d.tb.Run(rctx, d.seed.Client.Namespace, "sh", "-c", cmd)
		cancel()
		m := hello.FindStringSubmatch(out)
		if err != nil || m == nil {
			return fmt.Errorf("request %d by name: got %q, error %v", i, out, err)
		}
		fmt.Printf("   answer %d  %s\n", i, m[0])
	}
	fmt.Println("   kubetun answered the name from the same table it routes with: no cluster DNS needed.")
	return nil
}

// netfilter shows that the node namespace holds no netfilter rule.
func (d *demo) netfilter(ctx context.Context) error {
	heading("6. Netfilter in the node namespace (where kube-proxy would have written its rules)")
	rules := 0
	for _, argv := range [][]string{{"iptables-save"}, {"nft", "list", "ruleset"}} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			fmt.Printf("   %s is not installed (make deps installs it); skipped\n", argv[0])
			continue
		}
		out, err := d.tb.Run(ctx, d.tb.Node, argv...)
		if err != nil {
			return err
		}
		n := countRules(argv[0], out)
		rules += n
		switch {
		case strings.TrimSpace(out) == "":
			fmt.Printf("   $ %s\n     (nothing: no table, no rule)\n", strings.Join(argv, " "))
		default:
			fmt.Printf("   $ %s\n%s\n     (%d rules)\n", strings.Join(argv, " "), indent(strings.TrimSpace(out), "     "), n)
		}
	}
	if rules > 0 {
		fmt.Printf("   %d netfilter rules found: kubetun should write none.\n", rules)
	} else {
		fmt.Println("   No rule: the packets reached the pods through the TUN and kubetun's own TCP stack.")
	}
	return nil
}

// cleanup stops kubetun and the pods and removes the namespaces.
func (d *demo) cleanup() error {
	heading("7. Teardown")
	var errs []error
	if d.removeResolvConf != nil {
		if err := d.removeResolvConf(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.kt != nil && d.kt.Exited() {
		err := d.kt.Wait(0)
		errs = append(errs, fmt.Errorf("kubetun exited early (%v)", err))
		fmt.Printf("   kubetun had exited by itself (%v); its output:\n%s\n", err, indent(d.kt.Output(), "     "))
	} else if d.kt != nil {
		if err := d.kt.Stop(5 * time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stopping kubetun: %w", err))
			fmt.Printf("   kubetun did not stop cleanly: %v; its output:\n%s\n", err, indent(d.kt.Output(), "     "))
		} else {
			fmt.Println("   kubetun stopped on SIGTERM, exit 0")
			if err := d.checkGone(); err != nil {
				errs = append(errs, err)
				fmt.Println("  ", err)
			} else {
				fmt.Printf("   it removed its TUN and route: the node namespace has no %s and no route to %s\n", testbed.TUN, testbed.ServiceCIDR)
			}
		}
	}
	if d.tb != nil {
		if err := d.tb.Close(); err != nil {
			errs = append(errs, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
		cancel()
		left := 0
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, d.tb.Prefix+"-") {
				left++
			}
		}
		if err != nil || left > 0 {
			errs = append(errs, fmt.Errorf("%d namespaces %s-* left behind (ip netns list: %v)", left, d.tb.Prefix, err))
		} else {
			fmt.Printf("   processes stopped, namespaces %s-* removed (ip netns list shows none)\n", d.tb.Prefix)
		}
	}
	if d.tmp != "" {
		if err := os.RemoveAll(d.tmp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkGone reports kubetun's TUN or route if either is still in the node namespace.
func (d *demo) checkGone() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	links, err := d.tb.Run(ctx, d.tb.Node, "ip", "-o", "link", "show")
	if err != nil {
		return err
	}
	routes, err := d.tb.Run(ctx, d.tb.Node, "ip", "route", "show")
	if err != nil {
		return err
	}
	if strings.Contains(links, testbed.TUN) || strings.Contains(routes, testbed.ServiceCIDR) {
		return fmt.Errorf("kubetun left its TUN or route behind:\n%s%s", links, routes)
	}
	return nil
}

// show runs argv in namespace ns and prints it with its output.
func (d *demo) show(ctx context.Context, ns string, argv ...string) error {
	out, err := d.tb.Run(ctx, ns, argv...)
	if err != nil {
		return err
	}
	fmt.Printf("   $ %s   (in %s)\n%s\n\n", strings.Join(argv, " "), ns, indent(strings.TrimRight(out, "\n"), "     "))
	return nil
}

// countRules counts the rules in iptables-save or nft list ruleset output.
func countRules(tool, out string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch tool {
		case "iptables-save":
			if strings.HasPrefix(line, "-A ") {
				n++
			}
		default: // nft: a rule is a line inside a chain that is not the chain's own settings
			if line != "" && line != "}" && !strings.HasPrefix(line, "table ") && !strings.HasPrefix(line, "chain ") &&
				!strings.HasPrefix(line, "type ") && !strings.HasPrefix(line, "policy ") && !strings.HasPrefix(line, "#") {
				n++
			}
		}
	}
	return n
}

func heading(s string) { fmt.Printf("\n%s\n", s) }

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
