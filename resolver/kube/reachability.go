package kube

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
)

// Reachability tracks whether the Kubernetes API answers, and says so in
// the log once per change: once when it stops answering, once when it is
// back, never once per retry.
//
// It learns from two places: the informers' watch error handler, and every
// request the client makes, through WrapTransport. The second matters most:
// client-go's reflector retries a refused connection by itself and tells
// the watch error handler nothing (it logs that only at verbosity 4), so an
// apiserver that is simply down would go unnoticed without it.
type Reachability struct {
	log *slog.Logger

	mu   sync.Mutex // guards down
	down bool
}

// NewReachability returns a Reachability that logs to log.
func NewReachability(log *slog.Logger) *Reachability {
	return &Reachability{log: log}
}

// Failed notes a failed contact with the API.
func (r *Reachability) Failed(err error) {
	r.mu.Lock()
	first := !r.down
	r.down = true
	r.mu.Unlock()
	if first {
		r.log.Warn("Kubernetes API unreachable; serving the last known state and retrying with backoff", "err", err)
	}
}

// Succeeded notes that the API answered.
func (r *Reachability) Succeeded() {
	r.mu.Lock()
	back := r.down
	r.down = false
	r.mu.Unlock()
	if back {
		r.log.Info("Kubernetes API reachable again")
	}
}

// Reachable reports whether the last contact with the API succeeded.
func (r *Reachability) Reachable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.down
}

// WrapTransport is a client-go transport wrapper (rest.Config.Wrap) that
// reports every request's outcome: any HTTP answer means the API is there;
// a transport error, other than the caller giving up, means it is not.
func (r *Reachability) WrapTransport(rt http.RoundTripper) http.RoundTripper {
	return observer{rt, r}
}

type observer struct {
	next http.RoundTripper
	r    *Reachability
}

func (o observer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := o.next.RoundTrip(req)
	switch {
	case err == nil:
		o.r.Succeeded()
	case errors.Is(err, context.Canceled), req.Context().Err() != nil:
		// kubetun ended the request (a watch being stopped): says
		// nothing about the API.
	default:
		o.r.Failed(err)
	}
	return resp, err
}
