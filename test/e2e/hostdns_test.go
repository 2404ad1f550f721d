package e2e

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
	"github.com/kubetun/kubetun/tunnel/hostdns"
)

// TestHostDNSSplit runs the real systemd-resolved (unpacked by `make deps`)
// in the node namespace, which plays a laptop here, and checks that
// hostdns.Configure sends the cluster domain, and only it, to the DNS server
// behind a link:
//
//	laptop (node ns): systemd-resolved, stub 127.0.0.53
//	  ├─ v-cluster ── cluster 10.0.21.2: DNS standing in for kubetun's
//	  └─ v-upstream ─ upstream 10.0.22.2: the laptop's own DNS (resolved's DNS=)
//
// Names are asked through resolved's stub with dig, as a laptop's programs
// ask them, and each server counts the questions it gets.
func TestHostDNSSplit(t *testing.T) {
	needRoot(t)
	resolvedPkg := needResolved(t)
	t.Logf("systemd-resolved from %s", resolvedPkg)
	tb := testbed.New(t, testbed.Options{})
	cluster, err := tb.AddHost("cluster", 21)
	if err != nil {
		t.Fatal(err)
	}
	upstream, err := tb.AddHost("upstream", 22)
	if err != nil {
		t.Fatal(err)
	}
	clusterDNS, err := tb.StartDNSServer(cluster,
		"service-test.default.svc.cluster.local. 30 IN A "+testbed.ClusterIP,
		"db.other.svc.cluster.local. 30 IN A 10.3.241.160")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clusterDNS.Close() })
	upstreamDNS, err := tb.StartDNSServer(upstream, "laptop.example.com. 30 IN A 192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstreamDNS.Close() })
	resolved, err := tb.StartResolved(tb.Node, upstream.IP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("systemd-resolved output:\n%s", resolved.Process.Output())
		}
	})
	// hostdns.Configure finds the system bus the way it does on a laptop.
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", resolved.BusAddress)

	link := hostdns.Link{Name: cluster.NodeLink, Server: cluster.IP, ClusterDomain: "cluster.local", Namespace: "default"}
	const clusterName = "service-test.default.svc.cluster.local."
	ask := func(name string) (digResult, error) {
		return dig(t.Context(), tb, tb.Node, "127.0.0.53", "+time=8", name, "A")
	}
	// asked asks name through the stub and returns how many questions each
	// server got meanwhile.
	asked := func(name string) (got digResult, toCluster, toUpstream int64) {
		t.Helper()
		c0, u0 := clusterDNS.Queries(), upstreamDNS.Queries()
		got, err := ask(name)
		if err != nil {
			t.Logf("dig @127.0.0.53 %s: %v", name, err)
		}
		return got, clusterDNS.Queries() - c0, upstreamDNS.Queries() - u0
	}
	wantAnswer := func(name, answer string, toCluster bool) {
		t.Helper()
		got, c, u := asked(name)
		if got.Status != "NOERROR" || !slices.Equal(got.Answer, []string{"A " + answer}) {
			t.Errorf("dig @127.0.0.53 %s = %s %q, want NOERROR [A %s]\n%s", name, got.Status, got.Answer, answer, got.Raw)
		}
		if toCluster && (c == 0 || u != 0) {
			t.Errorf("dig @127.0.0.53 %s: cluster DNS asked %d times, upstream %d times; want only the cluster DNS", name, c, u)
		}
		if !toCluster && (c != 0 || u == 0) {
			t.Errorf("dig @127.0.0.53 %s: cluster DNS asked %d times, upstream %d times; want only the upstream", name, c, u)
		}
	}
	wantNotCluster := func(when string) {
		t.Helper()
		if got, c, _ := asked(clusterName); c != 0 || got.Status == "NOERROR" {
			t.Errorf("%s: dig @127.0.0.53 %s = %s %q, cluster DNS asked %d times; want it not asked", when, clusterName, got.Status, got.Answer, c)
		}
	}
	// linkListed reports whether resolved's resolv.conf lists the link's
	// search domains, and returns the file. It fails t if the file lists the
	// link's server: resolved leaves out the server of a link that is no
	// default route, since programs that read the file would send it every
	// name (write_resolv_conf_server in
	// https://github.com/systemd/systemd/blob/main/src/resolve/resolved-resolv-conf.c).
	linkListed := func() (bool, string) {
		conf, err := resolved.ResolvConf()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(strings.Split(conf, "\n"), "nameserver "+cluster.IP.String()) {
			t.Errorf("resolv.conf lists the link's server %s, which would get every name from programs reading it:\n%s", cluster.IP, conf)
		}
		return strings.Contains(conf, "\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n"), conf
	}
	configure := func() func() error {
		t.Helper()
		var revert func() error
		// The link is looked up by name in the node namespace, where resolved runs.
		err := testbed.InNamespace(tb.Node, func() (err error) {
			revert, err = hostdns.Configure(t.Context(), link)
			return err
		})
		if err != nil {
			t.Fatalf("Configure(%+v): %v", link, err)
		}
		t.Cleanup(func() { revert() })
		return revert
	}

	// Before: resolved sends no name under .local to unicast DNS of its own
	// accord; the cluster's server is not asked in any case.
	wantNotCluster("before Configure")
	wantAnswer("laptop.example.com.", "192.0.2.7", false)

	revert := configure()
	t.Run("resolv.conf mode", func(t *testing.T) {
		// The bed's /etc/resolv.conf is a file of its own, not resolved's
		// stub: resolved calls it foreign, and connect warns that programs
		// reading it will not see the link's settings.
		var mode string
		err := testbed.InNamespace(tb.Node, func() (err error) {
			mode, err = hostdns.ResolvConfMode(t.Context())
			return err
		})
		if err != nil || mode != "foreign" || !hostdns.ResolvConfBypassed(mode) {
			t.Errorf("ResolvConfMode() = %q, %v; want foreign", mode, err)
		}
	})
	t.Run("cluster names go to the link", func(t *testing.T) {
		wantAnswer(clusterName, testbed.ClusterIP, true)
		wantAnswer("db.other.svc.cluster.local.", "10.3.241.160", true)
		got, c, u := asked("missing.default.svc.cluster.local.")
		if got.Status != "NXDOMAIN" || c == 0 || u != 0 {
			t.Errorf("dig @127.0.0.53 missing.default.svc.cluster.local. = %s, cluster DNS asked %d times, upstream %d; want NXDOMAIN from the cluster DNS only", got.Status, c, u)
		}
	})
	t.Run("other names still go to the laptop's DNS", func(t *testing.T) {
		wantAnswer("laptop.example.com.", "192.0.2.7", false)
	})
	t.Run("short names use the namespace's search domain", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		out, err := resolved.Resolvectl(ctx, "query", "-4", "--legend=no", "service-test")
		if err != nil || !strings.Contains(out, testbed.ClusterIP) {
			t.Errorf("resolvectl query service-test = %q, %v; want %s", out, err, testbed.ClusterIP)
		}
	})
	t.Run("the link has its server and domains", func(t *testing.T) {
		if ok, conf := linkListed(); !ok {
			t.Errorf("resolv.conf does not list the link's search domains:\n%s", conf)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		out, err := resolved.Resolvectl(ctx, "status", cluster.NodeLink)
		for _, want := range []string{"-DefaultRoute", "DNS Servers: " + cluster.IP.String(), "DNS Domain: default.svc.cluster.local svc.cluster.local cluster.local"} {
			if err != nil || !strings.Contains(out, want) {
				t.Errorf("resolvectl status %s = %v, want %q in:\n%s", cluster.NodeLink, err, want, out)
			}
		}
	})

	if err := revert(); err != nil {
		t.Fatalf("revert: %v", err)
	}
	eventually(t, 5*time.Second, 50*time.Millisecond, "resolv.conf without the link after revert", func() (bool, string) {
		ok, conf := linkListed()
		return !ok, conf
	})
	wantNotCluster("after revert")
	wantAnswer("laptop.example.com.", "192.0.2.7", false)
	if err := revert(); err != nil {
		t.Errorf("revert again: %v", err)
	}

	// A killed kubetun takes its TUN with it: deleting the link stands for
	// that. Its settings go with it, and revert has nothing left to do.
	revert = configure()
	eventually(t, 5*time.Second, 50*time.Millisecond, "resolv.conf with the link after Configure", func() (bool, string) {
		return linkListed()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := tb.Run(ctx, tb.Node, "ip", "link", "del", cluster.NodeLink); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, 50*time.Millisecond, "resolv.conf without the link after it was deleted", func() (bool, string) {
		ok, conf := linkListed()
		return !ok, conf
	})
	if out, err := resolved.Resolvectl(ctx, "status"); err != nil || strings.Contains(out, cluster.NodeLink) || strings.Contains(out, cluster.IP.String()) {
		t.Errorf("resolvectl status after the link was deleted = %v, still names %s or %s:\n%s", err, cluster.NodeLink, cluster.IP, out)
	}
	wantNotCluster("after the link was deleted")
	wantAnswer("laptop.example.com.", "192.0.2.7", false)
	if err := revert(); err != nil {
		t.Errorf("revert after the link was deleted: %v, want nil (nothing left to undo)", err)
	}

	t.Run("a link without a routable address is refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := tb.Run(ctx, tb.Node, "sh", "-c", "ip link add kt-bare type veth peer name kt-bare-peer && ip link set kt-bare up && ip link set kt-bare-peer up"); err != nil {
			t.Fatal(err)
		}
		bare := hostdns.Link{Name: "kt-bare", Server: cluster.IP, ClusterDomain: "cluster.local"}
		err := testbed.InNamespace(tb.Node, func() error {
			_, err := hostdns.Configure(t.Context(), bare)
			return err
		})
		if !errors.Is(err, hostdns.ErrNoLinkAddress) {
			t.Errorf("Configure(%+v) = %v, want ErrNoLinkAddress", bare, err)
		}
	})

	t.Run("without resolved nothing is changed", func(t *testing.T) {
		if err := resolved.Process.Stop(5 * time.Second); err != nil {
			t.Logf("stopping systemd-resolved: %v", err)
		}
		err := testbed.InNamespace(tb.Node, func() error {
			_, err := hostdns.Configure(t.Context(), hostdns.Link{Name: upstream.NodeLink, Server: cluster.IP, ClusterDomain: "cluster.local"})
			return err
		})
		if !errors.Is(err, hostdns.ErrNoResolved) {
			t.Errorf("Configure without systemd-resolved = %v, want ErrNoResolved", err)
		}
	})
}
