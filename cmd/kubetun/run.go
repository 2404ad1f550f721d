package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/kubetun/kubetun/nodeport"
	"github.com/kubetun/kubetun/proxy"
	"github.com/kubetun/kubetun/resolver"
)

// runCommand is `kubetun run`: it serves until ctx is cancelled, then removes
// its routes and TUN device, unless --persist.
func runCommand(ctx context.Context, cfg runConfig, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	pc := proxy.Config{
		Mode:               "run",
		DrainTimeout:       cfg.drainTimeout,
		ServiceCIDRs:       cfg.serviceCIDRs,
		Topology:           resolver.Topology{NodeName: cfg.nodeName},
		TUN:                cfg.tun,
		Persist:            cfg.persist,
		StateDir:           cfg.stateDir,
		Version:            version(),
		MaxAffinityClients: cfg.maxAffinityClients,
		MTU:                cfg.mtu,
		DialTimeout:        cfg.dialTimeout,
		DataPath:           cfg.dataPath,
		HealthAddr:         cfg.healthAddr,
		StatusAllowRemote:  cfg.statusRemote,
		MetricsAddr:        cfg.metricsAddr,
		Profiling:          cfg.profiling,
		External: &proxy.ExternalConfig{
			NodePortAddresses: cfg.nodePortAddresses,
			ExternalIPRanges:  cfg.externalIPRanges,
		},
		DNS: proxy.DNSConfig{
			Off:       cfg.dnsOff,
			IP:        cfg.dnsIP,
			Domain:    cfg.clusterDomain,
			Upstreams: cfg.dnsUpstreams,
		},
	}
	var src proxy.Source
	if cfg.manifests != "" {
		m, err := proxy.NewManifestSource(cfg.manifests, log)
		if err != nil {
			return err
		}
		src = m
		pc.External.Primary = nodeport.DefaultRouteAddresses()
	} else {
		k, err := proxy.NewKubeSource(ctx, proxy.KubeOptions{
			Kubeconfig:  cfg.kubeconfig,
			FollowCIDRs: len(cfg.serviceCIDRs) == 0,
			NodeName:    cfg.nodeName,
			ProxyName:   cfg.proxyName,
		}, log)
		if err != nil {
			return err
		}
		pc.Topology, pc.External.Primary = k.Node(ctx)
		src = k
	}
	return proxy.New(pc, src, log).Run(ctx)
}
