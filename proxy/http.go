package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// serveHTTP listens on addr at once (so a taken port fails the start) and
// serves h until the returned func is called. It returns the listener too,
// to pass it on to a successor.
func serveHTTP(listen func(network, addr string) (net.Listener, error), flag, addr string, h http.Handler, log *slog.Logger) (net.Listener, func(), error) {
	ln, err := listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server", "flag", flag, "addr", addr, "err", err)
		}
	}()
	return ln, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// healthMux serves kube-proxy's probes and kubetun's /statusz.
func (p *Proxy) healthMux() http.Handler {
	mux := http.NewServeMux()
	probes := p.tracker.Handler()
	mux.Handle("/", probes)
	// A kubetun whose TUN is gone serves nothing: it fails liveness at
	// once, for the moment it takes to exit.
	lost := func(w http.ResponseWriter, r *http.Request) {
		if p.tunLost.Load() {
			http.Error(w, "TUN device gone", http.StatusServiceUnavailable)
			return
		}
		probes.ServeHTTP(w, r)
	}
	mux.HandleFunc("/healthz", lost)
	mux.HandleFunc("/livez", lost)
	mux.Handle(StatusPath, p.statusHandler())
	return mux
}

// metricsMux serves the metrics at /metrics and, with profiling, Go's
// profiler at /debug/pprof/ (kube-proxy serves both on its metrics address).
func metricsMux(h http.Handler, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// ListenAddr returns the address the health or metrics server configured
// as addr (Config.HealthAddr, MetricsAddr) listens on: the port the kernel
// chose for "127.0.0.1:0", which is how `kubetun connect` avoids a fixed
// port a second connection would collide on. "" if none listens there.
func (p *Proxy) ListenAddr(addr string) string {
	p.ho.mu.Lock()
	defer p.ho.mu.Unlock()
	if ln, ok := p.httpListeners[addr]; ok {
		return ln.Addr().String()
	}
	return ""
}
