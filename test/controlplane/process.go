package controlplane

import (
	"fmt"
	"time"

	"github.com/kubetun/kubetun/test/netnsproc"
)

// stopGrace is how long a component may take to obey SIGTERM before SIGKILL.
// kube-apiserver waits up to its --request-timeout (60 s) for open watches,
// so while clients watch it, it takes all of that.
const stopGrace = 5 * time.Second

// tailLines is how much of a component's log an error carries.
const tailLines = 30

// process is one component (etcd, kube-apiserver, kube-controller-manager)
// running inside a network namespace, as netnsproc supervises it. Its
// output is appended to its log file: a restarted component continues its
// predecessor's.
type process = netnsproc.Process

// startProcess runs argv inside namespace ns with its output appended to logPath.
func startProcess(ns, name, logPath string, argv []string) (*process, error) {
	p, err := netnsproc.Start(ns, name, logPath, argv, netnsproc.Options{Append: true})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return p, nil
}

// stop stops p (SIGTERM, then SIGKILL after grace). It returns an error
// only if the process survives SIGKILL: how a component ends is no
// failure of the control plane's.
func stop(p *process, grace time.Duration) error {
	if err := p.Stop(grace); err != nil && !p.Exited() {
		return fmt.Errorf("controlplane: %w", err)
	}
	return nil
}

// kill kills p (SIGKILL) and waits for it to end.
func kill(p *process) error {
	if err := p.Kill(); err != nil {
		return fmt.Errorf("controlplane: %w", err)
	}
	return nil
}

// failure wraps err with p's state and the tail of its log.
func failure(p *process, err error) error { return p.Failure(err, tailLines) }
