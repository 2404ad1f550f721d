package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/pattern"
)

// serve runs handle behind a loopback listener and returns its address.
func serve(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go acceptLoop(ln.(*net.TCPListener), handle)
	return ln.Addr().String()
}

// exchange sends req to addr, half-closes if asked, and returns all it reads.
func exchange(t *testing.T, addr string, req []byte, halfClose bool) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("ReadAll after %q: %v (got %q)", req, err, got)
	}
	return got
}

func TestHTTP(t *testing.T) {
	addr := serve(t, func(c *net.TCPConn) { serveHTTP(c, httpAnswer("pod1")) })
	want := "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: 23\r\nConnection: close\r\n\r\n<p>Hello from pod1</p>\n"
	for _, tc := range []struct {
		name      string
		req       string
		halfClose bool
	}{
		// What dash's echo makes of the seed's 'GET / HTTP/1.1\r\n\r\n': no Host header.
		{"seed_request", "GET / HTTP/1.1\r\n\r\n\n", false},
		{"bare_newlines", "GET / HTTP/1.1\nHost: x\n\n", false},
		{"head_ended_by_half_close", "GET / HTTP/1.0\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exchange(t, addr, []byte(tc.req), tc.halfClose); string(got) != want {
				t.Errorf("answer to %q = %q, want %q", tc.req, got, want)
			}
		})
	}
}

func TestEcho(t *testing.T) {
	addr := serve(t, serveEcho)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<12)
	if got := exchange(t, addr, data, true); !bytes.Equal(got, data) {
		t.Errorf("echo of %d bytes returned %d bytes, different", len(data), len(got))
	}
}

func TestBytes(t *testing.T) {
	addr := serve(t, serveBytes)
	const n = 1 << 20
	got := exchange(t, addr, []byte("1048576\n"), false)
	sum := sha256.Sum256(got)
	if len(got) != n || hex.EncodeToString(sum[:]) != pattern.SHA256(n) {
		t.Errorf("bytes for \"1048576\\n\": %d bytes, sha256 %x; want %d bytes of the pattern", len(got), sum, n)
	}
	if got := exchange(t, addr, []byte("lots\n"), false); len(got) != 0 {
		t.Errorf("bytes for \"lots\\n\" = %d bytes, want none", len(got))
	}
}

func TestUDPEcho(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenPacket: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go serveUDPEcho(pc, "pod1")
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatalf("Dial(%s): %v", pc.LocalAddr(), err)
	}
	defer c.Close()
	for _, msg := range []string{"hello", "", "second datagram"} {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("Write(%q): %v", msg, err)
		}
		buf := make([]byte, 1024)
		n, err := c.Read(buf)
		if want := "pod1: " + msg; err != nil || string(buf[:n]) != want {
			t.Errorf("answer to %q = %q, %v; want %q", msg, buf[:n], err, want)
		}
	}
}
