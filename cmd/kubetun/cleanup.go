package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kubetun/kubetun/tunnel"
)

// newCleanupCommand is `kubetun cleanup`: it removes for good the TUN device
// and routes that `kubetun run --persist` leaves, as `kube-proxy --cleanup`
// removes kube-proxy's rules.
func newCleanupCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cleanup [--tun NAME]",
		Short: "Remove the TUN device and routes 'kubetun run --persist' left",
		Long: `Remove the TUN device that 'kubetun run --persist' leaves behind, its routes,
and kubetun's blackhole fallback routes for it. It refuses a TUN a running
kubetun is attached to.`,
		Example: `  kubetun cleanup
  kubetun cleanup --tun kt1`,
		Args: noArgs,
	}
	name := cmd.Flags().String("tun", "kubetun0", "`NAME` of the TUN device to remove")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		stdout := cmd.OutOrStdout()
		removed, err := tunnel.Cleanup(*name)
		for _, r := range removed {
			fmt.Fprintln(stdout, "removed", r)
		}
		if err != nil {
			return err
		}
		if len(removed) == 0 {
			fmt.Fprintf(stdout, "nothing to clean: no TUN %s and no kubetun fallback route\n", *name)
		}
		return nil
	}
	return cmd
}
