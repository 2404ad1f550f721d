package hostdns

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// clusterLink is a typical laptop's: the seed's DNS address, the default
// cluster domain, namespace default.
var clusterLink = Link{
	Name:          "kubetun0",
	Server:        netip.MustParseAddr("10.3.240.10"),
	ClusterDomain: "cluster.local",
	Namespace:     "default",
}

// TestInstructions pins the whole text: it is what a user copies.
func TestInstructions(t *testing.T) {
	const want = `kubetun changed no DNS settings: systemd-resolved is not running on this host.
kubetun serves names under cluster.local at 10.3.240.10 (UDP and TCP port 53) while it runs. To resolve them
through the host's resolver, and send nothing else there, add to the resolver you run:

  dnsmasq: a file /etc/dnsmasq.d/kubetun.conf with these two lines, then sudo systemctl restart dnsmasq
    server=/cluster.local/10.3.240.10
    rebind-domain-ok=/cluster.local/

  NetworkManager with dns=dnsmasq: the same two lines in /etc/NetworkManager/dnsmasq.d/kubetun.conf,
  then sudo systemctl reload NetworkManager

  A plain /etc/resolv.conf cannot send one domain to one server: do not add 10.3.240.10 there (every
  name would then go through kubetun, and none would resolve once it stops). Ask it directly:
    dig @10.3.240.10 kubernetes.default.svc.cluster.local

For short names (service, service.namespace), add these search domains to /etc/resolv.conf's
search line or to your network settings:
    default.svc.cluster.local svc.cluster.local cluster.local
Check: dig kubernetes.default.svc.cluster.local answers with the Service's ClusterIP.
Undo: delete the file and the search domains, then restart or reload the resolver as above.
`
	if got := Instructions(clusterLink); got != want {
		t.Errorf("Instructions(%+v) =\n%s\nwant\n%s", clusterLink, got, want)
	}
}

// TestInstructionsVariants checks the lines that change with the link: an
// IPv6 server, a custom domain given with its trailing dot, no namespace.
func TestInstructionsVariants(t *testing.T) {
	l := Link{
		Name:          "kubetun0",
		Server:        netip.MustParseAddr("fd00:10:96::a"),
		ClusterDomain: "Corp.Example.",
	}
	got := Instructions(l)
	for _, line := range []string{
		"    server=/corp.example/fd00:10:96::a",
		"    rebind-domain-ok=/corp.example/",
		"    dig @fd00:10:96::a kubernetes.default.svc.corp.example",
		"    svc.corp.example corp.example",
	} {
		if !slices.Contains(strings.Split(got, "\n"), line) {
			t.Errorf("Instructions(%+v) lacks the line %q:\n%s", l, line, got)
		}
	}
	if strings.Contains(got, "Corp.Example") || strings.Contains(got, "example.") {
		t.Errorf("Instructions(%+v) uses the domain as given, not canonical:\n%s", l, got)
	}
}

func TestSearchDomains(t *testing.T) {
	for _, tc := range []struct {
		domain, namespace string
		want              []string
	}{
		{"cluster.local", "default", []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{"cluster.local", "", []string{"svc.cluster.local", "cluster.local"}},
		{"k8s.corp.example", "team-a", []string{"team-a.svc.k8s.corp.example", "svc.k8s.corp.example", "k8s.corp.example"}},
	} {
		if got := SearchDomains(tc.domain, tc.namespace); !slices.Equal(got, tc.want) {
			t.Errorf("SearchDomains(%q, %q) = %q, want %q", tc.domain, tc.namespace, got, tc.want)
		}
	}
}

// TestLinkDomains checks the domains a link gets: the first cluster's
// search domains and its own domain routing only; a second cluster's
// cluster domain and own domain, routing only, never searched.
func TestLinkDomains(t *testing.T) {
	for _, tc := range []struct {
		name string
		link Link
		want []linkDomain
	}{
		{"one cluster", Link{ClusterDomain: "cluster.local", Namespace: "default"},
			[]linkDomain{{"default.svc.cluster.local", false}, {"svc.cluster.local", false}, {"cluster.local", false}}},
		{"the first of several", Link{ClusterDomain: "cluster.local", Namespace: "default", Aliases: []string{"kind-a"}},
			[]linkDomain{{"default.svc.cluster.local", false}, {"svc.cluster.local", false}, {"cluster.local", false}, {"kind-a", true}}},
		{"another", Link{ClusterDomain: "kind-b", Namespace: "default", NoSearch: true},
			[]linkDomain{{"kind-b", true}}},
	} {
		if got := linkDomains(tc.link); !slices.Equal(got, tc.want) {
			t.Errorf("%s: linkDomains(%+v) = %v, want %v", tc.name, tc.link, got, tc.want)
		}
	}
}

func TestLinkCheck(t *testing.T) {
	dns := netip.MustParseAddr("10.3.240.10")
	for _, tc := range []struct {
		name string
		link Link
		want string // in the error; "" for none
	}{
		{"valid", Link{Name: "kubetun0", Server: dns, ClusterDomain: "cluster.local"}, ""},
		{"by index", Link{Index: 3, Server: dns, ClusterDomain: "cluster.local."}, ""},
		{"no link", Link{Server: dns, ClusterDomain: "cluster.local"}, "neither index nor name"},
		{"no server", Link{Name: "kubetun0", ClusterDomain: "cluster.local"}, "not an address"},
		{"unspecified server", Link{Name: "kubetun0", Server: netip.IPv4Unspecified(), ClusterDomain: "cluster.local"}, "not an address"},
		{"no domain", Link{Name: "kubetun0", Server: dns, ClusterDomain: "."}, "empty cluster domain"},
		{"bad domain", Link{Name: "kubetun0", Server: dns, ClusterDomain: "cluster..local"}, "not a domain name"},
		{"bad alias", Link{Name: "kubetun0", Server: dns, ClusterDomain: "cluster.local", Aliases: []string{"a..b"}}, "not a domain name"},
		{"dotted namespace", Link{Name: "kubetun0", Server: dns, ClusterDomain: "cluster.local", Namespace: "a.b"}, "not one DNS label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.link.check()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("check(%+v) = %v, want no error", tc.link, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("check(%+v) = %v, want an error with %q", tc.link, err, tc.want)
			case err == nil && got.ClusterDomain != "cluster.local":
				t.Errorf("check(%+v): cluster domain %q, want cluster.local", tc.link, got.ClusterDomain)
			}
		})
	}
}

// TestConfigureWithoutSystemBus: no bus at $DBUS_SYSTEM_BUS_ADDRESS is a
// host without resolved, and nothing is changed.
func TestConfigureWithoutSystemBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	revert, err := Configure(t.Context(), clusterLink)
	if !errors.Is(err, ErrNoResolved) || revert != nil {
		t.Errorf("Configure(%+v) without a system bus = %v, %v; want nil, ErrNoResolved", clusterLink, revert != nil, err)
	}
}

// TestInstructionsSeveral checks the text for a second cluster: its file
// named after its link, a server line per domain, no search domains.
func TestInstructionsSeveral(t *testing.T) {
	got := Instructions(Link{Name: "kt-kind-b", Server: netip.MustParseAddr("240.16.0.10"), ClusterDomain: "kind-b", NoSearch: true, Aliases: []string{"b.example."}})
	for _, line := range []string{
		"dnsmasq: a file /etc/dnsmasq.d/kubetun-kt-kind-b.conf with these lines,",
		"    server=/kind-b/240.16.0.10\n    rebind-domain-ok=/kind-b/\n    server=/b.example/240.16.0.10\n    rebind-domain-ok=/b.example/\n",
		"the same lines in /etc/NetworkManager/dnsmasq.d/kubetun-kt-kind-b.conf,",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("Instructions =\n%s\nwant it to contain %q", got, line)
		}
	}
	if strings.Contains(got, "search domains to") {
		t.Errorf("Instructions with NoSearch name search domains:\n%s", got)
	}
}
