package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubetun/kubetun/netstack"
	"github.com/kubetun/kubetun/tunnel"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestParseRunFlags(t *testing.T) {
	// base are the two required flags; cases add to them.
	base := []string{"--service-cidr", "10.3.240.0/20", "--manifests", "/etc/kubetun"}
	with := func(args ...string) []string { return append(slices.Clone(base), args...) }
	defaults := runConfig{
		serviceCIDRs: prefixes("10.3.240.0/20"),
		manifests:    "/etc/kubetun",
		tun:          "kubetun0",
		mtu:          tunnel.DefaultMTU,
		dialTimeout:  netstack.DefaultDialTimeout,
		drainTimeout: defaultDrainTimeout,
		logLevel:     slog.LevelInfo,
		nodeName:     defaultNodeName(),
		healthAddr:   defaultHealthAddr,
		metricsAddr:  defaultMetricsAddr,
	}
	// withCfg returns defaults changed by f.
	withCfg := func(f func(*runConfig)) runConfig {
		cfg := defaults
		f(&cfg)
		return cfg
	}

	tests := []struct {
		name string
		args []string
		want runConfig
		err  string // substring of the error; "" for none
	}{
		{name: "defaults", args: base, want: defaults},
		{
			name: "every flag",
			args: []string{"--service-cidr=10.3.240.0/20", "-manifests", "services.yaml", "--tun", "kt1",
				"--mtu", "1500", "--dial-timeout", "500ms", "--log-level", "debug",
				"--node-name", "node-1", "--health-addr", "", "--metrics-addr", "127.0.0.1:9999", "--persist",
				"--max-affinity-clients", "100", "--drain-timeout", "5s"},
			want: runConfig{
				persist:            true,
				maxAffinityClients: 100,
				serviceCIDRs:       prefixes("10.3.240.0/20"),
				manifests:          "services.yaml",
				tun:                "kt1",
				mtu:                1500,
				dialTimeout:        500 * time.Millisecond,
				drainTimeout:       5 * time.Second,
				logLevel:           slog.LevelDebug,
				nodeName:           "node-1",
				healthAddr:         "",
				metricsAddr:        "127.0.0.1:9999",
			},
		},
		{
			name: "--service-cidr repeated",
			args: with("--service-cidr", "10.96.0.0/12", "--service-cidr", "fd00:3::/112"),
			want: withCfg(func(c *runConfig) { c.serviceCIDRs = prefixes("10.3.240.0/20", "10.96.0.0/12", "fd00:3::/112") }),
		},
		{
			name: "--service-cidr comma-separated",
			args: []string{"--service-cidr", "10.3.240.0/20, 10.96.0.0/12,fd00:3::/112,", "--manifests", "/etc/kubetun"},
			want: withCfg(func(c *runConfig) { c.serviceCIDRs = prefixes("10.3.240.0/20", "10.96.0.0/12", "fd00:3::/112") }),
		},
		{name: "--mtu at its minimum", args: with("--mtu", "1280"), want: withCfg(func(c *runConfig) { c.mtu = 1280 })},
		{name: "--mtu at its maximum", args: with("--mtu", "65535"), want: withCfg(func(c *runConfig) { c.mtu = 65535 })},
		{name: "--log-level in capitals", args: with("--log-level", "WARN"), want: withCfg(func(c *runConfig) { c.logLevel = slog.LevelWarn })},
		{name: "--profiling", args: with("--profiling"), want: withCfg(func(c *runConfig) { c.profiling = true })},
		{name: "--statusz-allow-remote", args: with("--statusz-allow-remote"), want: withCfg(func(c *runConfig) { c.statusRemote = true })},
		{name: "--tun of 15 characters", args: with("--tun", "kubetun-0123456"), want: withCfg(func(c *runConfig) { c.tun = "kubetun-0123456" })},

		{name: "a host address, not a network", args: []string{"--service-cidr", "10.3.241.152/20", "--manifests", "m"}, err: "did you mean 10.3.240.0/20"},
		{name: "an address without a prefix length", args: []string{"--service-cidr", "10.3.241.152", "--manifests", "m"}, err: `"10.3.241.152" is not a CIDR`},
		{name: "overlapping CIDRs, repeated", args: with("--service-cidr", "10.3.241.0/24"), err: "10.3.241.0/24 overlaps 10.3.240.0/20"},
		{name: "overlapping CIDRs, comma-separated", args: []string{"--service-cidr", "10.0.0.0/8,10.3.240.0/20", "--manifests", "m"}, err: "10.3.240.0/20 overlaps 10.0.0.0/8"},
		{name: "the same CIDR twice", args: with("--service-cidr", "10.3.240.0/20"), err: "10.3.240.0/20 overlaps 10.3.240.0/20"},
		{name: "IPv4 /0", args: []string{"--service-cidr", "0.0.0.0/0", "--manifests", "m"}, err: "0.0.0.0/0 would send every address into kubetun"},
		{name: "IPv6 /0", args: []string{"--service-cidr", "::/0", "--manifests", "m"}, err: "::/0 would send every address into kubetun"},
		{name: "IPv4-mapped IPv6", args: []string{"--service-cidr", "::ffff:10.3.240.0/116", "--manifests", "m"}, err: "use the IPv4 form"},
		{name: "no --service-cidr with --manifests", args: []string{"--manifests", "m"}, err: "--service-cidr is required with --manifests"},
		{name: "an empty --service-cidr", args: []string{"--service-cidr", "", "--manifests", "m"}, err: "--service-cidr is required"},
		{
			name: "the API, with --kubeconfig and no --service-cidr",
			args: []string{"--kubeconfig", "/root/.kube/config"},
			want: withCfg(func(c *runConfig) { c.manifests, c.kubeconfig, c.serviceCIDRs = "", "/root/.kube/config", nil }),
		},
		{name: "--manifests and --kubeconfig", args: with("--kubeconfig", "k"), err: "--manifests and --kubeconfig are two sources"},
		{name: "an empty --node-name", args: with("--node-name", ""), err: "--node-name is empty"},
		{name: "--tun too long", args: with("--tun", "kubetun-01234567"), err: `--tun "kubetun-01234567"`},
		{name: "--tun empty", args: with("--tun", ""), err: `--tun ""`},
		{name: "--tun with a slash", args: with("--tun", "kt/0"), err: `--tun "kt/0"`},
		{name: "--mtu too small", args: with("--mtu", "1279"), err: "--mtu 1279: want 1280 to 65535"},
		{name: "--mtu too large", args: with("--mtu", "65536"), err: "--mtu 65536: want 1280 to 65535"},
		{name: "--mtu not a number", args: with("--mtu", "big"), err: "-mtu"},
		{name: "--drain-timeout 0", args: with("--drain-timeout", "0"), want: withCfg(func(c *runConfig) { c.drainTimeout = 0 })},
		{name: "--drain-timeout 30s", args: with("--drain-timeout", "30s"), want: withCfg(func(c *runConfig) { c.drainTimeout = 30 * time.Second })},
		{name: "--drain-timeout negative", args: with("--drain-timeout", "-1s"), err: "--drain-timeout -1s: want 0 or a positive duration"},
		{name: "--dial-timeout 0", args: with("--dial-timeout", "0"), err: "--dial-timeout 0s: want a positive duration"},
		{name: "--dial-timeout negative", args: with("--dial-timeout", "-1s"), err: "--dial-timeout -1s: want a positive duration"},
		{name: "--dial-timeout without a unit", args: with("--dial-timeout", "3"), err: "-dial-timeout"},
		{name: "a bad --log-level", args: with("--log-level", "loud"), err: `--log-level "loud": want debug, info, warn or error`},
		{name: "--profiling without --metrics-addr", args: with("--profiling", "--metrics-addr", ""), err: "--profiling serves on --metrics-addr, which is disabled"},
		{name: "an unknown flag", args: with("--verbose"), err: "unknown flag: --verbose"},
		{name: "an extra argument", args: with("extra"), err: `unexpected argument "extra"`},
		{name: "an extra argument before flags", args: []string{"extra", "--service-cidr", "10.3.240.0/20", "--manifests", "m"}, err: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got, err := parseRunFlags(tt.args, &stderr)
			if tt.err != "" {
				if err == nil {
					t.Fatalf("parseRunFlags(%q) = %+v, want an error containing %q", tt.args, got, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Errorf("parseRunFlags(%q) error %q, want it to contain %q", tt.args, err, tt.err)
				}
				if !errors.As(err, new(usageError)) {
					t.Errorf("parseRunFlags(%q) error %q is not a usageError (exit code 2)", tt.args, err)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("parseRunFlags(%q) error %q is more than one line", tt.args, err)
				}
				if stderr.Len() > 0 {
					t.Errorf("parseRunFlags(%q) wrote %q, want nothing: the caller reports the error", tt.args, stderr.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRunFlags(%q): %v", tt.args, err)
			}
			if !slices.Equal(got.serviceCIDRs, tt.want.serviceCIDRs) || got.manifests != tt.want.manifests ||
				got.tun != tt.want.tun || got.mtu != tt.want.mtu || got.dialTimeout != tt.want.dialTimeout ||
				got.drainTimeout != tt.want.drainTimeout ||
				got.logLevel != tt.want.logLevel || got.profiling != tt.want.profiling || got.statusRemote != tt.want.statusRemote {
				t.Errorf("parseRunFlags(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseRunFlagsHelp(t *testing.T) {
	var stderr bytes.Buffer
	_, err := parseRunFlags([]string{"-h"}, &stderr)
	if !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("parseRunFlags(-h) error %v, want pflag.ErrHelp", err)
	}
	for _, want := range []string{"Usage: kubetun run", "-service-cidr", "-manifests", "-kubeconfig", "-node-name", "-health-addr", "-metrics-addr", "-tun", "-persist", "-max-affinity-clients", "-mtu", "-dial-timeout", "-log-level"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("parseRunFlags(-h) printed %q, want it to contain %q", stderr.String(), want)
		}
	}
}

func TestRunMain(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	// No API configuration to be found: run without a source must say so.
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring; "" for no output
		stderr string // substring; "" for no output
	}{
		{name: "no arguments", args: nil, code: 2, stderr: "Usage:"},
		{name: "an unknown command", args: []string{"frobnicate"}, code: 2, stderr: `kubetun: unknown command "frobnicate"`},
		{name: "version", args: []string{"version"}, code: 0, stdout: "kubetun "},
		{name: "--version", args: []string{"--version"}, code: 0, stdout: "kubetun "},
		{name: "help", args: []string{"help"}, code: 0, stdout: "Usage:"},
		{name: "run with a bad flag", args: []string{"run", "--mtu", "9"}, code: 2, stderr: "kubetun run: "},
		{name: "connect with a bad --via", args: []string{"connect", "--via", "vpn"}, code: 2, stderr: `kubetun connect: --via "vpn": want direct, portforward or auto`},
		{name: "connect with --manifests", args: []string{"connect", "--manifests", "x.yaml", "--service-cidr", "10.3.240.0/20"}, code: 2, stderr: "kubetun connect: --manifests and --persist are run's"},
		{name: "connect with a bad --map", args: []string{"connect", "--map", "sometimes"}, code: 2, stderr: `kubetun connect: --map "sometimes": want overlap, always or never`},
		{name: "connect with a bad --domain", args: []string{"connect", "--domain", "a b"}, code: 2, stderr: `kubetun connect: --domain "a b": want a domain`},
		{name: "connect with an empty --tun", args: []string{"connect", "--tun", ""}, code: 2, stderr: `kubetun connect: --tun "": an interface name is 1 to 15 characters`},
		{name: "connect --help", args: []string{"connect", "--help"}, code: 0, stdout: "sudo setcap cap_net_admin+ep"},
		{name: "connect --help names the TUN after the context", args: []string{"connect", "--help"}, code: 0, stdout: "default: kt- and the context"},
		{name: "connect with a missing kubeconfig", args: []string{"connect", "--kubeconfig", missing}, code: 1, stderr: "kubetun: loading Kubernetes client config (" + missing + ")"},
		{name: "run without flags or API config", args: []string{"run"}, code: 1, stderr: "kubetun: no service source: not running in a cluster, $KUBECONFIG is unset"},
		{name: "run with a missing kubeconfig", args: []string{"run", "--kubeconfig", missing}, code: 1, stderr: "kubetun: loading Kubernetes client config (" + missing + ")"},
		{name: "run -h", args: []string{"run", "-h"}, code: 0, stdout: "kubetun run [--kubeconfig PATH"},
		{name: "run --help", args: []string{"run", "--help"}, code: 0, stdout: "--service-cidr CIDR"},
		{name: "run, a long flag with one dash", args: []string{"run", "-mtu", "9"}, code: 2, stderr: "kubetun run: --mtu 9: want 1280 to 65535"},
		{name: "run with a bad --service-proxy-name", args: []string{"run", "--service-proxy-name", "not a label"}, code: 2, stderr: `kubetun run: --service-proxy-name "not a label": not a label value`},
		{name: "run --service-proxy-name with --manifests", args: []string{"run", "--service-proxy-name", "kubetun", "--manifests", "x.yaml", "--service-cidr", "10.3.240.0/20"}, code: 2, stderr: "kubetun run: --service-proxy-name selects Services of the Kubernetes API"},
		{name: "run with an unknown flag", args: []string{"run", "--verbose"}, code: 2, stderr: "kubetun run: unknown flag: --verbose (see 'kubetun run --help')"},
		{name: "-version", args: []string{"-version"}, code: 0, stdout: "kubetun "},
		{name: "--help", args: []string{"--help"}, code: 0, stdout: "kubetun status"},
		{name: "completion bash", args: []string{"completion", "bash"}, code: 0, stdout: "bash completion"},
		{name: "completion zsh", args: []string{"completion", "zsh"}, code: 0, stdout: "compdef"},
		{name: "completion fish", args: []string{"completion", "fish"}, code: 0, stdout: "complete -c kubetun"},
		{name: "cleanup -h", args: []string{"cleanup", "-h"}, code: 0, stdout: "kubetun cleanup [--tun NAME]"},
		{name: "cleanup with an argument", args: []string{"cleanup", "kubetun0"}, code: 2, stderr: `kubetun cleanup: unexpected argument "kubetun0"`},
		{name: "cleanup with a bad flag", args: []string{"cleanup", "--persist"}, code: 2, stderr: "kubetun cleanup: unknown flag: --persist"},
		{name: "run with no affinity clients", args: []string{"run", "--max-affinity-clients", "0"}, code: 2, stderr: "kubetun run: --max-affinity-clients 0: want 1 or more"},
		{name: "--help lists cleanup", args: []string{"--help"}, code: 0, stdout: "cleanup     Remove the TUN device"},
		{name: "version with an argument", args: []string{"version", "x"}, code: 2, stderr: `kubetun version: unexpected argument "x"`},
		// Fails reading the manifests, before it touches routes or a TUN:
		// no root needed.
		{
			name:   "run with a missing manifest path",
			args:   []string{"run", "--service-cidr", "10.3.240.0/20", "--manifests", missing},
			code:   1,
			stderr: "kubetun: reading manifests: stat " + missing + ": no such file or directory\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runMain(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("runMain(%q) = %d, want %d (stderr %q)", tt.args, code, tt.code, stderr.String())
			}
			checkOutput(t, "stdout", stdout.String(), tt.stdout)
			checkOutput(t, "stderr", stderr.String(), tt.stderr)
		})
	}
}

func checkOutput(tb testing.TB, name, got, want string) {
	tb.Helper()
	switch {
	case want == "" && got != "":
		tb.Errorf("%s = %q, want nothing", name, got)
	case !strings.Contains(got, want):
		tb.Errorf("%s = %q, want it to contain %q", name, got, want)
	}
}

// TestDataPathFlags: the limits default to netstack's, parse, and a 0
// timeout disables it (netstack's negative).
func TestDataPathFlags(t *testing.T) {
	base := []string{"--service-cidr", "10.3.240.0/20", "--manifests", "m.yaml", "--node-name", "n"}
	cfg, err := parseRunFlags(base, io.Discard)
	if err != nil {
		t.Fatalf("parseRunFlags(%q): %v", base, err)
	}
	if c := cfg.dataPath; c.MaxSetups != netstack.DefaultMaxSetups || c.MaxTCPFlows != netstack.DefaultMaxTCPFlows ||
		c.HalfClosedTimeout != netstack.DefaultHalfClosedTimeout || c.MaxUDPQueuedBytes != netstack.DefaultMaxUDPQueuedBytes {
		t.Errorf("defaults: %+v", c)
	}
	args := append(base, "--max-tcp-setups-per-source", "4", "--tcp-user-timeout", "0", "--tcp-handshake-timeout", "2s")
	cfg, err = parseRunFlags(args, io.Discard)
	if err != nil {
		t.Fatalf("parseRunFlags(%q): %v", args, err)
	}
	if c := cfg.dataPath; c.MaxSetupsPerSource != 4 || c.TCPUserTimeout >= 0 || c.HandshakeTimeout != 2*time.Second {
		t.Errorf("parseRunFlags(%q).dataPath = %+v", args, c)
	}
	for _, bad := range [][]string{{"--max-tcp-flows", "0"}, {"--tcp-half-closed-timeout", "-1s"}} {
		if _, err := parseRunFlags(append(base, bad...), io.Discard); err == nil {
			t.Errorf("parseRunFlags(%q) = nil error", bad)
		}
	}
}

func TestLongFlags(t *testing.T) {
	fs := pflag.NewFlagSet("kubetun run", pflag.ContinueOnError)
	runFlags(fs)
	for _, tc := range []struct{ in, want []string }{
		{[]string{"-mtu", "1500", "-manifests=m"}, []string{"--mtu", "1500", "--manifests=m"}},
		{[]string{"--mtu", "1500", "-h", "-help"}, []string{"--mtu", "1500", "-h", "--help"}},
		{[]string{"-unknown", "-x"}, []string{"-unknown", "-x"}},
		{[]string{"--", "-mtu"}, []string{"--", "-mtu"}},
	} {
		if got := longFlags(fs, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("longFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNodePortFlags(t *testing.T) {
	base := []string{"--service-cidr", "10.3.240.0/20", "--manifests", "/etc/kubetun"}
	for _, tc := range []struct {
		args      []string
		addresses string
		ranges    []netip.Prefix
		wantErr   string
	}{
		{args: nil, addresses: "primary"},
		{args: []string{"--nodeport-addresses", "primary"}, addresses: "primary"},
		{args: []string{"--nodeport-addresses", "10.0.3.0/24", "--nodeport-addresses", "fd00::/64"}, addresses: "[10.0.3.0/24 fd00::/64]"},
		{args: []string{"--external-ip-ranges", "192.0.2.0/24,198.51.100.0/24"}, addresses: "primary", ranges: prefixes("192.0.2.0/24", "198.51.100.0/24")},
		{args: []string{"--nodeport-addresses", "eth0"}, wantErr: "neither a CIDR nor \"primary\""},
		{args: []string{"--nodeport-addresses", "primary,10.0.0.0/8"}, wantErr: "must be given alone"},
		{args: []string{"--external-ip-ranges", "192.0.2.1"}, wantErr: "not a CIDR"},
	} {
		cfg, err := parseRunFlags(append(slices.Clone(base), tc.args...), io.Discard)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseRunFlags(%q) error = %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil || cfg.nodePortAddresses.String() != tc.addresses || !slices.Equal(cfg.externalIPRanges, tc.ranges) {
			t.Errorf("parseRunFlags(%q) = %v %v, %v; want %s %v", tc.args, cfg.nodePortAddresses, cfg.externalIPRanges, err, tc.addresses, tc.ranges)
		}
	}
}
