// Package controlplane runs a real Kubernetes control plane for the e2e
// tests: etcd, kube-apiserver and kube-controller-manager running only the
// EndpointSlice and ServiceCIDR controllers, inside a network namespace on
// 127.0.0.1, built from the Go module proxy (Build) and driven by the real
// kubectl (Kubectl, Apply) or the REST API (Do). A kubelet
// stand-in (CreateNode, SetPodRunning, SetPodReady) posts the Pod status a
// kubelet would, so the real EndpointSlice controller writes the slices, and
// serves the kubelet's port-forward (SetPodNetns, CutPortForwards), so
// pods/portforward and kubectl port-forward work.
//
// One control plane serves a whole test binary; each test uses its own
// Kubernetes namespace (CreateNamespace). The package needs root (ip netns
// exec, setns) and is independent of the test bed that makes the namespaces.
package controlplane

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultServiceCIDR is the seed's service network, the default of
// Options.ServiceCIDR.
const DefaultServiceCIDR = "10.3.240.0/20"

// Timeouts of Start's waits. A warm start takes a few seconds; these are for
// a loaded CI machine.
const (
	etcdReadyTimeout       = 30 * time.Second
	apiserverReadyTimeout  = 60 * time.Second
	controllerReadyTimeout = 30 * time.Second
)

// controllerReadyLog is what kube-controller-manager logs (at --v=2) once
// the EndpointSlice controller's caches have synced and its workers run.
const controllerReadyLog = "Starting service queue worker threads"

// Options configure Start.
type Options struct {
	// Namespace is the network namespace (a name under /run/netns) the
	// components run in, on 127.0.0.1. Required; its loopback is set up.
	Namespace string
	// Bins are the binaries. Zero: Find's, the cache Build fills.
	Bins Bins
	// ServiceCIDR is kube-apiserver's --service-cluster-ip-range; empty
	// means DefaultServiceCIDR.
	ServiceCIDR string
	// Dir receives the data, keys, kubeconfig and logs. Empty: a temporary
	// directory that Close removes.
	Dir string
	// APIServerArgs are extra kube-apiserver flags, after the defaults.
	APIServerArgs []string
	// Logf, if set, receives one line per step (a component started, ready).
	Logf func(format string, args ...any)
}

// ControlPlane is a running etcd, kube-apiserver and kube-controller-manager.
type ControlPlane struct {
	// Namespace is the network namespace everything runs in.
	Namespace string
	// Dir holds etcd's data, the keys, the kubeconfig and the logs (logs/).
	Dir string
	// Server is kube-apiserver's URL, https://127.0.0.1:PORT, reachable
	// from inside Namespace only (see DialContext).
	Server string
	// Kubeconfig is the path of a kubeconfig for Server with the admin's
	// token (group system:masters), usable by kubectl and client-go.
	Kubeconfig string
	// Token is the admin's bearer token.
	Token string
	// CACert is the PEM CA certificate that signed kube-apiserver's serving
	// certificate (also in the kubeconfig).
	CACert []byte
	// ServiceCIDR is the service range kube-apiserver allocates from.
	ServiceCIDR string
	// Bins are the binaries it runs.
	Bins Bins

	opts           Options
	removeDir      bool     // Dir is ours: Close removes it
	apiserverArgs  []string // argv, to restart it
	controllerArgs []string // kube-controller-manager's argv, to restart it
	client         *http.Client

	mu         sync.Mutex // guards the fields below
	etcd       *process
	apiserver  *process // nil while stopped by StopAPIServer
	controller *process
	closed     bool

	kubelet *kubelet // the stand-in's port-forward server; set by Start
}

// Start starts etcd, kube-apiserver and kube-controller-manager in
// opts.Namespace and returns once kube-apiserver answers /readyz and the
// EndpointSlice controller runs. On error, everything started is stopped and
// the error carries the tail of the failing component's log.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if opts.Namespace == "" {
		return nil, errors.New("controlplane: Start: Options.Namespace is empty (the components run in a network namespace only)")
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = DefaultServiceCIDR
	}
	prefix, err := netip.ParsePrefix(opts.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("controlplane: Start: service CIDR: %w", err)
	}
	if opts.Bins == (Bins{}) {
		if opts.Bins, err = Find(); err != nil {
			return nil, err
		}
	}
	cp := &ControlPlane{
		Namespace:   opts.Namespace,
		Dir:         opts.Dir,
		ServiceCIDR: prefix.Masked().String(),
		Bins:        opts.Bins,
		opts:        opts,
	}
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "kubetun-controlplane-"); err != nil {
			return nil, fmt.Errorf("controlplane: MkdirTemp: %w", err)
		}
		cp.removeDir = true
	}
	defer func() {
		if err != nil {
			cp.Close()
		}
	}()
	logs := filepath.Join(cp.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, fmt.Errorf("controlplane: MkdirAll %s: %w", logs, err)
	}
	if out, err := exec.CommandContext(ctx, "ip", "-n", cp.Namespace, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("controlplane: ip -n %s link set lo up: %v: %s", cp.Namespace, err, strings.TrimSpace(string(out)))
	}
	ports, err := freePorts(cp.Namespace, 3)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	etcdPeerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.Server = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	keys, err := writePKI(filepath.Join(cp.Dir, "pki"), prefix.Masked().Addr().Next())
	if err != nil {
		return nil, err
	}
	cp.Token, cp.CACert = keys.token, keys.caCert
	if err := cp.writeKubeconfig(); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cp.CACert)
	cp.client = &http.Client{
		Transport: &http.Transport{
			DialContext:     cp.DialContext,
			TLSClientConfig: &tls.Config{RootCAs: roots},
		},
		Timeout: 30 * time.Second,
	}

	if err := cp.startKubelet(keys); err != nil {
		return nil, err
	}

	// etcd: one member; no fsync, as its data is thrown away.
	begin := time.Now()
	cp.etcd, err = startProcess(cp.Namespace, "etcd", filepath.Join(logs, "etcd.log"), []string{
		opts.Bins.Etcd,
		"--name", "controlplane",
		"--data-dir", filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls", etcdURL,
		"--advertise-client-urls", etcdURL,
		"--listen-peer-urls", etcdPeerURL,
		"--initial-advertise-peer-urls", etcdPeerURL,
		"--initial-cluster", "controlplane=" + etcdPeerURL,
		"--unsafe-no-fsync",
		"--log-level", "warn",
	})
	if err != nil {
		return nil, err
	}
	if err := cp.waitHTTP(ctx, cp.etcd, etcdURL+"/health", false, etcdReadyTimeout); err != nil {
		return nil, err
	}
	cp.logf("controlplane %s: etcd ready at %s in %v", cp.Namespace, etcdURL, time.Since(begin).Round(time.Millisecond))

	cp.apiserverArgs = append([]string{
		opts.Bins.KubeAPIServer,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		"--tls-cert-file", keys.servingCrt,
		"--tls-private-key-file", keys.servingKey,
		// The default reconciler refuses a loopback advertise address; with
		// none, the "kubernetes" Service simply has no endpoints.
		"--endpoint-reconciler-type", "none",
		"--service-cluster-ip-range", cp.ServiceCIDR,
		"--service-account-key-file", keys.saPub,
		"--service-account-signing-key-file", keys.saKey,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--token-auth-file", keys.tokenFile,
		"--authorization-mode", "RBAC",
		"--profiling=false",
		// pods/portforward reaches the kubelet stand-in at the Node's
		// InternalIP, over TLS both ways.
		"--kubelet-client-certificate", keys.kubeletClientCrt,
		"--kubelet-client-key", keys.kubeletClientKey,
		"--kubelet-certificate-authority", keys.caFile,
		"--kubelet-preferred-address-types", "InternalIP",
	}, opts.APIServerArgs...)
	if err := cp.StartAPIServer(ctx); err != nil {
		return nil, err
	}

	begin = time.Now()
	cp.controllerArgs = []string{
		opts.Bins.KubeControllerManager,
		"--kubeconfig", cp.Kubeconfig,
		// service-cidr-controller marks added ServiceCIDRs Ready (and finalizes
		// deleted ones); kube-apiserver allocates ClusterIPs only from Ready ones.
		"--controllers", "endpointslice-controller,endpointslice-mirroring-controller,service-cidr-controller",
		"--leader-elect=false",
		"--secure-port", "0",
		"--v", "2", // for controllerReadyLog
	}
	p, err := startProcess(cp.Namespace, "kube-controller-manager", filepath.Join(logs, "kube-controller-manager.log"), cp.controllerArgs)
	if err != nil {
		return nil, err
	}
	cp.mu.Lock()
	cp.controller = p
	cp.mu.Unlock()
	if err := waitLog(ctx, p, controllerReadyLog, controllerReadyTimeout, 0); err != nil {
		return nil, err
	}
	cp.logf("controlplane %s: kube-controller-manager's EndpointSlice controller running in %v", cp.Namespace, time.Since(begin).Round(time.Millisecond))
	return cp, nil
}

// StartAPIServer starts kube-apiserver, as Start did, and waits until it
// answers /readyz. It follows StopAPIServer; the port, keys and kubeconfig
// stay the same, and etcd kept the data.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cp.mu.Lock()
	if cp.closed {
		cp.mu.Unlock()
		return fmt.Errorf("controlplane %s: StartAPIServer after Close", cp.Namespace)
	}
	if cp.apiserver != nil && !cp.apiserver.Exited() {
		cp.mu.Unlock()
		return fmt.Errorf("controlplane %s: StartAPIServer: kube-apiserver is running (pid %d)", cp.Namespace, cp.apiserver.Pid())
	}
	begin := time.Now()
	p, err := startProcess(cp.Namespace, "kube-apiserver", filepath.Join(cp.Dir, "logs", "kube-apiserver.log"), cp.apiserverArgs)
	if err != nil {
		cp.mu.Unlock()
		return err
	}
	cp.apiserver = p
	cp.mu.Unlock()
	if err := cp.waitHTTP(ctx, p, cp.Server+"/readyz", true, apiserverReadyTimeout); err != nil {
		return err
	}
	cp.logf("controlplane %s: kube-apiserver ready at %s in %v", cp.Namespace, cp.Server, time.Since(begin).Round(time.Millisecond))
	return nil
}

// RestartControllerManager stops kube-controller-manager and starts it again
// with the same flags, and waits until its EndpointSlice controller runs.
// After a kube-apiserver restart its informers back off (up to half a minute
// between tries, and over a minute seen on a loaded machine); a harness that
// needs the controller at once restarts it instead of waiting.
func (cp *ControlPlane) RestartControllerManager(ctx context.Context) error {
	cp.mu.Lock()
	if cp.closed || cp.controller == nil {
		cp.mu.Unlock()
		return fmt.Errorf("controlplane %s: RestartControllerManager: not running", cp.Namespace)
	}
	old := cp.controller
	cp.mu.Unlock()
	begin := time.Now()
	if err := stop(old, stopGrace); err != nil {
		return err
	}
	var from int64
	if fi, err := os.Stat(old.LogPath); err == nil {
		from = fi.Size()
	}
	p, err := startProcess(cp.Namespace, "kube-controller-manager", old.LogPath, cp.controllerArgs)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.controller = p
	cp.mu.Unlock()
	if err := waitLog(ctx, p, controllerReadyLog, controllerReadyTimeout, from); err != nil {
		return err
	}
	cp.logf("controlplane %s: kube-controller-manager restarted in %v", cp.Namespace, time.Since(begin).Round(time.Millisecond))
	return nil
}

// StopAPIServer kills kube-apiserver (SIGKILL, as a crash) and leaves etcd
// and kube-controller-manager running: clients' connections break at once
// and new ones are refused until StartAPIServer. (A SIGTERM would keep the
// process, though no longer listening, until its clients' watches end, up
// to a minute.)
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	p := cp.apiserver
	cp.apiserver = nil
	cp.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := kill(p); err != nil {
		return err
	}
	// Idle keep-alive connections point at the dead server.
	cp.client.CloseIdleConnections()
	cp.logf("controlplane %s: kube-apiserver stopped", cp.Namespace)
	return nil
}

// Close stops kube-controller-manager, kube-apiserver and etcd, in that
// order, and removes Dir unless Options.Dir named it. It is safe to call more
// than once and after a failed Start.
func (cp *ControlPlane) Close() error {
	cp.mu.Lock()
	if cp.closed {
		cp.mu.Unlock()
		return nil
	}
	cp.closed = true
	procs := []*process{cp.controller, cp.apiserver, cp.etcd}
	cp.mu.Unlock()
	var errs []error
	if cp.kubelet != nil {
		if err := cp.kubelet.close(); err != nil {
			errs = append(errs, fmt.Errorf("controlplane: kubelet stand-in: %w", err))
		}
	}
	for _, p := range procs {
		if p != nil {
			if err := stop(p, stopGrace); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if cp.client != nil {
		cp.client.CloseIdleConnections()
	}
	if cp.removeDir {
		if err := os.RemoveAll(cp.Dir); err != nil {
			errs = append(errs, fmt.Errorf("controlplane: RemoveAll %s: %w", cp.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// DialContext dials addr from inside the control plane's namespace, where
// Server is reachable; a client-go rest.Config in the root namespace takes
// it as its Dial.
func (cp *ControlPlane) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn(ctx, cp.Namespace, network, addr)
}

// LogPath returns the log file of component "etcd", "kube-apiserver" or
// "kube-controller-manager"; a restarted kube-apiserver appends to its file.
func (cp *ControlPlane) LogPath(component string) string {
	return filepath.Join(cp.Dir, "logs", component+".log")
}

// writeKubeconfig writes the admin's kubeconfig to Dir/kubeconfig.
func (cp *ControlPlane) writeKubeconfig() error {
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	return cp.WriteKubeconfig(cp.Kubeconfig, cp.Token)
}

// WriteKubeconfig writes to path a kubeconfig for the control plane that
// authenticates with token, e.g. a ServiceAccount's from `kubectl create
// token`.
func (cp *ControlPlane) WriteKubeconfig(path, token string) error {
	return cp.WriteKubeconfigFor(path, Kubeconfig{Token: token})
}

// Kubeconfig is what WriteKubeconfigFor writes; zero fields take defaults.
type Kubeconfig struct {
	// Server is kube-apiserver's URL; default Server. A relay's
	// (RelayAPIServer) on another namespace's 127.0.0.1 works as well.
	Server string
	// Token authenticates; default the admin's, Token.
	Token string
	// Context names the context and its cluster; default "kubetun-test".
	// kubetun connect says it in its summary line.
	Context string
	// Namespace is the context's namespace; default none.
	Namespace string
}

// WriteKubeconfigFor writes k to path as a kubeconfig file.
func (cp *ControlPlane) WriteKubeconfigFor(path string, k Kubeconfig) error {
	k.Server = cmp.Or(k.Server, cp.Server)
	k.Token = cmp.Or(k.Token, cp.Token)
	k.Context = cmp.Or(k.Context, "kubetun-test")
	namespace := ""
	if k.Namespace != "" {
		namespace = "\n    namespace: " + k.Namespace
	}
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: admin
  user:
    token: %[4]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: admin%[5]s
current-context: %[1]s
`, k.Context, k.Server, base64.StdEncoding.EncodeToString(cp.CACert), k.Token, namespace)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		return fmt.Errorf("controlplane: write kubeconfig: %w", err)
	}
	return nil
}

// waitHTTP polls url (from inside the namespace) until it answers 200,
// failing early if p exits. auth adds the admin's token.
func (cp *ControlPlane) waitHTTP(ctx context.Context, p *process, url string, auth bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("controlplane: GET %s: %w", url, err)
		}
		if auth {
			req.Header.Set("Authorization", "Bearer "+cp.Token)
		}
		resp, err := cp.client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-p.Done():
			return failure(p, fmt.Errorf("controlplane: %s exited before GET %s answered 200 (last: %s)", p.Name, url, last))
		case <-ctx.Done():
			return failure(p, fmt.Errorf("controlplane: GET %s: no 200 within %v (last: %s)", url, timeout, last))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitLog polls p's log, from byte from on (a restarted process appends to
// its predecessor's), until it contains substr, failing early if p exits.
func waitLog(ctx context.Context, p *process, substr string, timeout time.Duration, from int64) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if data, err := os.ReadFile(p.LogPath); err == nil && int64(len(data)) >= from && strings.Contains(string(data[from:]), substr) {
			return nil
		}
		select {
		case <-p.Done():
			return failure(p, fmt.Errorf("controlplane: %s exited before logging %q", p.Name, substr))
		case <-ctx.Done():
			return failure(p, fmt.Errorf("controlplane: %s did not log %q within %v", p.Name, substr, timeout))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) logf(format string, args ...any) {
	if cp.opts.Logf != nil {
		cp.opts.Logf(format, args...)
	}
}
