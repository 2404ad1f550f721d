package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The versions Build fetches from the Go module proxy.
const (
	// KubernetesVersion is the k8s.io/kubernetes module version of
	// kube-apiserver, kube-controller-manager and kubectl.
	KubernetesVersion = "v1.37.2"
	// EtcdVersion is the go.etcd.io/etcd/server/v3 module version.
	EtcdVersion = "v3.6.6"
)

// buildTimeout bounds one go build; a cold cache takes about 5 minutes on 2
// idle cores, and over 30 on 2 cores shared with other builds.
const buildTimeout = 60 * time.Minute

// Bins are the paths of the control plane's binaries.
type Bins struct {
	Etcd                  string
	KubeAPIServer         string
	KubeControllerManager string
	Kubectl               string
}

// CacheDir is where Build keeps the binaries: $KUBETUN_CACHE, or kubetun in
// the user's cache directory ($XDG_CACHE_HOME or ~/.cache).
func CacheDir() (string, error) {
	if dir := os.Getenv("KUBETUN_CACHE"); dir != "" {
		return dir, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("controlplane: no cache directory (set KUBETUN_CACHE): %w", err)
	}
	return filepath.Join(dir, "kubetun"), nil
}

// binsIn returns the binaries' paths under cache, built or not: one
// directory per version, filled completely before it gets its name.
func binsIn(cache string) Bins {
	k8s := filepath.Join(cache, "k8s-"+KubernetesVersion)
	return Bins{
		Etcd:                  filepath.Join(cache, "etcd-"+EtcdVersion, "etcd"),
		KubeAPIServer:         filepath.Join(k8s, "kube-apiserver"),
		KubeControllerManager: filepath.Join(k8s, "kube-controller-manager"),
		Kubectl:               filepath.Join(k8s, "kubectl"),
	}
}

// Find returns the cached binaries, or an error naming the first missing one
// and how to build them.
func Find() (Bins, error) {
	cache, err := CacheDir()
	if err != nil {
		return Bins{}, err
	}
	bins := binsIn(cache)
	for _, p := range []string{bins.Etcd, bins.KubeAPIServer, bins.KubeControllerManager, bins.Kubectl} {
		if _, err := os.Stat(p); err != nil {
			return Bins{}, fmt.Errorf("controlplane: %w (build with `make controlplane` or `go run ./test/controlplane/cmd/build-controlplane`)", err)
		}
	}
	return bins, nil
}

// Build returns the cached binaries, building the missing ones first from the
// Go module proxy: kube-apiserver, kube-controller-manager and kubectl from
// k8s.io/kubernetes KubernetesVersion, etcd from go.etcd.io/etcd/server/v3
// EtcdVersion. Each is built in a throwaway module under the cache directory,
// outside kubetun's own go.mod, into a temporary directory renamed into place
// once complete, so an interrupted build leaves nothing half-written. A lock
// file serializes concurrent Builds. logf, if not nil, receives the steps.
func Build(ctx context.Context, logf func(format string, args ...any)) (Bins, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	cache, err := CacheDir()
	if err != nil {
		return Bins{}, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Bins{}, fmt.Errorf("controlplane: MkdirAll %s: %w", cache, err)
	}
	stopWait := progress(logf, "waiting for another build of the control plane (lock %s)", filepath.Join(cache, ".build.lock"))
	unlock, err := lockFile(filepath.Join(cache, ".build.lock"))
	stopWait()
	if err != nil {
		return Bins{}, err
	}
	defer unlock()
	// Left by a build that was killed; none runs now, as we hold the lock.
	stale, _ := filepath.Glob(filepath.Join(cache, ".tmp-*"))
	for _, dir := range stale {
		logf("controlplane: removing %s, left by an interrupted build", dir)
		os.RemoveAll(dir)
	}

	bins := binsIn(cache)
	if err := buildOnce(ctx, logf, filepath.Dir(bins.KubeAPIServer), buildKubernetes); err != nil {
		return Bins{}, err
	}
	if err := buildOnce(ctx, logf, filepath.Dir(bins.Etcd), buildEtcd); err != nil {
		return Bins{}, err
	}
	return bins, nil
}

// buildOnce runs build into a temporary directory next to dir and renames it
// to dir, unless dir exists already.
func buildOnce(ctx context.Context, logf func(string, ...any), dir string, build func(ctx context.Context, logf func(string, ...any), work, out string) error) error {
	if _, err := os.Stat(dir); err == nil {
		logf("controlplane: %s is built already", dir)
		return nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-"+filepath.Base(dir)+"-")
	if err != nil {
		return fmt.Errorf("controlplane: MkdirTemp: %w", err)
	}
	defer os.RemoveAll(tmp)
	work, out := filepath.Join(tmp, "module"), filepath.Join(tmp, "bin")
	for _, d := range []string{work, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("controlplane: Mkdir %s: %w", d, err)
		}
	}
	start := time.Now()
	stop := progress(logf, "building %s", filepath.Base(dir))
	err = build(ctx, logf, work, out)
	stop()
	if err != nil {
		return err
	}
	if err := os.Rename(out, dir); err != nil {
		return fmt.Errorf("controlplane: rename %s to %s: %w", out, dir, err)
	}
	logf("controlplane: built %s in %v", dir, time.Since(start).Round(time.Second))
	return nil
}

// buildKubernetes builds kube-apiserver, kube-controller-manager and kubectl
// into out, with module work replacing every staging module of
// k8s.io/kubernetes by its published version (the v0 twin of the release).
func buildKubernetes(ctx context.Context, logf func(string, ...any), work, out string) error {
	var dl struct{ GoMod, Error string }
	if err := goJSON(ctx, work, &dl, "mod", "download", "-json", "k8s.io/kubernetes@"+KubernetesVersion); err != nil {
		return err
	}
	if dl.Error != "" {
		return fmt.Errorf("controlplane: go mod download k8s.io/kubernetes@%s: %s", KubernetesVersion, dl.Error)
	}
	// go mod edit -json parses any go.mod, so no modfile dependency is needed.
	var mod struct {
		Replace []struct {
			Old, New struct{ Path, Version string }
		}
	}
	if err := goJSON(ctx, work, &mod, "mod", "edit", "-json", dl.GoMod); err != nil {
		return err
	}
	staging := "v0" + strings.TrimPrefix(KubernetesVersion, "v1")
	var gomod strings.Builder
	fmt.Fprintf(&gomod, "module kubetun.test/controlplane/kubernetes\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", KubernetesVersion)
	n := 0
	for _, r := range mod.Replace {
		if strings.HasPrefix(r.New.Path, "./staging/") {
			fmt.Fprintf(&gomod, "\t%s => %s %s\n", r.Old.Path, r.Old.Path, staging)
			n++
		}
	}
	gomod.WriteString(")\n")
	if n == 0 {
		return fmt.Errorf("controlplane: no staging replace in %s", dl.GoMod)
	}
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte(gomod.String()), 0o644); err != nil {
		return fmt.Errorf("controlplane: write go.mod: %w", err)
	}
	logf("controlplane: building kube-apiserver, kube-controller-manager, kubectl %s (%d staging modules at %s); minutes on a cold cache", KubernetesVersion, n, staging)
	// As hack/lib/version.sh does, so `kubectl version` tells the truth.
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var ldflags []string
	for _, pkg := range []string{"k8s.io/client-go/pkg/version", "k8s.io/component-base/version"} {
		for _, kv := range [][2]string{{"gitVersion", KubernetesVersion}, {"gitMajor", major}, {"gitMinor", minor}, {"gitTreeState", "clean"}} {
			ldflags = append(ldflags, fmt.Sprintf("-X %s.%s=%s", pkg, kv[0], kv[1]))
		}
	}
	return goBuild(ctx, work, out+"/", ldflags,
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kubectl")
}

// buildEtcd builds etcd into out: the main package is the root of the
// go.etcd.io/etcd/server/v3 module (go.etcd.io/etcd/v3 holds only tools).
func buildEtcd(ctx context.Context, logf func(string, ...any), work, out string) error {
	gomod := fmt.Sprintf("module kubetun.test/controlplane/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n", EtcdVersion)
	if err := os.WriteFile(filepath.Join(work, "go.mod"), []byte(gomod), 0o644); err != nil {
		return fmt.Errorf("controlplane: write go.mod: %w", err)
	}
	logf("controlplane: building etcd %s", EtcdVersion)
	// -o names the binary: go build would call it "server", after the
	// element before the major version suffix.
	return goBuild(ctx, work, filepath.Join(out, "etcd"), nil, "go.etcd.io/etcd/server/v3")
}

// goBuild builds pkgs from module work into out (a directory if it ends in
// a slash, else the one package's binary): static (CGO_ENABLED=0, as the
// release binaries), small (-trimpath, -s -w), and free to fill go.mod and
// go.sum (-mod=mod).
func goBuild(ctx context.Context, work, out string, ldflags []string, pkgs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	args := []string{"build", "-trimpath", "-ldflags", strings.Join(append([]string{"-s", "-w"}, ldflags...), " "), "-o", out}
	cmd := goCommand(ctx, work, append(args, pkgs...)...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("controlplane: go %s (in %s): %w\n%s", strings.Join(cmd.Args[1:], " "), work, err, msg)
	}
	return nil
}

// goJSON runs go with args in dir and decodes its standard output into v.
func goJSON(ctx context.Context, dir string, v any, args ...string) error {
	cmd := goCommand(ctx, dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	// go mod download -json reports a module error in the JSON and exits 1.
	if jerr := json.Unmarshal(stdout, v); jerr != nil {
		if err == nil {
			err = jerr
		}
		return fmt.Errorf("controlplane: go %s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return nil
}

// goCommand is the go command in dir, its environment set for a module of
// its own: no workspace, -mod=mod, no cgo.
func goCommand(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// progressEvery is how often a long step says it is still running, so that
// nobody watching `make test` on a cold cache wonders whether it hangs.
const progressEvery = 20 * time.Second

// progress logs "still <what>, <elapsed> so far" every progressEvery until the
// returned func is called; that func waits for the logging goroutine.
func progress(logf func(string, ...any), format string, args ...any) (stop func()) {
	what := fmt.Sprintf(format, args...)
	start := time.Now()
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				logf("controlplane: still %s, %v so far", what, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// lockFile takes an exclusive flock on path, waiting for another holder, and
// returns its release.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("controlplane: open lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("controlplane: flock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
