package manifest

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An object is invalid when a value in it cannot be right as written: an
// address that is not an IP address (or not of its slice's family), a port
// number outside 1-65535 or missing from a slice port, an unknown protocol
// or address type, an endpoint without an address. The apiserver refuses
// most of these; kubetun refuses all of them. A Source keeps an invalid
// object's last valid version, as a server keeps its last configuration when
// a reload fails validation: an edit gone wrong must not take a Service
// down.
//
// What is well-formed but unusable in context stays for the table's build
// (resolver.Update) to judge and report, as it does for every source: an endpoint on loopback or
// inside a routed range, a ClusterIP outside the service CIDRs, a slice port
// no Service port names, SCTP, two Services on one ClusterIP.

// invalidService returns why svc is invalid, or "".
func invalidService(svc *corev1.Service) string {
	spec := &svc.Spec
	if spec.Type != corev1.ServiceTypeExternalName {
		if ip := spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone && !isIP(ip) {
			return fmt.Sprintf("clusterIP %q is not an IP address", ip)
		}
		for i, ip := range spec.ClusterIPs {
			if !isIP(ip) && (i > 0 || ip != corev1.ClusterIPNone) {
				return fmt.Sprintf("clusterIPs[%d] %q is not an IP address", i, ip)
			}
		}
		if len(spec.ClusterIPs) > 0 && spec.ClusterIP != "" && spec.ClusterIPs[0] != spec.ClusterIP {
			return fmt.Sprintf("clusterIPs[0] %s is not its clusterIP %s", spec.ClusterIPs[0], spec.ClusterIP)
		}
	}
	for i, p := range spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Sprintf("ports[%d]: port %d is not a port number (1-65535)", i, p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return fmt.Sprintf("ports[%d]: nodePort %d is not a port number (1-65535)", i, p.NodePort)
		}
		if !knownProtocol(p.Protocol) {
			return fmt.Sprintf("ports[%d]: protocol %q is not TCP, UDP or SCTP", i, p.Protocol)
		}
	}
	for i, ip := range spec.ExternalIPs {
		if !isIP(ip) {
			return fmt.Sprintf("externalIPs[%d] %q is not an IP address", i, ip)
		}
	}
	return ""
}

// invalidSlice returns why es is invalid, or "".
func invalidSlice(es *discoveryv1.EndpointSlice) string {
	var is4 bool
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		is4 = true
	case discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	default:
		return fmt.Sprintf("addressType %q is not IPv4, IPv6 or FQDN", es.AddressType)
	}
	for i, p := range es.Ports {
		switch {
		case p.Port == nil:
			return fmt.Sprintf("ports[%d] has no port number", i)
		case *p.Port < 1 || *p.Port > 65535:
			return fmt.Sprintf("ports[%d]: port %d is not a port number (1-65535)", i, *p.Port)
		case p.Protocol != nil && !knownProtocol(*p.Protocol):
			return fmt.Sprintf("ports[%d]: protocol %q is not TCP, UDP or SCTP", i, *p.Protocol)
		}
	}
	if es.AddressType == discoveryv1.AddressTypeFQDN {
		return "" // not served; Build says so
	}
	for i, ep := range es.Endpoints {
		if len(ep.Addresses) == 0 {
			return fmt.Sprintf("endpoints[%d] has no address", i)
		}
		for j, a := range ep.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || ip.Is4() != is4 {
				return fmt.Sprintf("endpoints[%d].addresses[%d] %q is not an %s address", i, j, a, es.AddressType)
			}
		}
	}
	return ""
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

func knownProtocol(p corev1.Protocol) bool {
	switch p {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		return true
	}
	return false
}

// invalidity is why an object of a file is invalid.
type invalidity struct{ file, reason string }

// invalidObjects returns, for each invalid object of objs (by pointer), why.
// A Source works it out once per decode, not per change.
func invalidObjects(objs Objects) map[any]string {
	var out map[any]string
	add := func(o any, why string) {
		if why == "" {
			return
		}
		if out == nil {
			out = make(map[any]string)
		}
		out[o] = why
	}
	for _, svc := range objs.Services {
		add(svc, invalidService(svc))
	}
	for _, es := range objs.Slices {
		add(es, invalidSlice(es))
	}
	return out
}

// objectKey names an object across versions and files.
type objectKey struct{ kind, namespace, name string }

// keepValid replaces each invalid object in list with its last valid
// version from last, with a warning naming the object, its file and the
// reason. An invalid object without a valid version yet (a new one) stays,
// for the table's build (resolver.Update) to report and skip what it
// cannot use, as for any source. The valid version of each object in list is recorded in next.
func keepValid[T metav1.Object](list []T, kind string, invalid map[any]invalidity, last, next map[objectKey]any, warnings *[]string) {
	for i, o := range list {
		k := objectKey{kind, o.GetNamespace(), o.GetName()}
		if bad, ok := invalid[o]; ok {
			old, ok := last[k].(T)
			if !ok {
				continue
			}
			*warnings = append(*warnings, fmt.Sprintf("%s: %s %s/%s: %s; keeping its last valid version",
				bad.file, kind, k.namespace, k.name, bad.reason))
			list[i], o = old, old
		}
		next[k] = o
	}
}
