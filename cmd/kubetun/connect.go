package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kubetun/kubetun/connection"
	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/proxy"
	"github.com/kubetun/kubetun/resolver"
)

// newConnectCommand is `kubetun connect`: run's flags that fit a laptop,
// plus --context, --via and --host-dns.
func newConnectCommand(stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connect [--kubeconfig PATH] [--context NAME] [--via direct|portforward|auto] [flags]",
		Short: "Reach a cluster's Services by ClusterIP and DNS name from this machine",
		Long: `Route the cluster's service CIDRs into a TUN device and forward every
connection to a ClusterIP to a pod of its Service, reached directly or
through the API server's port-forward. Names under the cluster domain
resolve through kubetun (split DNS on the TUN with systemd-resolved);
every other name resolves as before. Nothing is installed in the cluster:
a kubeconfig is all it takes. On SIGINT or SIGTERM kubetun removes its
routes, TUN device and DNS settings.

As a user rather than root, give the binary CAP_NET_ADMIN once:
  sudo setcap cap_net_admin+ep $(command -v kubetun)`,
		Example: `  # The current context of ~/.kube/config (or $KUBECONFIG)
  kubetun connect

  # Another context, pods always through port-forward
  kubetun connect --context staging --via portforward`,
	}
	fs := cmd.Flags()
	finish := runFlags(fs)
	for _, name := range []string{"manifests", "persist", "node-name", "profiling"} {
		fs.MarkHidden(name)
	}
	// Several connections run side by side, one per cluster: nothing of
	// one may be fixed where the next collides. The TUN is named after the
	// context, and the health and metrics servers take a port the kernel
	// picks; `kubetun status` finds them in the connections' records.
	setDefault(fs, "tun", "", "`NAME` of the TUN device to create; default: kt- and the context, e.g. kt-kind-kind (one TUN per connection)")
	setDefault(fs, "health-addr", connectHealthAddr, "")
	setDefault(fs, "metrics-addr", "", "")
	kubeContext := fs.String("context", "", "the kubeconfig context to use; default: its current context")
	via := fs.String("via", proxy.ViaAuto, "how pods are reached: direct (dial pod IPs), portforward (the API server's pods/portforward), or auto (direct if a probe dial to a ready endpoint succeeds within --probe-timeout)")
	probe := fs.Duration("probe-timeout", proxy.DefaultProbeTimeout, "how long each probe dial of --via auto may take")
	stall := fs.Duration("portforward-stall-timeout", proxy.DefaultStallTimeout, "with port-forward, reset a connection whose client reads nothing for this long: every connection to a pod shares one port-forward connection, which one unread stream stops; 0 waits for ever, as kubectl port-forward does")
	pingInterval := fs.Duration("portforward-ping-interval", portforward.DefaultPingInterval, "with port-forward, ping each connection to a pod this often, flows or not, so that no idle timeout on the way closes it and one that died is replaced before a flow needs it; 0 sends no pings")
	pingTimeout := fs.Duration("portforward-ping-timeout", portforward.DefaultPingTimeout, "with port-forward, replace a connection to a pod whose ping is not answered within this, resetting its flows")
	mapMode := fs.String("map", proxy.MapOverlap, "when the cluster's service CIDRs (and headless Services' pod IPs) are served on other addresses: overlap (those that overlap a route this host has already, another cluster's, a VPN's, the LAN's; IPv4 onto 240.0.0.0/4, IPv6 onto a unique local /48 of the context), always, or never (refuse them)")
	domain := fs.String("domain", "", "this connection's own DNS `DOMAIN`, answered beside the cluster domain: names read <svc>.<ns>.svc.DOMAIN, so that two clusters that both use cluster.local each have names of their own; the first connection also keeps the cluster domain and its search domains, the next ones get only their own; default: the context as one DNS label (kind-kind), \"none\" for none")
	hostDNS := fs.Bool("host-dns", true, "send the cluster domain, and only it, from systemd-resolved to kubetun (per-link DNS on the TUN, gone with it); without resolved, print what to add by hand")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := finish()
		if err != nil {
			return err
		}
		if cfg.manifests != "" || cfg.persist {
			return usageError{errors.New("--manifests and --persist are run's; connect watches the API and leaves nothing behind")}
		}
		if d := strings.Trim(*domain, "."); *domain != "" && (d == "" || strings.ContainsAny(d, " /\t") || len(validation.IsDNS1123Subdomain(strings.ToLower(d))) > 0) {
			return usageError{fmt.Errorf("--domain %q: want a domain such as staging or staging.example, or none", *domain)}
		}
		switch *mapMode {
		case proxy.MapOverlap, proxy.MapAlways, proxy.MapNever:
		default:
			return usageError{fmt.Errorf("--map %q: want overlap, always or never", *mapMode)}
		}
		switch *via {
		case proxy.ViaDirect, proxy.ViaPortForward, proxy.ViaAuto:
		default:
			return usageError{fmt.Errorf("--via %q: want direct, portforward or auto", *via)}
		}
		log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
		pc := proxy.Config{
			ServiceCIDRs:       cfg.serviceCIDRs,
			Topology:           resolver.Topology{NodeName: cfg.nodeName},
			TUN:                cfg.tun,
			MaxAffinityClients: cfg.maxAffinityClients,
			MTU:                cfg.mtu,
			DialTimeout:        cfg.dialTimeout,
			DataPath:           cfg.dataPath,
			HealthAddr:         cfg.healthAddr,
			StatusAllowRemote:  cfg.statusRemote,
			MetricsAddr:        cfg.metricsAddr,
			Map:                proxy.MapConfig{Mode: *mapMode},
			DNS: proxy.DNSConfig{
				Off:       cfg.dnsOff,
				IP:        cfg.dnsIP,
				Domain:    cfg.clusterDomain,
				Upstreams: cfg.dnsUpstreams,
			},
		}
		return proxy.Connect(cmd.Context(), pc, proxy.ConnectOptions{
			Kube:         proxy.KubeOptions{Kubeconfig: cfg.kubeconfig, Context: *kubeContext},
			Via:          *via,
			ProbeTimeout: *probe,
			StallTimeout: stallOption(*stall),
			PingInterval: stallOption(*pingInterval),
			PingTimeout:  *pingTimeout,
			HostDNS:      *hostDNS,
			Out:          stderr,
			RecordDirs:   connection.Dirs(),
			Domain:       *domain,
		}, log)
	}
	return cmd
}

// connectHealthAddr is connect's --health-addr: loopback, on a port the
// kernel picks, so that a second connection never collides with the first;
// its record says which (package connection).
const connectHealthAddr = "127.0.0.1:0"

// setDefault gives the flag name of fs another default, and usage if not
// empty: connect shares run's flags, some with other defaults.
func setDefault(fs *pflag.FlagSet, name, value, usage string) {
	f := fs.Lookup(name)
	f.Value.Set(value)
	f.DefValue = value
	if usage != "" {
		f.Usage = usage
	}
}

// stallOption turns --portforward-stall-timeout (or -ping-interval) into
// ConnectOptions.StallTimeout (PingInterval), whose zero is the default: 0
// on the command line is never.
func stallOption(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
