package proxy

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/nodeport"
	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/tunnel"
)

// hostEnv is the real host: netlink routes, a TUN device, gVisor.
func hostEnv() env {
	return env{
		checkOverlap: func(tun string, cidrs []netip.Prefix) error {
			return tunnel.CheckOverlap(cidrs, tunnel.ExistingIndex(tun))
		},
		open:          openDataplane,
		newDNS:        newDNS,
		hostUpstreams: hostUpstreams,
		listen:        net.Listen,
		watchAddrs: func(onChange func()) (addressWatch, error) {
			return nodeport.WatchAddresses(onChange)
		},
	}
}

// dataplane is a TUN device with a netstack behind it.
type dataplane struct {
	*tunnel.Device
	*netstack.Stack
}

var (
	_ Dataplane         = dataplane{}
	_ FlowCounter       = dataplane{}
	_ handoverDataplane = dataplane{}
)

// openDataplane creates the TUN device and the netstack serving table.
func openDataplane(cfg Config, table *resolver.Table, log *slog.Logger) (Dataplane, error) {
	var (
		dev *tunnel.Device
		err error
	)
	if cfg.tunFile != nil {
		dev, err = tunnel.OpenFile(cfg.tunFile, cfg.MTU, log)
	} else {
		dev, err = tunnel.Open(cfg.TUN, cfg.MTU, log)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Persist {
		if err := dev.Persist(); err != nil {
			dev.Close()
			return nil, err
		}
	}
	nc := cfg.DataPath
	nc.Link, nc.Services, nc.Dialer, nc.DialTimeout, nc.Logger = dev.Link(), table, cfg.Dialer, cfg.DialTimeout, log
	if cfg.RoutePods {
		nc.Pods = table
	}
	if cfg.addrs != nil {
		// Mapped destinations are looked up at their real addresses.
		ms := mappedServices{table, cfg.addrs}
		nc.Services = ms
		if cfg.RoutePods {
			nc.Pods = ms
		}
	}
	ns, err := netstack.New(nc)
	if err != nil {
		dev.Close()
		return nil, err
	}
	dev.SetUDPHandler(ns.DeliverUDP)
	dev.SetTCPFilter(ns.AdmitTCP)
	return dataplane{dev, ns}, nil
}

// CheckOverlap implements Routes; the TUN's own routes do not count.
func (d dataplane) CheckOverlap(cidrs []netip.Prefix) error {
	return tunnel.CheckOverlap(cidrs, d.Index())
}

// OverlapChecker implements routeSnapshotter: CheckOverlap against one dump
// of the host's routes.
func (d dataplane) OverlapChecker() (func([]netip.Prefix) error, error) {
	t, err := tunnel.ListRoutes()
	if err != nil {
		return nil, err
	}
	return func(cidrs []netip.Prefix) error { return t.CheckOverlap(cidrs, d.Index()) }, nil
}

// Err implements Dataplane: why the TUN is gone.
func (d dataplane) Err() error { return d.Device.Err() }

// Close closes the stack's connections, then removes the TUN and its routes
// unless they persist.
func (d dataplane) Close() error {
	d.Stack.Close()
	return d.Device.Close()
}
