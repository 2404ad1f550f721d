package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// The kubelet stand-in's port-forward server: what kube-apiserver reaches
// for pods/portforward (kubectl port-forward). It is the kubelet's own
// server code (k8s.io/cri-streaming, SPDY and WebSocket), on HTTPS at the
// Node's InternalIP and daemonEndpoints.kubeletEndpoint.Port, and it
// forwards into the pod's network namespace as a container runtime does.

// KubeletPort is the kubelet's port, the Node's
// status.daemonEndpoints.kubeletEndpoint.Port.
const KubeletPort = 10250

// kubeletAddr is the stand-in's address inside the namespace: the Node's
// InternalIP (the control plane's namespace is the node's).
const kubeletAddr = "127.0.0.1"

// Timeouts of the port-forward server, as the kubelet sets them: a stream
// pair must be complete within streamCreationTimeout
// (remotecommand.DefaultStreamCreationTimeout); an idle connection is not
// closed unless SetKubeletIdleTimeout says (the kubelet's default
// --streaming-connection-idle-timeout is 4 h, longer than any test).
const streamCreationTimeout = 30 * time.Second

// kubelet serves port-forward for the Node's pods.
type kubelet struct {
	cp     *ControlPlane
	server *http.Server
	ln     net.Listener
	wg     sync.WaitGroup // the server, its handlers and forwards

	mu     sync.Mutex // guards the fields below
	idle   time.Duration
	netns  map[podKey]string
	conns  map[net.Conn]struct{} // kube-apiserver's and the pods' connections
	closed bool
	quit   chan struct{} // closed by close
}

type podKey struct{ namespace, name string }

// startKubelet listens on kubeletAddr:KubeletPort in the namespace and serves.
func (cp *ControlPlane) startKubelet(keys *pki) error {
	k := &kubelet{cp: cp, netns: make(map[podKey]string), conns: make(map[net.Conn]struct{}), quit: make(chan struct{})}
	ln, err := listenIn(cp.Namespace, "tcp", net.JoinHostPort(kubeletAddr, strconv.Itoa(KubeletPort)))
	if err != nil {
		return fmt.Errorf("controlplane: kubelet stand-in: listen in netns %s: %w", cp.Namespace, err)
	}
	k.ln = tls.NewListener(trackedListener{ln, k}, &tls.Config{
		Certificates: []tls.Certificate{keys.kubeletServing},
		// Only kube-apiserver, with its --kubelet-client-certificate.
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  keys.caPool,
		// Upgrades (SPDY, WebSocket) need HTTP/1.1.
		NextProtos: []string{"http/1.1"},
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{name}", k.portForward)
	mux.HandleFunc("/portForward/{namespace}/{name}/{uid}", k.portForward)
	k.server = &http.Server{Handler: mux}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.server.Serve(k.ln)
	}()
	cp.kubelet = k
	return nil
}

// SetPodNetns tells the kubelet stand-in which network namespace (a name
// under /run/netns) Pod namespace/name runs in: port-forward then dials the
// port on 127.0.0.1 inside it, as a container runtime does. Without it, the
// stand-in dials the Pod's status.podIP from the control plane's namespace.
func (cp *ControlPlane) SetPodNetns(namespace, name, netns string) {
	k := cp.kubelet
	k.mu.Lock()
	defer k.mu.Unlock()
	k.netns[podKey{namespace, name}] = netns
}

// SetKubeletIdleTimeout makes the kubelet stand-in close a port-forward
// connection made from now on that carries no frame for d, as the
// kubelet's --streaming-connection-idle-timeout does; zero never does.
func (cp *ControlPlane) SetKubeletIdleTimeout(d time.Duration) {
	k := cp.kubelet
	k.mu.Lock()
	defer k.mu.Unlock()
	k.idle = d
}

// CutPortForwards closes every connection of the kubelet stand-in (its
// connections from kube-apiserver and to the pods), as a kubelet restart
// does; new ones are served as before.
func (cp *ControlPlane) CutPortForwards() {
	k := cp.kubelet
	k.mu.Lock()
	defer k.mu.Unlock()
	for c := range k.conns {
		c.Close()
	}
}

// close stops the server, closes every connection and waits for the
// handlers.
func (k *kubelet) close() error {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	close(k.quit)
	err := k.server.Close() // the listener; upgraded connections are ours
	k.cp.CutPortForwards()
	k.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// track records c until it is closed; it reports false (and closes c) once
// the kubelet is closed.
func (k *kubelet) track(c net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		c.Close()
		return false
	}
	k.conns[c] = struct{}{}
	return true
}

func (k *kubelet) untrack(c net.Conn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.conns, c)
}

// trackedListener records the connections it accepts: http.Server forgets
// a connection once a handler hijacks it, as an upgrade does.
type trackedListener struct {
	net.Listener
	k *kubelet
}

func (l trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.k.track(c) {
			return trackedConn{Conn: c, k: l.k}, nil
		}
	}
}

// trackedConn forgets itself when closed.
type trackedConn struct {
	net.Conn
	k *kubelet
}

func (c trackedConn) Close() error {
	c.k.untrack(c.Conn)
	return c.Conn.Close()
}

// portForward is the kubelet's GET/POST /portForward/{namespace}/{name}.
func (k *kubelet) portForward(w http.ResponseWriter, r *http.Request) {
	k.wg.Add(1)
	defer k.wg.Done()
	pod := podKey{r.PathValue("namespace"), r.PathValue("name")}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	k.mu.Lock()
	idle := k.idle
	k.mu.Unlock()
	portforward.ServePortForward(w, r, forwarder{k, pod}, pod.name, r.PathValue("uid"), opts,
		idle, streamCreationTimeout, portforward.SupportedProtocols)
}

// forwarder is a runtime's PortForward for one pod.
type forwarder struct {
	k   *kubelet
	pod podKey
}

// PortForward connects to port in the pod and copies both ways, passing
// each side's half-close on, until both are done.
//
// The data stream is read until the client half-closes it, or else reset:
// spdystream hands a stream's data frames over one at a time on the
// connection's frame workers, shared by every stream, so data nobody reads
// stops every stream of the connection, and its close too
// (https://github.com/moby/spdystream, connection.go, handleDataFrame).
// The kubelet resets a forward's streams when the runtime's PortForward
// fails for the same reason (k8s.io/cri-streaming, httpstream.go).
func (f forwarder) PortForward(ctx context.Context, _, _ string, port int32, stream io.ReadWriteCloser) error {
	f.k.wg.Add(1)
	defer f.k.wg.Done()
	reset := func() {
		if r, ok := stream.(interface{ Reset() error }); ok {
			r.Reset()
		}
	}
	c, err := f.k.dialPod(ctx, f.pod, port)
	if err != nil {
		return err // the kubelet resets the streams
	}
	if !f.k.track(c) {
		c.Close()
		return errors.New("kubelet stand-in closed")
	}
	defer func() {
		f.k.untrack(c)
		c.Close()
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := io.Copy(c, stream)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		if err != nil {
			// The pod takes no more: what the client still sends
			// is dropped, not left unread.
			reset()
			c.Close()
		}
	}()
	if _, err := io.Copy(stream, c); err != nil {
		reset() // the pod's connection broke, or the stream did
	} else {
		stream.Close() // the data stream's write side: the client reads EOF
	}
	select {
	case <-done:
	case <-f.k.quit:
		// A stream whose client went away without closing its side
		// is not ended by closing the SPDY connection under it.
		reset()
		<-done
	}
	return nil
}

// dialPod dials port of pod: on 127.0.0.1 in its network namespace if
// SetPodNetns named it, else its IP from the control plane's namespace.
func (k *kubelet) dialPod(ctx context.Context, pod podKey, port int32) (net.Conn, error) {
	k.mu.Lock()
	netns, ok := k.netns[pod]
	k.mu.Unlock()
	if ok {
		return dialIn(ctx, netns, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	}
	p, err := k.cp.getPod(ctx, pod.namespace, pod.name)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s has no IP: %q", pod.namespace, pod.name, strings.TrimSpace(p.Status.PodIP))
	}
	return dialIn(ctx, k.cp.Namespace, "tcp", netip.AddrPortFrom(ip, uint16(port)).String())
}
