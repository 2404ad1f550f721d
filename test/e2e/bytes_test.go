package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/pattern"
	"github.com/kubetun/kubetun/test/testbed"
)

const tenMiB = 10 << 20

// TestTenMiB pushes 10 MiB up and down through kubetun with nc and compares
// SHA-256 hashes: up through the echo port (back down the same connection),
// and down from the bytes port against the same pattern generated here.
func TestTenMiB(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)

	t.Run("up_and_back_through_echo", func(t *testing.T) {
		data := make([]byte, tenMiB)
		rand.Read(data)
		path := filepath.Join(c.Dir, "up.bin")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(data)
		// -N: shut the write side down at the end of the file, so the echo
		// server sees EOF, finishes, and closes.
		got, elapsed := sha256Of(t, c.Testbed, c.Client.Namespace,
			fmt.Sprintf("nc -N %s 7 < %s | sha256sum", testbed.ClusterIP, path))
		if got != hex.EncodeToString(want[:]) {
			t.Fatalf("sha256 of the echoed 10 MiB = %s, want %s", got, hex.EncodeToString(want[:]))
		}
		t.Logf("10 MiB up and back in %v", elapsed)
	})

	t.Run("down_from_bytes", func(t *testing.T) {
		got, elapsed := sha256Of(t, c.Testbed, c.Client.Namespace,
			fmt.Sprintf("echo %d | nc -N %s 9 | sha256sum", tenMiB, testbed.ClusterIP))
		if want := pattern.SHA256(tenMiB); got != want {
			t.Fatalf("sha256 of the downloaded 10 MiB = %s, want %s", got, want)
		}
		t.Logf("10 MiB down in %v", elapsed)
	})
}

// sha256Of runs a bash pipeline (pipefail: nc's failure is the pipeline's) ending in sha256sum in namespace ns and
// returns the hash it printed and how long it took.
func sha256Of(t *testing.T, tb *testbed.Testbed, ns, pipeline string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	began := time.Now()
	out, err := tb.Run(ctx, ns, "bash", "-o", "pipefail", "-c", pipeline)
	if err != nil {
		t.Fatalf("%v (stdout %q)", err, out)
	}
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("%s printed nothing", pipeline)
	}
	return f[0], time.Since(began)
}

// TestHalfClose checks that a client which shuts its write side down still
// reads the whole answer: its FIN must reach the pod through kubetun while
// the other direction stays open.
func TestHalfClose(t *testing.T) {
	c := startCluster(t, testbed.TestPorts)
	big := make([]byte, 1<<20)
	if _, err := io.ReadFull(pattern.Reader(int64(len(big))), big); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		port int
		send []byte
		want func(got []byte) bool
	}{
		// The echo server sends its FIN only after reading the client's.
		{"echo", 7, []byte("hello, half-closed\n"), func(got []byte) bool { return string(got) == "hello, half-closed\n" }},
		// An HTTP head without its blank line: podserver answers at EOF.
		{"http_head_ended_by_fin", 80, []byte("GET / HTTP/1.0\r\n"), func(got []byte) bool {
			return bytes.HasPrefix(got, []byte("HTTP/1.0 200 OK\r\n")) && helloRE.Match(got)
		}},
		// 1 MiB written while the echo comes back, then the FIN.
		{"echo_1MiB", 7, big, func(got []byte) bool { return bytes.Equal(got, big) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fmt.Sprintf("%s:%d", testbed.ClusterIP, tc.port)
			conn, err := testbed.DialIn(c.Client.Namespace, "tcp", addr, 3*time.Second)
			if err != nil {
				t.Fatalf("DialIn(client, %s): %v", addr, err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			wrote := make(chan error, 1)
			go func() {
				_, err := conn.Write(tc.send)
				if err == nil {
					err = conn.(*net.TCPConn).CloseWrite()
				}
				wrote <- err
			}()
			got, err := io.ReadAll(conn)
			if werr := <-wrote; werr != nil {
				t.Fatalf("write %d bytes and CloseWrite to %s: %v", len(tc.send), addr, werr)
			}
			if err != nil {
				t.Fatalf("read from %s after CloseWrite: %v (got %d bytes)", addr, err, len(got))
			}
			if !tc.want(got) {
				t.Errorf("read from %s after CloseWrite: %d bytes %.80q, not the expected answer", addr, len(got), got)
			}
		})
	}

	t.Run("nc_N", func(t *testing.T) {
		out, err := c.Run(t.Context(), c.Client.Namespace, "sh", "-c",
			fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n' | nc -N %s 80`, testbed.ClusterIP))
		if err != nil || !helloRE.MatchString(out) {
			t.Errorf("printf 'GET / HTTP/1.0\\r\\n' | nc -N: %q, %v; want podserver's answer", out, err)
		}
	})
}
