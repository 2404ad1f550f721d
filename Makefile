# kubetun: build, check and demo. `make test` is what CI (.ci/run) runs.
#
#   make build   bin/kubetun
#   make deps    the system tools the e2e tests and the demo use (installed as root),
#                and systemd-resolved unpacked for the split-DNS tests (make resolved)
#   make test    deps, go vet, gofmt check, unit tests (race detector on,
#                fuzz seed corpora included), e2e tests (root: namespaces, TUN),
#                then the tests skipped for a missing prerequisite, listed; with
#                CI set (as in CI), a missing prerequisite fails instead
#   make fuzz    each fuzz target in turn for FUZZTIME (default 30s)
#   make demo    the seed scenario through kubetun, explained step by step (root)
#   make bench   kubetun vs. direct and kube-proxy's iptables/nftables rules, same run (root);
#                the laptop case against kubectl port-forward and the api case on the real
#                control plane; the table also goes to bin/bench.json; BENCH_FLAGS=--short
#                for a 2-minute run

GO      ?= go
# Debian packages the e2e tests and the demo run: ip, nc, curl, iptables-save,
# nft, ping, dig, iperf3; unshare, dbus-daemon with the system bus's
# configuration, and systemd's shared library for the unpacked systemd-resolved.
DEPS    := iproute2 iputils-ping netcat-openbsd curl iptables nftables dnsutils iperf3 \
           util-linux dbus-daemon dbus-system-bus-common libsystemd-shared patch diffutils
# Where the split-DNS e2e tests find systemd-resolved (test/testbed.ResolvedDir).
RESOLVED_DIR ?= $(or $(KUBETUN_CACHE),$(HOME)/.cache/kubetun)/resolved
# Every package but the e2e tests, which need root.
UNIT     = $(shell $(GO) list ./... | grep -v '/test/e2e$$')
# The packages with fuzz targets (func FuzzX(f *testing.F) in a _test.go).
FUZZPKGS = $(sort $(dir $(shell grep -rl --include='*_test.go' '^func Fuzz' .)))
FUZZTIME ?= 30s
# Time spent shrinking each new interesting input: go test's 60s default
# leaves a short run little time to fuzz.
FUZZMINIMIZETIME ?= 5s

.PHONY: build deps deps-packages resolved vet fmt gotest unit fuzz e2e test demo bench clean controlplane gvisor-copy gvisor-diff

build:
	$(GO) build -o bin/kubetun ./cmd/kubetun

# Installs what is missing when root (apt-get update once, first); otherwise
# only reports it.
deps: deps-packages resolved

deps-packages:
	@command -v dpkg-query >/dev/null || { echo "deps: no dpkg-query: not Debian; install the equivalents of: $(DEPS)"; exit 0; }; \
	missing=""; \
	for p in $(DEPS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "deps: all present ($(DEPS))"; \
	elif [ "$$(id -u)" -eq 0 ]; then \
		echo "deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "deps: missing$$missing; run 'make deps' as root to install them"; \
	fi

# systemd-resolved for the split-DNS e2e tests, downloaded and unpacked into
# $(RESOLVED_DIR), never installed: its postinst would point /etc/resolv.conf
# at resolved's stub, and with no resolved running (no systemd as PID 1 on a CI
# machine) the host would lose name resolution. The version is the installed
# libsystemd-shared's, the private library it links against; the candidate
# version if that one is gone from the archive. When it cannot be had, this
# fails with CI set; otherwise it says so, and the split-DNS tests skip.
resolved: deps-packages
	@if [ -x "$(RESOLVED_DIR)/lib/systemd/systemd-resolved" ]; then echo "resolved: unpacked in $(RESOLVED_DIR)"; exit 0; fi; \
	fail() { echo "resolved: $$*"; if [ -n "$$CI" ]; then echo "resolved: CI is set: failing"; exit 1; fi; \
		echo "resolved: the split-DNS tests will skip"; exit 0; }; \
	command -v apt-get >/dev/null || fail "no apt-get: not Debian; unpack systemd-resolved's package into $(RESOLVED_DIR)"; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && chmod 755 "$$tmp" && cd "$$tmp" || fail "no temporary directory"; \
	v=$$(dpkg-query -W -f='$${Version}' libsystemd-shared 2>/dev/null || true); \
	dl() { apt-get download -qq "systemd-resolved$${v:+=$$v}" 2>/dev/null || apt-get download -qq systemd-resolved; }; \
	dl || { [ "$$(id -u)" -eq 0 ] && apt-get update -qq && dl; } || fail "cannot download systemd-resolved with apt-get"; \
	rm -rf "$(RESOLVED_DIR).tmp" && mkdir -p "$(RESOLVED_DIR).tmp" && \
	dpkg-deb -x systemd-resolved_*.deb "$(RESOLVED_DIR).tmp" && \
	rm -rf "$(RESOLVED_DIR)" && mv "$(RESOLVED_DIR).tmp" "$(RESOLVED_DIR)" || fail "cannot unpack systemd-resolved into $(RESOLVED_DIR)"; \
	echo "resolved: $$(ls systemd-resolved_*.deb) unpacked in $(RESOLVED_DIR)"

vet:
	$(GO) vet ./...

# Fails listing the files gofmt would change.
fmt:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi; echo "gofmt: clean"

# bin/gotest runs go test, printing what go test would and then the tests
# it skipped, with their reasons; -skips keeps that list for the end of
# `make test`.
gotest:
	@mkdir -p bin; $(GO) build -o bin/gotest ./test/gotest

# With the race detector. `go test` also runs every fuzz target's seed
# corpus (and testdata/fuzz, the inputs that once failed) as a test.
unit: gotest
	bin/gotest -skips bin/unit.skips -- -race $(UNIT)

# Fuzzes each target for FUZZTIME, one after the other (a fuzz run uses
# every core). An input that fails is written under the package's
# testdata/fuzz/FuzzX/ and the run stops: commit it with the fix, and
# `make unit` replays it from then on.
fuzz:
	@set -e; for pkg in $(FUZZPKGS); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz: $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME); \
		done; \
	done

# The real control plane the e2e tests run (etcd, kube-apiserver,
# kube-controller-manager, kubectl), built once from the Go module proxy and
# cached in $$KUBETUN_CACHE or ~/.cache/kubetun (minutes on a cold cache).
controlplane:
	$(GO) run ./test/controlplane/cmd/build-controlplane

# Sequential on purpose: the timing checks (refused within 100 ms) should not
# compete with 10 MiB transfers. Without root the tests skip, unless CI is set.
e2e: controlplane gotest
	bin/gotest -v -skips bin/e2e.skips -- ./test/e2e -count=1 -timeout 30m

# Ends with the tests unit and e2e skipped: none but those a platform rules
# out when CI is set, where a missing prerequisite fails the test instead.
test: deps controlplane vet fmt unit e2e
	@n=$$(cat bin/unit.skips bin/e2e.skips | grep -c .); \
	if [ "$$n" -eq 0 ]; then echo "test: passed; no test skipped"; \
	else echo "test: passed; $$n tests skipped:"; sed 's/^/  /' bin/unit.skips bin/e2e.skips; fi

demo: deps build
	$(GO) run ./test/demo --kubetun bin/kubetun

# Throughput, connection rate and UDP packet rate through kubetun against the
# direct path, measured in the same run (root: namespaces, TUN). Not part of
# 'make test': numbers are shown, never asserted.
# The control plane is for the laptop and api groups (the first build takes
# minutes and says so); without it they are skipped with a note.
bench: deps build controlplane
	$(GO) run ./test/bench --kubetun bin/kubetun --json bin/bench.json $(BENCH_FLAGS)

# third_party/gvisor is gVisor at the version go.mod requires, trimmed, with
# the patches of third_party/patches/gvisor. gvisor-copy makes it anew (after
# a version bump or a new patch) and checks it; gvisor-diff prints what it has
# beyond upstream and the patches: edit the copy, then (the new patch must not
# be in the patch folder while its diff is made)
#   make gvisor-diff > /tmp/p && mv /tmp/p third_party/patches/gvisor/NNNN-what.patch
# A patch starts with its description: patch(1) skips text before the diff.
gvisor-copy:
	$(GO) run ./test/gvisorcopy/cmd/gvisorcopy -write

gvisor-diff:
	@$(GO) run ./test/gvisorcopy/cmd/gvisorcopy -diff

clean:
	rm -rf bin
