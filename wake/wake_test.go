package wake

import (
	"strings"
	"testing"
	"time"
)

func TestResumed(t *testing.T) {
	const tick, gap = time.Second, 5 * time.Second
	for _, tc := range []struct {
		name       string
		mono, wall time.Duration
		want       string // in the detail; "" for no resume
	}{
		{"on time", time.Second, time.Second, ""},
		{"a little late", 3 * time.Second, 3 * time.Second, ""},
		{"wall clock set back", time.Second, -time.Hour, ""},
		{"stopped", 20 * time.Second, 20 * time.Second, "did not run for 19s"},
		{"slept", time.Second, time.Hour + time.Second, "the wall clock went 1h0m0s further"},
		{"just under", time.Second, 5*time.Second + 999*time.Millisecond, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			detail, ok := resumed(tc.mono, tc.wall, tick, gap)
			if ok != (tc.want != "") || !strings.Contains(detail, tc.want) {
				t.Errorf("resumed(%v, %v) = %q, %v; want %q", tc.mono, tc.wall, detail, ok, tc.want)
			}
		})
	}
}

// TestWatchCloses: a Watcher with nothing to tell returns from Close.
func TestWatchCloses(t *testing.T) {
	w, err := Watch(Config{Tick: 10 * time.Millisecond, Notify: func(e Event) { t.Errorf("unexpected %v: %s", e.Kind, e.Detail) }})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	w.Close()
}
