package tunnel

import "time"

// The inbound pump's waits after a TUN read error it cannot tell the end
// of: each twice the last, from readRetryMin to readRetryMax.
const (
	readRetryMin = time.Millisecond
	readRetryMax = time.Second
)

// readRetry paces the inbound pump's retries of a failing TUN read, so
// that an error that persists neither spins a core nor floods the log. A
// read that works starts it over.
type readRetry struct {
	failures int           // read errors in a row
	wait     time.Duration // the next wait; 0: readRetryMin
	first    time.Time     // of the first of failures
}

// failed counts a read error and returns how long to wait before the next
// read.
func (r *readRetry) failed() time.Duration {
	if r.failures == 0 {
		r.first = time.Now()
	}
	r.failures++
	w := max(r.wait, readRetryMin)
	r.wait = min(2*w, readRetryMax)
	return w
}

// succeeded ends a run of errors: it returns how many there were and how
// long they lasted, and starts over.
func (r *readRetry) succeeded() (failures int, took time.Duration) {
	failures, took = r.failures, time.Since(r.first)
	*r = readRetry{}
	return failures, took
}
