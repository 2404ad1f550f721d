package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/kubetun/kubetun/connection"
	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/proxy"
)

// statusTimeout bounds the whole exchange with the running kubetun.
const statusTimeout = 5 * time.Second

func newStatusCommand() *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "status [--addr ADDR] [-o json|yaml]",
		Short: "Show what the running kubetun serves",
		Long: `Show what the kubetun running on this host serves: its mode and source, the
service CIDRs routed into it, its cluster DNS, how it reaches pods, and every
Service with its ClusterIPs, ports and usable endpoints. It asks the running
kubetun's health address (its --health-addr) for ` + proxy.StatusPath + `.

Without --addr it lists every 'kubetun connect' running on this host, one
per cluster, each with its context, TUN and DNS, found by the records they
keep in ` + strings.Join(connection.Dirs(), " and ") + `; with -o json
or yaml, as {"connections": [...]}. With none running, it asks the
'kubetun run' at ` + defaultHealthAddr + `.

FLOWS are the TCP connections being forwarded and the UDP sessions open now,
per Service; - from a kubetun that does not count them per Service.

With pods reached through port-forward (kubetun connect), it also lists the
connection to each pod through the API server: its transport (WebSocket or
SPDY), age, the round trip of its last ping and its flows; and the last
pod connection lost, with its cause.`,
		Example: `  # As a table
  kubetun status

  # As JSON, from a kubetun started with --health-addr 127.0.0.1:20256
  kubetun status --addr 127.0.0.1:20256 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "", "table", "json", "yaml":
			default:
				return usageError{fmt.Errorf("--output %q: want json, yaml, or nothing for a table", output)}
			}
			if !cmd.Flags().Changed("addr") {
				conns, err := listConnections(cmd.Context(), statusDirs()...)
				if err != nil {
					return err
				}
				if len(conns) > 0 {
					return printConnections(cmd.OutOrStdout(), conns, output)
				}
				// No connection: the `kubetun run` of this host.
			}
			st, err := fetchStatus(cmd.Context(), addr)
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, output)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", defaultHealthAddr, "the running kubetun's health `ADDR` (its --health-addr)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output `FORMAT`: json or yaml; a table when not given")
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// fetchStatus asks the kubetun at addr for its Status.
func fetchStatus(ctx context.Context, addr string) (proxy.Status, error) {
	var st proxy.Status
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	u := "http://" + addr + proxy.StatusPath
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return st, usageError{fmt.Errorf("--addr %q: %v", addr, err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return st, fmt.Errorf("no kubetun running at %s (%v); start one with 'kubetun run', or give --addr, its --health-addr", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		// A kubetun answering a client it takes for another host's says
		// why, and what to do, in its body.
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return st, fmt.Errorf("%s refused GET %s: %s", addr, proxy.StatusPath, strings.TrimSpace(string(msg)))
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s answered GET %s with %s: not kubetun, or a kubetun without status", addr, proxy.StatusPath, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("reading %s: %v", u, err)
	}
	return st, nil
}

// printStatus prints st as output says: "json", "yaml", or a table as
// kubectl prints one.
func printStatus(w io.Writer, st proxy.Status, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "    ")
		return enc.Encode(st)
	case "yaml":
		b, err := yaml.Marshal(st)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	fmt.Fprintf(tw, "Mode:\t%s\n", st.Mode)
	fmt.Fprintf(tw, "Source:\t%s\n", describeSource(st.Source))
	fmt.Fprintf(tw, "Ready:\t%v\n", st.Ready)
	fmt.Fprintf(tw, "TUN:\t%s\n", st.TUN)
	fmt.Fprintf(tw, "Service CIDRs:\t%s\n", orNone(proxy.DescribeServed(st)))
	dns := "off"
	if st.DNS != nil {
		dns = st.DNS.Domain + " at " + st.DNS.Address
		if len(st.DNS.Aliases) > 0 {
			dns = st.DNS.Domain + " (also " + strings.Join(st.DNS.Aliases, ", ") + ") at " + st.DNS.Address
		}
	}
	fmt.Fprintf(tw, "DNS:\t%s\n", dns)
	fmt.Fprintf(tw, "Pods:\t%s\n", st.Pods)
	if h := st.Handover; h != nil && h.Predecessor != nil {
		pr := h.Predecessor
		fmt.Fprintf(tw, "Took over from:\tpid %d (%s) in %d ms; it drains %d TCP flows, %d UDP sessions; passed to it %d packets, %d bytes\n",
			pr.PID, pr.Version, pr.TookMillis, pr.TCPFlows, pr.UDPSessions, pr.Packets, pr.Bytes)
	}
	if h := st.Handover; h != nil && h.Successor != nil {
		fmt.Fprintf(tw, "Handed over to:\tpid %d (%s); draining its own flows\n", h.Successor.PID, h.Successor.Version)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if st.PortForward != nil {
		if err := printPortForward(w, *st.PortForward, time.Now()); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	if len(st.Services) == 0 {
		_, err := fmt.Fprintln(w, "No Services served.")
		return err
	}
	tw = tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tCLUSTER-IP\tPORT(S)\tENDPOINTS\tFLOWS")
	for _, s := range st.Services {
		var ports, eps []string
		for _, p := range s.Ports {
			port := strconv.Itoa(int(p.Port)) + "/" + p.Protocol
			if !slices.Contains(ports, port) {
				ports = append(ports, port)
			}
			for _, ep := range p.Endpoints {
				if !slices.Contains(eps, ep) {
					eps = append(eps, ep)
				}
			}
		}
		slices.Sort(eps)
		flows := "-"
		if s.ActiveFlows != nil {
			flows = strconv.Itoa(*s.ActiveFlows)
		}
		ips := strings.Join(s.ClusterIPs, ",")
		if len(s.MappedClusterIPs) > 0 {
			// The address to use here first, the cluster's own after it.
			ips = strings.Join(s.MappedClusterIPs, ",") + " (" + ips + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, orNone(ips),
			orNone(strings.Join(ports, ",")), orNone(strings.Join(eps, ",")), flows)
	}
	return tw.Flush()
}

// printPortForward prints the pod connections of pf, and the last one
// lost, as of now.
func printPortForward(w io.Writer, pf portforward.Status, now time.Time) error {
	fmt.Fprintln(w)
	last := "none"
	if r := pf.LastReconnect; r != nil {
		last = fmt.Sprintf("%s ago, pod %s: %s", age(now.Sub(r.At)), r.Pod, r.Cause)
	}
	fmt.Fprintf(w, "Last reconnect:  %s\n", last)
	if len(pf.Conns) == 0 {
		_, err := fmt.Fprintln(w, "No pod connections open.")
		return err
	}
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "POD\tTRANSPORT\tAGE\tPING\tFLOWS")
	for _, c := range pf.Conns {
		ping := "-"
		if c.PingRTT > 0 {
			ping = fmt.Sprintf("%s (%s ago)", c.PingRTT.Round(10*time.Microsecond), age(now.Sub(c.Pinged)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", c.Pod, c.Transport, age(now.Sub(c.Connected)), ping, c.Flows)
	}
	return tw.Flush()
}

// age is d to the second, or to the minute past an hour.
func age(d time.Duration) string {
	if d < time.Hour {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

// describeSource says where the Services come from in one phrase.
func describeSource(src proxy.SourceInfo) string {
	switch src.Kind {
	case "manifests":
		return "manifests " + src.Path
	case "kubernetes":
		s := "Kubernetes API"
		if src.Context != "" {
			s += ", context " + src.Context
		}
		if src.Server != "" {
			s += " (" + src.Server + ")"
		}
		if src.Path != "" {
			s += ", config " + src.Path
		}
		return s
	}
	return orNone(src.Kind)
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// statusDirs are where `kubetun status` looks for connections; a variable
// for tests.
var statusDirs = connection.Dirs

// connectionStatus is one running `kubetun connect`: its record, and its
// status, or why it has none.
type connectionStatus struct {
	connection.Record
	Status *proxy.Status `json:"status,omitempty"`
	Error  string        `json:"error,omitempty"`
}

// listConnections returns the connections recorded in dirs, each with its
// status, asked of every one at once.
func listConnections(ctx context.Context, dirs ...string) ([]connectionStatus, error) {
	recs, err := connection.List(dirs...)
	if len(recs) == 0 {
		// Records unreadable and none found: say so only if something
		// was there to read.
		return nil, err
	}
	out := make([]connectionStatus, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		out[i].Record = r
		if r.StatusAddr == "" {
			out[i].Error = "connecting: not serving yet"
			continue
		}
		wg.Go(func() {
			st, err := fetchStatus(ctx, r.StatusAddr)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Status = &st
		})
	}
	wg.Wait()
	return out, nil
}

// printConnections prints conns as output says: a JSON or YAML object
// {"connections": [...]}, or each as printStatus's table under a line that
// names it.
func printConnections(w io.Writer, conns []connectionStatus, output string) error {
	switch output {
	case "json", "yaml":
		v := struct {
			Connections []connectionStatus `json:"connections"`
		}{conns}
		if output == "json" {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "    ")
			return enc.Encode(v)
		}
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	for i, c := range conns {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "=== Context %s: TUN %s, pid %d, status at %s\n", orNone(c.Context), c.TUN, c.PID, orNone(c.StatusAddr))
		if c.Status == nil {
			fmt.Fprintf(w, "not answering: %s\n", c.Error)
			continue
		}
		if err := printStatus(w, *c.Status, ""); err != nil {
			return err
		}
	}
	return nil
}
