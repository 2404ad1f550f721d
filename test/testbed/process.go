package testbed

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/test/netnsproc"
)

// Process is a long-running command started inside a namespace (a pod's
// server, kubetun), as netnsproc supervises it: its stdout and stderr go to
// one buffer and to a log file.
type Process = netnsproc.Process

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer = netnsproc.LockedBuffer

// start runs argv inside namespace ns. The caller registers the process for Close.
func start(ns, name, logPath string, argv []string) (*Process, error) {
	p, err := netnsproc.Start(ns, name, logPath, argv, netnsproc.Options{KeepOutput: true})
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	return p, nil
}

// command returns an exec.Cmd for argv inside namespace ns (see execCommand).
func command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return execCommand(ctx, append([]string{"ip", "netns", "exec", ns}, argv...)...)
}

// execCommand returns an exec.Cmd for argv in its own process group, killed as
// a group when ctx ends. WaitDelay bounds the wait for pipes held open by
// grandchildren (a shell's nc) after that.
func execCommand(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	return cmd
}

// ExitCode returns the exit code carried by err from Run, or -1 when the
// command did not exit by itself (not started, killed by a signal or timeout).
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
