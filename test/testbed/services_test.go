package testbed

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubetun/kubetun/resolver/manifest"
)

func TestServicesYAML(t *testing.T) {
	v4, v6 := netip.MustParseAddr(ClusterIP), netip.MustParseAddr(ClusterIP6)
	pod1v4, pod1v6 := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("fd00:10:1::2")
	ports := []ServicePort{
		{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080},
		{Name: "echo-udp", Port: 7, TargetPort: "9002", EndpointPort: 9002, Protocol: "UDP"},
	}
	data, err := ServicesYAML(
		Service{Name: "dual", ClusterIPs: []netip.Addr{v4, v6}, Ports: ports, Endpoints: []Endpoint{
			{IP: pod1v4, Pod: "pod1", Node: NodeName},
			{IP: pod1v6, Pod: "pod1", Node: NodeName},
		}},
		Service{Name: "empty", Namespace: "other", ClusterIPs: []netip.Addr{v6}, Ports: ports},
	)
	if err != nil {
		t.Fatal(err)
	}
	// kubetun's own decoder: strict field names, so a warning is a typo here.
	objs, err := manifest.Decode("services.yaml", data)
	if err != nil {
		t.Fatalf("manifest.Decode: %v\n%s", err, data)
	}
	if len(objs.Warnings) > 0 {
		t.Errorf("manifest.Decode warnings: %q\n%s", objs.Warnings, data)
	}
	if len(objs.Services) != 2 || len(objs.Slices) != 3 {
		t.Fatalf("decoded %d Services and %d slices, want 2 and 3\n%s", len(objs.Services), len(objs.Slices), data)
	}

	dual := objs.Services[0]
	if got := dual.Spec.ClusterIPs; !slices.Equal(got, []string{ClusterIP, ClusterIP6}) || dual.Spec.ClusterIP != ClusterIP {
		t.Errorf("dual clusterIP %s, clusterIPs %v; want %s, [%s %s]", dual.Spec.ClusterIP, got, ClusterIP, ClusterIP, ClusterIP6)
	}
	if got := dual.Spec.IPFamilies; !slices.Equal(got, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}) {
		t.Errorf("dual ipFamilies = %v, want [IPv4 IPv6]", got)
	}
	if p := dual.Spec.IPFamilyPolicy; p == nil || *p != corev1.IPFamilyPolicyRequireDualStack {
		t.Errorf("dual ipFamilyPolicy = %v, want RequireDualStack", p)
	}
	if p := dual.Spec.Ports[1]; p.Protocol != corev1.ProtocolUDP || p.Port != 7 || p.TargetPort.IntValue() != 9002 {
		t.Errorf("dual port 1 = %+v, want UDP 7 → 9002", p)
	}
	for i, want := range []struct {
		name, ns  string
		addrType  discoveryv1.AddressType
		endpoints []string
	}{
		{"dual-4xk2p", "default", discoveryv1.AddressTypeIPv4, []string{"10.0.1.2"}},
		{"dual-6xk2p", "default", discoveryv1.AddressTypeIPv6, []string{"fd00:10:1::2"}},
		{"empty-6xk2p", "other", discoveryv1.AddressTypeIPv6, nil},
	} {
		es := objs.Slices[i]
		var got []string
		for _, ep := range es.Endpoints {
			got = append(got, ep.Addresses...)
		}
		if es.Name != want.name || es.Namespace != want.ns || es.AddressType != want.addrType || !slices.Equal(got, want.endpoints) {
			t.Errorf("slice %d = %s/%s %s %v, want %s/%s %s %v", i, es.Namespace, es.Name, es.AddressType, got, want.ns, want.name, want.addrType, want.endpoints)
		}
		owner := strings.TrimSuffix(strings.TrimSuffix(want.name, "-4xk2p"), "-6xk2p")
		if es.Labels[discoveryv1.LabelServiceName] != owner {
			t.Errorf("slice %s labels = %v, want %s=%s", es.Name, es.Labels, discoveryv1.LabelServiceName, owner)
		}
		if len(es.Ports) != 2 || *es.Ports[1].Protocol != corev1.ProtocolUDP || *es.Ports[1].Port != 9002 {
			t.Errorf("slice %s ports = %v, want http 8080/TCP, echo-udp 9002/UDP", es.Name, es.Ports)
		}
	}
}

func TestServicesYAMLRefuses(t *testing.T) {
	v4, v4b := netip.MustParseAddr(ClusterIP), netip.MustParseAddr("10.3.241.153")
	for _, tc := range []struct {
		name string
		svc  Service
	}{
		{"no_name", Service{ClusterIPs: []netip.Addr{v4}}},
		{"no_clusterIP", Service{Name: "a"}},
		{"two_of_a_family", Service{Name: "a", ClusterIPs: []netip.Addr{v4, v4b}}},
		{"endpoint_of_another_family", Service{Name: "a", ClusterIPs: []netip.Addr{v4},
			Endpoints: []Endpoint{{IP: netip.MustParseAddr("fd00:10:1::2"), Pod: "p", Node: NodeName}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if data, err := ServicesYAML(tc.svc); err == nil {
				t.Errorf("ServicesYAML(%+v) = nil error, want one\n%s", tc.svc, data)
			}
		})
	}
}

// TestServicesYAMLExternal: the fields of a Service reached from outside
// the cluster decode as written.
func TestServicesYAMLExternal(t *testing.T) {
	data, err := ServicesYAML(Service{
		Name: "lb", ClusterIPs: []netip.Addr{netip.MustParseAddr(ClusterIP)}, Type: "LoadBalancer",
		Ports:                 []ServicePort{{Port: 80, TargetPort: "http", EndpointPort: 8080, NodePort: 30080}},
		ExternalIPs:           []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		LoadBalancerIPs:       []netip.Addr{netip.MustParseAddr("198.51.100.10")},
		ExternalTrafficPolicy: "Local", HealthCheckNodePort: 32000,
	})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifest.Decode("services.yaml", data)
	if err != nil || len(objs.Warnings) > 0 || len(objs.Services) != 1 {
		t.Fatalf("manifest.Decode: %v %q\n%s", err, objs.Warnings, data)
	}
	s := objs.Services[0]
	if s.Spec.Type != corev1.ServiceTypeLoadBalancer || s.Spec.Ports[0].NodePort != 30080 ||
		!slices.Equal(s.Spec.ExternalIPs, []string{"192.0.2.10"}) || s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
		s.Spec.HealthCheckNodePort != 32000 || len(s.Status.LoadBalancer.Ingress) != 1 || s.Status.LoadBalancer.Ingress[0].IP != "198.51.100.10" {
		t.Errorf("decoded Service = %+v\n%s", s, data)
	}
}
