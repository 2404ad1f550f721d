package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// row is one case: the direct path, then through kubetun.
type row struct {
	name    string
	results [2]result // direct, through kubetun
	cpu     string    // kubetun's CPU during the second
}

// result is one measurement: a rate, higher is better.
type result struct {
	value  float64
	unit   string
	note   string // shown beside the value, e.g. UDP loss
	detail string // shown under the table
}

func (r result) String() string {
	s := number(r.value) + " " + r.unit
	if r.note != "" {
		s += " (" + r.note + ")"
	}
	return s
}

// ratio is kubetun / direct.
func (r row) ratio() string {
	if r.results[0].value <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.results[1].value/r.results[0].value)
}

func (r row) summary() string {
	return fmt.Sprintf("%s: direct %s, kubetun %s, ratio %s; kubetun CPU %s",
		r.name, r.results[0], r.results[1], r.ratio(), r.cpu)
}

// printTable prints the rows as a table, then each measurement's details.
func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\tdirect\tthrough kubetun\tratio\tkubetun CPU")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.name, r.results[0], r.results[1], r.ratio(), r.cpu)
	}
	tw.Flush()
	fmt.Fprintln(w, "\ndetails:")
	for _, r := range rows {
		fmt.Fprintf(w, "  %s\n", r.name)
		for i, res := range r.results {
			fmt.Fprintf(w, "    %-8s %s\n", []string{"direct", "kubetun"}[i]+":", strings.TrimSpace(res.detail))
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
