// Package netnsproc supervises the long-running processes the tests start
// inside network namespaces (a pod's server, kubetun, etcd,
// kube-apiserver): one process group per process, output to a log file,
// stopped with SIGTERM and then SIGKILL. test/testbed and test/controlplane
// both run theirs through it.
package netnsproc

import (
	"bytes"
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

// Process is a long-running command started inside a network namespace. It
// runs in its own process group, so a signal reaches the whole of it and the
// terminal's Ctrl-C does not: the test decides when it stops.
type Process struct {
	// Name says what the process is, e.g. "kubetun" or "kube-apiserver".
	Name string
	// Namespace is the network namespace it runs in.
	Namespace string
	// LogPath is the file that receives its output.
	LogPath string

	cmd  *exec.Cmd
	out  *LockedBuffer // nil unless Options.KeepOutput
	done chan struct{} // closed once the process has exited and err is set
	err  error         // what cmd.Wait returned
}

// Options say where a Process's output goes besides its log file.
type Options struct {
	// Append appends to the log file, after a line naming the command,
	// instead of truncating it: a restarted component keeps its
	// predecessor's log.
	Append bool
	// KeepOutput also keeps the output in memory, for Output and
	// WaitOutput. Off for components whose logs are large.
	KeepOutput bool
}

// Start runs argv inside network namespace ns (with `ip netns exec`, which
// execs the command, so the process leads its group).
func Start(ns, name, logPath string, argv []string, o Options) (*Process, error) {
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if o.Append {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	logFile, err := os.OpenFile(logPath, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	if o.Append {
		fmt.Fprintf(logFile, "=== %s: ip netns exec %s %s\n", time.Now().Format(time.RFC3339Nano), ns, strings.Join(argv, " "))
	}
	p := &Process{Name: name, Namespace: ns, LogPath: logPath, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	var w io.Writer = logFile
	if o.KeepOutput {
		p.out = &LockedBuffer{}
		w = io.MultiWriter(p.out, logFile)
	}
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
// command's own pid, and the id of its process group.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// CommandLine is the command as started, for logs and reports.
func (p *Process) CommandLine() string { return strings.Join(p.cmd.Args, " ") }

// Output returns everything the process has written so far; "" unless
// started with Options.KeepOutput.
func (p *Process) Output() string {
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

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
// output so far. The process must keep its output (Options.KeepOutput).
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
// error saying it had to be killed (wrapping ErrKilled) or survived SIGKILL.
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
	if err := p.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("%s ignored SIGTERM for %v: %w", p.Name, grace, ErrKilled)
}

// ErrKilled says a process had to be killed with SIGKILL.
var ErrKilled = errors.New("killed with SIGKILL")

// Kill sends SIGKILL to the process group and waits for the process to end.
// It returns an error only if the process survives that.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if err := p.Wait(5 * time.Second); !p.Exited() {
		return fmt.Errorf("%s survived SIGKILL: %w", p.Name, err)
	}
	return nil
}

// Failure wraps err with the process's state and the last lines of its
// log, for an error that says why a wait for the process failed.
func (p *Process) Failure(err error, lines int) error {
	state := "running"
	if p.Exited() {
		state = fmt.Sprintf("exited: %v", p.err)
	}
	return fmt.Errorf("%w\n%s (%s), last lines of %s:\n%s", err, p.Name, state, p.LogPath, Tail(p.LogPath, lines))
}

// Tail returns the last n lines of the file at path, or why it cannot.
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// LockedBuffer is a bytes.Buffer safe for one writer and many readers.
type LockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
