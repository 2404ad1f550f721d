package resolver

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Problem is something Build skipped, worth telling the user once.
type Problem struct {
	Object string // "Service default/foo" or "EndpointSlice default/foo-abc"
	Reason string
}

func (p Problem) String() string { return p.Object + ": " + p.Reason }

// Build makes a Snapshot from Services and EndpointSlices, the way kube-proxy
// reads them: EndpointSlices join their Service through the
// kubernetes.io/service-name label; a Service port takes its endpoints from
// the slice ports with the same name and protocol, so a named targetPort
// resolves per endpoint.
//
// prev, if not nil, is the snapshot being replaced: round-robin cursors carry
// over, so frequent rebuilds do not favour the first endpoint.
//
// Build never fails: what it cannot use it skips and reports as a Problem.
//
// topo says where this kubetun runs, for internalTrafficPolicy: Local and
// topology hints.
func Build(services []*corev1.Service, slices []*discoveryv1.EndpointSlice, prev *Snapshot, topo Topology) (*Snapshot, []Problem) {
	var problems []Problem
	bySvc := make(map[string][]*discoveryv1.EndpointSlice)
	for _, es := range slices {
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			problems = append(problems, Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
				"no " + discoveryv1.LabelServiceName + " label, so it belongs to no Service"})
			continue
		}
		key := es.Namespace + "/" + name
		bySvc[key] = append(bySvc[key], es)
	}

	snap := &Snapshot{
		ports:      make(map[portKey]*ServicePort),
		ips:        make(map[netip.Addr]bool),
		names:      make(map[nameKey]*ServiceRecord),
		byIP:       make(map[netip.Addr]*ServiceRecord),
		byEndpoint: make(map[netip.Addr]endpointRef),
		namespaces: make(map[string]struct{}),
	}
	for _, svc := range services {
		id := svc.Namespace + "/" + svc.Name
		ips, skip := clusterIPs(svc)
		rec := serviceRecord(svc, ips, bySvc[id])
		snap.names[nameKey{svc.Namespace, svc.Name}] = rec
		snap.namespaces[svc.Namespace] = struct{}{}
		for _, ip := range rec.ClusterIPs {
			snap.byIP[ip] = rec
		}
		for _, ep := range rec.Endpoints {
			if _, taken := snap.byEndpoint[ep.Addr]; !taken {
				snap.byEndpoint[ep.Addr] = endpointRef{rec, ep}
			}
		}
		if skip != "" {
			continue // headless or ExternalName: nothing to proxy
		}
		if len(ips) == 0 {
			problems = append(problems, Problem{"Service " + id, fmt.Sprintf("clusterIP %q is not an IP address", svc.Spec.ClusterIP)})
			continue
		}
		local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		affinity := affinityTimeout(svc)
		served := false
		for _, p := range svc.Spec.Ports {
			proto, ok := protocolOf(p.Protocol)
			if !ok {
				problems = append(problems, Problem{"Service " + id, fmt.Sprintf("port %d: protocol %q is not supported", p.Port, p.Protocol)})
				continue
			}
			if proto == SCTP {
				problems = append(problems, Problem{"Service " + id, fmt.Sprintf("port %d: SCTP is not supported (gVisor has no SCTP)", p.Port)})
				continue
			}
			for _, ip := range ips {
				eps, probs := endpointsFor(bySvc[id], p.Name, p.Protocol, ip)
				problems = append(problems, probs...)
				sp := &ServicePort{
					Service:   id,
					Name:      p.Name,
					Protocol:  proto,
					ClusterIP: ip,
					Port:      uint16(p.Port),
					Endpoints: eps,
					usable:    Usable(eps, local, topo),
				}
				if affinity > 0 {
					sp.affinityTimeout = affinity
					sp.affinity = newAffinityTable()
				}
				key := portKey{proto, netip.AddrPortFrom(ip, sp.Port)}
				if old, ok := snap.ports[key]; ok {
					problems = append(problems, Problem{"Service " + id,
						fmt.Sprintf("%s %s is already served by %s; ignored", proto, key.addr, old.Service)})
					continue
				}
				if old, ok := prev.Lookup(proto, key.addr); ok {
					sp.next.Store(old.next.Load())
					if sp.affinity != nil && old.affinity != nil {
						sp.affinity = old.affinity // clients stay where they were
					}
				}
				snap.ports[key] = sp
				snap.ips[ip] = snap.ips[ip] || len(sp.usable) > 0
				snap.endpoints += len(sp.usable)
				served = true
			}
		}
		if served {
			snap.services++
		}
	}
	return snap, problems
}

// clusterIPs returns the addresses a Service is served on, or a reason to
// skip it altogether.
func clusterIPs(svc *corev1.Service) (ips []netip.Addr, skip string) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, "ExternalName"
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	if len(raw) == 0 {
		return nil, "no clusterIP"
	}
	if raw[0] == corev1.ClusterIPNone {
		return nil, "headless"
	}
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, ""
		}
		ips = append(ips, ip.Unmap())
	}
	return ips, ""
}

// affinityTimeout returns how long ClientIP session affinity binds a client,
// or 0 when the Service has none.
func affinityTimeout(svc *corev1.Service) time.Duration {
	if svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	c := svc.Spec.SessionAffinityConfig
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil || *c.ClientIP.TimeoutSeconds <= 0 {
		return DefaultAffinityTimeout
	}
	return time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
}

func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "": // the API defaults a missing protocol to TCP
		return TCP, true
	case corev1.ProtocolUDP:
		return UDP, true
	case corev1.ProtocolSCTP:
		return SCTP, true
	}
	return 0, false
}

// endpointsFor collects the endpoints of one Service port from the Service's
// slices: those of ip's family, through the slice port with the same name and
// protocol. The result is sorted and has no duplicate address (an endpoint
// may sit in two slices while the controller moves it).
func endpointsFor(svcSlices []*discoveryv1.EndpointSlice, portName string, proto corev1.Protocol, ip netip.Addr) ([]Endpoint, []Problem) {
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	family := discoveryv1.AddressTypeIPv4
	if ip.Is6() {
		family = discoveryv1.AddressTypeIPv6
	}
	var (
		eps      []Endpoint
		problems []Problem
	)
	for _, es := range svcSlices {
		if es.AddressType != family {
			continue
		}
		if _, headless := es.Labels[corev1.IsHeadlessService]; headless {
			continue // kube-proxy never proxies to a headless Service's slices
		}
		port, ok := slicePort(es, portName, proto)
		if !ok {
			continue
		}
		for _, e := range es.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, use the first address: the API says they are
			// fungible and consumers use the first.
			addr, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				problems = append(problems, Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
					fmt.Sprintf("address %q is not an IP address", e.Addresses[0])})
				continue
			}
			addr = addr.Unmap()
			if reason := unsafeTarget(addr); reason != "" {
				// CVE-2020-8558: a Service must never become a way into the
				// node's own loopback or link-local services.
				problems = append(problems, Problem{"EndpointSlice " + es.Namespace + "/" + es.Name,
					fmt.Sprintf("endpoint %s is %s address; refused", addr, reason)})
				continue
			}
			ep := Endpoint{
				Addr:        netip.AddrPortFrom(addr, port),
				Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
				Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
				Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			}
			if e.NodeName != nil {
				ep.NodeName = *e.NodeName
			}
			if e.Zone != nil {
				ep.Zone = *e.Zone
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					ep.ForZones = append(ep.ForZones, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					ep.ForNodes = append(ep.ForNodes, n.Name)
				}
			}
			eps = append(eps, ep)
		}
	}
	slices.SortStableFunc(eps, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	eps = slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Addr == b.Addr })
	return eps, problems
}

// slicePort finds the port number a slice gives for a Service port.
func slicePort(es *discoveryv1.EndpointSlice, name string, proto corev1.Protocol) (uint16, bool) {
	for _, p := range es.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		pproto := corev1.ProtocolTCP
		if p.Protocol != nil {
			pproto = *p.Protocol
		}
		if pname != name || pproto != proto || p.Port == nil {
			continue
		}
		if *p.Port <= 0 || *p.Port > 65535 {
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// unsafeTarget names the kind of address kubetun never forwards to.
func unsafeTarget(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "a loopback"
	case a.IsLinkLocalUnicast():
		return "a link-local"
	case a.IsUnspecified():
		return "an unspecified"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast"
	}
	return ""
}
