package nodeport

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// serveHealth serves a Service's healthCheckNodePort on addr. Cloud load
// balancers probe it on every node to send a Service with
// externalTrafficPolicy: Local only to nodes with a local endpoint.
func (l *Listeners) serveHealth(ln *net.TCPListener, addr netip.AddrPort, hc resolver.HealthCheck) *healthServer {
	h := &healthServer{ln: ln, done: make(chan struct{})}
	h.set(hc)
	h.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		healthy := l.cfg.Healthy == nil || l.cfg.Healthy()
		writeHealth(w, *h.hc.Load(), healthy)
	}), ReadHeaderTimeout: 5 * time.Second}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(h.done)
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("health check node port", "addr", addr, "err", err)
		}
	}()
	return h
}

// writeHealth answers as kube-proxy's service health server does
// (pkg/proxy/healthcheck/service_health.go): 200 when the Service has a
// local endpoint and the proxy is healthy, 503 otherwise; the same JSON
// body and headers, whatever the path.
func writeHealth(w http.ResponseWriter, hc resolver.HealthCheck, healthy bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(hc.LocalEndpoints))
	if hc.LocalEndpoints != 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		hc.Namespace, hc.Name, hc.LocalEndpoints, healthy)
}
