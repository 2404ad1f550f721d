package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// endpointSlice is an EndpointSlice of ready endpoints at addrs, on TCP
// port port.
func endpointSlice(name string, family discoveryv1.AddressType, port int32, addrs ...string) *discoveryv1.EndpointSlice {
	ready, proto := true, corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

// TestProbeTargets checks that the --via auto probe takes only the
// endpoints the target policy lets kubetun dial: never the host's own
// loopback, link-local, unspecified or multicast addresses, whatever an
// EndpointSlice says.
func TestProbeTargets(t *testing.T) {
	got, refused := probeTargets([]discoveryv1.EndpointSlice{
		*endpointSlice("v4", discoveryv1.AddressTypeIPv4, 8080,
			"127.0.0.1", "127.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1", "10.0.1.2", "not-an-ip"),
		*endpointSlice("v6", discoveryv1.AddressTypeIPv6, 8080,
			"::1", "fe80::1", "::", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.1.1", "fd00:1::2"),
		*endpointSlice("fqdn", discoveryv1.AddressTypeFQDN, 8080, "db.example.com"),
	})
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.1.2:8080"), netip.MustParseAddrPort("[fd00:1::2]:8080")}
	if !slices.Equal(got, want) {
		t.Errorf("probeTargets = %v, want %v only", got, want)
	}
	if refused != 11 {
		t.Errorf("probeTargets left out %d for the policy, want 11", refused)
	}
}

// TestProbeDirectRefusesHostAddresses runs the probe against an API whose
// only ready endpoints are the host's own: a loopback listener that would
// answer, among others. The probe must dial none of them.
func TestProbeDirectRefusesHostAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	port := int32(ln.Addr().(*net.TCPAddr).Port)
	client := fake.NewClientset(
		endpointSlice("local", discoveryv1.AddressTypeIPv4, port, "127.0.0.1", "0.0.0.0", "224.0.0.1"),
		endpointSlice("local6", discoveryv1.AddressTypeIPv6, port, "::1", "::ffff:127.0.0.1"),
	)
	k := &KubeSource{client: client, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ok, detail := k.ProbeDirect(t.Context(), 500*time.Millisecond)
	if ok || !strings.Contains(detail, "no ready TCP endpoint to probe (5 left out") {
		t.Errorf("ProbeDirect = %v, %q; want no endpoint to probe, 5 left out", ok, detail)
	}
	select {
	case <-accepted:
		t.Errorf("the probe dialled the loopback listener")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestKubeSourceWaitsForAPIServer: with the API server unreachable at
// start (nothing listens), NewKubeSource keeps trying instead of failing,
// says so once, and returns when its context ends; a server that answers
// with a refusal fails it at once.
func TestKubeSourceWaitsForAPIServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403}`, http.StatusForbidden)
	}))
	defer refusing.Close()
	for _, tc := range []struct {
		name, server string
		wantErr      string
		unreachable  int // "Kubernetes API unreachable" lines
	}{
		{"unreachable", "http://" + dead, "context deadline exceeded", 1},
		{"refusing", refusing.URL, "cannot be read", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
			os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: %q}
contexts:
- name: c
  context: {cluster: c, user: u}
users:
- name: u
  user: {token: t}
current-context: c
`, tc.server)), 0o600)
			var log strings.Builder
			var mu sync.Mutex
			logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &log}, nil))
			ctx, cancel := context.WithTimeout(t.Context(), 3500*time.Millisecond)
			defer cancel()
			_, err := NewKubeSource(ctx, KubeOptions{Kubeconfig: kubeconfig, FollowCIDRs: true}, logger)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("NewKubeSource = %v, want an error containing %q", err, tc.wantErr)
			}
			mu.Lock()
			defer mu.Unlock()
			if n := strings.Count(log.String(), "Kubernetes API unreachable"); n != tc.unreachable {
				t.Errorf("logged %d lines of the API unreachable, want %d:\n%s", n, tc.unreachable, log.String())
			}
		})
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
