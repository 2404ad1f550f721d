// Command kubetun makes Kubernetes Service ClusterIPs work without a single
// netfilter rule: the service CIDRs are routed into a TUN device, a gVisor
// netstack behind it accepts each connection, and kubetun splices it to a
// backend pod dialled from the host network.
//
// Usage:
//
//	kubetun run --service-cidr 10.3.240.0/20 --manifests services.yaml
//	kubetun connect --context kind-dev
//	kubetun status
//	kubetun cleanup
//	kubetun version
//
// This package holds the command line only; package proxy does the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad command line: exit code 2.
type usageError struct{ error }

// errUsageShown is a usage error whose usage was printed already.
var errUsageShown = errors.New("usage shown")

// runMain runs one subcommand and returns the process exit code: 0 on
// success, 2 for a usage error, 1 for anything else.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	if sub, _, err := root.Find(args); err == nil {
		args = longFlags(sub.Flags(), args)
	}
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	var usage usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsageShown):
		return 2
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
		if cmd == root {
			fmt.Fprintln(stderr, "Run 'kubetun --help' for usage.")
		}
		return 2
	default:
		// run's errors name what failed and say kubetun, as documented:
		// "kubetun: service CIDR 10.0.0.0/14 overlaps route ...".
		name := cmd.CommandPath()
		if cmd.Name() == "run" || cmd.Name() == "connect" {
			name = root.Name()
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
}

// newRootCommand builds the kubetun command and its subcommands.
func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "kubetun",
		Short: "Kubernetes Service ClusterIPs through a TUN device, with no iptables or nftables rule",
		Long: `kubetun routes Kubernetes Service ClusterIPs through a TUN device and a
userspace TCP/IP stack to the pods behind them, with no iptables or nftables rule.`,
		Example: `  # Serve a cluster's Services on this node
  kubetun run --kubeconfig ~/.kube/config

  # Serve static manifests, without an apiserver
  kubetun run --service-cidr 10.3.240.0/20 --manifests ./services/

  # What the running kubetun serves
  kubetun status`,
		Version:       version(),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(stderr)
			cmd.Usage()
			return errUsageShown
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("kubetun {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())}
	})
	root.AddCommand(newRunCommand(stderr), newConnectCommand(stderr), newStatusCommand(), newCleanupCommand(), newVersionCommand())
	return root
}

func newRunCommand(stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run [--kubeconfig PATH | --service-cidr CIDR --manifests PATH] [flags]",
		Short: "Serve the service CIDRs on this host until interrupted",
		Long: `Route the service CIDRs into a TUN device and forward every connection to a
ClusterIP to a pod of its Service. The Services come from the Kubernetes API
(--kubeconfig, or the in-cluster config) or from static manifests
(--manifests). On SIGINT or SIGTERM kubetun closes every connection and
removes its routes and TUN device; with --persist both stay for the next
kubetun ('kubetun cleanup' removes them).`,
		Example: `  # Watch a cluster, following its ServiceCIDRs
  kubetun run --kubeconfig ~/.kube/config

  # Static manifests, e.g. from kubectl get services,endpointslices -A -o yaml
  kubetun run --service-cidr 10.3.240.0/20 --manifests ./services/`,
	}
	finish := runFlags(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := finish()
		if err != nil {
			return err
		}
		return runCommand(cmd.Context(), cfg, stderr)
	}
	return cmd
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "kubetun", version())
			return nil
		},
	}
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	return nil
}

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
