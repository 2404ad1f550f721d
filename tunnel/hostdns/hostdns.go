// Package hostdns sends the cluster domain, and nothing else, from the host's
// resolver to kubetun's DNS server: split DNS on kubetun's link, never a
// change to the host's global DNS.
//
// With systemd-resolved, Configure gives the link its own DNS server and
// domains over D-Bus (org.freedesktop.resolve1, see
// https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.resolve1.html).
// resolved keeps such settings per link and forgets them when the link goes
// away, so a kubetun that is killed leaves nothing behind; the revert func
// undoes them explicitly on a clean exit. Without resolved, Configure changes
// nothing and returns ErrNoResolved; Instructions then says what the user
// could add by hand.
package hostdns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	miekg "github.com/miekg/dns"
)

// Link is kubetun's link and what the host should resolve through it.
type Link struct {
	// Index is the link's interface index in the network namespace
	// systemd-resolved runs in (the caller's). Zero: looked up by Name.
	Index int
	// Name is the link's name, e.g. "kubetun0": looked up when Index is
	// zero, and named in errors and Instructions.
	Name string
	// Server is kubetun's cluster DNS address (port 53, UDP and TCP),
	// routed into the link.
	Server netip.Addr
	// ClusterDomain is the cluster's DNS domain, e.g. "cluster.local".
	ClusterDomain string
	// Namespace is the Kubernetes namespace short names resolve in
	// (kubeconfig's current one), e.g. "default"; empty for none.
	Namespace string
	// NoSearch routes ClusterDomain to the link without searching it:
	// short names are left to the connection that has the search domains
	// (the first of several clusters), so that "web.default" never
	// silently reaches another cluster than the one it reached before.
	NoSearch bool
	// Aliases are more domains sent to Server, routing only, never
	// searched: a cluster's own domain beside the shared cluster.local
	// (kind-b, for web.default.svc.kind-b).
	Aliases []string
}

// ErrNoResolved says that systemd-resolved does not serve this host: no
// system bus, or nothing owns org.freedesktop.resolve1 on it. Configure
// changed nothing then; Instructions says what the user can add by hand.
var ErrNoResolved = errors.New("systemd-resolved is not running")

// ErrNoLinkAddress says that the link has no address other than loopback
// or link-local ones. systemd-resolved sends unicast DNS only over a link
// with such an address ("at least one routable address", link_relevant in
// https://github.com/systemd/systemd/blob/main/src/resolve/resolved-link.c):
// without one, cluster names would silently go to the host's other DNS
// servers instead. Give the link an address, then call Configure.
var ErrNoLinkAddress = errors.New("link has no routable address")

// check validates l and returns it with the cluster domain canonical: lower
// case, no trailing dot.
func (l Link) check() (Link, error) {
	if l.Index <= 0 && l.Name == "" {
		return l, errors.New("hostdns: link has neither index nor name")
	}
	if !l.Server.IsValid() || l.Server.IsUnspecified() {
		return l, fmt.Errorf("hostdns: link %s: DNS server %v is not an address", l, l.Server)
	}
	l.Server = l.Server.Unmap()
	l.ClusterDomain = strings.ToLower(strings.TrimSuffix(l.ClusterDomain, "."))
	if l.ClusterDomain == "" {
		return l, fmt.Errorf("hostdns: link %s: empty cluster domain", l)
	}
	if _, ok := miekg.IsDomainName(l.ClusterDomain); !ok {
		return l, fmt.Errorf("hostdns: link %s: cluster domain %q is not a domain name", l, l.ClusterDomain)
	}
	l.Aliases = slices.Clone(l.Aliases)
	for i, a := range l.Aliases {
		a = strings.ToLower(strings.TrimSuffix(a, "."))
		if _, ok := miekg.IsDomainName(a); !ok || a == "" {
			return l, fmt.Errorf("hostdns: link %s: domain %q is not a domain name", l, a)
		}
		l.Aliases[i] = a
	}
	if l.Namespace != "" {
		if _, ok := miekg.IsDomainName(l.Namespace); !ok || strings.Contains(l.Namespace, ".") {
			return l, fmt.Errorf("hostdns: link %s: namespace %q is not one DNS label", l, l.Namespace)
		}
	}
	return l, nil
}

// String names the link for messages: its name, or its index.
func (l Link) String() string {
	switch {
	case l.Name != "" && l.Index > 0:
		return fmt.Sprintf("%s (index %d)", l.Name, l.Index)
	case l.Name != "":
		return l.Name
	}
	return fmt.Sprintf("index %d", l.Index)
}

// SearchDomains returns the search list a pod in namespace gets from
// kubelet, the same order: "<ns>.svc.<domain>", "svc.<domain>", "<domain>"
// (the first left out when namespace is empty). The domain must be
// canonical (no trailing dot).
func SearchDomains(clusterDomain, namespace string) []string {
	var list []string
	if namespace != "" {
		list = append(list, namespace+".svc."+clusterDomain)
	}
	return append(list, "svc."+clusterDomain, clusterDomain)
}

// linkDomain is one entry of resolved's per-link domain list, D-Bus "(sb)".
type linkDomain struct {
	Domain string
	// RoutingOnly: the domain routes queries to the link but is not
	// appended to short names (written "~domain" in resolvectl).
	RoutingOnly bool
}

// linkDomains is what Configure gives the link: the search domains, the
// cluster domain among them, or with NoSearch the cluster domain as a
// routing domain only; then the aliases, routing only. A search domain
// routes as well as being searched (systemd-resolved.service(8),
// "Protocols and Routing"), so every name under the cluster domain goes to
// the link; that match is also what lets a ".local" cluster domain reach
// unicast DNS at all instead of mDNS.
func linkDomains(l Link) []linkDomain {
	var list []linkDomain
	if l.NoSearch {
		list = append(list, linkDomain{Domain: l.ClusterDomain, RoutingOnly: true})
	} else {
		for _, d := range SearchDomains(l.ClusterDomain, l.Namespace) {
			list = append(list, linkDomain{Domain: d})
		}
	}
	for _, a := range l.Aliases {
		list = append(list, linkDomain{Domain: a, RoutingOnly: true})
	}
	return list
}
