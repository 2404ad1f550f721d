package testbed

import (
	"errors"
	"time"
)

// ReadyTimeout bounds the wait for kubetun's "msg=ready" log line.
const ReadyTimeout = 10 * time.Second

// KubetunArgs is the command line StartKubetun runs in the node namespace,
// without the binary: `run --service-cidr 10.3.240.0/20 --manifests PATH
// --tun kubetun0` and extra.
func KubetunArgs(manifests string, extra ...string) []string {
	args := []string{"run", "--service-cidr", ServiceCIDR, "--manifests", manifests, "--tun", TUN}
	return append(args, extra...)
}

// StartKubetun runs kubetun in the node namespace with KubetunArgs and waits
// until it logs msg=ready (kubetun logs with slog's text handler to stderr).
// On failure the error carries kubetun's output; the process, if still running,
// is stopped by Close.
func (tb *Testbed) StartKubetun(manifests string, extra ...string) (*Process, error) {
	return tb.StartKubetunArgs(KubetunArgs(manifests, extra...)...)
}

// StartKubetunArgs is StartKubetun with the whole command line after the
// binary, for a source other than --manifests, e.g. `run --kubeconfig PATH
// --node-name node --tun kubetun0`.
func (tb *Testbed) StartKubetunArgs(args ...string) (*Process, error) {
	if tb.opts.Kubetun == "" {
		return nil, errors.New("testbed: StartKubetun: Options.Kubetun is empty")
	}
	argv := append([]string{tb.opts.Kubetun}, args...)
	p, err := tb.Start(tb.Node, "kubetun", argv...)
	if err != nil {
		return nil, err
	}
	return p, p.WaitOutput("msg=ready", ReadyTimeout)
}
