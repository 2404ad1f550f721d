package tunnel

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/kubetun/kubetun/test/prereq"
)

// fileTUN is a TUN device whose file is f.
type fileTUN struct {
	tun.Device
	f *os.File
}

func (d fileTUN) File() *os.File { return d.f }

// logBuffer is a log's text, safe to read while it is written.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// readSyscalls returns how many read system calls the process has made.
func readSyscalls(t *testing.T) int {
	f, err := os.Open("/proc/self/io")
	prereq.Require(t, "/proc/self/io (task I/O accounting in the kernel)", err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "syscr: "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no syscr in /proc/self/io")
	return 0
}

// TestInboundReadErrorBacksOff: a TUN read that keeps failing (a
// directory's file: EISDIR) is retried a handful of times in half a second,
// not in a loop, and said once in the log; closing the link ends the pump
// during a wait.
func TestInboundReadErrorBacksOff(t *testing.T) {
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	var log logBuffer
	d := &Device{
		tun:  fileTUN{f: dir},
		name: "kt-test",
		link: newLink(DefaultMTU, discard{}, 1),
		log:  slog.New(slog.NewTextHandler(&log, nil)),
		gone: make(chan struct{}),
	}
	before := readSyscalls(t)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.inbound() }()
	time.Sleep(500 * time.Millisecond)
	// 1+2+...+256 ms of waits fit in 500 ms: 10 reads; other goroutines
	// read little.
	if reads := readSyscalls(t) - before; reads > 100 {
		t.Errorf("%d reads in 500 ms of a failing TUN, want about 10: the pump does not back off", reads)
	}
	if n := strings.Count(log.String(), "TUN read failing"); n != 1 {
		t.Errorf("the failing reads were logged %d times, want once:\n%s", n, log.String())
	}

	d.link.close()
	ended := make(chan struct{})
	go func() { d.wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(100 * time.Millisecond):
		t.Fatal("the pump did not end within 100 ms of the link's close (waiting out its retry?)")
	}
}
