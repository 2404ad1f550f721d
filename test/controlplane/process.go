package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a component may take to obey SIGTERM before SIGKILL.
// kube-apiserver waits up to its --request-timeout (60 s) for open watches,
// so while clients watch it, it takes all of that.
const stopGrace = 5 * time.Second

// tailLines is how much of a component's log an error carries.
const tailLines = 30

// process is one component (etcd, kube-apiserver, kube-controller-manager)
// running inside a network namespace, in its own process group so that the
// test's Ctrl-C does not reach it and a signal reaches all of it. Its stdout
// and stderr go to a log file.
type process struct {
	name    string // "etcd", "kube-apiserver", ...
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and err is set
	err     error         // what cmd.Wait returned
}

// startProcess runs argv inside namespace ns with its output appended to logPath.
func startProcess(ns, name, logPath string, argv []string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("controlplane: start %s: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "=== %s: ip netns exec %s %s\n", time.Now().Format(time.RFC3339Nano), ns, strings.Join(argv, " "))
	p := &process{name: name, logPath: logPath, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("controlplane: start %s in netns %s: %w", name, ns, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace. It
// returns an error only if the process survives SIGKILL.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	// `ip netns exec` execs the command, so its pid leads the group.
	pgid := -p.cmd.Process.Pid
	if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("controlplane: kill(%d, SIGTERM) for %s: %w", pgid, p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	return p.kill()
}

// kill sends SIGKILL to the process group and waits for the process to end.
func (p *process) kill() error {
	if p.exited() {
		return nil
	}
	pgid := -p.cmd.Process.Pid
	if err := syscall.Kill(pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("controlplane: kill(%d, SIGKILL) for %s: %w", pgid, p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("controlplane: %s (pid %d) survived SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// failure wraps err with the process's state and the tail of its log.
func (p *process) failure(err error) error {
	state := "running"
	if p.exited() {
		state = fmt.Sprintf("exited: %v", p.err)
	}
	return fmt.Errorf("%w\n%s (%s), last lines of %s:\n%s", err, p.name, state, p.logPath, tail(p.logPath, tailLines))
}

// tail returns the last n lines of the file at path, or why it cannot.
func tail(path string, n int) string {
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
