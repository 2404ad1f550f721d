// Package gvisorcopy keeps third_party/gvisor, the copy of gVisor kubetun
// builds with, reproducible: it must be exactly the pinned upstream module
// (the version go.mod requires, with the hash recorded in
// third_party/gvisor.sum, as go.sum would record it) trimmed to the packages
// kubetun imports, with the patches of third_party/patches/gvisor applied in
// the order of their names and nothing else changed.
//
// Verify checks that; Write makes the copy anew from upstream and the
// patches (after a version bump or a new patch); Diff prints what the copy
// has beyond upstream and the patches, which is the next patch.
package gvisorcopy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Module is the module path of gVisor.
const Module = "gvisor.dev/gvisor"

// Paths inside the repository.
const (
	CopyDir    = "third_party/gvisor"         // the trimmed, patched module
	SumFile    = "third_party/gvisor.sum"     // go.sum lines of the upstream version
	PatchesDir = "third_party/patches/gvisor" // NNNN-name.patch, applied with patch -p1
)

// kept are the files of the module's root that the copy keeps: the licence
// and the module's own go.mod, so that the module graph is upstream's.
var kept = []string{"LICENSE", "AUTHORS", "go.mod"}

// Upstream is the pinned upstream module.
type Upstream struct {
	Version string // as go.mod requires it
	Sum     string // h1: hash of its zip, as go.sum records it
	Dir     string // its extracted, verified files in the module cache
}

// FindUpstream reads the pinned version from root's go.mod and its hash from
// SumFile, and downloads it into the module cache (through GOPROXY, checked
// against that hash by the go command).
func FindUpstream(root string) (Upstream, error) {
	var up Upstream
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return up, err
	}
	for line := range strings.Lines(string(gomod)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == Module && !slices.Contains(f, "=>") {
			up.Version = f[1]
		}
		if len(f) >= 3 && f[0] == "require" && f[1] == Module {
			up.Version = f[2]
		}
	}
	if up.Version == "" {
		return up, fmt.Errorf("%s: no requirement of %s", filepath.Join(root, "go.mod"), Module)
	}
	sums, err := os.ReadFile(filepath.Join(root, SumFile))
	if err != nil {
		return up, err
	}
	for line := range strings.Lines(string(sums)) {
		if f := strings.Fields(line); len(f) == 3 && f[0] == Module && f[1] == up.Version {
			up.Sum = f[2]
		}
	}
	if up.Sum == "" {
		return up, fmt.Errorf("%s: no hash of %s %s, the version go.mod requires", SumFile, Module, up.Version)
	}

	// Download in a scratch module whose go.sum holds the recorded lines:
	// the go command then refuses a zip of any other hash.
	scratch, err := os.MkdirTemp("", "gvisorcopy-")
	if err != nil {
		return up, err
	}
	defer os.RemoveAll(scratch)
	if err := os.WriteFile(filepath.Join(scratch, "go.mod"), []byte("module scratch\n"), 0o644); err != nil {
		return up, err
	}
	if err := os.WriteFile(filepath.Join(scratch, "go.sum"), sums, 0o644); err != nil {
		return up, err
	}
	cmd := exec.Command("go", "mod", "download", "-json", Module+"@"+up.Version)
	cmd.Dir = scratch
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	out, err := cmd.Output()
	var dl struct{ Dir, Sum, Error string }
	if jerr := json.Unmarshal(out, &dl); jerr != nil || dl.Error != "" || err != nil {
		return up, fmt.Errorf("go mod download %s@%s: %v %s", Module, up.Version, err, dl.Error)
	}
	if dl.Sum != up.Sum {
		return up, fmt.Errorf("go mod download %s@%s: hash %s, %s records %s", Module, up.Version, dl.Sum, SumFile, up.Sum)
	}
	up.Dir = dl.Dir
	return up, nil
}

// Packages lists the directories (relative to the module root) of the
// packages the copy holds: every directory with a .go file under CopyDir.
func Packages(root string) ([]string, error) {
	var dirs []string
	base := filepath.Join(root, CopyDir)
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			rel, _ := filepath.Rel(base, filepath.Dir(path))
			if len(dirs) == 0 || dirs[len(dirs)-1] != rel {
				dirs = append(dirs, rel)
			}
		}
		return nil
	})
	sort.Strings(dirs)
	return slices.Compact(dirs), err
}

// ImportedPackages lists the directories of the gVisor packages kubetun
// or its tests import under any build tags, taken from upstream's module: go
// mod vendor runs with a copy of go.mod and go.sum that has no replace of
// Module.
func ImportedPackages(root string, up Upstream) ([]string, error) {
	scratch, err := os.MkdirTemp("", "gvisorcopy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	var mod strings.Builder
	for line := range strings.Lines(string(gomod)) {
		if strings.HasPrefix(strings.TrimSpace(line), "replace "+Module) {
			continue
		}
		mod.WriteString(line)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		return nil, err
	}
	extra, err := os.ReadFile(filepath.Join(root, SumFile))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(scratch, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(scratch, "go.sum"), append(sum, extra...), 0o644); err != nil {
		return nil, err
	}
	// go mod vendor's list: every package a build or test of kubetun
	// imports under any build tags, as go mod tidy checks them. Tidy
	// first: after a version bump, upstream's go.mod may need more.
	for _, args := range [][]string{
		{"mod", "tidy", "-modfile", filepath.Join(scratch, "go.mod")},
		{"mod", "vendor", "-modfile", filepath.Join(scratch, "go.mod"), "-o", filepath.Join(scratch, "vendor")},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args[:2], " "), err, out)
		}
	}
	list, err := os.ReadFile(filepath.Join(scratch, "vendor", "modules.txt"))
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for line := range strings.Lines(string(list)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), Module+"/"); ok {
			seen[rest] = true
		}
	}
	dirs := make([]string, 0, len(seen))
	for d := range seen {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	if len(dirs) == 0 {
		return nil, errors.New("go mod vendor: kubetun imports no package of " + Module)
	}
	return dirs, nil
}

// packageFiles lists the files of a package directory that the copy keeps:
// Go and assembly sources of every platform, no tests.
func packageFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.Type().IsRegular() && (strings.HasSuffix(n, ".go") || strings.HasSuffix(n, ".s")) && !strings.HasSuffix(n, "_test.go") {
			names = append(names, n)
		}
	}
	return names, nil
}

// Build makes in dst (which must not exist) the copy as it should be:
// upstream's files of the packages dirs and the kept root files, with every
// patch applied. It returns the patches applied.
func Build(root string, up Upstream, dirs []string, dst string) ([]string, error) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	copyFile := func(rel string) error {
		b, err := os.ReadFile(filepath.Join(up.Dir, rel))
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	}
	for _, f := range kept {
		if err := copyFile(f); err != nil {
			return nil, err
		}
	}
	for _, d := range dirs {
		names, err := packageFiles(filepath.Join(up.Dir, d))
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			if err := copyFile(filepath.Join(d, n)); err != nil {
				return nil, err
			}
		}
	}
	patches, err := filepath.Glob(filepath.Join(root, PatchesDir, "*.patch"))
	if err != nil {
		return nil, err
	}
	sort.Strings(patches)
	for _, p := range patches {
		in, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		// --fuzz=0: a patch applies exactly where it was made, or not at
		// all (an upstream change around it must be looked at).
		cmd := exec.Command("patch", "-p1", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "--quiet", "-d", dst)
		cmd.Stdin = in
		out, err := cmd.CombinedOutput()
		in.Close()
		if err != nil {
			return nil, fmt.Errorf("patch %s onto %s@%s: %v\n%s", filepath.Base(p), Module, up.Version, err, out)
		}
	}
	return patches, nil
}

// expected builds, in a new temporary directory, the copy root's
// third_party/gvisor should be: upstream's files of the packages it holds,
// with the patches applied. The caller removes tmp; want is in it.
func expected(root string) (up Upstream, tmp, want string, patches []string, err error) {
	if up, err = FindUpstream(root); err != nil {
		return
	}
	dirs, err := Packages(root)
	if err != nil {
		return
	}
	if tmp, err = os.MkdirTemp("", "gvisorcopy-"); err != nil {
		return
	}
	want = filepath.Join(tmp, "a")
	patches, err = Build(root, up, dirs, want)
	return
}

// Verify checks that the copy in root is what Build makes, file by file,
// and returns the patches it carries.
func Verify(root string) ([]string, error) {
	up, tmp, want, patches, err := expected(root)
	if tmp != "" {
		defer os.RemoveAll(tmp)
	}
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("diff", "-r", "-q", want, filepath.Join(root, CopyDir))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s is not %s@%s with %d patches of %s applied (make gvisor-diff shows how; make gvisor-copy makes it so):\n%s",
			CopyDir, Module, up.Version, len(patches), PatchesDir, out)
	}
	return patches, nil
}

// Write makes the copy in root anew: the packages kubetun imports (as go
// list finds them against upstream's module), upstream's files, the patches.
func Write(root string) error {
	up, err := FindUpstream(root)
	if err != nil {
		return err
	}
	dirs, err := ImportedPackages(root, up)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Join(root, "third_party"), ".gvisor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := Build(root, up, dirs, filepath.Join(tmp, "gvisor")); err != nil {
		return err
	}
	dst := filepath.Join(root, CopyDir)
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	return os.Rename(filepath.Join(tmp, "gvisor"), dst)
}

// Diff returns, as a unified diff with paths a/ and b/ as patch -p1 takes
// them, what the copy in root has beyond upstream with the
// patches applied: the text of the next patch.
func Diff(root string) ([]byte, error) {
	_, tmp, _, _, err := expected(root)
	if tmp != "" {
		defer os.RemoveAll(tmp)
	}
	if err != nil {
		return nil, err
	}
	if err := exec.Command("cp", "-a", filepath.Join(root, CopyDir), filepath.Join(tmp, "b")).Run(); err != nil {
		return nil, err
	}
	cmd := exec.Command("diff", "-ruN", "a", "b")
	cmd.Dir = tmp
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		err = nil // differences found
	}
	return stripDates(out), err
}

// stripDates removes the timestamps diff writes after the file names of
// "--- " and "+++ " lines, so that a patch does not change with the clock.
func stripDates(diff []byte) []byte {
	var b bytes.Buffer
	for line := range strings.Lines(string(diff)) {
		if strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "+++ ") {
			if i := strings.IndexByte(line, '\t'); i > 0 {
				line = line[:i] + "\n"
			}
		}
		b.WriteString(line)
	}
	return b.Bytes()
}
