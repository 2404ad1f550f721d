// Command podserver is the seed's pod: the tiny HTTP server that answers
// "<p>Hello from NAME</p>", plus an echo port and a bytes port that the
// end-to-end tests use to check half-close and byte identity through kubetun,
// and a UDP echo port whose answers name the pod, so a test can tell which
// pod a datagram reached.
//
// The HTTP responder is raw TCP on purpose. The seed's client sends
// "GET / HTTP/1.1\r\n\r\n" without a Host header; net/http would answer that
// with 400, while Python's SimpleHTTPServer (which the seed runs) answers 200.
//
// Usage:
//
//	podserver --name pod1 [--addr :8080] [--echo-addr :9000] [--bytes-addr :9001] [--udp-echo-addr :9002]
//
// Once every port is bound it prints "podserver NAME: ready: ..." to
// stderr; the test bed waits for it.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/test/pattern"
)

const (
	// maxHead bounds an HTTP request head; the seed's is 19 bytes.
	maxHead = 64 << 10
	// maxBytes bounds what one bytes-port request may ask for.
	maxBytes = 1 << 30
	// idleTimeout bounds how long a connection may sit without a byte
	// arriving, so a stuck client cannot pin a goroutine forever.
	idleTimeout = 30 * time.Second
	// lingerTimeout bounds the drain after the answer (see lingeringClose).
	lingerTimeout = 2 * time.Second
)

func main() {
	name := flag.String("name", "", "the pod's name, shown in the HTTP answer (required)")
	addr := flag.String("addr", ":8080", "HTTP listen address")
	echoAddr := flag.String("echo-addr", ":9000", "echo listen address")
	bytesAddr := flag.String("bytes-addr", ":9001", "pattern-bytes listen address")
	udpEchoAddr := flag.String("udp-echo-addr", ":9002", "UDP echo listen address: each datagram is answered with \"NAME: \" and the datagram")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("podserver " + *name + ": ")
	if *name == "" {
		log.Fatal("--name is required")
	}

	answer := httpAnswer(*name)

	servers := []struct {
		addr   string
		handle func(*net.TCPConn)
	}{
		{*addr, func(c *net.TCPConn) { serveHTTP(c, answer) }},
		{*echoAddr, serveEcho},
		{*bytesAddr, serveBytes},
	}
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			log.Fatalf("listen %s: %v", s.addr, err)
		}
		go func() {
			log.Fatal(acceptLoop(ln.(*net.TCPListener), s.handle))
		}()
	}
	pc, err := net.ListenPacket("udp", *udpEchoAddr)
	if err != nil {
		log.Fatalf("listen udp %s: %v", *udpEchoAddr, err)
	}
	go func() {
		log.Fatal(serveUDPEcho(pc, *name))
	}()
	log.Printf("ready: http on %s, echo on %s, bytes on %s, udp echo on %s", *addr, *echoAddr, *bytesAddr, *udpEchoAddr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	log.Printf("stopping on %v", <-sig)
}

// acceptLoop serves every connection of ln on its own goroutine, until
// accepting fails; it returns that error.
func acceptLoop(ln *net.TCPListener, handle func(*net.TCPConn)) error {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// httpAnswer is the whole HTTP answer of the pod called name: the seed's page,
// "<p>Hello from NAME</p>", as SimpleHTTPServer sends it (HTTP/1.0, then close).
func httpAnswer(name string) []byte {
	body := fmt.Sprintf("<p>Hello from %s</p>\n", name)
	return []byte(fmt.Sprintf("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
}

// serveHTTP reads a request head and writes answer, whatever was asked. The head
// ends at "\r\n\r\n", at "\n\n", or when the client half-closes.
func serveHTTP(c *net.TCPConn, answer []byte) {
	if err := readHead(c); err != nil {
		log.Printf("http %s: reading the request: %v", c.RemoteAddr(), err)
		return
	}
	if _, err := c.Write(answer); err != nil {
		log.Printf("http %s: writing the answer: %v", c.RemoteAddr(), err)
		return
	}
	lingeringClose(c)
}

// readHead reads until the end of an HTTP request head.
func readHead(c *net.TCPConn) error {
	var head []byte
	buf := make([]byte, 4096)
	for {
		if bytes.Contains(head, []byte("\r\n\r\n")) || bytes.Contains(head, []byte("\n\n")) {
			return nil
		}
		if len(head) > maxHead {
			return fmt.Errorf("head longer than %d bytes", maxHead)
		}
		c.SetReadDeadline(time.Now().Add(idleTimeout))
		n, err := c.Read(buf)
		head = append(head, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return nil // a client that half-closed has said all it will say
		}
		if err != nil {
			return err
		}
	}
}

// serveEcho sends back every byte until the client half-closes, then half-closes too.
func serveEcho(c *net.TCPConn) {
	if _, err := io.Copy(c, deadlineReader{c}); err != nil {
		log.Printf("echo %s: %v", c.RemoteAddr(), err)
		return
	}
	if err := c.CloseWrite(); err != nil {
		log.Printf("echo %s: CloseWrite: %v", c.RemoteAddr(), err)
	}
}

// serveBytes reads a decimal count N on the first line, writes the first N bytes
// of the test pattern, and closes.
func serveBytes(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(idleTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(c, 64), 64).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		log.Printf("bytes %s: reading the count line: %v", c.RemoteAddr(), err)
		return
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil || n < 0 || n > maxBytes {
		log.Printf("bytes %s: count %q is not a number in [0, %d]", c.RemoteAddr(), line, maxBytes)
		return
	}
	if _, err := io.Copy(c, pattern.Reader(n)); err != nil {
		log.Printf("bytes %s: writing %d bytes: %v", c.RemoteAddr(), n, err)
		return
	}
	lingeringClose(c)
}

// lingeringClose sends FIN and then reads until the client closes too (or
// lingerTimeout passes). Closing a socket with unread bytes in its receive
// buffer makes Linux send RST, which can destroy an answer the client has not
// read yet; the seed's request ends in an extra "\n" that may still be in flight.
func lingeringClose(c *net.TCPConn) {
	if err := c.CloseWrite(); err != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, c)
}

// serveUDPEcho answers every datagram on pc with "NAME: " followed by the
// datagram, to its sender, until reading fails; it returns that error.
func serveUDPEcho(pc net.PacketConn, name string) error {
	prefix := []byte(name + ": ")
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("udp echo on %s: %w", pc.LocalAddr(), err)
		}
		answer := append(append([]byte(nil), prefix...), buf[:n]...)
		if _, err := pc.WriteTo(answer, from); err != nil {
			log.Printf("udp echo %s: %v", from, err)
		}
	}
}

// deadlineReader extends the read deadline before each read, so an echo stream
// may last as long as it keeps moving.
type deadlineReader struct{ c *net.TCPConn }

func (r deadlineReader) Read(p []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(idleTimeout))
	return r.c.Read(p)
}
