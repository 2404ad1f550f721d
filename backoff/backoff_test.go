package backoff

import (
	"testing"
	"time"
)

// TestRetry: the waits double from Min to Max, and a success starts over.
func TestRetry(t *testing.T) {
	var r Retry
	if n, took := r.Succeeded(); n != 0 || took != 0 {
		t.Errorf("Succeeded() with no failure = %d, %v", n, took)
	}
	var got []time.Duration
	for range 12 {
		got = append(got, r.Failed())
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("waits %v, want %v ms", got, want)
		}
	}
	if r.Failures() != 12 {
		t.Errorf("Failures() = %d, want 12", r.Failures())
	}
	if n, _ := r.Succeeded(); n != 12 {
		t.Errorf("Succeeded() = %d failures, want 12", n)
	}
	if w := r.Failed(); w != Min {
		t.Errorf("the first wait after a success = %v, want %v", w, Min)
	}
}
