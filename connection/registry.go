// Package connection keeps the record of the `kubetun connect` processes
// running on this host, so that several can run side by side and `kubetun
// status` finds every one: each writes a small JSON file, named after its
// TUN, into a runtime directory, and removes it on exit. A file whose
// process is gone (kill -9) is stale: List skips and removes it.
//
// It also derives what must differ between two connections, the TUN's
// name and the cluster's extra DNS domain, from the kubeconfig context.
package connection

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Record is what a running connection says of itself.
type Record struct {
	PID     int    `json:"pid"`
	Context string `json:"context"`
	TUN     string `json:"tun"`
	// StatusAddr is where its /statusz answers ("127.0.0.1:PORT").
	StatusAddr string `json:"statusAddr"`
	// Domains are the DNS domains it answers, the cluster's first when it
	// has it.
	Domains []string  `json:"domains,omitempty"`
	Started time.Time `json:"started"`
}

// Dirs are the runtime directories a connection's record may be in, the
// one Register writes to first: root's /run/kubetun/connect, or the
// user's $XDG_RUNTIME_DIR/kubetun/connect (a temporary directory of the
// user's without it). `kubetun status` run by a user also reads root's, as
// a connection started with sudo writes there. $KUBETUN_RUNTIME_DIR, if
// set, is the one directory: for connections that must not see the
// host's others, as those of a test in network namespaces of its own.
func Dirs() []string {
	const root = "/run/kubetun/connect"
	if d := os.Getenv("KUBETUN_RUNTIME_DIR"); d != "" {
		return []string{d}
	}
	if os.Geteuid() == 0 {
		return []string{root}
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return []string{filepath.Join(d, "kubetun", "connect"), root}
	}
	return []string{filepath.Join(os.TempDir(), "kubetun-"+strconv.Itoa(os.Getuid()), "connect"), root}
}

// Register writes r into dir, as <TUN>.json, atomically; the returned func
// removes it. One TUN is one connection: a record of a TUN whose process
// still runs is refused.
func Register(dir string, r Record) (remove func() error, err error) {
	if r.TUN == "" || strings.ContainsAny(r.TUN, "/\x00") {
		return nil, fmt.Errorf("connection.Register: TUN %q is no file name", r.TUN)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("connection.Register: %w", err)
	}
	path := filepath.Join(dir, r.TUN+".json")
	if old, err := read(path); err == nil && old.PID != r.PID && alive(old.PID) {
		return nil, fmt.Errorf("connection.Register: TUN %s is pid %d's (context %s)", r.TUN, old.PID, old.Context)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("connection.Register: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+r.TUN+".*")
	if err != nil {
		return nil, fmt.Errorf("connection.Register: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("connection.Register: writing %s: %w", tmp.Name(), err)
	}
	// Readable by every user: `kubetun status` as a user lists a
	// connection started with sudo. It holds no secret.
	os.Chmod(tmp.Name(), 0o644)
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("connection.Register: %w", err)
	}
	return func() error {
		// Only our own: a successor on the same TUN may have replaced it.
		if cur, err := read(path); err == nil && cur.PID != r.PID {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the record of connection %s: %w", r.TUN, err)
		}
		return nil
	}, nil
}

// List returns the records of the connections running now found in dirs,
// sorted by start, then TUN; a record of the same TUN in two dirs counts
// once. Stale records (their process gone) are removed where permitted,
// and left out.
func List(dirs ...string) ([]Record, error) {
	var out []Record
	seen := map[string]bool{}
	var errs []error
	for _, dir := range dirs {
		names, err := filepath.Glob(filepath.Join(dir, "*.json"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, path := range names {
			r, err := read(path)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !alive(r.PID) {
				os.Remove(path) // stale: a connection killed
				continue
			}
			if seen[r.TUN] {
				continue
			}
			seen[r.TUN] = true
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.TUN, b.TUN)
	})
	return out, errors.Join(errs...)
}

func read(path string) (Record, error) {
	var r Record
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("reading connection record %s: %w", path, err)
	}
	return r, nil
}

// alive reports whether a process pid exists. EPERM means it does, but is
// another user's (a connection started with sudo).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Lock takes the lock of dir's records (a file .lock in dir, flock(2)),
// waiting while another connection holds it, and returns its release: a
// connection decides what depends on the others' records (whether one has
// the cluster domain) and records its decision under it, so that two
// started at one instant do not both decide alike. The kernel releases it
// when the process dies.
func Lock(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("connection.Lock: %w", err)
	}
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("connection.Lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("connection.Lock: flock %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
