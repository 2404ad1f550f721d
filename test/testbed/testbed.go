// Package testbed builds the seed's cluster on one machine out of network
// namespaces, driven by the ip command (iproute2):
//
//	client 10.0.3.2 ─┐                       ┌─ pod1 10.0.1.2 :8080
//	                 └── node (ip_forward) ──┤
//	     kubetun0 (TUN, service CIDR) ─┘     └─ pod2 10.0.2.2 :8080
//
// Every pod and the client live in their own namespace, joined to the node
// namespace by a veth pair, each with its own /24 as kubenet gives each node a
// range: pod 10.0.N.2/24, node side 10.0.N.1/24, default route via the node
// side. Pods do not get the seed's 10.0.0.0/14 as an on-link route: it contains
// the service CIDR, and a pod would then ARP for ClusterIPs instead of routing
// them to the node.
//
// Nothing is created in the root namespace: veth pairs are made from inside the
// node namespace with their peer put straight into the pod's namespace, and no
// address or route is added outside the test bed's own namespaces. Namespace
// names carry a random per-Testbed prefix, so test packages may run in parallel.
// Close removes everything (processes, then namespaces), also after a failed set-up.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The seed's numbers.
const (
	// ServiceCIDR is the seed's service network.
	ServiceCIDR = "10.3.240.0/20"
	// ClusterIP is the seed Service's address.
	ClusterIP = "10.3.241.152"
	// TUN is the device name kubetun is started with.
	TUN = "kubetun0"
	// NodeName is the name the EndpointSlice gives the node.
	NodeName = "node"
)

// stopGrace is how long Close lets a process obey SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// setupTimeout bounds each ip command of the set-up and teardown.
const setupTimeout = 10 * time.Second

// Options configure a Testbed.
type Options struct {
	// Podserver is the podserver binary, needed by AddPod and StartServer.
	Podserver string
	// Kubetun is the kubetun binary, needed by StartKubetun.
	Kubetun string
	// Dir holds process logs and manifests. Empty: a temporary directory that
	// Close removes.
	Dir string
	// Logf, if set, receives one line per step (a host added, a process started).
	Logf func(format string, args ...any)
	// Trace, if set, receives every set-up and teardown command line before it runs.
	Trace func(cmdline string)
}

// Testbed is one set of namespaces and the processes running in them.
type Testbed struct {
	// Prefix starts every namespace name of this test bed, e.g. "kt3f9a1c".
	Prefix string
	// Node is the node namespace's name, where kubetun runs.
	Node string
	// Dir holds the logs and manifests.
	Dir string

	opts Options

	mu         sync.Mutex // guards the fields below
	namespaces []string   // created, in order; Close deletes them in reverse
	procs      []*Process // started; Close stops them first
	hosts      map[string]*Host
	closed     bool
}

// Host is a namespace joined to the node: a pod or the client.
type Host struct {
	// Name is the short name, e.g. "pod1"; the pod's server answers with it.
	Name string
	// Namespace is the network namespace's name, e.g. "kt3f9a1c-pod1".
	Namespace string
	// IP is the host's address, 10.0.N.2.
	IP netip.Addr
	// Gateway is the node side of the veth pair, 10.0.N.1.
	Gateway netip.Addr
	// NodeLink is the node side's interface name, "v-" + Name.
	NodeLink string
	// Server is the running podserver, or nil.
	Server *Process
}

// Create makes a test bed holding just the node namespace: loopback up and
// IPv4 forwarding on. Add hosts with AddHost, AddPod or AddSeed.
func Create(opts Options) (tb *Testbed, err error) {
	prefix, err := newPrefix()
	if err != nil {
		return nil, err
	}
	tb = &Testbed{
		Prefix: prefix,
		Node:   prefix + "-node",
		Dir:    opts.Dir,
		opts:   opts,
		hosts:  make(map[string]*Host),
	}
	if tb.Dir == "" {
		if tb.Dir, err = os.MkdirTemp("", "kubetun-"+prefix+"-"); err != nil {
			return nil, fmt.Errorf("testbed: MkdirTemp: %w", err)
		}
	} else if err := os.MkdirAll(tb.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("testbed: MkdirAll %s: %w", tb.Dir, err)
	}
	defer func() {
		if err != nil {
			tb.Close()
			tb = nil
		}
	}()
	if err := tb.addNamespace(tb.Node); err != nil {
		return nil, err
	}
	if err := tb.ip("-n", tb.Node, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// /proc/sys/net belongs to the namespace of the process that opens it.
	if err := tb.setup("ip", "netns", "exec", tb.Node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return nil, err
	}
	tb.logf("testbed %s: node namespace %s (ip_forward=1), files in %s", prefix, tb.Node, tb.Dir)
	return tb, nil
}

// New is Create for tests: it fails t on error and registers Close with
// t.Cleanup. Without opts.Logf, the test bed's steps are kept and logged only
// if t fails, so a passing `go test -v` stays short.
func New(t testing.TB, opts Options) *Testbed {
	t.Helper()
	if opts.Logf == nil {
		var steps lockedBuffer
		opts.Logf = func(format string, args ...any) { fmt.Fprintf(&steps, format+"\n", args...) }
		t.Cleanup(func() { // registered first, so it runs after Close
			if t.Failed() {
				t.Logf("test bed steps:\n%s", steps.String())
			}
		})
	}
	tb, err := Create(opts)
	if err != nil {
		t.Fatalf("testbed.Create: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("testbed %s: Close: %v", tb.Prefix, err)
		}
	})
	return tb
}

// AddHost creates namespace Prefix-name joined to the node by a veth pair:
// "eth0" 10.0.subnet.2/24 inside, "v-name" 10.0.subnet.1/24 on the node, and a
// default route via the node side.
func (tb *Testbed) AddHost(name string, subnet int) (*Host, error) {
	if name == "" || len(name) > 13 || strings.ContainsAny(name, "/ \t") {
		return nil, fmt.Errorf("testbed: host name %q: want 1-13 characters (the node-side link is \"v-\"+name, 15 at most), no slash or space", name)
	}
	if subnet < 1 || subnet > 254 {
		return nil, fmt.Errorf("testbed: host %s: subnet %d outside 1..254", name, subnet)
	}
	ip := netip.AddrFrom4([4]byte{10, 0, byte(subnet), 2})
	tb.mu.Lock()
	for _, other := range tb.hosts {
		if other.Name == name || other.IP == ip {
			tb.mu.Unlock()
			return nil, fmt.Errorf("testbed: host %s (10.0.%d.2): host %s has that name or subnet already", name, subnet, other.Name)
		}
	}
	tb.mu.Unlock()
	h := &Host{
		Name:      name,
		Namespace: tb.Prefix + "-" + name,
		IP:        ip,
		Gateway:   netip.AddrFrom4([4]byte{10, 0, byte(subnet), 1}),
		NodeLink:  "v-" + name,
	}
	if err := tb.addNamespace(h.Namespace); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", h.Namespace, "link", "set", "lo", "up"},
		// Made inside the node namespace, the peer moved at once into the host's:
		// the pair never exists in the root namespace.
		{"-n", tb.Node, "link", "add", h.NodeLink, "type", "veth", "peer", "name", "eth0", "netns", h.Namespace},
		{"-n", tb.Node, "addr", "add", h.Gateway.String() + "/24", "dev", h.NodeLink},
		{"-n", tb.Node, "link", "set", h.NodeLink, "up"},
		{"-n", h.Namespace, "addr", "add", h.IP.String() + "/24", "dev", "eth0"},
		{"-n", h.Namespace, "link", "set", "eth0", "up"},
		{"-n", h.Namespace, "route", "add", "default", "via", h.Gateway.String()},
	}
	for _, args := range steps {
		if err := tb.ip(args...); err != nil {
			return nil, err
		}
	}
	tb.mu.Lock()
	tb.hosts[name] = h
	tb.mu.Unlock()
	tb.logf("testbed %s: host %s in namespace %s: %s/24, default via %s (node side %s)", tb.Prefix, name, h.Namespace, h.IP, h.Gateway, h.NodeLink)
	return h, nil
}

// AddPod is AddHost followed by StartServer.
func (tb *Testbed) AddPod(name string, subnet int) (*Host, error) {
	h, err := tb.AddHost(name, subnet)
	if err != nil {
		return nil, err
	}
	return h, tb.StartServer(h)
}

// Seed is the seed's three hosts.
type Seed struct {
	Pod1, Pod2, Client *Host
}

// AddSeed adds the seed's hosts: pod1 10.0.1.2 and pod2 10.0.2.2 with their
// servers running, and the client 10.0.3.2.
func (tb *Testbed) AddSeed() (Seed, error) {
	var s Seed
	var err error
	if s.Pod1, err = tb.AddPod("pod1", 1); err != nil {
		return s, err
	}
	if s.Pod2, err = tb.AddPod("pod2", 2); err != nil {
		return s, err
	}
	s.Client, err = tb.AddHost("client", 3)
	return s, err
}

// StartServer starts podserver --name h.Name in h's namespace, with extra
// flags such as "--addr", ":8081", and waits until its ports are bound.
func (tb *Testbed) StartServer(h *Host, extra ...string) error {
	if tb.opts.Podserver == "" {
		return errors.New("testbed: StartServer: Options.Podserver is empty")
	}
	if h.Server != nil && !h.Server.Exited() {
		return fmt.Errorf("testbed: StartServer %s: already running (pid %d)", h.Name, h.Server.Pid())
	}
	argv := append([]string{tb.opts.Podserver, "--name", h.Name}, extra...)
	p, err := tb.Start(h.Namespace, "podserver-"+h.Name, argv...)
	if err != nil {
		return err
	}
	h.Server = p
	return p.WaitOutput("podserver "+h.Name+": ready", 5*time.Second)
}

// StopServer stops h's podserver; its ports then refuse connections.
func (tb *Testbed) StopServer(h *Host) error {
	if h.Server == nil {
		return nil
	}
	return h.Server.Stop(stopGrace)
}

// SetLink sets the node side of h's veth pair up or down, which makes h
// unreachable from the node without stopping anything.
func (tb *Testbed) SetLink(h *Host, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return tb.ip("-n", tb.Node, "link", "set", h.NodeLink, state)
}

// RemoveHost stops h's server and deletes its namespace, which also deletes
// its veth pair and so the node's route to it.
func (tb *Testbed) RemoveHost(h *Host) error {
	if err := tb.StopServer(h); err != nil {
		return err
	}
	if err := tb.ip("netns", "del", h.Namespace); err != nil {
		return err
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	delete(tb.hosts, h.Name)
	for i, ns := range tb.namespaces {
		if ns == h.Namespace {
			tb.namespaces = append(tb.namespaces[:i], tb.namespaces[i+1:]...)
			break
		}
	}
	return nil
}

// Host returns the host called name, or nil.
func (tb *Testbed) Host(name string) *Host {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.hosts[name]
}

// Start runs argv in namespace ns as a Process that Close will stop. Its output
// goes to Dir/name.log (name-2.log and so on for a second one).
func (tb *Testbed) Start(ns, name string, argv ...string) (*Process, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.closed {
		return nil, fmt.Errorf("testbed %s: Start %s after Close", tb.Prefix, name)
	}
	logPath := filepath.Join(tb.Dir, name+".log")
	for i := 2; fileExists(logPath); i++ {
		logPath = filepath.Join(tb.Dir, fmt.Sprintf("%s-%d.log", name, i))
	}
	p, err := start(ns, name, logPath, argv)
	if err != nil {
		return nil, err
	}
	tb.procs = append(tb.procs, p)
	tb.logf("testbed %s: started %s (pid %d) in %s: %s", tb.Prefix, name, p.Pid(), ns, strings.Join(argv, " "))
	return p, nil
}

// Run runs argv in namespace ns and returns its stdout. The command is killed,
// with its process group, when ctx ends. A non-zero exit is an error that names
// the command and carries its stderr; ExitCode(err) gives the code.
func (tb *Testbed) Run(ctx context.Context, ns string, argv ...string) (string, error) {
	cmd := command(ctx, ns, argv...)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), &RunError{Namespace: ns, Argv: argv, Stderr: stderr.String(), Err: err, ctxErr: ctx.Err()}
	}
	return string(out), nil
}

// RunError is a command run by Run that failed.
type RunError struct {
	Namespace string
	Argv      []string
	Stderr    string
	Err       error // from exec
	ctxErr    error // the context's error when the command ended
}

func (e *RunError) Error() string {
	msg := fmt.Sprintf("in netns %s: %s: %v", e.Namespace, strings.Join(e.Argv, " "), e.Err)
	if e.ctxErr != nil {
		msg += " (" + e.ctxErr.Error() + ")"
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *RunError) Unwrap() error { return e.Err }

// Close stops every process (SIGTERM, then SIGKILL after a grace period) and
// deletes every namespace the test bed created, then its temporary directory.
// It is safe to call more than once and after a failed set-up.
func (tb *Testbed) Close() error {
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return nil
	}
	tb.closed = true
	procs, namespaces := tb.procs, tb.namespaces
	tb.procs, tb.namespaces = nil, nil
	tb.mu.Unlock()

	// Stop the processes first: a namespace is only freed once nothing runs in it.
	var (
		errsMu sync.Mutex // guards errs while the processes stop in parallel
		errs   []error
		wg     sync.WaitGroup
	)
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var exit *exec.ExitError
			if err := p.Stop(stopGrace); err != nil && !errors.As(err, &exit) {
				errsMu.Lock()
				errs = append(errs, err)
				errsMu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := tb.ip("netns", "del", namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if tb.opts.Dir == "" && tb.Dir != "" {
		if err := os.RemoveAll(tb.Dir); err != nil {
			errs = append(errs, fmt.Errorf("testbed: RemoveAll %s: %w", tb.Dir, err))
		}
	}
	if len(namespaces) > 0 {
		tb.logf("testbed %s: removed %d namespaces", tb.Prefix, len(namespaces))
	}
	return errors.Join(errs...)
}

// addNamespace creates namespace ns and records it for Close.
func (tb *Testbed) addNamespace(ns string) error {
	tb.mu.Lock()
	closed := tb.closed
	tb.mu.Unlock()
	if closed {
		return fmt.Errorf("testbed %s: add namespace %s after Close", tb.Prefix, ns)
	}
	if err := tb.ip("netns", "add", ns); err != nil {
		return err
	}
	tb.mu.Lock()
	tb.namespaces = append(tb.namespaces, ns)
	tb.mu.Unlock()
	return nil
}

// ip runs the ip command with args as a set-up step.
func (tb *Testbed) ip(args ...string) error {
	return tb.setup(append([]string{"ip"}, args...)...)
}

// setup runs argv (in the root namespace: the ip command itself, which enters
// namespaces by its own -n or netns exec) with a timeout.
func (tb *Testbed) setup(argv ...string) error {
	if tb.opts.Trace != nil {
		tb.opts.Trace(strings.Join(argv, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	out, err := execCommand(ctx, argv...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (tb *Testbed) logf(format string, args ...any) {
	if tb.opts.Logf != nil {
		tb.opts.Logf(format, args...)
	}
}

// newPrefix returns "kt" and 6 random hex digits.
func newPrefix() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("testbed: random prefix: %w", err)
	}
	return "kt" + hex.EncodeToString(b), nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
