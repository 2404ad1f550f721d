package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// The paths a case runs over, in the same run: the baseline straight to the
// pod, kubetun, and kube-proxy's two kernel modes in their own test beds.
const (
	pathDirect = iota
	pathKubetun
	pathIptables
	pathNftables
	numPaths
)

var pathNames = [numPaths]string{"direct", "kubetun", "iptables", "nftables"}

// row is one case over the paths it ran on.
type row struct {
	name    string
	results [numPaths]result // unit "" where the case did not run
	// lowerBetter marks latencies and memory, where a ratio above 1 means
	// kubetun does worse.
	lowerBetter bool
	cpu         string // kubetun's CPU during its run
	// failures say why a path has no value: on a loaded machine one path
	// timing out should not lose the others' numbers.
	failures []string
}

// result is one measurement.
type result struct {
	value  float64
	unit   string
	note   string // shown beside the value, e.g. UDP loss
	detail string // shown under the table
	// linkDrops is kubetun_link_dropped_packets_total's growth during the
	// run, if it was read (kubetun only).
	linkDrops *int64
}

func (r result) String() string {
	if r.unit == "" {
		return "-"
	}
	s := number(r.value) + " " + r.unit
	if r.note != "" {
		s += " (" + r.note + ")"
	}
	return s
}

// ratioTo is kubetun's value over the base path's, or 0 without both.
func (r row) ratioTo(base int) float64 {
	k, b := r.results[pathKubetun], r.results[base]
	if k.unit == "" || b.unit == "" || b.value <= 0 {
		return 0
	}
	return k.value / b.value
}

func (r row) ratio(base int) string {
	v := r.ratioTo(base)
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func (r row) summary() string {
	var s strings.Builder
	s.WriteString(r.name + ":")
	for i, res := range r.results {
		if res.unit != "" {
			fmt.Fprintf(&s, " %s %s,", pathNames[i], res)
		}
	}
	if r.results[pathDirect].unit != "" {
		fmt.Fprintf(&s, " kubetun÷direct %s", r.ratio(pathDirect))
	}
	if r.results[pathIptables].unit != "" {
		fmt.Fprintf(&s, " ÷iptables %s ÷nftables %s", r.ratio(pathIptables), r.ratio(pathNftables))
	}
	if r.cpu != "" {
		fmt.Fprintf(&s, "; kubetun CPU %s", r.cpu)
	}
	return s.String()
}

// printTable prints the rows as a table, then each measurement's details.
func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tdirect\tkubetun\tiptables\tnftables\tkt÷direct\tkt÷iptables\tkt÷nftables\tkubetun CPU")
	for _, r := range rows {
		name := r.name
		if r.lowerBetter {
			name += " ↓"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name,
			r.results[pathDirect], r.results[pathKubetun], r.results[pathIptables], r.results[pathNftables],
			r.ratio(pathDirect), r.ratio(pathIptables), r.ratio(pathNftables), r.cpu)
	}
	tw.Flush()
	fmt.Fprintln(w, "(↓: lower is better, so a ratio above 1 is kubetun's cost; elsewhere higher is better)")
	fmt.Fprintln(w, "\ndetails:")
	for _, r := range rows {
		fmt.Fprintf(w, "  %s\n", r.name)
		for _, f := range r.failures {
			fmt.Fprintf(w, "    failed:   %s\n", f)
		}
		for i, res := range r.results {
			if res.unit == "" || strings.TrimSpace(res.detail) == "" {
				continue
			}
			fmt.Fprintf(w, "    %-9s %s\n", pathNames[i]+":", strings.TrimSpace(res.detail))
		}
	}
}

// number formats v with three significant digits or so.
func number(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// report is what --json writes: the run's setting and every row.
type report struct {
	Time    string            `json:"time"`
	Go      string            `json:"go"`
	Kubetun string            `json:"kubetun"`
	Short   bool              `json:"short"`
	Machine map[string]string `json:"machine"` // nproc, load averages, CPU busy
	Notes   []string          `json:"notes,omitempty"`
	Rows    []jsonRow         `json:"rows"`
}

// jsonRow is a row: values and ratios by path name.
type jsonRow struct {
	Case          string             `json:"case"`
	Unit          string             `json:"unit"`
	LowerIsBetter bool               `json:"lower_is_better"`
	Values        map[string]float64 `json:"values"`
	Ratios        map[string]float64 `json:"ratios,omitempty"` // "kubetun/direct", ...
	Notes         map[string]string  `json:"notes,omitempty"`
	Details       map[string]string  `json:"details,omitempty"`
	KubetunCPU    string             `json:"kubetun_cpu,omitempty"`
	// LinkDrops is kubetun_link_dropped_packets_total's growth during
	// kubetun's run of the case, when it was read.
	LinkDrops *int64   `json:"kubetun_link_dropped_packets,omitempty"`
	Failures  []string `json:"failures,omitempty"`
}

func (r row) json() jsonRow {
	j := jsonRow{Case: r.name, LowerIsBetter: r.lowerBetter, KubetunCPU: r.cpu,
		Values: map[string]float64{}, Ratios: map[string]float64{}, Notes: map[string]string{}, Details: map[string]string{}}
	for i, res := range r.results {
		if res.unit == "" {
			continue
		}
		j.Unit = res.unit
		j.Values[pathNames[i]] = res.value
		if res.note != "" {
			j.Notes[pathNames[i]] = res.note
		}
		if d := strings.TrimSpace(res.detail); d != "" {
			j.Details[pathNames[i]] = d
		}
		if i != pathKubetun {
			if v := r.ratioTo(i); v != 0 {
				j.Ratios["kubetun/"+pathNames[i]] = v
			}
		}
	}
	j.LinkDrops = r.results[pathKubetun].linkDrops
	j.Failures = r.failures
	return j
}

// writeJSON writes the report to path.
func writeJSON(path string, rep report, rows []row) error {
	for _, r := range rows {
		rep.Rows = append(rep.Rows, r.json())
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the JSON report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}
