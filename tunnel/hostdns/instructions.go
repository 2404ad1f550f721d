package hostdns

import (
	"fmt"
	"strings"
)

// Instructions is what to tell the user when Configure could not set DNS
// (ErrNoResolved): the lines that send the cluster domain, and only it, to
// kubetun with the resolvers Linux hosts commonly run instead of
// systemd-resolved, and how to check and undo them. It changes nothing
// itself. The text ends with a newline; each line is meant to be printed as
// is, without a log prefix, so that it can be copied.
func Instructions(l Link) string {
	domain := strings.ToLower(strings.TrimSuffix(l.ClusterDomain, "."))
	server := l.Server.Unmap().String()
	search := strings.Join(SearchDomains(domain, l.Namespace), " ")
	name := "kubernetes.default.svc." + domain
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("kubetun changed no DNS settings: systemd-resolved is not running on this host.")
	p("kubetun serves names under %s at %s (UDP and TCP port 53) while it runs. To resolve them", domain, server)
	p("through the host's resolver, and send nothing else there, add to the resolver you run:")
	p("")
	domains := []string{domain}
	for _, a := range l.Aliases {
		domains = append(domains, strings.ToLower(strings.TrimSuffix(a, ".")))
	}
	file := "kubetun.conf"
	if len(domains) > 1 || l.NoSearch {
		// One file per connection: several clusters, several files.
		file = "kubetun-" + l.Name + ".conf"
	}
	lines := "two lines"
	if len(domains) > 1 {
		lines = "lines"
	}
	p("  dnsmasq: a file /etc/dnsmasq.d/%s with these %s, then sudo systemctl restart dnsmasq", file, lines)
	for _, d := range domains {
		p("    server=/%s/%s", d, server)
		p("    rebind-domain-ok=/%s/", d)
	}
	p("")
	p("  NetworkManager with dns=dnsmasq: the same %s in /etc/NetworkManager/dnsmasq.d/%s,", lines, file)
	p("  then sudo systemctl reload NetworkManager")
	p("")
	p("  A plain /etc/resolv.conf cannot send one domain to one server: do not add %s there (every", server)
	p("  name would then go through kubetun, and none would resolve once it stops). Ask it directly:")
	p("    dig @%s %s", server, name)
	p("")
	if !l.NoSearch {
		p("For short names (service, service.namespace), add these search domains to /etc/resolv.conf's")
		p("search line or to your network settings:")
		p("    %s", search)
	}
	p("Check: dig %s answers with the Service's ClusterIP.", name)
	p("Undo: delete the file and the search domains, then restart or reload the resolver as above.")
	return b.String()
}
