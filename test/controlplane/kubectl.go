package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Kubectl runs the real kubectl with args against the control plane (inside
// its namespace, with its kubeconfig) and returns the standard output. A
// failure names the command and carries kubectl's standard error. The
// command is killed when ctx ends.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) (string, error) {
	return cp.kubectl(ctx, nil, args)
}

// KubectlStdin is Kubectl with stdin as kubectl's standard input, e.g. for
// `apply -f -`.
func (cp *ControlPlane) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	return cp.kubectl(ctx, strings.NewReader(stdin), args)
}

// Apply runs `kubectl apply -f -` with manifest (YAML or JSON, one or more
// documents) and extra flags such as "-n", "NAMESPACE".
func (cp *ControlPlane) Apply(ctx context.Context, manifest string, flags ...string) (string, error) {
	return cp.KubectlStdin(ctx, manifest, append([]string{"apply", "-f", "-"}, flags...)...)
}

// KubectlCmd returns, unstarted, the command Kubectl runs, for a kubectl
// that keeps running (port-forward, a watch): inside the namespace, with
// the kubeconfig, in a process group of its own that is killed when ctx
// ends.
func (cp *ControlPlane) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", cp.Namespace, cp.Bins.Kubectl,
		"--kubeconfig", cp.Kubeconfig,
		// Discovery cache: with the control plane, not in ~/.kube.
		"--cache-dir", filepath.Join(cp.Dir, "kubectl-cache"),
	}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	return cmd
}

func (cp *ControlPlane) kubectl(ctx context.Context, stdin io.Reader, args []string) (string, error) {
	cmd := cp.KubectlCmd(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// DescribedEndpoints returns the addresses on the "Endpoints:" line of
// `kubectl describe svc` output, sorted: kubectl prints them in the
// EndpointSlice's order, which the controller does not keep stable.
func DescribedEndpoints(describe string) []string {
	for _, line := range strings.Split(describe, "\n") {
		rest, ok := strings.CutPrefix(line, "Endpoints:")
		if !ok {
			continue
		}
		rest = strings.TrimSpace(rest)
		if rest == "" || rest == "<none>" {
			return nil
		}
		eps := strings.Split(rest, ",")
		sort.Strings(eps)
		return eps
	}
	return nil
}

// Do sends one request to kube-apiserver's REST API as the admin and
// returns the response body; path starts with /api or /apis. A body is sent
// with contentType (e.g. "application/json",
// "application/strategic-merge-patch+json"). A status other than 2xx is an
// error carrying the server's message. It is the fast path the kubelet
// stand-in uses: no process to start, one kept-alive connection.
func (cp *ControlPlane) Do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, cp.Server+path, r)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+cp.Token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := cp.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return data, &APIError{Method: method, Path: path, Code: resp.StatusCode, Message: apiMessage(data)}
	}
	return data, nil
}

// APIError is a request that kube-apiserver answered with a status other
// than 2xx.
type APIError struct {
	Method, Path string
	Code         int    // HTTP status, e.g. 404, 409 (exists already)
	Message      string // the Status object's message, or the body
}

func (e *APIError) Error() string {
	return fmt.Sprintf("controlplane: %s %s: %d %s: %s", e.Method, e.Path, e.Code, http.StatusText(e.Code), e.Message)
}

// apiMessage returns the message of a metav1.Status body, or the body.
func apiMessage(body []byte) string {
	var status struct{ Message string }
	if json.Unmarshal(body, &status) == nil && status.Message != "" {
		return status.Message
	}
	return strings.TrimSpace(string(body))
}
