package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/manifest"
	"github.com/kubetun/kubetun/tunnel"
)

// runCommand is `kubetun run`: it serves until ctx is cancelled, then removes
// its routes and TUN device.
func runCommand(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseRunFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	src, objs, err := manifest.NewSource(cfg.manifests, log)
	if err != nil {
		return err
	}
	table := new(resolver.Table)
	apply := func(objs manifest.Objects) {
		snap, problems := resolver.Build(objs.Services, objs.Slices, table.Load(), resolver.Topology{})
		for _, w := range objs.Warnings {
			log.Warn(w)
		}
		for _, p := range problems {
			log.Warn(p.String())
		}
		warnOutside(log, snap, cfg.serviceCIDRs)
		table.Store(snap)
		log.Info("service table updated", "services", snap.Services(), "endpoints", snap.Endpoints())
	}
	apply(objs)

	// Refuse an overlapping CIDR before creating anything.
	if err := tunnel.CheckOverlap(cfg.serviceCIDRs, 0); err != nil {
		return err
	}
	dev, err := tunnel.Open(cfg.tun, cfg.mtu, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := dev.Close(); err != nil {
			log.Error("removing TUN device", "tun", dev.Name(), "err", err)
		}
	}()
	ns, err := netstack.New(netstack.Config{
		Link:        dev.Link(),
		Services:    table,
		DialTimeout: cfg.dialTimeout,
		Logger:      log,
	})
	if err != nil {
		return err
	}
	defer ns.Close()
	// Routes last: the moment they exist, the stack is there to answer.
	if err := dev.SetRoutes(cfg.serviceCIDRs); err != nil {
		return err
	}

	var wg sync.WaitGroup
	wg.Go(func() { src.Run(ctx, apply) })
	defer wg.Wait()

	snap := table.Load()
	log.Info("ready", "tun", dev.Name(), "mtu", cfg.mtu, "service-cidrs", fmt.Sprint(cfg.serviceCIDRs),
		"services", snap.Services(), "endpoints", snap.Endpoints())
	<-ctx.Done()
	log.Info("shutting down: closing connections, removing routes and the TUN device")
	return nil
}

// warnOutside warns about ClusterIPs no service CIDR covers: the host never
// routes them into the TUN, so kubetun cannot serve them.
func warnOutside(log *slog.Logger, snap *resolver.Snapshot, cidrs []netip.Prefix) {
	warned := make(map[netip.Addr]bool)
	for _, sp := range snap.Ports() {
		if warned[sp.ClusterIP] || covered(sp.ClusterIP, cidrs) {
			continue
		}
		warned[sp.ClusterIP] = true
		log.Warn("clusterIP is outside every --service-cidr; it is not routed to kubetun",
			"service", sp.Service, "clusterIP", sp.ClusterIP)
	}
}

func covered(ip netip.Addr, cidrs []netip.Prefix) bool {
	for _, c := range cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}
