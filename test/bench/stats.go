package main

import (
	"fmt"
	"slices"
	"time"
)

// percentile is the p-th percentile (0 to 100) of sorted, by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. Zero for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// rank = ceil(p/100 * n), at least 1.
	rank := int(p / 100 * float64(n))
	if float64(rank) < p/100*float64(n) {
		rank++
	}
	rank = max(rank, 1)
	return sorted[min(rank, n)-1]
}

// micros is d in microseconds.
func micros(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond)
}

// fmtDur prints d in µs below 10 ms, in ms above.
func fmtDur(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.0fµs", micros(d))
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// sorted is a sorted copy of d.
func sorted(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// percentileRows are the two rows of one latency measurement, its p50 and
// its p99, filled in path by path.
type percentileRows struct {
	p50, p99 row
	unit     string
	scale    func(time.Duration) float64
}

// newPercentileRows starts the rows "name, p50" and "name, p99", whose
// values are in unit, as scale converts them ("µs" and micros).
func newPercentileRows(name, unit string, scale func(time.Duration) float64) *percentileRows {
	return &percentileRows{
		p50:  row{name: name + ", p50", lowerBetter: true},
		p99:  row{name: name + ", p99", lowerBetter: true},
		unit: unit, scale: scale,
	}
}

// set records path p's latencies, lat; detail, shown under the table,
// goes with the p50.
func (r *percentileRows) set(p int, lat []time.Duration, detail string) {
	lat = sorted(lat)
	r.p50.results[p] = result{value: r.scale(percentile(lat, 50)), unit: r.unit, detail: detail}
	r.p99.results[p] = result{value: r.scale(percentile(lat, 99)), unit: r.unit}
}

// fail records why a path has no values.
func (r *percentileRows) fail(why string) { r.p50.failures = append(r.p50.failures, why) }

// rows returns the two rows, p50 first.
func (r *percentileRows) rows() []*row { return []*row{&r.p50, &r.p99} }

// addPercentiles adds both rows of r to the table.
func (b *bench) addPercentiles(r *percentileRows) {
	for _, row := range r.rows() {
		b.add(*row)
	}
}
