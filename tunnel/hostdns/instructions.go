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
	p("  dnsmasq: a file /etc/dnsmasq.d/kubetun.conf with these two lines, then sudo systemctl restart dnsmasq")
	p("    server=/%s/%s", domain, server)
	p("    rebind-domain-ok=/%s/", domain)
	p("")
	p("  NetworkManager with dns=dnsmasq: the same two lines in /etc/NetworkManager/dnsmasq.d/kubetun.conf,")
	p("  then sudo systemctl reload NetworkManager")
	p("")
	p("  A plain /etc/resolv.conf cannot send one domain to one server: do not add %s there (every", server)
	p("  name would then go through kubetun, and none would resolve once it stops). Ask it directly:")
	p("    dig @%s %s", server, name)
	p("")
	p("For short names (service, service.namespace), add these search domains to /etc/resolv.conf's")
	p("search line or to your network settings:")
	p("    %s", search)
	p("Check: dig %s answers with the Service's ClusterIP.", name)
	p("Undo: delete the file and the search domains, then restart or reload the resolver as above.")
	return b.String()
}
