package dns

import (
	"net/netip"
	"slices"
	"strings"

	miekg "github.com/miekg/dns"

	"github.com/kubetun/kubetun/resolver"
)

const (
	// TTL is the time to live of every record: CoreDNS's kubernetes plugin
	// default. Endpoints come and go; clients must not hold on to them.
	TTL = 5

	// SchemaVersion is the version of the Kubernetes DNS specification
	// answered, served as the TXT record dns-version.<domain>.
	SchemaVersion = "1.1.0"

	// maxCNAMEs bounds the CNAME chain of an answer (ExternalName
	// Services pointing at each other, and upstream's chain after them):
	// CoreDNS's bound, 8. A longer chain, or a loop, is SERVFAIL here
	// (RFC 1034 3.6.2: loops are signalled as errors).
	maxCNAMEs = 8

	// soaSerial is the SOA serial. Nothing transfers this zone, so it
	// need not change; negative answers are cached by the SOA's TTL.
	soaSerial = 1
)

// Zone is what the server is authoritative for.
type Zone struct {
	// Domain is the cluster domain, e.g. "cluster.local" (any case,
	// trailing dot or not).
	Domain string
	// Aliases are more domains answered as Domain is, each name under the
	// domain it was asked in: a laptop connected to several clusters that
	// all use cluster.local answers each under a domain of its own too
	// (<svc>.<ns>.svc.<context>). Reverse names are answered under Domain.
	Aliases []string
	// ServiceCIDRs are the service ranges. A reverse (PTR) name of an
	// address inside one is answered here — NXDOMAIN when no Service has
	// the address — and never forwarded; reverse names of other addresses
	// (pods, nodes, the internet) go upstream.
	ServiceCIDRs []netip.Prefix
	// NameServer is the address this server is reached on, if known: the
	// zone's NS record points to ns.dns.<domain>, which resolves to it.
	NameServer netip.Addr
	// Map, if set, translates the cluster's addresses to those this host
	// serves them on (a laptop connected to clusters whose service ranges
	// overlap, package addrmap): every A and AAAA record carries the
	// served address, and the reverse name of a served address is
	// answered as its real address's. NameServer is served already.
	Map Translator

	// endpoints caches the endpoint index of the latest snapshot for
	// reverse names; nil builds it on each reverse question.
	endpoints *endpointCache
}

// Translator maps a cluster's real addresses to the ones they are served
// on, and back; *addrmap.Table is one. Each returns its argument and false
// for an address it does not map.
type Translator interface {
	ToMapped(netip.Addr) (netip.Addr, bool)
	ToReal(netip.Addr) (netip.Addr, bool)
}

// Result is the answer to one question.
type Result struct {
	// Forward is true when the name is not the zone's: the question goes
	// to the upstream servers, and the other fields are empty.
	Forward bool
	// Rcode is miekg's RcodeSuccess (also for NODATA: no records of the
	// type asked, but the name exists), RcodeNameError (NXDOMAIN),
	// RcodeServerFailure (no snapshot yet; a CNAME loop, or a chain of
	// more than 8), or RcodeRefused (zone transfers).
	Rcode int
	// Authoritative is the AA bit: set on every answer from the zone.
	Authoritative bool
	// Answer, Ns and Extra are the message's sections. A negative answer
	// (NXDOMAIN or NODATA) carries the zone's SOA in Ns, so resolvers
	// cache it for TTL seconds (RFC 2308).
	Answer []miekg.RR
	Ns     []miekg.RR
	Extra  []miekg.RR
	// Chase, when set, is where the CNAME chain in Answer leaves the zone
	// (an ExternalName Service's outside target): the server asks
	// upstream for Chase with the question's type and appends what it
	// learns. Rcode is then NOERROR, the answer so far.
	Chase string
}

// Answer answers the question (name, qtype) from snap, class IN. Names are
// compared case-insensitively; records are owned by name as asked (so a
// resolver that randomises case sees its own spelling back).
//
// The names, for Domain cluster.local:
//
//	cluster.local                        SOA; NS when NameServer is set
//	dns-version.cluster.local            TXT "1.1.0"
//	ns.dns.cluster.local                 A/AAAA NameServer
//	svc.cluster.local                    exists, no records
//	<ns>.svc.cluster.local               exists, no records, if a Service lives in <ns>
//	<svc>.<ns>.svc.cluster.local         A/AAAA ClusterIPs; headless: A/AAAA of the ready
//	                                     endpoints (NXDOMAIN when none); SRV: one per port
//	                                     (headless: per endpoint and port); ExternalName:
//	                                     CNAME and the target's records (see Result.Chase)
//	<host>.<svc>.<ns>.svc.cluster.local  A/AAAA of a Service's ready endpoint, by its
//	                                     hostname, or its dashed address when it has none
//	_<port>._<proto>.<svc>.<ns>.svc...   SRV for a named port
//	<a-b-c-d>.<ns>.pod.cluster.local     A a.b.c.d (the spec's deprecated pod records)
//	<reversed ClusterIP>.in-addr.arpa    PTR <svc>.<ns>.svc.cluster.local (ip6.arpa too)
//	<reversed endpoint>.in-addr.arpa     PTR <host>.<svc>.<ns>.svc.cluster.local
//
// Every other name under the domain is NXDOMAIN. The endpoint names and
// their PTR records are CoreDNS's: the specification has them for headless
// Services only (2.4.1, 2.4.3), CoreDNS for every Service.
func (z Zone) Answer(snap *resolver.Snapshot, name string, qtype uint16) Result {
	return z.answer(snap, name, qtype, nil)
}

// answer is Answer for a name reached through the CNAMEs whose owners are
// chain (canonical), to detect loops.
func (z Zone) answer(snap *resolver.Snapshot, name string, qtype uint16, chain []string) Result {
	qname := miekg.Fqdn(name)
	lower := miekg.CanonicalName(qname)
	domain := miekg.CanonicalName(z.Domain)
	rel, ok := under(lower, domain)
	for _, a := range z.Aliases {
		// The longest domain a name is under is its zone's.
		a = miekg.CanonicalName(a)
		if r, in := under(lower, a); in && (!ok || len(a) > len(domain)) {
			domain, rel, ok = a, r, true
		}
	}
	q := &query{snap: snap, zone: z, domain: domain, qname: qname, qtype: qtype, chain: chain}

	if ok {
		q.origin = domain
		switch {
		case qtype == miekg.TypeAXFR || qtype == miekg.TypeIXFR:
			return Result{Rcode: miekg.RcodeRefused}
		case snap == nil:
			// Not synced yet: NXDOMAIN now would be cached as the truth.
			return Result{Rcode: miekg.RcodeServerFailure}
		}
		return q.cluster(miekg.SplitDomainName(rel))
	}
	if ip, origin, ok := parseReverse(lower); ok {
		q.origin = origin
		return q.reverse(ip)
	}
	return Result{Forward: true}
}

// under returns name relative to domain (both canonical) and whether name
// is domain or below it.
func under(name, domain string) (string, bool) {
	if name == domain {
		return "", true
	}
	if rel, ok := strings.CutSuffix(name, "."+domain); ok {
		return rel, true
	}
	return "", false
}

// query is one question being answered.
type query struct {
	snap   *resolver.Snapshot
	zone   Zone
	domain string // canonical cluster domain, "cluster.local."
	origin string // the zone the name is in, owner of the SOA
	qname  string // the name as asked, fully qualified
	qtype  uint16
	chain  []string // owners of the CNAMEs that led here, canonical
}

// cluster answers a name under the cluster domain; labels are the name's
// labels before the domain, lower case.
func (q *query) cluster(labels []string) Result {
	n := len(labels)
	if n == 0 {
		return q.apex()
	}
	rest := labels[:n-1]
	switch labels[n-1] {
	case "svc":
		return q.services(rest)
	case "pod":
		return q.pods(rest)
	case "dns":
		return q.nameServer(rest)
	case "dns-version":
		if n == 1 {
			if q.wants(miekg.TypeTXT) {
				return q.answer([]miekg.RR{&miekg.TXT{Hdr: q.hdr(q.qname, miekg.TypeTXT), Txt: []string{SchemaVersion}}}, nil)
			}
			return q.nodata()
		}
	}
	return q.nxdomain()
}

// apex answers the cluster domain itself.
func (q *query) apex() Result {
	var answer, extra []miekg.RR
	if q.wants(miekg.TypeSOA) {
		answer = append(answer, q.soa(q.qname))
	}
	if q.wants(miekg.TypeNS) && q.zone.NameServer.IsValid() {
		ns := "ns.dns." + q.domain
		answer = append(answer, &miekg.NS{Hdr: q.hdr(q.qname, miekg.TypeNS), Ns: ns})
		extra = append(extra, q.addr(ns, q.zone.NameServer))
	}
	return q.answer(answer, extra)
}

// nameServer answers dns.<domain> and ns.dns.<domain>.
func (q *query) nameServer(labels []string) Result {
	if !q.zone.NameServer.IsValid() {
		return q.nxdomain()
	}
	switch {
	case len(labels) == 0:
		return q.nodata() // dns.<domain>: only ns.dns.<domain> below it
	case len(labels) == 1 && labels[0] == "ns":
		return q.answer(q.addrs(q.qname, []netip.Addr{q.zone.NameServer}), nil)
	}
	return q.nxdomain()
}

// services answers a name under svc.<domain>; labels end with the
// namespace.
func (q *query) services(labels []string) Result {
	n := len(labels)
	switch {
	case n == 0:
		return q.nodata() // svc.<domain>
	case n == 1:
		if q.snap.HasNamespace(labels[0]) {
			return q.nodata()
		}
		return q.nxdomain()
	case n > 4:
		return q.nxdomain()
	}
	rec, ok := q.snap.Service(labels[n-1], labels[n-2])
	if !ok {
		return q.nxdomain()
	}
	switch n {
	case 2:
		return q.service(rec)
	case 3:
		return q.endpoint(rec, labels[0])
	default:
		return q.srv(rec, labels[0], labels[1])
	}
}

// service answers <svc>.<ns>.svc.<domain>.
func (q *query) service(rec *resolver.ServiceRecord) Result {
	switch {
	case rec.ExternalName != "":
		return q.externalName(rec)
	case rec.Headless:
		if len(rec.Endpoints) == 0 {
			return q.nxdomain() // the spec: no ready endpoints, no name
		}
		if q.qtype == miekg.TypeSRV {
			return q.srvAnswer(rec, srvRecords(rec, anyPort))
		}
		addrs := make([]netip.Addr, len(rec.Endpoints))
		for i, ep := range rec.Endpoints {
			addrs[i] = ep.Addr
		}
		return q.answer(q.addrs(q.qname, addrs), nil)
	case q.qtype == miekg.TypeSRV:
		return q.srvAnswer(rec, srvRecords(rec, anyPort))
	default:
		return q.answer(q.addrs(q.qname, rec.ClusterIPs), nil)
	}
}

// externalName answers an ExternalName Service's name: its CNAME and, as
// CoreDNS does, the target's records of the type asked, so that a stub
// resolver that does not follow CNAMEs itself (glibc's) gets addresses. A
// target in the zone is answered from the same snapshot; for any other the
// answer ends with Chase, and the server asks upstream.
func (q *query) externalName(rec *resolver.ServiceRecord) Result {
	target, ok := cnameTarget(rec.ExternalName)
	if !ok {
		return q.nxdomain()
	}
	cname := &miekg.CNAME{Hdr: q.hdr(q.qname, miekg.TypeCNAME), Target: target}
	if q.qtype == miekg.TypeCNAME || q.qtype == miekg.TypeANY {
		return q.answer([]miekg.RR{cname}, nil)
	}
	chain := append(slices.Clip(q.chain), miekg.CanonicalName(q.qname))
	if len(chain) > maxCNAMEs || slices.Contains(chain, miekg.CanonicalName(target)) {
		return Result{Rcode: miekg.RcodeServerFailure}
	}
	next := q.zone.answer(q.snap, target, q.qtype, chain)
	switch {
	case next.Forward:
		return Result{Rcode: miekg.RcodeSuccess, Authoritative: true, Answer: []miekg.RR{cname}, Chase: target}
	case next.Rcode != miekg.RcodeSuccess && next.Rcode != miekg.RcodeNameError:
		return next // a loop further on
	}
	// RFC 6604: the rcode is the last name's; AA is the first owner's.
	next.Authoritative = true
	next.Answer = append([]miekg.RR{cname}, next.Answer...)
	return next
}

// endpoint answers <label>.<svc>.<ns>.svc.<domain>: a Service's endpoint
// (for a ClusterIP Service too, as CoreDNS: so that the PTR record of an
// endpoint names a name that resolves back to it), or the _<proto> name
// above its SRV records.
func (q *query) endpoint(rec *resolver.ServiceRecord, label string) Result {
	if proto, ok := strings.CutPrefix(label, "_"); ok {
		// _<proto>.<svc>...: exists, empty, when some SRV name is below
		// it. NXDOMAIN here would tell an RFC 8020 resolver that the SRV
		// names do not exist either.
		if p, ok := protocolOf(proto); ok && len(srvRecords(rec, namedPort("", p))) > 0 {
			return q.nodata()
		}
		return q.nxdomain()
	}
	var addrs []netip.Addr
	for _, ep := range rec.Endpoints {
		if strings.EqualFold(endpointName(ep), label) {
			addrs = append(addrs, ep.Addr)
		}
	}
	if len(addrs) == 0 {
		return q.nxdomain()
	}
	return q.answer(q.addrs(q.qname, addrs), nil)
}

// srv answers _<port>._<proto>.<svc>.<ns>.svc.<domain>.
func (q *query) srv(rec *resolver.ServiceRecord, portLabel, protoLabel string) Result {
	port, ok1 := strings.CutPrefix(portLabel, "_")
	proto, ok2 := strings.CutPrefix(protoLabel, "_")
	p, ok3 := protocolOf(proto)
	if !ok1 || !ok2 || !ok3 || port == "" {
		return q.nxdomain()
	}
	targets := srvRecords(rec, namedPort(port, p))
	if len(targets) == 0 {
		return q.nxdomain()
	}
	if !q.wants(miekg.TypeSRV) {
		return q.nodata()
	}
	return q.srvAnswer(rec, targets)
}

// srvAnswer is the SRV records of targets, and the targets' addresses as
// additional records (each once).
func (q *query) srvAnswer(rec *resolver.ServiceRecord, targets []srvTarget) Result {
	svcName := rec.Name + "." + rec.Namespace + ".svc." + q.domain
	var answer, extra []miekg.RR
	type extraKey struct {
		name string
		addr netip.Addr
	}
	added := make(map[extraKey]bool)
	for _, t := range targets {
		name := svcName
		if t.host != "" {
			name = t.host + "." + svcName
		}
		answer = append(answer, &miekg.SRV{
			Hdr:      q.hdr(q.qname, miekg.TypeSRV),
			Priority: 0,
			Weight:   100,
			Port:     t.port,
			Target:   name,
		})
		for _, a := range t.addrs {
			if k := (extraKey{name, a}); !added[k] {
				added[k] = true
				extra = append(extra, q.addr(name, a))
			}
		}
	}
	return q.answer(answer, extra)
}

// srvTarget is one SRV record's data: a target and the addresses that go
// into the additional section with it.
type srvTarget struct {
	host  string // endpoint name below the Service's name; "" for the Service itself
	port  uint16
	addrs []netip.Addr
}

// namedPort matches rec's port named port (any named port when port is
// "") with protocol proto: the _<port>._<proto> SRV names. Unnamed ports
// have none.
func namedPort(port string, proto resolver.Protocol) func(resolver.PortRecord) bool {
	return func(p resolver.PortRecord) bool {
		return p.Name != "" && p.Protocol == proto && (port == "" || strings.EqualFold(p.Name, port))
	}
}

// anyPort matches every port: the SRV records of the Service's own name,
// one per port, as CoreDNS answers them.
func anyPort(resolver.PortRecord) bool { return true }

// srvRecords lists the SRV targets of rec's ports that match: the Service
// itself for a ClusterIP Service, each ready endpoint — with the port
// number its EndpointSlice gives — for a headless one. Targets are unique
// by (host, port): a port on TCP and UDP is one record, and a dual-stack
// endpoint, in an IPv4 and an IPv6 slice under one hostname, one target.
func srvRecords(rec *resolver.ServiceRecord, match func(resolver.PortRecord) bool) []srvTarget {
	var out []srvTarget
	add := func(host string, port uint16, addrs ...netip.Addr) {
		i := slices.IndexFunc(out, func(t srvTarget) bool { return t.host == host && t.port == port })
		if i < 0 {
			i = len(out)
			out = append(out, srvTarget{host: host, port: port})
		}
		for _, a := range addrs {
			if !slices.Contains(out[i].addrs, a) {
				out[i].addrs = append(out[i].addrs, a)
			}
		}
	}
	switch {
	case rec.ExternalName != "":
		return nil
	case rec.Headless:
		for _, ep := range rec.Endpoints {
			for _, p := range ep.Ports {
				if match(p) {
					add(endpointName(ep), p.Port, ep.Addr)
				}
			}
		}
	default:
		for _, p := range rec.Ports {
			if match(p) {
				add("", p.Port, rec.ClusterIPs...)
			}
		}
	}
	return out
}

// pods answers a name under pod.<domain>: <a-b-c-d>.<ns>.pod.<domain>, the
// spec's deprecated but still required pod records, answered as CoreDNS's
// "pods insecure" (kubeadm's default) does: for any address, in a
// namespace that exists.
func (q *query) pods(labels []string) Result {
	switch len(labels) {
	case 0:
		return q.nodata()
	case 1:
		if q.snap.HasNamespace(labels[0]) {
			return q.nodata()
		}
	case 2:
		ip, ok := podAddr(labels[0])
		if ok && q.snap.HasNamespace(labels[1]) {
			return q.answer(q.addrs(q.qname, []netip.Addr{ip}), nil)
		}
	}
	return q.nxdomain()
}

// reverse answers the PTR name of ip.
func (q *query) reverse(ip netip.Addr) Result {
	if q.zone.Map != nil {
		ip, _ = q.zone.Map.ToReal(ip)
	}
	rec, isService := q.snap.ServiceByIP(ip)
	if !isService && q.snap != nil {
		if o, ok := q.zone.endpoints.index(q.snap).lookup(ip); ok {
			// A Service's endpoint (the specification's 2.4.3 for
			// headless Services; CoreDNS's for every Service): its name
			// as the A/AAAA records give it.
			if !q.wants(miekg.TypePTR) {
				return q.nodata()
			}
			target := endpointName(o.endpoint()) + "." + o.rec.Name + "." + o.rec.Namespace + ".svc." + q.domain
			return q.answer([]miekg.RR{&miekg.PTR{Hdr: q.hdr(q.qname, miekg.TypePTR), Ptr: target}}, nil)
		}
	}
	if !isService && !q.inServiceCIDRs(ip) {
		// A pod's, a node's or a public address: upstream may know it.
		// (A ClusterIP outside the ranges, while they are not yet known,
		// is still answered.)
		return Result{Forward: true}
	}
	switch {
	case q.snap == nil:
		return Result{Rcode: miekg.RcodeServerFailure}
	case !isService:
		return q.nxdomain()
	case !q.wants(miekg.TypePTR):
		return q.nodata()
	}
	target := rec.Name + "." + rec.Namespace + ".svc." + q.domain
	return q.answer([]miekg.RR{&miekg.PTR{Hdr: q.hdr(q.qname, miekg.TypePTR), Ptr: target}}, nil)
}

func (q *query) inServiceCIDRs(ip netip.Addr) bool {
	for _, p := range q.zone.ServiceCIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// answer is a positive answer, or NODATA when answer is empty.
func (q *query) answer(answer, extra []miekg.RR) Result {
	if len(answer) == 0 {
		return q.nodata()
	}
	return Result{Rcode: miekg.RcodeSuccess, Authoritative: true, Answer: answer, Extra: extra}
}

// nodata says the name exists but has no records of the type asked.
func (q *query) nodata() Result {
	return Result{Rcode: miekg.RcodeSuccess, Authoritative: true, Ns: []miekg.RR{q.soa(q.origin)}}
}

// nxdomain says the name does not exist.
func (q *query) nxdomain() Result {
	return Result{Rcode: miekg.RcodeNameError, Authoritative: true, Ns: []miekg.RR{q.soa(q.origin)}}
}

// wants reports whether a record of type t answers the question.
func (q *query) wants(t uint16) bool {
	return q.qtype == t || q.qtype == miekg.TypeANY
}

func (q *query) hdr(name string, t uint16) miekg.RR_Header {
	return miekg.RR_Header{Name: name, Rrtype: t, Class: miekg.ClassINET, Ttl: TTL}
}

// soa is the zone's SOA record, owned by name. Its minimum (the negative
// caching TTL) is TTL: a Service created a second after a miss must not
// stay unknown for long.
func (q *query) soa(name string) miekg.RR {
	return &miekg.SOA{
		Hdr:     q.hdr(name, miekg.TypeSOA),
		Ns:      "ns.dns." + q.domain,
		Mbox:    "hostmaster." + q.domain,
		Serial:  soaSerial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  TTL,
	}
}

// addrs returns the A or AAAA records, as the question asks, of those of
// addrs in its family.
func (q *query) addrs(name string, addrs []netip.Addr) []miekg.RR {
	var out []miekg.RR
	for _, a := range addrs {
		if (a.Is4() && q.wants(miekg.TypeA)) || (a.Is6() && q.wants(miekg.TypeAAAA)) {
			out = append(out, q.addr(name, a))
		}
	}
	return out
}

// addr returns the A or AAAA record of a.
func (q *query) addr(name string, a netip.Addr) miekg.RR {
	if q.zone.Map != nil && a != q.zone.NameServer {
		a, _ = q.zone.Map.ToMapped(a)
	}
	if a.Is4() {
		return &miekg.A{Hdr: q.hdr(name, miekg.TypeA), A: a.AsSlice()}
	}
	return &miekg.AAAA{Hdr: q.hdr(name, miekg.TypeAAAA), AAAA: a.AsSlice()}
}

// endpointName is an endpoint's name below its Service: its hostname, or
// else its address with dashes (the spec leaves this "system-assigned
// identifier" open; dashes are what CoreDNS uses, fd00--1-5 for IPv6).
func endpointName(ep resolver.EndpointRecord) string {
	if ep.Hostname != "" {
		return ep.Hostname
	}
	if ep.Addr.Is4() {
		return strings.ReplaceAll(ep.Addr.String(), ".", "-")
	}
	return strings.ReplaceAll(ep.Addr.String(), ":", "-")
}

// podAddr parses a pod record's first label: 10-0-1-2 or fd00--1-2.
func podAddr(label string) (netip.Addr, bool) {
	if strings.Count(label, "-") == 3 && !strings.Contains(label, "--") {
		ip, err := netip.ParseAddr(strings.ReplaceAll(label, "-", "."))
		return ip, err == nil && ip.Is4()
	}
	ip, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":"))
	return ip, err == nil && ip.Is6() && ip.Zone() == ""
}

// cnameTarget returns an ExternalName as a CNAME target. An address is no
// name (the API accepts one, but DNS cannot CNAME to it); such a Service has
// no record, as in CoreDNS.
func cnameTarget(external string) (string, bool) {
	if _, err := netip.ParseAddr(external); err == nil {
		return "", false
	}
	if _, ok := miekg.IsDomainName(external); !ok {
		return "", false
	}
	return miekg.Fqdn(external), true
}

func protocolOf(label string) (resolver.Protocol, bool) {
	switch label {
	case "tcp":
		return resolver.TCP, true
	case "udp":
		return resolver.UDP, true
	case "sctp":
		return resolver.SCTP, true
	}
	return 0, false
}
