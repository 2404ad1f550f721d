package proxy

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubetun/kubetun/resolver"
)

func TestDNSService(t *testing.T) {
	dnsIP := netip.MustParseAddr("10.3.240.10")
	svc := func(name, ip string, proto corev1.Protocol, port int32) *corev1.Service {
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Type: corev1.ServiceTypeClusterIP,
				Ports: []corev1.ServicePort{{Name: "dns", Protocol: proto, Port: port}}},
		}
	}
	for _, tc := range []struct {
		name string
		svcs []*corev1.Service
		want string
	}{
		{"none", nil, ""},
		{"kube-dns over UDP", []*corev1.Service{svc("kube-dns", "10.3.240.10", corev1.ProtocolUDP, 53)}, "kube-system/kube-dns"},
		{"over TCP only", []*corev1.Service{svc("dns-tcp", "10.3.240.10", corev1.ProtocolTCP, 53)}, "kube-system/dns-tcp"},
		{"another port", []*corev1.Service{svc("web", "10.3.240.10", corev1.ProtocolTCP, 80)}, ""},
		{"another address", []*corev1.Service{svc("kube-dns", "10.3.240.11", corev1.ProtocolUDP, 53)}, ""},
	} {
		snap, _ := resolver.Build(tc.svcs, nil, nil, resolver.Topology{})
		if got := dnsService(snap, dnsIP); got != tc.want {
			t.Errorf("%s: dnsService = %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := dnsService(nil, dnsIP); got != "" {
		t.Errorf("dnsService(nil) = %q, want \"\"", got)
	}
}
