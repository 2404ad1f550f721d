package e2e

import (
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestTestbed checks the bed itself, without kubetun: the client reaches the
// pods through the node, a pod can be added and removed, nothing appears in
// the root namespace (links, routes), and Close leaves no namespace behind. A failure here is the harness's, not kubetun's.
func TestTestbed(t *testing.T) {
	needRoot(t)
	rootLinks, routes := links(t), rootRoutes(t)
	tb := testbed.New(t, testbed.Options{Podserver: podserverBin})
	seed, err := tb.AddSeed()
	if err != nil {
		t.Fatalf("AddSeed: %v", err)
	}

	for _, pod := range []*testbed.Host{seed.Pod1, seed.Pod2} {
		got, err := seedRequest(t.Context(), tb, seed.Client.Namespace, pod.IP.String(), 8080)
		if err != nil || got != pod.Name {
			t.Errorf("seedRequest(client → %s:8080) = %q, %v; want %q", pod.IP, got, err, pod.Name)
		}
	}

	c, err := testbed.DialIn(seed.Client.Namespace, "tcp", seed.Pod2.IP.String()+":9000", time.Second)
	if err != nil {
		t.Fatalf("DialIn(client, pod2:9000): %v", err)
	}
	c.Write([]byte("ping\n"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(c)
	c.Close()
	if string(got) != "ping\n" || err != nil {
		t.Errorf("echo through DialIn = %q, %v; want %q", got, err, "ping\n")
	}

	pod3, err := tb.AddPod("pod3", 4)
	if err != nil {
		t.Fatalf("AddPod(pod3): %v", err)
	}
	if got, err := seedRequest(t.Context(), tb, seed.Client.Namespace, pod3.IP.String(), 8080); err != nil || got != "pod3" {
		t.Errorf("seedRequest(client → %s:8080) = %q, %v; want pod3", pod3.IP, got, err)
	}
	if err := tb.RemoveHost(pod3); err != nil {
		t.Fatalf("RemoveHost(pod3): %v", err)
	}
	if _, err := testbed.DialIn(seed.Client.Namespace, "tcp", pod3.IP.String()+":8080", time.Second); err == nil {
		t.Errorf("pod3 still answers after RemoveHost")
	}

	if after := links(t); after != rootLinks {
		t.Errorf("root namespace links changed:\nbefore: %s\nafter:  %s", rootLinks, after)
	}
	if after := rootRoutes(t); after != routes {
		t.Errorf("root namespace routes changed:\nbefore: %s\nafter:  %s", routes, after)
	}
	if err := tb.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := tb.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if strings.Contains(string(out), tb.Prefix) {
		t.Errorf("after Close, ip netns list still shows %s namespaces:\n%s", tb.Prefix, out)
	}
}

// links lists the root namespace's interface names.
func links(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip -o link show: %v", err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return strings.Join(names, " ")
}

// rootRoutes returns the root namespace's IPv4 and IPv6 routes, all tables.
func rootRoutes(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var all []byte
	for _, family := range []string{"-4", "-6"} {
		out, err := exec.CommandContext(ctx, "ip", family, "route", "show", "table", "all").Output()
		if err != nil {
			t.Fatalf("ip %s route show table all: %v", family, err)
		}
		all = append(all, out...)
	}
	return string(all)
}
