package controlplane

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/kubetun/kubetun/test/prereq"
)

// TestKubeletPortForward speaks kubectl's SPDY port-forward protocol to the
// kubelet stand-in directly, with kube-apiserver's client certificate, and
// reaches an echo server on 127.0.0.1 of the pod's namespace; a closed port
// is refused on the error stream, and a client without the certificate is
// turned away. It needs root (a network namespace), not the binaries:
// without root it skips, or fails with CI set.
func TestKubeletPortForward(t *testing.T) {
	prereq.Root(t, "network namespaces")
	netns := newNetns(t)
	if out, err := exec.Command("ip", "-n", netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", netns, err, out)
	}
	dir := t.TempDir()
	keys, err := writePKI(filepath.Join(dir, "pki"), mustAddr(t, "10.3.240.1"))
	if err != nil {
		t.Fatal(err)
	}
	cp := &ControlPlane{Namespace: netns}
	if err := cp.startKubelet(keys); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.kubelet.close(); err != nil {
			t.Errorf("kubelet close: %v", err)
		}
	})
	// The "pod" shares the node's namespace here: an echo server on its
	// localhost.
	echo, err := listenIn(netns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	cp.SetPodNetns("default", "pod1", netns)
	echoPort := echo.Addr().(*net.TCPAddr).Port

	u := &url.URL{Scheme: "https", Host: "127.0.0.1:" + strconv.Itoa(KubeletPort), Path: "/portForward/default/pod1"}
	cfg := &rest.Config{Host: "https://127.0.0.1", TLSClientConfig: rest.TLSClientConfig{
		CAData:   keys.caCert,
		CertFile: keys.kubeletClientCrt,
		KeyFile:  keys.kubeletClientKey,
	}}
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var conn httpstream.Connection
	// The round tripper dials on the calling goroutine: from the namespace.
	err = inNetns(netns, func() error {
		var err error
		conn, _, err = spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, u).Dial("portforward.k8s.io")
		return err
	})
	if err != nil {
		t.Fatalf("SPDY dial %s: %v", u, err)
	}
	defer conn.Close()

	pair := func(id, port int) (errStream, data httpstream.Stream) {
		t.Helper()
		h := http.Header{}
		h.Set(corev1.StreamType, corev1.StreamTypeError)
		h.Set(corev1.PortHeader, strconv.Itoa(port))
		h.Set(corev1.PortForwardRequestIDHeader, strconv.Itoa(id))
		errStream, err := conn.CreateStream(h)
		if err != nil {
			t.Fatal(err)
		}
		errStream.Close()
		h.Set(corev1.StreamType, corev1.StreamTypeData)
		data, err = conn.CreateStream(h)
		if err != nil {
			t.Fatal(err)
		}
		return errStream, data
	}

	errStream, data := pair(1, echoPort)
	io.WriteString(data, "hello")
	data.Close()
	got, err := io.ReadAll(data)
	if err != nil || string(got) != "hello" {
		t.Errorf("echo through the kubelet stand-in = %q, %v, want hello", got, err)
	}
	if msg, _ := io.ReadAll(errStream); len(msg) != 0 {
		t.Errorf("error stream of a good forward: %q", msg)
	}

	// A pod that closes at once while the client sends 8 MiB: the stand-in
	// must drop the rest, not leave it unread, which would stop every
	// stream of the connection (spdystream) and the stand-in's close.
	quitter, err := listenIn(netns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer quitter.Close()
	go func() {
		for {
			c, err := quitter.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, flood := pair(3, quitter.Addr().(*net.TCPAddr).Port)
	defer flood.Reset()
	flooded := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for range 256 {
			if _, err := flood.Write(buf); err != nil {
				flooded <- err
				return
			}
		}
		flooded <- nil
	}()
	select {
	case <-flooded: // written, or refused once the stream was reset
	case <-time.After(30 * time.Second):
		t.Fatal("8 MiB to a pod that closed at once: writing still blocked after 30 s")
	}
	_, data = pair(4, echoPort)
	io.WriteString(data, "again")
	data.Close()
	timer := time.AfterFunc(30*time.Second, func() { conn.Close() })
	got, err = io.ReadAll(data)
	timer.Stop()
	if err != nil || string(got) != "again" {
		t.Errorf("echo on the same connection after the flood = %q, %v, want again", got, err)
	}

	closed, err := listenIn(netns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	errStream, data = pair(2, closedPort)
	defer data.Reset()
	msg, _ := io.ReadAll(errStream)
	if !strings.Contains(string(msg), "connection refused") {
		t.Errorf("error stream for closed port %d = %q, want connection refused", closedPort, msg)
	}

	// Without kube-apiserver's client certificate: no TLS session.
	err = inNetns(netns, func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1)) // TLS 1.3: the server's alert comes after the handshake
		return err
	})
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("TLS without a client certificate: %v, want the server's refusal", err)
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
