package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/kubetun/kubetun/resolver"
)

// TestStatusLocalOnly checks that /statusz answers clients on this host
// only, unless StatusAllowRemote, while kube-proxy's probes answer anyone
// who reaches the health address (a load balancer probes /healthz).
func TestStatusLocalOnly(t *testing.T) {
	for _, tt := range []struct {
		name        string
		remote      string // the client's address
		local       string // the address it connected to; "" for none known
		host        string // the Host header; "" for the default
		allowRemote bool
		want        int // /statusz's answer
	}{
		{name: "loopback", remote: "127.0.0.1:40000", want: http.StatusOK},
		{name: "loopback IPv6", remote: "[::1]:40000", host: "[::1]:10256", want: http.StatusOK},
		{name: "loopback, IPv4-mapped", remote: "[::ffff:127.0.0.1]:40000", want: http.StatusOK},
		{name: "localhost", remote: "127.0.0.1:40000", host: "localhost:10256", want: http.StatusOK},
		{name: "from another host", remote: "192.0.2.7:40000", local: "192.0.2.1:10256", host: "192.0.2.1:10256", want: http.StatusForbidden},
		{name: "from a pod", remote: "10.0.1.2:40000", local: "192.0.2.1:10256", host: "192.0.2.1:10256", want: http.StatusForbidden},
		{name: "from the node, to its own address", remote: "192.0.2.1:40000", local: "192.0.2.1:10256", host: "192.0.2.1:10256", want: http.StatusOK},
		{name: "a rebound name", remote: "127.0.0.1:40000", host: "attacker.example:10256", want: http.StatusForbidden},
		{name: "from another host, allowed", remote: "192.0.2.7:40000", local: "192.0.2.1:10256", host: "node-1:10256", allowRemote: true, want: http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBed(t, Config{ServiceCIDRs: prefixes("10.3.240.0/20"), DNS: DNSConfig{Off: true}, StatusAllowRemote: tt.allowRemote})
			b.run(t)
			b.src.do(t, func(r Receiver) { r.Apply(seed()) })
			h := b.p.healthMux()
			get := func(path string) *httptest.ResponseRecorder {
				r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:10256"+path, nil)
				r.RemoteAddr = tt.remote
				if tt.host != "" {
					r.Host = tt.host
				}
				if tt.local != "" {
					la := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tt.local))
					r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, la))
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				return w
			}
			w := get(StatusPath)
			if w.Code != tt.want {
				t.Errorf("GET %s from %s = %d %s, want %d", StatusPath, tt.remote, w.Code, w.Body, tt.want)
			}
			body := w.Body.String()
			switch {
			case tt.want == http.StatusOK && !strings.Contains(body, "service-test"):
				t.Errorf("GET %s = %s, want the Services", StatusPath, body)
			case tt.want != http.StatusOK && strings.Contains(body, "service-test"):
				t.Errorf("GET %s refused, yet the body names a Service: %s", StatusPath, body)
			case tt.want == http.StatusForbidden && tt.host == "attacker.example:10256" && !strings.Contains(body, `Host "attacker.example:10256"`):
				t.Errorf("GET %s = %s, want the Host named", StatusPath, body)
			case tt.want == http.StatusForbidden && tt.host != "attacker.example:10256" && !strings.Contains(body, "--statusz-allow-remote"):
				t.Errorf("GET %s = %s, want the way out named", StatusPath, body)
			}
			for _, probe := range []string{"/healthz", "/livez", "/readyz"} {
				if w := get(probe); w.Code != http.StatusOK {
					t.Errorf("GET %s from %s = %d %s, want 200: kube-proxy's probes answer everyone", probe, tt.remote, w.Code, w.Body)
				}
			}
		})
	}
}

// TestStatusCache checks that status lists the Services of a snapshot once,
// lists them again for the next snapshot, and that the flows of one request
// never reach the cached list.
func TestStatusCache(t *testing.T) {
	st := seed()
	snap1, _ := resolver.Build(st.Services, st.Slices, nil, resolver.Topology{})
	snap2, _ := resolver.Build(st.Services, st.Slices, nil, resolver.Topology{})
	var c statusCache
	a, b := c.services(snap1), c.services(snap1)
	if len(a) != 1 || len(b) != 1 || &a[0] != &b[0] {
		t.Fatalf("the same snapshot listed twice: %p, %p, want the one list cached", a, b)
	}
	if n := c.services(snap2); len(n) != 1 || &n[0] == &a[0] {
		t.Errorf("a new snapshot got the old list")
	}
	cached := c.services(snap2)
	got := withFlows(cached, map[string]int{"default/service-test": 2})
	if got[0].ActiveFlows == nil || *got[0].ActiveFlows != 2 {
		t.Errorf("activeFlows = %v, want 2", got[0].ActiveFlows)
	}
	if cached[0].ActiveFlows != nil {
		t.Errorf("the cached list got a request's flows")
	}
	if got := withFlows(cached, nil); got[0].ActiveFlows != nil {
		t.Errorf("not counted, yet activeFlows = %d", *got[0].ActiveFlows)
	}
}
