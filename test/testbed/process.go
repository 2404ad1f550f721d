package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running command started inside a namespace (a pod's server,
// kubetun). It runs in its own process group, so a signal reaches the whole of it
// and the terminal's Ctrl-C does not: the test bed decides when it stops.
// Its stdout and stderr go to one buffer and to a log file.
type Process struct {
	// Name says what the process is, e.g. "kubetun" or "podserver pod1".
	Name string
	// Namespace is the network namespace it runs in.
	Namespace string
	// LogPath is the file that receives its output.
	LogPath string

	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed once the process has exited and err is set
	err  error         // what cmd.Wait returned
}

// start runs argv inside namespace ns. The caller registers the process for Close.
func start(ns, name, logPath string, argv []string) (*Process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: create log: %w", name, err)
	}
	p := &Process{
		Name:      name,
		Namespace: ns,
		LogPath:   logPath,
		out:       &lockedBuffer{},
		done:      make(chan struct{}),
	}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	w := io.MultiWriter(p.out, logFile)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s in netns %s (%s): %w", name, ns, strings.Join(argv, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id; `ip netns exec` execs the command, so it is the
// command's own pid.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// CommandLine is the command as started, for logs and reports.
func (p *Process) CommandLine() string { return strings.Join(p.cmd.Args, " ") }

// Output returns everything the process has written so far.
func (p *Process) Output() string { return p.out.String() }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitOutput waits until the process output contains substr. It fails at once
// if the process exits first, and after timeout otherwise; the error carries the
// output so far.
func (p *Process) WaitOutput(substr string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.Output(), substr) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Output(), substr) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q; output:\n%s", p.Name, p.err, substr, p.Output())
		case <-deadline.C:
			return fmt.Errorf("%s did not print %q within %v; output:\n%s", p.Name, substr, timeout, p.Output())
		case <-tick.C:
		}
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := syscall.Kill(-p.Pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill(-%d, %v) for %s: %w", p.Pid(), sig, p.Name, err)
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns what exec's
// Wait returned (nil for exit status 0, an *exec.ExitError otherwise).
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %v", p.Name, p.Pid(), timeout)
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL. It returns the exit error of a process that obeyed SIGTERM, or an
// error saying it had to be killed.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	err := p.Wait(grace)
	if p.Exited() {
		return err
	}
	p.Signal(syscall.SIGKILL)
	if err := p.Wait(5 * time.Second); !p.Exited() {
		return fmt.Errorf("%s survived SIGKILL: %w", p.Name, err)
	}
	return fmt.Errorf("%s ignored SIGTERM for %v and was killed", p.Name, grace)
}

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
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
