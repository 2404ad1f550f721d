package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/resolver"
)

// affinityCollector is the kubetun_affinity_entries gauge: the clients the
// ClientIP session affinity tables of the current service table remember.
func affinityCollector(t *resolver.Table) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kubetun_affinity_entries",
		Help: "Clients the ClientIP session affinity tables of every Service port remember now (each table bounded by --max-affinity-clients).",
	}, func() float64 { return float64(t.Load().AffinityEntries()) })
}

// The data path's metrics, read from netstack.Stats at each scrape: the
// packet path only adds to atomic counters.
var (
	tcpConnectionsDesc = prometheus.NewDesc("kubetun_tcp_connections_total",
		"TCP connections to ClusterIPs by how they ended their setup: forwarded (spliced to a pod), "+
			"refused (no Service port or no usable endpoint: RST at once), unreachable (no pod answered the dial), "+
			"limited (SYNs dropped: the client had its share of connections being set up, or all clients --max-tcp-setups; or reset: --max-tcp-flows reached), "+
			"aborted (the client left, or did not complete the handshake in time).",
		[]string{"result"}, nil)
	dialFailuresDesc = prometheus.NewDesc("kubetun_pod_dial_failures_total",
		"Dials to pods that failed, TCP and UDP; each endpoint tried counts once.", nil, nil)
	activeDesc = prometheus.NewDesc("kubetun_active_flows",
		"TCP connections being spliced and UDP sessions open now.", []string{"protocol"}, nil)
	udpSessionsDesc = prometheus.NewDesc("kubetun_udp_sessions_total",
		"UDP sessions (client address to Service IP and port) started.", nil, nil)
	udpDatagramsDesc = prometheus.NewDesc("kubetun_udp_datagrams_not_forwarded_total",
		"Datagrams not forwarded: refused (no Service port or no usable endpoint: ICMP port unreachable) "+
			"or limited (a session limit reached, or the session's queue full: dropped).",
		[]string{"result"}, nil)
	pingRepliesDesc = prometheus.NewDesc("kubetun_ping_replies_total",
		"Echo requests to ClusterIPs answered.", nil, nil)
	tcpSetupsDesc = prometheus.NewDesc("kubetun_tcp_setups_in_flight",
		"TCP connections being set up now: SYN received, handshake not completed (bounded by --max-tcp-setups).", nil, nil)
	tcpSetupsPerSourceDesc = prometheus.NewDesc("kubetun_tcp_setups_in_flight_max_per_source",
		"The most TCP connections being set up now from one client address (bounded by --max-tcp-setups-per-source).", nil, nil)
	udpQueuedDesc = prometheus.NewDesc("kubetun_udp_queued_bytes",
		"Bytes of client datagrams queued for pods now, every UDP session together (bounded by --max-udp-queued-bytes).", nil, nil)
	linkDropsDesc = prometheus.NewDesc("kubetun_link_dropped_packets_total",
		"Packets from the userspace stack to the TUN that the link between them dropped: its queue makes senders wait rather than drop, so only frames the TUN refused.", nil, nil)
)

// netstackCollector is a prometheus.Collector of a netstack.Stack's Stats.
type netstackCollector struct {
	stats func() netstack.Stats
}

// Describe implements prometheus.Collector.
func (netstackCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{tcpConnectionsDesc, dialFailuresDesc, activeDesc, udpSessionsDesc, udpDatagramsDesc, pingRepliesDesc, linkDropsDesc,
		tcpSetupsDesc, tcpSetupsPerSourceDesc, udpQueuedDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c netstackCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(tcpConnectionsDesc, st.TCPForwarded, "forwarded")
	counter(tcpConnectionsDesc, st.TCPRefused, "refused")
	counter(tcpConnectionsDesc, st.TCPUnreachable, "unreachable")
	counter(tcpConnectionsDesc, st.TCPLimited, "limited")
	counter(tcpConnectionsDesc, st.TCPAborted, "aborted")
	counter(dialFailuresDesc, st.DialFailures)
	ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(st.TCPActive), "tcp")
	ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(st.UDPActive), "udp")
	counter(udpSessionsDesc, st.UDPSessions)
	counter(udpDatagramsDesc, st.UDPRefused, "refused")
	counter(udpDatagramsDesc, st.UDPLimited, "limited")
	counter(pingRepliesDesc, st.PingReplies)
	counter(linkDropsDesc, st.LinkDrops)
	ch <- prometheus.MustNewConstMetric(tcpSetupsDesc, prometheus.GaugeValue, float64(st.TCPSetups))
	ch <- prometheus.MustNewConstMetric(tcpSetupsPerSourceDesc, prometheus.GaugeValue, float64(st.TCPSetupsMax))
	ch <- prometheus.MustNewConstMetric(udpQueuedDesc, prometheus.GaugeValue, float64(st.UDPQueued))
}

// The handover's metrics, read from handoverStatus at each scrape.
var (
	predecessorFlowsDesc = prometheus.NewDesc("kubetun_handover_predecessor_flows",
		"Flows the kubetun this one took over from still holds, as it last said (0 once it has exited).", []string{"protocol"}, nil)
	handedPacketsDesc = prometheus.NewDesc("kubetun_handover_passed_packets_total",
		"Packets of the predecessor's flows passed to it since the takeover.", nil, nil)
	handedBytesDesc = prometheus.NewDesc("kubetun_handover_passed_bytes_total",
		"Bytes of the predecessor's flows passed to it since the takeover.", nil, nil)
	takeoverDesc = prometheus.NewDesc("kubetun_handover_takeover_seconds",
		"How long this kubetun took to take over from its predecessor, from its start to serving.", nil, nil)
	successorDesc = prometheus.NewDesc("kubetun_handover_draining",
		"1 while this kubetun has handed over to a new one and drains its own flows.", nil, nil)
)

// handoverCollector is a prometheus.Collector of a Proxy's handover.
type handoverCollector struct{ p *Proxy }

// Describe implements prometheus.Collector.
func (handoverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{predecessorFlowsDesc, handedPacketsDesc, handedBytesDesc, takeoverDesc, successorDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c handoverCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.handoverStatus()
	var pred PeerStatus
	draining := 0.0
	if st != nil && st.Predecessor != nil {
		pred = *st.Predecessor
	}
	if st != nil && st.Successor != nil {
		draining = 1
	}
	ch <- prometheus.MustNewConstMetric(predecessorFlowsDesc, prometheus.GaugeValue, float64(pred.TCPFlows), "tcp")
	ch <- prometheus.MustNewConstMetric(predecessorFlowsDesc, prometheus.GaugeValue, float64(pred.UDPSessions), "udp")
	if hd, ok := c.p.dp.(handoverDataplane); ok {
		hs := hd.HandedStats()
		ch <- prometheus.MustNewConstMetric(handedPacketsDesc, prometheus.CounterValue, float64(hs.Packets))
		ch <- prometheus.MustNewConstMetric(handedBytesDesc, prometheus.CounterValue, float64(hs.Bytes))
	}
	c.p.ho.mu.Lock()
	took := c.p.ho.predTook
	c.p.ho.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(takeoverDesc, prometheus.GaugeValue, took.Seconds())
	ch <- prometheus.MustNewConstMetric(successorDesc, prometheus.GaugeValue, draining)
}
