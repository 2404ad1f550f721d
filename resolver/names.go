package resolver

import (
	"iter"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// ServiceRecord is what cluster DNS knows of one Service.
type ServiceRecord struct {
	Namespace string
	Name      string

	// ClusterIPs are the Service's addresses, primary family first; empty
	// for headless and ExternalName Services.
	ClusterIPs []netip.Addr
	// ExternalName is the CNAME target of an ExternalName Service.
	ExternalName string
	// Headless is true for clusterIP: None.
	Headless bool
	// Ports are the Service's ports.
	Ports []PortRecord
	// Endpoints are the Service's ready endpoints (all of them with
	// publishNotReadyAddresses), sorted by address; none for ExternalName.
	// A headless Service's name resolves to them; every Service's
	// endpoints have names below its own, and PTR records (as CoreDNS
	// gives them).
	Endpoints []EndpointRecord
}

// PortRecord is one port of a Service (for SRV records).
type PortRecord struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// EndpointRecord is one endpoint of a Service, as DNS names it.
type EndpointRecord struct {
	Addr     netip.Addr
	Hostname string       // the endpoint's hostname, if the slice gives one
	Ports    []PortRecord // the slice's ports (name, protocol, target port)
	Pod      PodRef       // the endpoint's targetRef, if it is a Pod
}

// PodRef names the Pod behind an endpoint address: the EndpointSlice
// endpoint's targetRef.
type PodRef struct {
	Namespace string
	Name      string
}

// nameKey identifies a Service by namespace and name.
type nameKey struct{ namespace, name string }

// Service returns the DNS record of namespace/name.
func (s *Snapshot) Service(namespace, name string) (*ServiceRecord, bool) {
	if s == nil {
		return nil, false
	}
	k := nameKey{namespace, name}
	n, ok := s.names.get(nameShard(k), k)
	return n.rec, ok
}

// ServiceByIP returns the Service whose ClusterIP is ip (for PTR records);
// if several claim it, the oldest, as for serving it.
func (s *Snapshot) ServiceByIP(ip netip.Addr) (*ServiceRecord, bool) {
	if s == nil {
		return nil, false
	}
	return s.byIP.get(addrShard(ip), ip)
}

// EndpointByIP returns a Service that has ip as an endpoint, and that
// endpoint. If several do, the oldest Service, then the first by
// namespace/name, whatever the order Build was given them in; cluster DNS
// may also index ServiceRecords its own way.
func (s *Snapshot) EndpointByIP(ip netip.Addr) (*ServiceRecord, EndpointRecord, bool) {
	if s == nil {
		return nil, EndpointRecord{}, false
	}
	ref, ok := s.endpointIndex()[ip]
	return ref.rec, ref.ep, ok
}

// PodByIP returns the Pod whose address ip is, as the targetRef of an
// endpoint of any Service (headless ones included) gives it, ready or not.
// If several endpoints name different Pods for ip, the first in the order
// Build saw the slices wins.
func (s *Snapshot) PodByIP(ip netip.Addr) (namespace, name string, ok bool) {
	if s == nil {
		return "", "", false
	}
	ref, ok := s.pods.index()[ip.Unmap()]
	return ref.Namespace, ref.Name, ok
}

// podIndex is podsByIP of a snapshot's slices, made on first use: only
// dials to pods without a route need it, and a change of one slice must
// not cost a pass over every endpoint.
type podIndex struct {
	once    sync.Once
	objects *objects // the snapshot's
	m       map[netip.Addr]PodRef
}

func (p *podIndex) index() map[netip.Addr]PodRef {
	p.once.Do(func() {
		var list []*discoveryv1.EndpointSlice
		if p.objects != nil {
			for _, defs := range p.objects.slices.all() {
				list = append(list, defs...)
			}
		}
		p.m = podsByIP(byName(list))
		p.objects = nil
	})
	return p.m
}

// podsByIP maps every endpoint address of slices to its Pod.
func podsByIP(slices []*discoveryv1.EndpointSlice) map[netip.Addr]PodRef {
	pods := make(map[netip.Addr]PodRef)
	for _, es := range slices {
		for _, e := range es.Endpoints {
			ref, ok := targetPod(es.Namespace, e)
			if !ok {
				continue
			}
			for _, a := range e.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				if _, taken := pods[addr.Unmap()]; !taken {
					pods[addr.Unmap()] = ref
				}
			}
		}
	}
	return pods
}

// targetPod returns the Pod endpoint e of a slice in namespace refers to.
// A targetRef without a namespace is in the slice's.
func targetPod(namespace string, e discoveryv1.Endpoint) (PodRef, bool) {
	t := e.TargetRef
	if t == nil || t.Kind != "Pod" || t.Name == "" {
		return PodRef{}, false
	}
	if t.Namespace != "" {
		namespace = t.Namespace
	}
	return PodRef{Namespace: namespace, Name: t.Name}, true
}

// endpointRef is one endpoint and its Service.
type endpointRef struct {
	rec *ServiceRecord
	ep  EndpointRecord
}

// ServiceRecords returns the DNS record of every Service, in no particular
// order (cluster DNS indexes them its own way, e.g. every endpoint address
// for PTR records). The records must not be modified.
func (s *Snapshot) ServiceRecords() iter.Seq[*ServiceRecord] {
	return func(yield func(*ServiceRecord) bool) {
		if s == nil {
			return
		}
		for _, n := range s.names.all() {
			if !yield(n.rec) {
				return
			}
		}
	}
}

// HasNamespace reports whether any Service lives in namespace.
func (s *Snapshot) HasNamespace(namespace string) bool {
	if s == nil {
		return false
	}
	_, ok := s.namespaces[namespace]
	return ok
}

// serviceRecord makes the DNS record of svc; ips are its parsed ClusterIPs.
func serviceRecord(svc *corev1.Service, ips []netip.Addr, slices []*discoveryv1.EndpointSlice) *ServiceRecord {
	r := &ServiceRecord{Namespace: svc.Namespace, Name: svc.Name}
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		r.ExternalName = svc.Spec.ExternalName
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		r.Headless = true
		r.Endpoints = readyEndpoints(slices, svc.Spec.PublishNotReadyAddresses)
	default:
		r.ClusterIPs = ips
		r.Endpoints = readyEndpoints(slices, svc.Spec.PublishNotReadyAddresses)
	}
	for _, p := range svc.Spec.Ports {
		if proto, ok := protocolOf(p.Protocol); ok {
			r.Ports = append(r.Ports, PortRecord{Name: p.Name, Protocol: proto, Port: uint16(p.Port)})
		}
	}
	return r
}

// readyEndpoints lists the endpoints DNS names for a Service.
func readyEndpoints(svcSlices []*discoveryv1.EndpointSlice, notReadyToo bool) []EndpointRecord {
	var out []EndpointRecord
	for _, es := range svcSlices {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var ports []PortRecord
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			pr := PortRecord{Protocol: TCP, Port: uint16(*p.Port)}
			if p.Name != nil {
				pr.Name = *p.Name
			}
			if p.Protocol != nil {
				if proto, ok := protocolOf(*p.Protocol); ok {
					pr.Protocol = proto
				}
			}
			ports = append(ports, pr)
		}
		for _, e := range es.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			if !ready && !notReadyToo {
				continue
			}
			for _, a := range e.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				rec := EndpointRecord{Addr: addr.Unmap(), Ports: ports}
				if e.Hostname != nil {
					rec.Hostname = *e.Hostname
				}
				rec.Pod, _ = targetPod(es.Namespace, e)
				out = append(out, rec)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b EndpointRecord) int { return a.Addr.Compare(b.Addr) })
	return slices.CompactFunc(out, func(a, b EndpointRecord) bool { return a.Addr == b.Addr })
}
