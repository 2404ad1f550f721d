// Package backoff paces the retries of an operation that keeps failing —
// a TUN read, a listener's Accept (EMFILE) — so that an error that persists
// neither spins a core nor floods the log.
package backoff

import "time"

// The waits after each failure: each twice the last, from Min to Max.
const (
	Min = time.Millisecond
	Max = time.Second
)

// Retry counts the failures of one operation in a row. A success starts it
// over. The zero value is ready to use.
type Retry struct {
	failures int           // in a row
	wait     time.Duration // the next wait; 0: Min
	first    time.Time     // of the first of failures
}

// Failed counts a failure and returns how long to wait before the next try.
// It is the first of a run when Failures is 1 afterwards: say it then, and
// say the run's end when Succeeded reports it.
func (r *Retry) Failed() time.Duration {
	if r.failures == 0 {
		r.first = time.Now()
	}
	r.failures++
	w := max(r.wait, Min)
	r.wait = min(2*w, Max)
	return w
}

// Failures is how many failures in a row were counted.
func (r *Retry) Failures() int { return r.failures }

// Succeeded ends a run of failures: it returns how many there were and how
// long they lasted (0 if there were none), and starts over.
func (r *Retry) Succeeded() (failures int, took time.Duration) {
	if r.failures == 0 {
		return 0, 0
	}
	failures, took = r.failures, time.Since(r.first)
	*r = Retry{}
	return failures, took
}
