package kube

import (
	"context"
	"net/http"
	"syscall"
	"testing"
)

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestReachabilityTransport drives the transport wrapper the way client-go's
// reflector does during an outage: refused connections, retried, then an
// answer. Each change is logged once, not once per retry; a request the
// caller cancelled says nothing about the API.
func TestReachabilityTransport(t *testing.T) {
	log, buf := testLogger()
	reach := NewReachability(log)
	var fail error
	rt := reach.WrapTransport(roundTripFunc(func(*http.Request) (*http.Response, error) {
		if fail != nil {
			return nil, fail
		}
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
	}))
	do := func(ctx context.Context) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:6443/api/v1/services?watch=true", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := rt.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}

	do(t.Context())
	if !reach.Reachable() || buf.String() != "" {
		t.Fatalf("after a good request: Reachable() = %v, log %q; want true and nothing", reach.Reachable(), buf)
	}

	fail = &netOpError{syscall.ECONNREFUSED}
	for range 5 {
		do(t.Context())
	}
	if reach.Reachable() {
		t.Error("after refused connections: Reachable() = true, want false")
	}
	if n := buf.Count("Kubernetes API unreachable"); n != 1 {
		t.Errorf("log has %d \"unreachable\" lines after 5 refused requests, want 1:\n%s", n, buf)
	}

	fail = nil
	do(t.Context())
	do(t.Context())
	if !reach.Reachable() {
		t.Error("after an answer: Reachable() = false, want true")
	}
	if n := buf.Count("reachable again"); n != 1 {
		t.Errorf("log has %d \"reachable again\" lines, want 1:\n%s", n, buf)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	fail = context.Canceled
	do(ctx)
	if !reach.Reachable() {
		t.Error("a request the caller cancelled made the API unreachable")
	}
}

// netOpError is a minimal dial failure.
type netOpError struct{ err error }

func (e *netOpError) Error() string { return "dial tcp 127.0.0.1:6443: " + e.err.Error() }
func (e *netOpError) Unwrap() error { return e.err }
