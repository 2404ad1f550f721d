package proxy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"weak"

	"github.com/kubetun/kubetun/addrmap"
	"github.com/kubetun/kubetun/portforward"
	"github.com/kubetun/kubetun/resolver"
)

// StatusPath is where the health server serves Status as JSON.
const StatusPath = "/statusz"

// Status is what a running kubetun serves, as `kubetun status` shows it.
type Status struct {
	// Mode is the subcommand serving: "run" or "connect".
	Mode   string     `json:"mode"`
	Source SourceInfo `json:"source"`
	// Ready is true once the first whole state is served.
	Ready bool   `json:"ready"`
	TUN   string `json:"tun"`
	// ServiceCIDRs are routed into the TUN now: a mapped range as it is
	// served (Mapped says which real range it stands for).
	ServiceCIDRs []string `json:"serviceCIDRs"`
	// Mapped are the cluster's ranges (and headless Services' pod IPs)
	// served on other addresses, as they overlap a route of the host
	// (kubetun connect's --map); nil when none is.
	Mapped *MappedStatus `json:"mapped,omitempty"`
	// DNS is the cluster DNS; nil when off or not started yet.
	DNS *DNSStatus `json:"dns,omitempty"`
	// Pods says how pods are reached: "direct" (dialled from the host
	// network) or "portforward" (through the API server, kubetun connect).
	Pods     string          `json:"pods"`
	Services []ServiceStatus `json:"services"`
	// Handover is a takeover in progress: the kubetun this one took over
	// from while it drains, or the one this one handed over to.
	Handover *HandoverStatus `json:"handover,omitempty"`
	// PortForward is the connections to pods through the API server, when
	// pods are reached through port-forward.
	PortForward *portforward.Status `json:"portForward,omitempty"`
}

// MappedStatus is what a cluster's addresses are served on.
type MappedStatus struct {
	// Context is the cluster's kubeconfig context: a mapped address means
	// something for this cluster only.
	Context string         `json:"context"`
	Pairs   []addrmap.Pair `json:"pairs"`
}

// DNSStatus is where the cluster DNS answers.
type DNSStatus struct {
	Domain string `json:"domain"`
	// Aliases are more domains it answers as Domain (kubetun connect's
	// per-context domain, or the cluster's beside it).
	Aliases []string `json:"aliases,omitempty"`
	Address string   `json:"address"`
}

// ServiceStatus is one Service with ClusterIP ports served.
type ServiceStatus struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	ClusterIPs []string `json:"clusterIPs"`
	// MappedClusterIPs are the addresses ClusterIPs are served on here,
	// in their order, when the range is mapped (Status.Mapped).
	MappedClusterIPs []string     `json:"mappedClusterIPs,omitempty"`
	Ports            []PortStatus `json:"ports"`
	// ActiveFlows are the flows to the Service being forwarded now; nil
	// when the data plane does not count them per Service (FlowCounter).
	ActiveFlows *int `json:"activeFlows,omitempty"`
}

// PortStatus is one port of a Service on one ClusterIP.
type PortStatus struct {
	Name      string `json:"name,omitempty"`
	Protocol  string `json:"protocol"`
	ClusterIP string `json:"clusterIP"`
	Port      uint16 `json:"port"`
	// Endpoints are those new flows may go to ("ip:port").
	Endpoints []string `json:"endpoints"`
}

// Status returns what p serves now.
func (p *Proxy) Status() Status { return p.status(nil) }

// status is Status, with the Services of the current snapshot from c when
// it holds them (nil: none).
func (p *Proxy) status(c *statusCache) Status {
	p.mu.Lock()
	cidrs := slices.Clone(p.cidrs)
	ready, dns, fc := p.synced, p.dnsStatus, p.flows
	p.mu.Unlock()
	st := Status{
		Mode:         p.cfg.Mode,
		Source:       p.src.Info(),
		Ready:        ready,
		TUN:          p.cfg.TUN,
		ServiceCIDRs: make([]string, 0, len(cidrs)),
		Pods:         p.cfg.PodsVia,
		Handover:     p.handoverStatus(),
	}
	m := p.mapping.Load()
	for _, c := range cidrs {
		st.ServiceCIDRs = append(st.ServiceCIDRs, m.MappedPrefix(c).String())
	}
	if m.Len() > 0 {
		st.Mapped = &MappedStatus{Context: p.cfg.Map.Seed, Pairs: m.Pairs()}
	}
	if d, ok := p.cfg.Dialer.(interface{ Status() portforward.Status }); ok {
		pf := d.Status()
		st.PortForward = &pf
	}
	if len(cidrs) > 0 {
		st.DNS = dns
	}
	var flows map[string]int
	if fc != nil {
		if flows = fc.ActiveFlowsByService(); flows == nil {
			flows = map[string]int{} // counted, and none now
		}
	}
	st.Services = withMapped(withFlows(c.services(p.table.Load()), flows), m)
	return st
}

// statusCache holds the Services of one snapshot as status lists them:
// building and sorting the list is most of what a request costs, and the
// table changes far less often than a busy poller asks. The snapshot is
// held by a weak pointer, so that the cache never keeps an old table alive.
type statusCache struct {
	last atomic.Pointer[statusEntry]
}

type statusEntry struct {
	snap     weak.Pointer[resolver.Snapshot]
	services []ServiceStatus // shared by every request: read only
}

// services returns the Services of snap, sorted, without ActiveFlows. A nil
// c builds them afresh.
func (c *statusCache) services(snap *resolver.Snapshot) []ServiceStatus {
	if c == nil {
		return services(snap)
	}
	key := weak.Make(snap)
	if e := c.last.Load(); e != nil && e.snap == key {
		return e.services
	}
	list := services(snap)
	c.last.Store(&statusEntry{snap: key, services: list})
	return list
}

// withFlows returns list with each Service's ActiveFlows from flows, by
// "namespace/name"; list itself when flows is nil (not counted). list is
// not modified: it may be the cache's.
func withFlows(list []ServiceStatus, flows map[string]int) []ServiceStatus {
	if flows == nil {
		return list
	}
	out := slices.Clone(list)
	n := make([]int, len(out))
	for i := range out {
		n[i] = flows[out[i].Namespace+"/"+out[i].Name]
		out[i].ActiveFlows = &n[i]
	}
	return out
}

// withMapped returns list with each Service's MappedClusterIPs from m;
// list itself when m maps nothing. list is not modified: it may be the
// cache's.
func withMapped(list []ServiceStatus, m *addrmap.Map) []ServiceStatus {
	if m.Len() == 0 {
		return list
	}
	out := slices.Clone(list)
	for i := range out {
		mapped, any := make([]string, len(out[i].ClusterIPs)), false
		for j, ip := range out[i].ClusterIPs {
			mapped[j] = ip
			if a, err := netip.ParseAddr(ip); err == nil {
				if ma, ok := m.ToMapped(a); ok {
					mapped[j], any = ma.String(), true
				}
			}
		}
		if any {
			out[i].MappedClusterIPs = mapped
		}
	}
	return out
}

// services lists the Services of snap by namespace and name, their ports by
// ClusterIP, port and protocol.
func services(snap *resolver.Snapshot) []ServiceStatus {
	byName := map[string]*ServiceStatus{}
	for _, sp := range snap.Ports() {
		s := byName[sp.Service]
		if s == nil {
			ns, name, _ := strings.Cut(sp.Service, "/")
			s = &ServiceStatus{Namespace: ns, Name: name}
			byName[sp.Service] = s
		}
		ip := sp.ClusterIP.String()
		if !slices.Contains(s.ClusterIPs, ip) {
			s.ClusterIPs = append(s.ClusterIPs, ip)
		}
		eps := make([]string, 0, len(sp.Usable()))
		for _, ep := range sp.Usable() {
			eps = append(eps, ep.Addr.String())
		}
		slices.Sort(eps)
		s.Ports = append(s.Ports, PortStatus{Name: sp.Name, Protocol: sp.Protocol.String(), ClusterIP: ip, Port: sp.Port, Endpoints: eps})
	}
	out := make([]ServiceStatus, 0, len(byName))
	for _, s := range byName {
		slices.SortFunc(s.ClusterIPs, func(a, b string) int {
			return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b))
		})
		slices.SortFunc(s.Ports, func(a, b PortStatus) int {
			return cmp.Or(netip.MustParseAddr(a.ClusterIP).Compare(netip.MustParseAddr(b.ClusterIP)),
				cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
		})
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b ServiceStatus) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// statusHandler serves Status as JSON. It lists every Service and endpoint,
// so it answers clients on this host only (localClient), unless
// Config.StatusAllowRemote: the health address it shares may be open to the
// node's network, as the DaemonSet's is for kube-proxy's /healthz.
func (p *Proxy) statusHandler() http.Handler {
	var cache statusCache
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.cfg.StatusAllowRemote {
			if why := localClient(r); why != "" {
				http.Error(w, why, http.StatusForbidden)
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(p.status(&cache))
	})
}

// localClient returns why r may not read /statusz without
// StatusAllowRemote, or "" if it may. The client must be on this host: it
// comes from a loopback address, or from the very address it connected to
// (a health address on a node address, asked from the node). And the
// request must name an IP address or localhost as its Host: a web page
// whose name an attacker rebinds to 127.0.0.1 is a loopback client too, but
// its requests carry that name.
func localClient(r *http.Request) string {
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return fmt.Sprintf("%s: client address %q unknown", StatusPath, r.RemoteAddr)
	}
	ip := remote.Addr().Unmap()
	onHost := ip.IsLoopback()
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok && !onHost {
		onHost = la.AddrPort().Addr().Unmap() == ip
	}
	if !onHost {
		return fmt.Sprintf("%s lists every Service and endpoint: it answers clients on this host only, not %s; ask from the host (kubetun status), or start kubetun with --statusz-allow-remote", StatusPath, ip)
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err != nil && !strings.EqualFold(host, "localhost") {
		return fmt.Sprintf("%s answers requests for an IP address or localhost, not for Host %q: a web page could have that name point at this host", StatusPath, r.Host)
	}
	return ""
}
