package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Module is the Go module path of kubetun; ModuleRoot looks for it.
const Module = "github.com/kubetun/kubetun"

// buildTimeout bounds one go build; a cold cache with gVisor takes minutes on 2 cores.
const buildTimeout = 10 * time.Minute

// ModuleRoot returns the directory of kubetun's go.mod, searching upwards from
// the working directory (a test runs in its package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testbed: Getwd: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module "+Module)) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("testbed: no go.mod of module %s in %s or above", Module, dir)
		}
	}
}

// Build builds the package pkg of the module (e.g. "./cmd/kubetun") into dir
// and returns the binary's path. The error carries the compiler's output.
func Build(ctx context.Context, dir, pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -o %s %s: %v\n%s", out, pkg, err, msg)
	}
	return out, nil
}
