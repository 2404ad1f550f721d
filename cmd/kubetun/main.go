// Command kubetun makes Kubernetes Service ClusterIPs work without a single
// netfilter rule: the service CIDRs are routed into a TUN device, a gVisor
// netstack behind it accepts each connection, and kubetun splices it to a
// backend pod dialled from the host network.
//
// Usage:
//
//	kubetun run --service-cidr 10.3.240.0/20 --manifests services.yaml
//	kubetun cleanup
//	kubetun version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

const usage = `kubetun routes Kubernetes Service ClusterIPs through a TUN device and a
userspace TCP/IP stack to the pods behind them, with no iptables or nftables rule.

Usage:
  kubetun run [flags]    serve the service CIDRs (see 'kubetun run -h')
  kubetun cleanup [--tun NAME]
                         remove the TUN and routes 'kubetun run --persist' left
  kubetun version        print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// runMain runs one subcommand and returns the process exit code: 0 on
// success, 2 for a usage error, 1 for anything else.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(ctx, args[1:], stderr)
	case "cleanup":
		err = cleanupCommand(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "kubetun", version())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kubetun: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "kubetun %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "kubetun: %v\n", err)
		return 1
	}
}

// usageError is a bad command line.
type usageError struct{ error }

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}
