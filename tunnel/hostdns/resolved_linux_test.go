package hostdns

import (
	"bufio"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"github.com/kubetun/kubetun/test/prereq"
)

// testBus starts a dbus-daemon of the test's own (a bus in a temporary
// directory, no root needed) and points DBUS_SYSTEM_BUS_ADDRESS at it.
func testBus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	prereq.Require(t, "dbus-daemon (make deps installs it)", err)
	dir := t.TempDir()
	addr := "unix:path=" + filepath.Join(dir, "bus")
	// A session bus's policy lets any client own any name, as the fake
	// resolved must.
	cmd := exec.Command(bin, "--session", "--address="+addr, "--nofork", "--nopidfile", "--print-address=1")
	// A test binary that panics runs no cleanup: the bus then dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// The address is printed once the bus listens.
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("%s: no address printed: %v", cmd, err)
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr
}

// fakeResolved owns org.freedesktop.resolve1 on the test bus and records
// the Manager methods called on it, as "Method ifindex args".
type fakeResolved struct {
	mu    sync.Mutex // guards calls
	calls []string
}

// startFakeResolved serves the methods of resolved's Manager except those
// in missing (an older resolved), failing those in fail with their error.
func startFakeResolved(t *testing.T, addr string, missing []string, fail map[string]*dbus.Error) *fakeResolved {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeResolved{}
	call := func(method string, ifindex int32, args any) *dbus.Error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, fmt.Sprintf("%s %d %v", method, ifindex, args))
		return fail[method]
	}
	methods := map[string]any{
		"SetLinkDefaultRoute": func(i int32, on bool) *dbus.Error { return call("SetLinkDefaultRoute", i, on) },
		"SetLinkLLMNR":        func(i int32, mode string) *dbus.Error { return call("SetLinkLLMNR", i, mode) },
		"SetLinkMulticastDNS": func(i int32, mode string) *dbus.Error { return call("SetLinkMulticastDNS", i, mode) },
		"SetLinkDNSSEC":       func(i int32, mode string) *dbus.Error { return call("SetLinkDNSSEC", i, mode) },
		"SetLinkDNSOverTLS":   func(i int32, mode string) *dbus.Error { return call("SetLinkDNSOverTLS", i, mode) },
		"SetLinkDomains":      func(i int32, d []linkDomain) *dbus.Error { return call("SetLinkDomains", i, d) },
		"SetLinkDNS":          func(i int32, a []linkAddress) *dbus.Error { return call("SetLinkDNS", i, a) },
		"RevertLink":          func(i int32) *dbus.Error { return call("RevertLink", i, "") },
	}
	for _, m := range missing {
		delete(methods, m)
	}
	if err := conn.ExportMethodTable(methods, resolvedPath, "org.freedesktop.resolve1.Manager"); err != nil {
		t.Fatal(err)
	}
	// Properties: an older resolved has some, but not ResolvConfMode.
	props := map[string]*prop.Prop{"LLMNR": {Value: "yes", Emit: prop.EmitFalse}}
	if !slices.Contains(missing, "ResolvConfMode") {
		props["ResolvConfMode"] = &prop.Prop{Value: "foreign", Emit: prop.EmitFalse}
	}
	if _, err := prop.Export(conn, resolvedPath, prop.Map{"org.freedesktop.resolve1.Manager": props}); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName(resolvedName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName(%s) = %v, %v", resolvedName, reply, err)
	}
	return f
}

// TestResolvConfMode reads the property, and gives "" for a resolved
// older than systemd 246, which has none.
func TestResolvConfMode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		missing []string
		want    string
	}{
		{"foreign", nil, "foreign"},
		{"older resolved", []string{"ResolvConfMode"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := testBus(t)
			startFakeResolved(t, addr, tc.missing, nil)
			got, err := ResolvConfMode(t.Context())
			if err != nil || got != tc.want {
				t.Fatalf("ResolvConfMode() = %q, %v; want %q", got, err, tc.want)
			}
			if ResolvConfBypassed(got) != (tc.want == "foreign") {
				t.Errorf("ResolvConfBypassed(%q) = %v", got, ResolvConfBypassed(got))
			}
		})
	}
}

func (f *fakeResolved) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// atIndex7 stands in for findLink: the tests have no link of their own.
func atIndex7(l Link) (Link, error) {
	l.Index = 7
	return l, nil
}

// wantSettings are the calls Configure makes for clusterLink at index 7.
var wantSettings = []string{
	"SetLinkDefaultRoute 7 false",
	"SetLinkLLMNR 7 no",
	"SetLinkMulticastDNS 7 no",
	"SetLinkDNSSEC 7 no",
	"SetLinkDNSOverTLS 7 no",
	"SetLinkDomains 7 [{default.svc.cluster.local false} {svc.cluster.local false} {cluster.local false}]",
	"SetLinkDNS 7 [{2 [10 3 240 10]}]",
}

func TestConfigureCalls(t *testing.T) {
	addr := testBus(t)
	without := func(calls []string, methods ...string) []string {
		return slices.DeleteFunc(slices.Clone(calls), func(c string) bool {
			return slices.ContainsFunc(methods, func(m string) bool { return strings.HasPrefix(c, m+" ") })
		})
	}
	for _, tc := range []struct {
		name    string
		missing []string
		fail    map[string]*dbus.Error
		want    []string // the calls, Configure's and then revert's
		wantErr string   // in Configure's error
	}{
		{
			name: "current resolved",
			want: append(slices.Clone(wantSettings), "RevertLink 7 "),
		},
		{
			// Before systemd 240 (no DefaultRoute) and 239 (no DNSOverTLS).
			name:    "older resolved",
			missing: []string{"SetLinkDefaultRoute", "SetLinkDNSOverTLS"},
			want:    append(without(wantSettings, "SetLinkDefaultRoute", "SetLinkDNSOverTLS"), "RevertLink 7 "),
		},
		{
			name: "link gone before revert",
			fail: map[string]*dbus.Error{"RevertLink": dbus.NewError(errNoSuchLink, []any{"Link 7 not known"})},
			want: append(slices.Clone(wantSettings), "RevertLink 7 "),
		},
		{
			name:    "refused: reverts what it set",
			fail:    map[string]*dbus.Error{"SetLinkDNS": dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Access denied"})},
			want:    append(slices.Clone(wantSettings), "RevertLink 7 "),
			wantErr: "CAP_NET_ADMIN",
		},
		{
			name:    "failing DefaultRoute is no optional setting to skip",
			fail:    map[string]*dbus.Error{"SetLinkDefaultRoute": dbus.NewError("org.freedesktop.DBus.Error.InvalidArgs", []any{"nope"})},
			want:    []string{"SetLinkDefaultRoute 7 false", "RevertLink 7 "},
			wantErr: "SetLinkDefaultRoute",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeResolved(t, addr, tc.missing, tc.fail)
			revert, err := configure(t.Context(), clusterLink, atIndex7)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || revert != nil {
					t.Errorf("Configure = %v, want an error with %q and no revert", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatalf("Configure: %v", err)
				}
				if err := revert(); err != nil {
					t.Errorf("revert: %v", err)
				}
				if err := revert(); err != nil {
					t.Errorf("revert again: %v", err)
				}
			}
			if got := f.Calls(); !slices.Equal(got, tc.want) {
				t.Errorf("calls:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// TestConfigureNoResolvedOnBus: a system bus on which nothing owns
// resolved's name is a host without resolved; Configure calls nothing
// (which would activate an installed but stopped resolved).
func TestConfigureNoResolvedOnBus(t *testing.T) {
	testBus(t)
	revert, err := configure(t.Context(), clusterLink, atIndex7)
	if !errors.Is(err, ErrNoResolved) || revert != nil {
		t.Errorf("Configure on a bus without resolved = %v, want ErrNoResolved", err)
	}
}
