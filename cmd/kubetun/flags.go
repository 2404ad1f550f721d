package main

import (
	"errors"
	"fmt"
	"io"
	"k8s.io/apimachinery/pkg/util/validation"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubetun/kubetun/handover"
	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/nodeport"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/tunnel"
)

// runConfig is the parsed command line of `kubetun run`.
type runConfig struct {
	serviceCIDRs []netip.Prefix // empty: follow the cluster's ServiceCIDRs
	manifests    string         // the static source; "" means the Kubernetes API
	kubeconfig   string         // "" means kubectl's discovery order
	nodeName     string
	proxyName    string // serve only Services with this service-proxy-name label
	tun          string
	mtu          int
	dialTimeout  time.Duration
	drainTimeout time.Duration // how long SIGTERM lets open connections finish
	healthAddr   string        // "" disables
	statusRemote bool          // /statusz answers clients on other hosts too
	metricsAddr  string        // "" disables
	profiling    bool          // /debug/pprof/ on metricsAddr
	logLevel     slog.Level
	persist      bool   // the TUN and its routes outlive the process
	stateDir     string // the handover socket's directory; "" disables handing over

	maxAffinityClients int // per ClientIP affinity table

	dnsIP         netip.Addr // invalid: the 10th address of the first service CIDR
	dnsOff        bool
	clusterDomain string
	dnsUpstreams  []string // nil: the host's resolv.conf servers

	dataPath netstack.Config // the data path's limits and timeouts only (dataPathFlags)

	nodePortAddresses nodeport.Addresses
	externalIPRanges  []netip.Prefix // empty: every externalIP is served
}

// Defaults that are kube-proxy's, so existing probes and scrapers find them.
const (
	defaultHealthAddr  = "127.0.0.1:10256"
	defaultMetricsAddr = "127.0.0.1:10249"
)

// defaultDrainTimeout fits well inside Kubernetes' default
// terminationGracePeriodSeconds (30 s), after which the kubelet kills.
const defaultDrainTimeout = 10 * time.Second

// runFlags defines the flags of `kubetun run` on fs. After fs is parsed,
// the returned func checks them and builds the runConfig. Every flag of
// run is defined here, and lands in runConfig.
func runFlags(fs *pflag.FlagSet) func() (runConfig, error) {
	var (
		cfg   runConfig
		cidrs prefixList
		level = "info"
	)
	fs.Var(&cidrs, "service-cidr", "service `CIDR` to route into kubetun (repeatable, or comma-separated), e.g. 10.3.240.0/20; with the API and without this flag, the cluster's ServiceCIDRs are followed")
	fs.StringVar(&cfg.manifests, "manifests", "", "static source: `PATH` of a YAML/JSON file, or a directory of them, holding v1 Services and discovery.k8s.io/v1 EndpointSlices; watched for changes. Without it, kubetun watches the Kubernetes API")
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig `PATH` for the Kubernetes API; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	fs.StringVar(&cfg.nodeName, "node-name", defaultNodeName(), "this node's `NAME`, for internalTrafficPolicy: Local and topology hints")
	fs.StringVar(&cfg.proxyName, "service-proxy-name", "", "serve only the Services labelled service.kubernetes.io/service-proxy-name=`NAME`, the ones kube-proxy leaves alone (to run beside kube-proxy while migrating); default: the unlabelled ones, as kube-proxy")
	fs.StringVar(&cfg.healthAddr, "health-addr", defaultHealthAddr, "`ADDR` serving /healthz, /livez, /readyz and /statusz (\"\" to disable)")
	fs.BoolVar(&cfg.statusRemote, "statusz-allow-remote", false, "serve /statusz, which lists every Service and endpoint, to clients on other hosts too; without it, only to clients on this host ('kubetun status'), while /healthz, /livez and /readyz answer everyone who reaches --health-addr")
	fs.StringVar(&cfg.metricsAddr, "metrics-addr", defaultMetricsAddr, "`ADDR` serving Prometheus /metrics (\"\" to disable)")
	fs.BoolVar(&cfg.profiling, "profiling", false, "serve Go's profiler at /debug/pprof/ on --metrics-addr, as kube-proxy's --profiling does")
	fs.StringVar(&cfg.tun, "tun", "kubetun0", "`NAME` of the TUN device to create")
	fs.BoolVar(&cfg.persist, "persist", false, "keep the TUN device and its routes when kubetun exits or crashes, so service traffic waits for the next kubetun instead of leaving by another route; a restart re-attaches to them. 'kubetun cleanup' removes them")
	fs.StringVar(&cfg.stateDir, "state-dir", handover.DefaultStateDir, "`DIR` of the handover socket (one per --tun, root only): a kubetun started on a --tun another one serves takes over from it there, and the old one keeps its connections until they end; \"\" disables taking over and handing over")
	fs.IntVar(&cfg.mtu, "mtu", tunnel.DefaultMTU, "MTU of the TUN device (large by default: fewer packets through the userspace stack)")
	fs.DurationVar(&cfg.dialTimeout, "dial-timeout", netstack.DefaultDialTimeout, "how long to wait for a pod to accept a connection")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", defaultDrainTimeout, "on SIGTERM or SIGINT, how long open TCP connections may finish, new ones refused, before the rest are reset and kubetun exits; 0 resets them at once")
	fs.StringVar(&level, "log-level", level, "log `LEVEL`: debug, info, warn or error")
	dnsIP := fs.String("dns-ip", "", "`IP` kubetun's cluster DNS answers on (UDP and TCP 53); default: the 10th address of the first service CIDR, as kube-dns (10.3.240.10 for 10.3.240.0/20); \"off\" disables DNS")
	fs.StringVar(&cfg.clusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS `DOMAIN`")
	upstreams := fs.String("dns-upstream", "", "comma-separated `SERVERS` (ip or ip:port) for names outside the cluster domain; default: the host's resolv.conf")
	fs.IntVar(&cfg.maxAffinityClients, "max-affinity-clients", resolver.DefaultMaxAffinityClients, "most `N` clients each Service port with sessionAffinity: ClientIP remembers; the least recently seen is forgotten first")
	npAddrs := fs.StringSlice("nodeport-addresses", nil, "`CIDRs` of the node addresses node ports and health check node ports listen on (repeatable, or comma-separated), or \"primary\": the node's primary addresses, the default, as kube-proxy's flag; never loopback")
	var extRanges prefixList
	fs.Var(&extRanges, "external-ip-ranges", "serve only the externalIPs inside these `CIDRs` (repeatable, or comma-separated); default: all, as kube-proxy. Anyone who may create a Service may claim any address as an externalIP (CVE-2020-8554)")
	dataPathFlags(fs, &cfg.dataPath)

	return func() (runConfig, error) {
		if fs.NArg() > 0 {
			return cfg, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
		}
		cfg.serviceCIDRs = cidrs
		cfg.externalIPRanges = extRanges
		npa, err := nodeport.ParseAddresses(*npAddrs)
		if err != nil {
			return cfg, usageError{err}
		}
		cfg.nodePortAddresses = npa
		if cfg.manifests != "" && cfg.kubeconfig != "" {
			return cfg, usageError{errors.New("--manifests and --kubeconfig are two sources of Services; give one")}
		}
		if cfg.manifests != "" && len(cidrs) == 0 {
			return cfg, usageError{errors.New("--service-cidr is required with --manifests, e.g. --service-cidr 10.3.240.0/20")}
		}
		if cfg.nodeName == "" {
			return cfg, usageError{errors.New("--node-name is empty and the hostname is unknown; give --node-name")}
		}
		if cfg.proxyName != "" {
			if cfg.manifests != "" {
				return cfg, usageError{errors.New("--service-proxy-name selects Services of the Kubernetes API; with --manifests every Service in the files is served")}
			}
			if errs := validation.IsValidLabelValue(cfg.proxyName); len(errs) > 0 {
				return cfg, usageError{fmt.Errorf("--service-proxy-name %q: not a label value: %s", cfg.proxyName, strings.Join(errs, "; "))}
			}
		}
		// Empty and not given is connect's default: a TUN named after the
		// context.
		derivedTUN := cfg.tun == "" && !fs.Changed("tun")
		if !derivedTUN && (cfg.tun == "" || len(cfg.tun) > 15 || strings.ContainsAny(cfg.tun, "/ \t\n")) {
			return cfg, usageError{fmt.Errorf("--tun %q: an interface name is 1 to 15 characters, without '/' or spaces", cfg.tun)}
		}
		if cfg.mtu < 1280 || cfg.mtu > 65535 {
			return cfg, usageError{fmt.Errorf("--mtu %d: want 1280 to 65535", cfg.mtu)}
		}
		if cfg.profiling && cfg.metricsAddr == "" {
			return cfg, usageError{errors.New("--profiling serves on --metrics-addr, which is disabled; give --metrics-addr too")}
		}
		if cfg.maxAffinityClients < 1 {
			return cfg, usageError{fmt.Errorf("--max-affinity-clients %d: want 1 or more", cfg.maxAffinityClients)}
		}
		if cfg.drainTimeout < 0 {
			return cfg, usageError{fmt.Errorf("--drain-timeout %v: want 0 or a positive duration such as 10s", cfg.drainTimeout)}
		}
		if cfg.dialTimeout <= 0 {
			return cfg, usageError{fmt.Errorf("--dial-timeout %v: want a positive duration such as 3s", cfg.dialTimeout)}
		}
		switch *dnsIP {
		case "":
		case "off":
			cfg.dnsOff = true
		default:
			ip, err := netip.ParseAddr(*dnsIP)
			if err != nil {
				return cfg, usageError{fmt.Errorf("--dns-ip %q: want an IP address, or off", *dnsIP)}
			}
			cfg.dnsIP = ip.Unmap()
		}
		if d := strings.Trim(cfg.clusterDomain, "."); d == "" || strings.ContainsAny(d, " /\t") {
			return cfg, usageError{fmt.Errorf("--cluster-domain %q: want a domain such as cluster.local", cfg.clusterDomain)}
		}
		for _, u := range strings.Split(*upstreams, ",") {
			if u = strings.TrimSpace(u); u == "" {
				continue
			}
			if _, err := netip.ParseAddr(u); err != nil {
				if _, err := netip.ParseAddrPort(u); err != nil {
					return cfg, usageError{fmt.Errorf("--dns-upstream %q: want ip or ip:port", u)}
				}
			}
			cfg.dnsUpstreams = append(cfg.dnsUpstreams, u)
		}
		if err := checkDataPathFlags(&cfg.dataPath); err != nil {
			return cfg, usageError{err}
		}
		if err := cfg.logLevel.UnmarshalText([]byte(level)); err != nil {
			return cfg, usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", level)}
		}
		return cfg, nil
	}
}

// parseRunFlags parses run's command line outside cobra, as runCommand
// does: -h prints the flags to stderr and returns pflag.ErrHelp.
func parseRunFlags(args []string, stderr io.Writer) (runConfig, error) {
	fs := pflag.NewFlagSet("kubetun run", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by the caller, in one line
	finish := runFlags(fs)
	if err := fs.Parse(longFlags(fs, args)); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(stderr, "Usage: kubetun run [--kubeconfig PATH | --service-cidr CIDR --manifests PATH] [flags]")
			fmt.Fprint(stderr, fs.FlagUsages())
			return runConfig{}, err
		}
		return runConfig{}, usageError{fmt.Errorf("%w (see 'kubetun run -h')", err)}
	}
	return finish()
}

// longFlags rewrites -name and -name=value to --name for the long flags
// of fs: Go's flag package, which kubetun used before, took one dash or
// two, and scripts and manifests written then keep working. Shorthands
// (-h, -o) and everything after "--" are left alone.
func longFlags(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && (fs.Lookup(name) != nil || name == "help" || name == "version") {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

// dataPathFlags defines the flags of the data path's limits and timeouts,
// into c; the defaults, netstack's, fit a node of 2 cores.
func dataPathFlags(fs *pflag.FlagSet, c *netstack.Config) {
	fs.IntVar(&c.MaxSetups, "max-tcp-setups", netstack.DefaultMaxSetups, "most TCP connections being set up at once (SYN received, handshake not done), all clients together; past it, SYNs are dropped and clients retransmit")
	fs.IntVar(&c.MaxSetupsPerSource, "max-tcp-setups-per-source", netstack.DefaultMaxSetupsPerSource, "most TCP connections being set up at once from one client address while three quarters of --max-tcp-setups are taken (below that, a burst may use what nobody else does); past it, its SYNs are dropped and it retransmits them, as from a full SYN queue: a burst is slowed, not refused")
	fs.DurationVar(&c.HandshakeTimeout, "tcp-handshake-timeout", netstack.DefaultHandshakeTimeout, "how long a client may take to send its final ACK once the pod answered")
	fs.IntVar(&c.MaxTCPFlows, "max-tcp-flows", netstack.DefaultMaxTCPFlows, "most TCP connections forwarded at once; past it, SYNs get a RST")
	fs.DurationVar(&c.TCPUserTimeout, "tcp-user-timeout", netstack.DefaultTCPUserTimeout, "end a connection whose sent data a peer has not acknowledged for this long, on both legs (TCP_USER_TIMEOUT); 0 disables")
	fs.DurationVar(&c.HalfClosedTimeout, "tcp-half-closed-timeout", netstack.DefaultHalfClosedTimeout, "end a connection one direction of which has ended and the other idle for this long (kube-proxy's --conntrack-tcp-timeout-close-wait); 0 disables")
	fs.IntVar(&c.MaxUDPSessions, "max-udp-sessions", netstack.DefaultMaxUDPSessions, "most UDP sessions (client address and port to Service) at once; past it, new sessions' datagrams are dropped")
	fs.IntVar(&c.MaxUDPSessionsPerSource, "max-udp-sessions-per-source", netstack.DefaultMaxUDPSessionsPerSource, "most UDP sessions at once from one client address")
	fs.Int64Var(&c.MaxUDPQueuedBytes, "max-udp-queued-bytes", netstack.DefaultMaxUDPQueuedBytes, "most `BYTES` of client datagrams queued for pods, all UDP sessions together; past it, datagrams are dropped")
	fs.DurationVar(&c.TCPAckDelay, "tcp-ack-delay", netstack.DefaultTCPAckDelay, "how long the ACK of a small request may wait for the answer to carry it (less than 500ms); 0 sends every ACK at once")
	fs.BoolVar(&c.TCPInlineDelivery, "tcp-inline-delivery", false, "process a segment of an established connection in the goroutine that read it from the TUN instead of one of gVisor's processor goroutines (no measured gain: make bench's levers group measures it)")
}

// checkDataPathFlags checks what dataPathFlags parsed, and turns a 0 that
// disables a timeout into netstack's negative.
func checkDataPathFlags(c *netstack.Config) error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"--max-tcp-setups", int64(c.MaxSetups)},
		{"--max-tcp-setups-per-source", int64(c.MaxSetupsPerSource)},
		{"--tcp-handshake-timeout", int64(c.HandshakeTimeout)},
		{"--max-tcp-flows", int64(c.MaxTCPFlows)},
		{"--max-udp-sessions", int64(c.MaxUDPSessions)},
		{"--max-udp-sessions-per-source", int64(c.MaxUDPSessionsPerSource)},
		{"--max-udp-queued-bytes", c.MaxUDPQueuedBytes},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%s: want a positive value", f.name)
		}
	}
	if c.TCPAckDelay >= 500*time.Millisecond {
		return fmt.Errorf("--tcp-ack-delay %v: want less than 500ms (RFC 9293 section 3.8.6.3), or 0 to send every ACK at once", c.TCPAckDelay)
	}
	for _, d := range []*time.Duration{&c.TCPUserTimeout, &c.HalfClosedTimeout, &c.TCPAckDelay} {
		if *d < 0 {
			return errors.New("--tcp-user-timeout, --tcp-half-closed-timeout and --tcp-ack-delay: want a duration, or 0 to disable")
		}
		if *d == 0 {
			*d = -1
		}
	}
	return nil
}

// defaultNodeName is the hostname, lowercased as kube-proxy does.
func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return strings.ToLower(strings.TrimSpace(h))
}

// prefixList is a repeatable, comma-separated list of CIDRs.
type prefixList []netip.Prefix

func (l *prefixList) String() string {
	s := make([]string, len(*l))
	for i, p := range *l {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// Type implements pflag.Value.
func (*prefixList) Type() string { return "CIDR" }

func (l *prefixList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("%q is not a CIDR such as 10.3.240.0/20", s)
		}
		if p.Addr().Is4In6() {
			return fmt.Errorf("%s: use the IPv4 form", s)
		}
		if p != p.Masked() {
			return fmt.Errorf("%s is not a network address; did you mean %s?", s, p.Masked())
		}
		if p.Bits() == 0 {
			return fmt.Errorf("%s would send every address into kubetun, its own dials to pods too", s)
		}
		for _, q := range *l {
			if q.Overlaps(p) {
				return fmt.Errorf("%s overlaps %s, given already", p, q)
			}
		}
		*l = append(*l, p)
	}
	return nil
}
