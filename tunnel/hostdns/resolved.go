package hostdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

// resolved's D-Bus names.
const (
	resolvedName    = "org.freedesktop.resolve1"
	resolvedPath    = dbus.ObjectPath("/org/freedesktop/resolve1")
	resolvedManager = "org.freedesktop.resolve1.Manager."
	// errNoSuchLink is resolved's answer for an ifindex it does not know,
	// e.g. a link deleted in the meantime.
	errNoSuchLink = "org.freedesktop.resolve1.NoSuchLink"
)

// revertTimeout bounds the revert func: it runs at exit, where the caller's
// context has usually ended already.
const revertTimeout = 5 * time.Second

// setting is one per-link setting Configure applies, in order.
type setting struct {
	method string
	args   func(ifindex int32) []any
	// optional: an older resolved without the method (UnknownMethod) or
	// without support for the value (NotSupported) is no reason to fail.
	optional bool
}

// settings are applied in this order so that no moment exists in which the
// link is a default route: DefaultRoute goes off before the link has a
// server, and the server comes last, once the domains route to it.
func (l Link) settings() []setting {
	no := func(method string) setting {
		return setting{method: method, optional: true, args: func(i int32) []any { return []any{i, "no"} }}
	}
	return []setting{
		// Since systemd 240 a link whose domains are all routing domains is
		// no default route anyway; saying so keeps names outside the cluster
		// domain off the link whatever else it is given. An older resolved
		// has no such setting (UnknownMethod).
		{method: "SetLinkDefaultRoute", optional: true, args: func(i int32) []any { return []any{i, false} }},
		// Nothing on the link answers LLMNR or mDNS, and kubetun's DNS
		// neither signs answers nor speaks DNS over TLS: a global DNSSEC=yes
		// or DNSOverTLS=yes must not make the cluster domain fail.
		no("SetLinkLLMNR"),
		no("SetLinkMulticastDNS"),
		no("SetLinkDNSSEC"),
		no("SetLinkDNSOverTLS"),
		{method: "SetLinkDomains", args: func(i int32) []any { return []any{i, linkDomains(l)} }},
		{method: "SetLinkDNS", args: func(i int32) []any { return []any{i, []linkAddress{addressOf(l)}} }},
	}
}

// linkAddress is one DNS server in SetLinkDNS's "a(iay)": an address family
// (AF_INET, AF_INET6) and the address's bytes.
type linkAddress struct {
	Family  int32
	Address []byte
}

// Address families as Linux numbers them, which resolved expects.
const (
	afInet  = 2
	afInet6 = 10
)

func addressOf(l Link) linkAddress {
	if l.Server.Is4() {
		return linkAddress{Family: afInet, Address: l.Server.AsSlice()}
	}
	return linkAddress{Family: afInet6, Address: l.Server.AsSlice()}
}

// Configure sends l.ClusterDomain, and only it, to l.Server through
// systemd-resolved: on link l it sets the DNS server, the search domains
// (SearchDomains; they route the cluster domain to the link), DefaultRoute
// off, and LLMNR, mDNS, DNSSEC and DNS over TLS off. It talks to resolved
// over the system bus ($DBUS_SYSTEM_BUS_ADDRESS, else
// /run/dbus/system_bus_socket) and needs root or CAP_NET_ADMIN, which
// resolved accepts in place of polkit's consent.
//
// Run it in the network namespace resolved runs in, where l names the
// link, after the link is up and has an address (else ErrNoLinkAddress).
// Without resolved it changes nothing and returns an error that is
// ErrNoResolved. If a setting fails, it reverts the ones made and returns
// the error.
//
// revert undoes every setting (RevertLink): call it before the link is
// removed; afterwards there is nothing to undo, which revert accepts too.
// It does not use ctx, so it works after ctx ended, and returns the first
// call's result when called again.
func Configure(ctx context.Context, l Link) (revert func() error, err error) {
	return configure(ctx, l, findLink)
}

// configure is Configure with the link lookup (findLink) given: tests
// replace it, having no link of their own.
func configure(ctx context.Context, l Link, find func(Link) (Link, error)) (revert func() error, err error) {
	l, err = l.check()
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if l, err = find(l); err != nil {
		return nil, err
	}

	obj := conn.Object(resolvedName, resolvedPath)
	for _, s := range l.settings() {
		call := obj.CallWithContext(ctx, resolvedManager+s.method, 0, s.args(int32(l.Index))...)
		if call.Err == nil {
			continue
		}
		if s.optional && (isError(call.Err, "org.freedesktop.DBus.Error.UnknownMethod") || isError(call.Err, "org.freedesktop.DBus.Error.NotSupported")) {
			continue
		}
		err := fmt.Errorf("hostdns: systemd-resolved %s on link %s: %w", s.method, l, call.Err)
		if isError(call.Err, "org.freedesktop.DBus.Error.AccessDenied") || isError(call.Err, "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired") {
			err = fmt.Errorf("%w (kubetun needs root or CAP_NET_ADMIN to set a link's DNS)", err)
		}
		if rerr := revertLink(ctx, conn, l); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}

	var (
		once      sync.Once
		revertErr error
	)
	revert = func() error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), revertTimeout)
			defer cancel()
			conn, err := connect(ctx)
			if err != nil {
				revertErr = fmt.Errorf("hostdns: reverting link %s: %w", l, err)
				return
			}
			defer conn.Close()
			revertErr = revertLink(ctx, conn, l)
		})
		return revertErr
	}
	return revert, nil
}

// connect opens a private connection to the system bus and checks that
// resolved is on it. Asking whether the name has an owner, rather than
// calling resolved at once, keeps D-Bus from activating an installed but
// stopped resolved: Configure changes nothing on a host that does not use it.
func connect(ctx context.Context) (*dbus.Conn, error) {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("hostdns: %w: system bus: %w", ErrNoResolved, err)
	}
	var owned bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&owned); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hostdns: system bus: NameHasOwner %s: %w", resolvedName, err)
	}
	if !owned {
		conn.Close()
		return nil, fmt.Errorf("hostdns: %w: nothing owns %s on the system bus", ErrNoResolved, resolvedName)
	}
	return conn, nil
}

// revertLink drops every setting of l in resolved. A link resolved no
// longer knows has none left.
func revertLink(ctx context.Context, conn *dbus.Conn, l Link) error {
	err := conn.Object(resolvedName, resolvedPath).CallWithContext(ctx, resolvedManager+"RevertLink", 0, int32(l.Index)).Err
	if err != nil && !isError(err, errNoSuchLink) {
		return fmt.Errorf("hostdns: systemd-resolved RevertLink on link %s: %w", l, err)
	}
	return nil
}

// findLink returns l with the index and name of its interface, found by
// index, or by name when it has none, and fails unless the interface has an
// address resolved counts (checkAddresses).
func findLink(l Link) (Link, error) {
	ifi, err := lookupLink(l)
	if err != nil {
		return l, err
	}
	l.Index, l.Name = ifi.Index, ifi.Name
	return l, checkAddresses(l, ifi)
}

// lookupLink finds l's interface by index, or by name when it has none.
func lookupLink(l Link) (*net.Interface, error) {
	var (
		ifi *net.Interface
		err error
	)
	if l.Index > 0 {
		ifi, err = net.InterfaceByIndex(l.Index)
	} else {
		ifi, err = net.InterfaceByName(l.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("hostdns: link %s: %w", l, err)
	}
	if l.Name != "" && ifi.Name != l.Name {
		return nil, fmt.Errorf("hostdns: link index %d is %s, not %s", l.Index, ifi.Name, l.Name)
	}
	return ifi, nil
}

// checkAddresses returns ErrNoLinkAddress unless ifi has an address that
// resolved counts: one of universe or site scope. Go does not report an
// address's scope; the kernel gives loopback addresses host scope and
// link-local ones link scope, and that is what this tells apart.
func checkAddresses(l Link, ifi *net.Interface) error {
	addrs, err := ifi.Addrs()
	if err != nil {
		return fmt.Errorf("hostdns: link %s: addresses: %w", l, err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
			return nil
		}
	}
	return fmt.Errorf("hostdns: link %s: %w (systemd-resolved sends no unicast DNS over it)", l, ErrNoLinkAddress)
}

// isError reports whether err is the D-Bus error called name.
func isError(err error, name string) bool {
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name == name
	}
	var pe *dbus.Error
	return errors.As(err, &pe) && pe.Name == name
}

// ResolvConfMode returns systemd-resolved's ResolvConfMode property (systemd
// 246 and later, org.freedesktop.resolve1(5)): how /etc/resolv.conf relates
// to resolved. "stub", "static" and "uplink" mean resolved manages the file;
// "foreign" means something else does and "missing" that there is none. Then
// programs that read /etc/resolv.conf never ask resolved, and the settings
// Configure made on the link reach only programs that use glibc's
// nss-resolve (nsswitch.conf's "resolve"). An older resolved, without the
// property, gives "".
func ResolvConfMode(ctx context.Context) (string, error) {
	conn, err := connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var mode dbus.Variant
	err = conn.Object(resolvedName, resolvedPath).CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0,
		strings.TrimSuffix(resolvedManager, "."), "ResolvConfMode").Store(&mode)
	switch {
	case isError(err, "org.freedesktop.DBus.Error.UnknownProperty"), // sd-bus's
		isError(err, "org.freedesktop.DBus.Properties.Error.PropertyNotFound"), // godbus's
		isError(err, "org.freedesktop.DBus.Error.InvalidArgs"):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("hostdns: systemd-resolved ResolvConfMode: %w", err)
	}
	s, ok := mode.Value().(string)
	if !ok {
		return "", fmt.Errorf("hostdns: systemd-resolved ResolvConfMode: a %s, not a string", mode.Signature())
	}
	return s, nil
}

// ResolvConfBypassed reports whether mode (ResolvConfMode) means that
// /etc/resolv.conf does not lead to resolved.
func ResolvConfBypassed(mode string) bool { return mode == "foreign" || mode == "missing" }
