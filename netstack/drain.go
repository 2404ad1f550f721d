package netstack

import (
	"context"
	"time"
)

// drainPoll is how often Drain counts the flows left: a control-path wait
// of seconds, for which a poll of the flow count is simpler than a signal
// from every flow's end.
const drainPoll = 20 * time.Millisecond

// StopAccepting makes the stack reset every new TCP connection (its SYN)
// from now on, as a closed listening socket would; the connections spliced
// or being set up already go on. UDP is served as before. It is the first
// step of a graceful shutdown; Close ends what is left.
func (s *Stack) StopAccepting() { s.refuseNew.Store(true) }

// Drain stops accepting new TCP connections (StopAccepting) and waits until
// every TCP connection spliced or being set up has ended, or ctx is done.
// It reports whether they all ended.
func (s *Stack) Drain(ctx context.Context) bool {
	s.StopAccepting()
	return s.WaitIdle(ctx)
}
