package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/kubetun/kubetun/tunnel"
)

// cleanupCommand is `kubetun cleanup`: it removes for good the TUN device
// and routes that `kubetun run --persist` leaves, as `kube-proxy --cleanup`
// removes kube-proxy's rules.
func cleanupCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kubetun cleanup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	name := fs.String("tun", "kubetun0", "`NAME` of the TUN device to remove")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "Usage: kubetun cleanup [--tun NAME]")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return err
		}
		return usageError{fmt.Errorf("%w (see 'kubetun cleanup -h')", err)}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
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
