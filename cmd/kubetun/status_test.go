package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/connection"
	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/proxy"
)

func testStatus() proxy.Status {
	three := 3
	return proxy.Status{
		Mode: "run", Source: proxy.SourceInfo{Kind: "manifests", Path: "/etc/kubetun/services"}, Ready: true, TUN: "kubetun0",
		ServiceCIDRs: []string{"10.3.240.0/20"}, DNS: &proxy.DNSStatus{Domain: "cluster.local", Address: "10.3.240.10"}, Pods: "direct",
		Services: []proxy.ServiceStatus{
			{Namespace: "default", Name: "service-test", ClusterIPs: []string{"10.3.241.152"},
				Ports: []proxy.PortStatus{{Protocol: "TCP", ClusterIP: "10.3.241.152", Port: 80, Endpoints: []string{"10.0.1.2:8080", "10.0.2.2:8080"}}}},
			{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []string{"10.3.240.10"}, ActiveFlows: &three,
				Ports: []proxy.PortStatus{
					{Name: "dns", Protocol: "UDP", ClusterIP: "10.3.240.10", Port: 53, Endpoints: []string{"10.0.5.2:53"}},
					{Name: "dns-tcp", Protocol: "TCP", ClusterIP: "10.3.240.10", Port: 53, Endpoints: []string{"10.0.5.2:53"}},
				}},
			{Namespace: "default", Name: "empty", ClusterIPs: []string{"10.3.241.1"},
				Ports: []proxy.PortStatus{{Protocol: "TCP", ClusterIP: "10.3.241.1", Port: 80, Endpoints: []string{}}}},
		},
	}
}

// serveStatus serves st at /statusz on a loopback address until the test
// ends, and returns the address.
func serveStatus(t *testing.T, st proxy.Status) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != proxy.StatusPath {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestStatusCommand(t *testing.T) {
	addr := serveStatus(t, testStatus())
	// An address nothing listens on: a port just closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	notKubetun := httptest.NewServer(http.NotFoundHandler())
	defer notKubetun.Close()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "/statusz lists every Service and endpoint: it answers clients on this host only", http.StatusForbidden)
	}))
	defer refusing.Close()

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string // substrings, in order
		stderr string
	}{
		{
			name: "table",
			args: []string{"status", "--addr", addr},
			stdout: []string{
				"Mode:            run\n",
				"Source:          manifests /etc/kubetun/services\n",
				"Ready:           true\n",
				"Service CIDRs:   10.3.240.0/20\n",
				"DNS:             cluster.local at 10.3.240.10\n",
				"Pods:            direct\n",
				"NAMESPACE     NAME           CLUSTER-IP     PORT(S)         ENDPOINTS                     FLOWS\n",
				"default       service-test   10.3.241.152   80/TCP          10.0.1.2:8080,10.0.2.2:8080   -\n",
				"kube-system   kube-dns       10.3.240.10    53/UDP,53/TCP   10.0.5.2:53                   3\n",
				"default       empty          10.3.241.1     80/TCP          <none>                        -\n",
			},
		},
		{name: "json", args: []string{"status", "--addr", addr, "-o", "json"}, stdout: []string{`"mode": "run"`, `"clusterIPs": [`, `"10.0.1.2:8080",`, `"activeFlows": 3`}},
		{name: "yaml", args: []string{"status", "--addr=" + addr, "--output=yaml"}, stdout: []string{"mode: run\n", "serviceCIDRs:\n- 10.3.240.0/20\n", "  name: service-test\n", "    - 10.0.1.2:8080\n"}},
		{name: "a bad -o", args: []string{"status", "--addr", addr, "-o", "wide"}, code: 2, stderr: `kubetun status: --output "wide": want json, yaml`},
		{name: "an argument", args: []string{"status", "extra"}, code: 2, stderr: `kubetun status: unexpected argument "extra"`},
		{name: "no kubetun running", args: []string{"status", "--addr", dead}, code: 1,
			stderr: "kubetun status: no kubetun running at " + dead + " (dial tcp " + dead + ": connect: connection refused); start one with 'kubetun run', or give --addr"},
		{name: "refused", args: []string{"status", "--addr", strings.TrimPrefix(refusing.URL, "http://")}, code: 1,
			stderr: "kubetun status: " + strings.TrimPrefix(refusing.URL, "http://") + " refused GET /statusz: /statusz lists every Service and endpoint: it answers clients on this host only\n"},
		{name: "not kubetun", args: []string{"status", "--addr", strings.TrimPrefix(notKubetun.URL, "http://")}, code: 1, stderr: "answered GET /statusz with 404 Not Found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runMain(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("runMain(%q) = %d, want %d (stderr %q)", tt.args, code, tt.code, stderr.String())
			}
			out := stdout.String()
			for _, want := range tt.stdout {
				i := strings.Index(out, want)
				if i < 0 {
					t.Fatalf("stdout = \n%s\nwant it to contain, in order, %q", stdout.String(), want)
				}
				out = out[i+len(want):]
			}
			if len(tt.stdout) == 0 && stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
			checkOutput(t, "stderr", stderr.String(), tt.stderr)
		})
	}
}

// TestStatusKubernetesSource checks how a Kubernetes source is described.
func TestStatusKubernetesSource(t *testing.T) {
	got := describeSource(proxy.SourceInfo{Kind: "kubernetes", Path: "/root/.kube/config", Context: "kind-dev", Server: "https://127.0.0.1:6443"})
	if want := "Kubernetes API, context kind-dev (https://127.0.0.1:6443), config /root/.kube/config"; got != want {
		t.Errorf("describeSource = %q, want %q", got, want)
	}
}

// TestStatusPortForward checks the pod connections' table of kubetun
// connect --via portforward.
func TestStatusPortForward(t *testing.T) {
	now := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		pf   portforward.Status
		want []string // lines, in order
	}{
		{name: "none yet", want: []string{"Last reconnect:  none", "No pod connections open."}},
		{
			name: "two connections and a reconnect",
			pf: portforward.Status{
				Conns: []portforward.ConnStatus{
					{Pod: "default/web-1", Transport: portforward.TransportWebSocket, Connected: now.Add(-90 * time.Minute),
						PingRTT: 2345 * time.Microsecond, Pinged: now.Add(-3 * time.Second), Flows: 4},
					{Pod: "default/web-2", Transport: portforward.TransportSPDY, Connected: now.Add(-5 * time.Second)},
				},
				LastReconnect: &portforward.Reconnect{At: now.Add(-10 * time.Minute), Pod: "default/web-1", Cause: "ping: ping unanswered within 5s"},
			},
			want: []string{
				"Last reconnect:  10m0s ago, pod default/web-1: ping: ping unanswered within 5s",
				"POD             TRANSPORT   AGE       PING              FLOWS",
				"default/web-1   WebSocket   1h30m0s   2.35ms (3s ago)   4",
				"default/web-2   SPDY        5s        -                 0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printPortForward(&b, tt.pf, now); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, want := range tt.want {
				i := strings.Index(out, want+"\n")
				if i < 0 {
					t.Fatalf("output =\n%s\nwant it to contain, in order, the line %q", b.String(), want)
				}
				out = out[i+len(want):]
			}
		})
	}
}

// TestStatusConnections checks that status without --addr lists every
// connection recorded, each under a line naming its context, one that
// does not answer with why, and none of a process gone.
func TestStatusConnections(t *testing.T) {
	a, b := testStatus(), testStatus()
	a.Mode, b.Mode = "connect", "connect"
	a.TUN, b.TUN = "kt-kind-a", "kt-kind-b"
	b.DNS = &proxy.DNSStatus{Domain: "kind-b", Address: "240.9.0.10"}
	b.ServiceCIDRs = []string{"240.9.0.0/20"}
	b.Mapped = &proxy.MappedStatus{Context: "kind-b", Pairs: []addrmap.Pair{{Real: netip.MustParsePrefix("10.3.240.0/20"), Mapped: netip.MustParsePrefix("240.9.0.0/20")}}}
	b.Services = b.Services[:1]
	b.Services[0].MappedClusterIPs = []string{"240.9.1.152"}
	addrA, addrB := serveStatus(t, a), serveStatus(t, b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	dir, root := t.TempDir(), t.TempDir()
	now := time.Now()
	for _, r := range []struct {
		dir string
		rec connection.Record
	}{
		{dir, connection.Record{PID: os.Getpid(), Context: "kind-a", TUN: "kt-kind-a", StatusAddr: addrA, Started: now}},
		{root, connection.Record{PID: os.Getpid(), Context: "kind-b", TUN: "kt-kind-b", StatusAddr: addrB, Started: now.Add(time.Second)}},
		{dir, connection.Record{PID: os.Getpid(), Context: "hung", TUN: "kt-hung", StatusAddr: dead, Started: now.Add(2 * time.Second)}},
	} {
		if _, err := connection.Register(r.dir, r.rec); err != nil {
			t.Fatal(err)
		}
	}
	defer func(old func() []string) { statusDirs = old }(statusDirs)
	statusDirs = func() []string { return []string{dir, root} }

	for _, tt := range []struct {
		args   []string
		stdout []string
	}{
		{[]string{"status"}, []string{
			"=== Context kind-a: TUN kt-kind-a, pid ", "TUN:             kt-kind-a\n", "DNS:             cluster.local at 10.3.240.10\n",
			"=== Context kind-b: TUN kt-kind-b, pid ", "TUN:             kt-kind-b\n", "Service CIDRs:   240.9.0.0/20 (10.3.240.0/20 of kind-b)\n",
			"DNS:             kind-b at 240.9.0.10\n", "240.9.1.152 (10.3.241.152)",
			"=== Context hung: TUN kt-hung", "not answering: no kubetun running at " + dead,
		}},
		{[]string{"status", "-o", "json"}, []string{`"connections": [`, `"context": "kind-a"`, `"tun": "kt-kind-a"`, `"mode": "connect"`,
			`"context": "kind-b"`, `"real": "10.3.240.0/20"`, `"mapped": "240.9.0.0/20"`, `"domain": "kind-b"`, `"mappedClusterIPs": [`, `"context": "hung"`, `"error": "no kubetun running at`}},
	} {
		var stdout, stderr bytes.Buffer
		if code := runMain(context.Background(), tt.args, &stdout, &stderr); code != 0 {
			t.Fatalf("runMain(%q) = %d, stderr %q", tt.args, code, stderr.String())
		}
		out := stdout.String()
		for _, want := range tt.stdout {
			i := strings.Index(out, want)
			if i < 0 {
				t.Fatalf("%q: stdout = \n%s\nwant it to contain, in order, %q", tt.args, stdout.String(), want)
			}
			out = out[i+len(want):]
		}
	}
}
