package testbed

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// resolvedReady bounds the wait for a started systemd-resolved to own its
// D-Bus name.
const resolvedReady = 10 * time.Second

// ResolvedDir returns where `make deps` unpacked the systemd-resolved
// package (`apt-get download` and `dpkg-deb -x`, never installed):
// $KUBETUN_CACHE/resolved, else ~/.cache/kubetun/resolved. It fails, saying
// how to get it, when the daemon is not there.
func ResolvedDir() (string, error) {
	cache := os.Getenv("KUBETUN_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("testbed: systemd-resolved: no cache directory (set KUBETUN_CACHE): %w", err)
		}
		cache = filepath.Join(home, ".cache", "kubetun")
	}
	dir := filepath.Join(cache, "resolved")
	if _, err := os.Stat(filepath.Join(dir, "lib/systemd/systemd-resolved")); err != nil {
		return "", fmt.Errorf("testbed: systemd-resolved is not unpacked in %s (run `make deps`): %w", dir, err)
	}
	return dir, nil
}

// Resolved is a real systemd-resolved, run from its unpacked package inside
// a namespace of the test bed, with a dbus-daemon of its own as its system
// bus. Both run in a private mount namespace (unshare(1)) whose bind mounts
// give resolved what a system with it installed has, without installing
// anything: a /run/systemd of its own, a "systemd-resolve" user in
// /etc/passwd and /etc/group, the package's D-Bus policy in
// /usr/share/dbus-1/system.d, and an /etc/resolv.conf without the host's
// servers (resolved would use them), so resolved knows only the upstreams
// it was given. The mounts vanish with the two processes, which the test
// bed stops on Close like any other; the files live in the test bed's
// directory.
//
// The network namespace decides what resolved manages: the links it sees,
// and its stub listener on 127.0.0.53 there.
type Resolved struct {
	// Namespace is the network namespace resolved runs in.
	Namespace string
	// BusAddress is its system bus, for DBUS_SYSTEM_BUS_ADDRESS. The
	// socket is a file in the test bed's directory, reachable from any
	// namespace.
	BusAddress string
	// RunDir is what resolved sees as /run/systemd.
	RunDir string
	// Process is the mount namespace's first process, which ends as
	// systemd-resolved; dbus-daemon runs in its process group.
	Process *Process

	tb  *Testbed
	pkg string // the unpacked package
}

// StartResolved starts systemd-resolved (from ResolvedDir) in namespace ns,
// with upstreams as its global DNS= servers (the host's own DNS), no
// fallback servers, no cache (every question reaches a server, so tests can
// count them), and LLMNR, mDNS and DNSSEC off. It returns once resolved
// owns org.freedesktop.resolve1 on its bus.
func (tb *Testbed) StartResolved(ns string, upstreams ...netip.Addr) (*Resolved, error) {
	pkg, err := ResolvedDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tb.Dir, "resolved-")
	if err != nil {
		return nil, fmt.Errorf("testbed: systemd-resolved: %w", err)
	}
	// resolved and dbus-daemon drop root; both must reach the bus socket
	// below the test bed's directory, which MkdirTemp made 0700.
	for _, d := range []string{tb.Dir, dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, fmt.Errorf("testbed: systemd-resolved: %w", err)
		}
	}
	r := &Resolved{
		Namespace:  ns,
		BusAddress: "unix:path=" + filepath.Join(dir, "bus", "system_bus_socket"),
		RunDir:     filepath.Join(dir, "run-systemd"),
		tb:         tb,
		pkg:        pkg,
	}
	if err := r.writeFiles(dir, upstreams); err != nil {
		return nil, err
	}
	p, err := tb.Start(ns, "systemd-resolved", "unshare", "--mount", "--propagation", "private", "sh", filepath.Join(dir, "start.sh"))
	if err != nil {
		return nil, err
	}
	r.Process = p
	if err := r.waitReady(); err != nil {
		return nil, err
	}
	tb.logf("testbed %s: systemd-resolved in %s, bus %s, upstreams %v", tb.Prefix, ns, r.BusAddress, upstreams)
	return r, nil
}

// writeFiles writes what start.sh mounts, and start.sh itself, into dir.
func (r *Resolved) writeFiles(dir string, upstreams []netip.Addr) error {
	passwd, group, err := withResolveUser()
	if err != nil {
		return err
	}
	var conf strings.Builder
	conf.WriteString("[Resolve]\n# Empty first: only these servers, none from elsewhere.\nDNS=\n")
	for _, u := range upstreams {
		fmt.Fprintf(&conf, "DNS=%s\n", u)
	}
	conf.WriteString("FallbackDNS=\nDomains=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\nDNSOverTLS=no\nCache=no\nDNSStubListener=yes\n")
	files := map[string]string{
		"passwd":      passwd,
		"group":       group,
		"resolv.conf": "# kubetun test bed: systemd-resolved's servers are in /run/systemd/resolved.conf.d\n",
		"run-systemd/resolved.conf.d/kubetun-testbed.conf": conf.String(),
		"start.sh": fmt.Sprintf(resolvedScript,
			shellQuote(dir), shellQuote(r.pkg), shellQuote(r.BusAddress)),
	}
	for _, d := range []string{"bus", "run-systemd/resolved.conf.d", "system.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("testbed: systemd-resolved: %w", err)
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("testbed: systemd-resolved: %w", err)
		}
	}
	return nil
}

// resolvedScript runs in the private mount namespace: %[1]s is the
// directory of the files, %[2]s the unpacked package, %[3]s the bus
// address. It ends as systemd-resolved; dbus-daemon stays in its process
// group (--nofork), so a signal to the group stops both.
const resolvedScript = `set -eu
dir=%[1]s
pkg=%[2]s
cp -a /usr/share/dbus-1/system.d/. "$dir/system.d/"
cp "$pkg/usr/share/dbus-1/system.d/org.freedesktop.resolve1.conf" "$dir/system.d/"
mount --bind "$dir/system.d" /usr/share/dbus-1/system.d
mount --bind "$dir/passwd" /etc/passwd
mount --bind "$dir/group" /etc/group
mount --bind "$dir/resolv.conf" /etc/resolv.conf
mount --bind "$dir/run-systemd" /run/systemd
export DBUS_SYSTEM_BUS_ADDRESS=%[3]s
dbus-daemon --system --address="$DBUS_SYSTEM_BUS_ADDRESS" --nofork --nopidfile &
exec "$pkg/lib/systemd/systemd-resolved"
`

// waitReady waits until resolved owns its name on the bus, or exits.
func (r *Resolved) waitReady() error {
	deadline := time.Now().Add(resolvedReady)
	var last error
	for time.Now().Before(deadline) {
		if r.Process.Exited() {
			return fmt.Errorf("testbed: systemd-resolved exited at start: %v; output:\n%s", r.Process.Wait(time.Second), r.Process.Output())
		}
		if last = r.owned(); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("testbed: systemd-resolved: not on its bus after %v: %v; output:\n%s", resolvedReady, last, r.Process.Output())
}

// owned returns nil once org.freedesktop.resolve1 has an owner.
func (r *Resolved) owned() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := dbus.Connect(r.BusAddress, dbus.WithContext(ctx))
	if err != nil {
		return err
	}
	defer conn.Close()
	var owned bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, "org.freedesktop.resolve1").Store(&owned); err != nil {
		return err
	}
	if !owned {
		return errors.New("org.freedesktop.resolve1 has no owner")
	}
	return nil
}

// ResolvConf returns what resolved writes to /run/systemd/resolve/resolv.conf:
// every server it knows, global and per link, and the search domains.
func (r *Resolved) ResolvConf() (string, error) {
	b, err := os.ReadFile(filepath.Join(r.RunDir, "resolve", "resolv.conf"))
	if err != nil {
		return "", fmt.Errorf("testbed: systemd-resolved's resolv.conf: %w", err)
	}
	return string(b), nil
}

// Resolvectl runs the package's resolvectl with args in resolved's
// namespace, on resolved's bus.
func (r *Resolved) Resolvectl(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"env", "DBUS_SYSTEM_BUS_ADDRESS=" + r.BusAddress, filepath.Join(r.pkg, "usr/bin/resolvectl")}, args...)
	return r.tb.Run(ctx, r.Namespace, argv...)
}

// withResolveUser returns /etc/passwd and /etc/group with a
// systemd-resolve user and group added, which resolved switches to after
// start-up and which its D-Bus policy names, on ids free in both files.
// Files that have the user already are returned as they are.
func withResolveUser() (passwd, group string, err error) {
	p, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", "", fmt.Errorf("testbed: systemd-resolved: %w", err)
	}
	g, err := os.ReadFile("/etc/group")
	if err != nil {
		return "", "", fmt.Errorf("testbed: systemd-resolved: %w", err)
	}
	users, groups := idsOf(p), idsOf(g)
	_, hasUser := users["systemd-resolve"]
	_, hasGroup := groups["systemd-resolve"]
	used := map[string]bool{}
	for _, m := range []map[string]string{users, groups} {
		for _, id := range m {
			used[id] = true
		}
	}
	id := ""
	for n := 999; n >= 900 && id == ""; n-- {
		if !used[strconv.Itoa(n)] {
			id = strconv.Itoa(n)
		}
	}
	if id == "" {
		return "", "", errors.New("testbed: systemd-resolved: no free id in 900..999 for the systemd-resolve user")
	}
	passwd, group = string(ensureNewline(p)), string(ensureNewline(g))
	if !hasGroup {
		group += "systemd-resolve:x:" + id + ":\n"
	} else {
		id = groups["systemd-resolve"]
	}
	if !hasUser {
		passwd += "systemd-resolve:x:" + id + ":" + id + ":systemd Resolver:/:/usr/sbin/nologin\n"
	}
	return passwd, group, nil
}

// idsOf maps the names in a passwd or group file to their ids.
func idsOf(file []byte) map[string]string {
	ids := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(file))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 3 {
			ids[f[0]] = f[2]
		}
	}
	return ids
}

func ensureNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return append(b, '\n')
	}
	return b
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
