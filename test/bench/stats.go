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
