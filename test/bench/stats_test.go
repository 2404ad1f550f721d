package main

import (
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Microsecond
	}
	for _, tt := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", []time.Duration{7}, 99, 7},
		{"p0 is the minimum", hundred, 0, time.Microsecond},
		{"p50 of 1..100", hundred, 50, 50 * time.Microsecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Microsecond},
		{"p100 is the maximum", hundred, 100, 100 * time.Microsecond},
		{"p50 of 3 is the middle", []time.Duration{1, 2, 3}, 50, 2},
		{"p99 of 10 is the maximum", hundred[:10], 99, 10 * time.Microsecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%d values, %v) = %v, want %v", len(tt.sorted), tt.p, got, tt.want)
			}
		})
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		19 * time.Microsecond:   "19µs",
		9999 * time.Microsecond: "9999µs",
		12 * time.Millisecond:   "12.0ms",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestRoundOrder(t *testing.T) {
	paths := []int{pathDirect, pathKubetun, pathNftables}
	for r, want := range [][]int{{0, 1, 3}, {1, 3, 0}, {3, 0, 1}, {0, 1, 3}} {
		if got := roundOrder(r, paths); !slices.Equal(got, want) {
			t.Errorf("roundOrder(%d, %v) = %v, want %v", r, paths, got, want)
		}
	}
	if got := roundOrder(1, nil); got != nil {
		t.Errorf("roundOrder(1, nil) = %v, want nil", got)
	}
}

func TestLoadResultPlus(t *testing.T) {
	a := loadResult{done: 10, elapsed: time.Second, dials: []time.Duration{3, 5}}
	b := loadResult{done: 30, failed: 1, elapsed: time.Second, dials: []time.Duration{4}}
	s := a.plus(b)
	if s.done != 40 || s.failed != 1 || s.rate() != 20 || !slices.Equal(s.dials, []time.Duration{3, 4, 5}) {
		t.Errorf("plus = %+v, want 40 done, 1 failed, 20/s, dials [3 4 5]", s)
	}
	if !slices.Equal(a.dials, []time.Duration{3, 5}) {
		t.Errorf("plus changed its receiver's dials: %v", a.dials)
	}
}
