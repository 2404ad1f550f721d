package main

import (
	"net/netip"
	"strings"
	"testing"
)

// seedKP is the seed's Service with the bench's two ports.
func seedKP() kpService {
	return kpService{
		Namespace: "default", Name: "service-test",
		ClusterIP:   netip.MustParseAddr("10.3.241.152"),
		ClusterCIDR: netip.MustParsePrefix("10.0.0.0/16"),
		ServiceCIDR: netip.MustParsePrefix("10.3.240.0/20"),
		Ports: []kpPort{{Name: "http", Port: 80, Endpoints: []netip.AddrPort{
			netip.MustParseAddrPort("10.0.1.2:8080"), netip.MustParseAddrPort("10.0.2.2:8080"),
		}}},
	}
}

// The names kube-proxy's own tests expect (pkg/proxy/iptables/proxier_test.go,
// pkg/proxy/nftables/proxier_test.go) for Service ns1/svc1 port p80 and
// endpoint 10.180.0.1:80.
func TestChainNames(t *testing.T) {
	s := kpService{Namespace: "ns1", Name: "svc1"}
	p := kpPort{Name: "p80", Port: 80}
	ep := netip.MustParseAddrPort("10.180.0.1:80")
	for _, tt := range []struct{ name, got, want string }{
		{"iptables service", iptablesSVCChain(s.portName(p), "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O"},
		{"iptables endpoint", iptablesSEPChain(s.portName(p), "tcp", ep.String()), "KUBE-SEP-SXIVWICOYRO3J4NJ"},
		{"nftables service", nftablesServiceChain(s, p, "tcp"), "service-ULMVA6XW-ns1/svc1/tcp/p80"},
		{"nftables endpoint", nftablesEndpointChain(s, p, "tcp", ep), "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestIptablesProbability(t *testing.T) {
	for n, want := range map[int]string{1: "1.0000000000", 2: "0.5000000000", 3: "0.3333333333"} {
		if got := iptablesProbability(n); got != want {
			t.Errorf("iptablesProbability(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestIptablesRules(t *testing.T) {
	got := iptablesRules(seedKP())
	svc := iptablesSVCChain("default/service-test:http", "tcp")
	sep1 := iptablesSEPChain("default/service-test:http", "tcp", "10.0.1.2:8080")
	sep2 := iptablesSEPChain("default/service-test:http", "tcp", "10.0.2.2:8080")
	for _, want := range []string{
		"*nat\n",
		":" + svc + " - [0:0]\n",
		`-A KUBE-SERVICES -m comment --comment "default/service-test:http cluster IP" -m tcp -p tcp -d 10.3.241.152/32 --dport 80 -j ` + svc + "\n",
		`-A ` + svc + ` -m comment --comment "default/service-test:http cluster IP" -m tcp -p tcp -d 10.3.241.152/32 --dport 80 ! -s 10.0.0.0/16 -j KUBE-MARK-MASQ` + "\n",
		`-A ` + svc + ` -m comment --comment "default/service-test:http -> 10.0.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j ` + sep1 + "\n",
		`-A ` + svc + ` -m comment --comment "default/service-test:http -> 10.0.2.2:8080" -j ` + sep2 + "\n",
		`-A ` + sep1 + ` -m comment --comment default/service-test:http -m tcp -p tcp -j DNAT --to-destination 10.0.1.2:8080` + "\n",
		`-A ` + sep2 + ` -m comment --comment default/service-test:http -s 10.0.2.2/32 -j KUBE-MARK-MASQ` + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("iptablesRules: no line %q in\n%s", want, got)
		}
	}
	// The nodeports jump is the last rule of KUBE-SERVICES.
	if i, j := strings.Index(got, "-A KUBE-SERVICES -m comment --comment \"default"), strings.Index(got, "KUBE-NODEPORTS\n-A"); i < 0 || j < i {
		t.Errorf("iptablesRules: the nodeports rule is not after the Service's:\n%s", got)
	}
	if n := strings.Count(got, "COMMIT\n"); n != 2 {
		t.Errorf("iptablesRules: %d COMMITs, want 2 (filter, nat)", n)
	}
}

func TestNftablesRules(t *testing.T) {
	got := nftablesRules(seedKP())
	s := seedKP()
	svc := nftablesServiceChain(s, s.Ports[0], "tcp")
	ep1 := nftablesEndpointChain(s, s.Ports[0], "tcp", s.Ports[0].Endpoints[0])
	ep2 := nftablesEndpointChain(s, s.Ports[0], "tcp", s.Ports[0].Endpoints[1])
	for _, want := range []string{
		"add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n",
		"add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
		"add rule ip kube-proxy " + svc + " ip daddr 10.3.241.152 tcp dport 80 ip saddr != 10.0.0.0/16 jump mark-for-masquerade\n",
		"add rule ip kube-proxy " + svc + " numgen random mod 2 vmap { 0 : goto " + ep1 + " , 1 : goto " + ep2 + " }\n",
		"add rule ip kube-proxy " + ep2 + " meta l4proto tcp dnat to 10.0.2.2:8080\n",
		"add element ip kube-proxy service-ips { 10.3.241.152 . tcp . 80 : goto " + svc + " }\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nftablesRules: no line %q in\n%s", want, got)
		}
	}
	// nft -f resolves names in order: every chain is added before a rule
	// or element names it.
	for _, c := range []string{svc, ep1, ep2} {
		if i, j := strings.Index(got, "add chain ip kube-proxy "+c+"\n"), strings.Index(got, "goto "+c); i < 0 || j < i {
			t.Errorf("nftablesRules: chain %s added at %d, used at %d", c, i, j)
		}
	}
}
