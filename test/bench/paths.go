package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// kubeProxyModes are the kernel paths --kube-proxy selects, by path.
var kubeProxyModes = map[string]int{"iptables": pathIptables, "nftables": pathNftables}

// kpBed is a test bed of its own where kube-proxy's rules, not kubetun,
// carry the seed's Service: its node namespace holds them.
type kpBed struct {
	tb   *testbed.Testbed
	seed testbed.Seed
}

// target is where a path's client runs and what it connects to.
type target struct {
	ns, addr string
}

// kpService is the seed's Service with the bench's ports as kube-proxy
// would see it: both seed pods behind it.
func (b *bench) kpService() kpService {
	eps := func(port int) []netip.AddrPort {
		return []netip.AddrPort{
			netip.AddrPortFrom(b.seed.Pod1.IP, uint16(port)),
			netip.AddrPortFrom(b.seed.Pod2.IP, uint16(port)),
		}
	}
	return kpService{
		Namespace: "default", Name: "service-test",
		ClusterIP:   netip.MustParseAddr(testbed.ClusterIP),
		ClusterCIDR: netip.MustParsePrefix("10.0.0.0/16"),
		ServiceCIDR: netip.MustParsePrefix(testbed.ServiceCIDR),
		Ports: []kpPort{
			{Name: "http", Port: 80, Endpoints: eps(8080)},
			{Name: "rr", Port: rrPort, Endpoints: eps(rrPort)},
		},
	}
}

// kubeProxyBeds creates a test bed per kube-proxy mode, with the seed's
// pods serving, and programs the rules into its node namespace. A mode
// whose tool is missing is skipped, said once.
func (b *bench) kubeProxyBeds(ctx context.Context) error {
	if !b.cfg.cases["rr"] && !b.cfg.cases["conn"] {
		return nil // no case runs through them
	}
	for _, mode := range []string{"iptables", "nftables"} {
		if !b.cfg.kubeProxy[mode] {
			continue
		}
		tool := map[string]string{"iptables": "iptables-restore", "nftables": "nft"}[mode]
		if _, err := exec.LookPath(tool); err != nil {
			progress("%s: %s not found, no %s rows ('make deps' installs it)", mode, tool, mode)
			continue
		}
		progress("creating the %s test bed (kube-proxy's %s mode)", mode, mode)
		dir := filepath.Join(b.tmp, mode)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		opts := testbed.Options{Podserver: b.podserver, Dir: dir}
		if b.cfg.verbose {
			opts.Trace = func(cmdline string) { fmt.Fprintln(os.Stderr, "   $", cmdline) }
		}
		tb, err := testbed.Create(opts)
		if err != nil {
			return err
		}
		bed := &kpBed{tb: tb}
		b.kp[kubeProxyModes[mode]] = bed
		if bed.seed, err = tb.AddSeed(); err != nil {
			return err
		}
		if err := b.startRRServers(tb, bed.seed.Pod1, bed.seed.Pod2); err != nil {
			return err
		}
		rules, argv := iptablesRules(b.kpService()), []string{"iptables-restore", "-w", "--noflush"}
		if mode == "nftables" {
			rules, argv = nftablesRules(b.kpService()), []string{"nft", "-f"}
		}
		path := filepath.Join(dir, mode+".rules")
		if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
			return err
		}
		if _, err := tb.Run(ctx, tb.Node, append(argv, path)...); err != nil {
			return fmt.Errorf("%s: programming the rules of %s: %w", mode, path, err)
		}
		// The rules must carry a request before any case trusts them.
		c, err := rrDial(bed.seed.Client.Namespace, fmt.Sprintf("%s:%d", testbed.ClusterIP, rrPort), rrSmall)
		if err == nil {
			err = c.exchange()
			c.c.Close()
		}
		if err != nil {
			return fmt.Errorf("%s: a request to %s:%d through the rules of %s: %w", mode, testbed.ClusterIP, rrPort, path, err)
		}
		b.kpVersions = append(b.kpVersions, toolVersion(ctx, tool))
	}
	return nil
}

// toolVersion is the first line of `tool --version`.
func toolVersion(ctx context.Context, tool string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, "--version").CombinedOutput()
	if err != nil {
		return tool + " ?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// startRRServers runs the request/response server in each host's namespace.
func (b *bench) startRRServers(tb *testbed.Testbed, hosts ...*testbed.Host) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program to start its %s: %w", rrServerCommand, err)
	}
	for _, h := range hosts {
		p, err := tb.Start(h.Namespace, rrServerCommand+"-"+h.Name, exe, rrServerCommand, "--name", h.Name, "--addr", ":"+strconv.Itoa(rrPort))
		if err != nil {
			return err
		}
		if err := p.WaitOutput("ready on", 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// targets are the paths to a Service port: pod1 at podPort straight, and
// the ClusterIP at port through kubetun and each kube-proxy bed there is.
func (b *bench) targets(port, podPort int) [numPaths]target {
	var t [numPaths]target
	client := b.seed.Client.Namespace
	svc := fmt.Sprintf("%s:%d", testbed.ClusterIP, port)
	t[pathDirect] = target{client, netip.AddrPortFrom(b.seed.Pod1.IP, uint16(podPort)).String()}
	t[pathKubetun] = target{client, svc}
	for _, p := range []int{pathIptables, pathNftables} {
		if bed := b.kp[p]; bed != nil {
			t[p] = target{bed.seed.Client.Namespace, svc}
		}
	}
	return t
}
