package manifest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// logBuffer collects log lines written by Run's goroutine.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// errors returns the ERROR lines logged so far.
func (b *logBuffer) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for line := range strings.Lines(b.buf.String()) {
		if strings.Contains(line, "level=ERROR") {
			out = append(out, line)
		}
	}
	return out
}

// replaceFile writes data to path the way an editor saves: a new file
// renamed over the old one, so Run never reads half a file.
func replaceFile(tb testing.TB, path, data string) {
	tb.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// sliceYAML is the seed's EndpointSlice with the given pod addresses.
func sliceYAML(addrs ...string) string {
	s := "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n" +
		"metadata:\n  name: service-test-x7k2p\n  labels: {kubernetes.io/service-name: service-test}\n" +
		"addressType: IPv4\nports: [{name: \"\", port: 8080, protocol: TCP}]\nendpoints:\n"
	for _, a := range addrs {
		s += "- addresses: [" + a + "]\n"
	}
	return s
}

const brokenSlice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: service-test-x7k2p\n"

// sourceTest runs a Source over a directory holding the seed Service and
// the seed EndpointSlice in slice.yaml.
type sourceTest struct {
	tb      testing.TB
	src     *Source
	slice   string // path of slice.yaml
	log     *logBuffer
	applied chan Objects
}

func startSource(tb testing.TB) *sourceTest {
	tb.Helper()
	dir := tb.TempDir()
	writeFiles(tb, dir, map[string]string{
		"service.yaml": strings.SplitN(seedYAML, "---\n", 2)[0],
		"slice.yaml":   sliceYAML("10.0.1.2", "10.0.2.2"),
	})
	st := &sourceTest{
		tb:      tb,
		slice:   filepath.Join(dir, "slice.yaml"),
		log:     new(logBuffer),
		applied: make(chan Objects, 100),
	}
	src, objs, err := NewSource(dir, slog.New(slog.NewTextHandler(st.log, nil)))
	if err != nil {
		tb.Fatalf("NewSource(%q): %v", dir, err)
	}
	if got := endpointAddrs(objs); got != "10.0.1.2 10.0.2.2" {
		tb.Fatalf("NewSource(%q) endpoints = %q, want the seed's", dir, got)
	}
	src.interval = 5 * time.Millisecond
	st.src = src

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx, func(objs Objects) { st.applied <- objs })
	}()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			tb.Errorf("Run did not return within %v of its context being cancelled", wait)
		}
	})
	return st
}

// endpointAddrs lists the first address of every endpoint in objs' slices.
func endpointAddrs(objs Objects) string {
	var addrs []string
	for _, es := range objs.Slices {
		for _, ep := range es.Endpoints {
			addrs = append(addrs, ep.Addresses[0])
		}
	}
	return strings.Join(addrs, " ")
}

// waitApplied waits for Run to apply objects whose endpoints are want.
func (st *sourceTest) waitApplied(want string) {
	st.tb.Helper()
	deadline := time.After(wait)
	for {
		select {
		case objs := <-st.applied:
			if got := endpointAddrs(objs); got != want {
				st.tb.Fatalf("applied endpoints %q, want %q", got, want)
			}
			if len(objs.Services) != 1 {
				st.tb.Fatalf("applied %d services, want the seed's 1", len(objs.Services))
			}
			return
		case <-deadline:
			st.tb.Fatalf("no apply with endpoints %q within %v", want, wait)
		}
	}
}

// waitErrors waits until n errors have been logged.
func (st *sourceTest) waitErrors(n int) {
	st.tb.Helper()
	deadline := time.Now().Add(wait)
	for len(st.log.errors()) < n {
		if time.Now().After(deadline) {
			st.tb.Fatalf("logged errors %q within %v, want %d", st.log.errors(), wait, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// settle lets Run poll many times, then checks it applied nothing and logged
// exactly the errors it had.
func (st *sourceTest) settle(errors int) {
	st.tb.Helper()
	time.Sleep(40 * 5 * time.Millisecond) // 40 polls
	select {
	case objs := <-st.applied:
		st.tb.Errorf("applied endpoints %q, want nothing applied", endpointAddrs(objs))
	default:
	}
	if got := st.log.errors(); len(got) != errors {
		st.tb.Errorf("logged %d errors, want %d:\n%s", len(got), errors, strings.Join(got, ""))
	}
}

func TestSourceRun(t *testing.T) {
	st := startSource(t)
	st.settle(0) // nothing changed: nothing applied

	// A valid change is applied.
	replaceFile(t, st.slice, sliceYAML("10.0.1.2", "10.0.2.2", "10.0.3.2"))
	st.waitApplied("10.0.1.2 10.0.2.2 10.0.3.2")

	// A broken change keeps the last good state and is logged once, naming
	// the file and the document.
	replaceFile(t, st.slice, brokenSlice)
	st.waitErrors(1)
	st.settle(1)
	if e := st.log.errors()[0]; !strings.Contains(e, st.slice+": document 1:") ||
		!strings.Contains(e, "keeping the last good state") {
		t.Errorf("logged %q, want the file, the document and that the last good state stays", e)
	}

	// Fixed: applied again.
	replaceFile(t, st.slice, sliceYAML("10.0.1.2", "10.0.3.2"))
	st.waitApplied("10.0.1.2 10.0.3.2")
	st.settle(1)

	// Broken again the same way: a new failure, logged again.
	replaceFile(t, st.slice, brokenSlice)
	st.waitErrors(2)
	st.settle(2)
}

// TestSourceRunRevert checks that a failure is forgotten once the files are
// back to the last applied state: the same mistake made again is logged
// again, not swallowed as "already logged".
func TestSourceRunRevert(t *testing.T) {
	st := startSource(t)
	good := sliceYAML("10.0.1.2", "10.0.2.2")

	replaceFile(t, st.slice, brokenSlice)
	st.waitErrors(1)

	// Reverted to exactly what is applied: nothing to apply.
	replaceFile(t, st.slice, good)
	st.settle(1)

	replaceFile(t, st.slice, brokenSlice)
	st.waitErrors(2)
	st.settle(2)
}

// TestSourceRunFiles checks that adding and removing a file is a change.
func TestSourceRunFiles(t *testing.T) {
	st := startSource(t)
	dir := filepath.Dir(st.slice)
	second := filepath.Join(dir, "slice2.yaml")

	replaceFile(t, second, strings.ReplaceAll(sliceYAML("10.0.4.2"), "service-test-x7k2p", "service-test-b9m4q"))
	st.waitApplied("10.0.1.2 10.0.2.2 10.0.4.2")

	if err := os.Remove(second); err != nil {
		t.Fatal(err)
	}
	st.waitApplied("10.0.1.2 10.0.2.2")

	// Hidden files are not manifests: writing one changes nothing.
	writeFiles(t, dir, map[string]string{".slice.yaml.swp": brokenSlice})
	st.settle(0)
}

// TestSourceFaults: each fault in the files is logged once, naming the file
// and the reason, and the last good state stays.
func TestSourceFaults(t *testing.T) {
	t.Run("file_became_directory", func(t *testing.T) {
		st := startSource(t)
		if err := os.Remove(st.slice); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(st.slice, 0o755); err != nil {
			t.Fatal(err)
		}
		st.waitErrors(1)
		st.settle(1)
		if e := st.log.errors()[0]; !strings.Contains(e, st.slice+" is a directory, not a manifest file") {
			t.Errorf("logged %q, want the path and that it is a directory", e)
		}
	})
	t.Run("huge_object", func(t *testing.T) {
		st := startSource(t)
		decodes := st.src.decodes.Load()
		big := filepath.Join(filepath.Dir(st.slice), "big.yaml")
		replaceFile(t, big, string(bytes.Repeat([]byte("x: [\n"), MaxObjectSize/5+1)))
		st.waitErrors(1)
		st.settle(1)
		if e := st.log.errors()[0]; !strings.Contains(e, big+": document 1: larger than 1 MiB, the largest object kubetun decodes") {
			t.Errorf("logged %q, want the file, the document and the limit", e)
		}
		// Read until the limit, once: polls that read it again (its
		// modification time is too recent to trust) only hash it.
		if n := st.src.decodes.Load() - decodes; n != 1 {
			t.Errorf("%d decodes of a new file over 40 polls, want 1", n)
		}
	})
	t.Run("broken_file_decoded_once", func(t *testing.T) {
		st := startSource(t)
		replaceFile(t, st.slice, brokenSlice)
		st.waitErrors(1)
		decodes := st.src.decodes.Load()
		st.settle(1) // 40 polls
		if n := st.src.decodes.Load(); n != decodes {
			t.Errorf("%d more decodes of an unchanged broken file over 40 polls, want none", n-decodes)
		}
		// Once its modification time is old enough to trust, the file is
		// not even read, except at each verifyEvery-th poll.
		backdate(t, filepath.Dir(st.slice))
		time.Sleep(20 * time.Millisecond) // a poll that trusts it
		reads, polls := st.src.reads.Load(), st.src.polls.Load()
		time.Sleep(40 * 5 * time.Millisecond) // 40 polls
		checkReads(t, st.src, reads, polls)
		if n := st.src.decodes.Load(); n != decodes {
			t.Errorf("%d more decodes of an unchanged broken file, want none", n-decodes)
		}
	})
	t.Run("one_file_changed", func(t *testing.T) {
		st := startSource(t)
		decodes := st.src.decodes.Load()
		replaceFile(t, st.slice, sliceYAML("10.0.1.2"))
		st.waitApplied("10.0.1.2")
		if n := st.src.decodes.Load() - decodes; n != 1 {
			t.Errorf("%d files decoded after one of two changed, want 1", n)
		}
	})
	t.Run("path_became_directory", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "seed.yaml")
		writeFiles(t, dir, map[string]string{"seed.yaml": seedYAML})
		log := new(logBuffer)
		src, _, err := NewSource(path, slog.New(slog.NewTextHandler(log, nil)))
		if err != nil {
			t.Fatalf("NewSource(%q): %v", path, err)
		}
		src.interval = 5 * time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			src.Run(ctx, func(objs Objects) {
				t.Errorf("applied %d services after the file became a directory, want nothing applied", len(objs.Services))
			})
		}()
		defer func() { cancel(); <-done }()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		writeFiles(t, path, map[string]string{"other.yaml": ""})
		deadline := time.Now().Add(wait)
		for len(log.errors()) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(40 * 5 * time.Millisecond)
		errs := log.errors()
		if len(errs) != 1 || !strings.Contains(errs[0], path+" was a manifest file and is now a directory") {
			t.Errorf("logged %q, want one error naming %s and that it is now a directory", errs, path)
		}
	})
}

// backdate sets the modification time of every file in dir an hour back, as
// if written long ago.
func backdate(tb testing.TB, dir string) {
	tb.Helper()
	old := time.Now().Add(-time.Hour)
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), old, old); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkPoll measures one poll of a directory of 100 unchanged manifest
// files (about 1 MB): "trusted" is the usual poll (a stat per file),
// "verify" the one in verifyEvery that reads and hashes every file, and
// "decode" what a poll cost before files were remembered (read and decode
// all, as Load does).
func BenchmarkPoll(b *testing.B) {
	dir := b.TempDir()
	files := make(map[string]string)
	for i := range 100 {
		var s strings.Builder
		for j := range 10 {
			name := fmt.Sprintf("svc-%d-%d", i, j)
			fmt.Fprintf(&s, "apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {clusterIP: 10.3.%d.%d, ports: [{port: 80, targetPort: 8080}]}\n---\n", name, 240+i/50, (i%50)*5+j%5)
			s.WriteString(strings.ReplaceAll(sliceYAML("10.0.1.2", "10.0.2.2", "10.0.3.2"), "service-test-x7k2p", name+"-x"))
			s.WriteString("---\n")
		}
		files[fmt.Sprintf("f%03d.yaml", i)] = s.String()
	}
	writeFiles(b, dir, files)
	backdate(b, dir)
	src, _, err := NewSource(dir, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	var size int64
	for name := range files {
		size += int64(len(files[name]))
	}
	b.Run("trusted", func(b *testing.B) {
		for b.Loop() {
			src.polls.Store(1)
			src.poll(time.Now())
		}
	})
	b.Run("verify", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			src.polls.Store(0)
			src.poll(time.Now())
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := Load(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// checkReads checks that since src had made polls polls and reads reads, it
// read its two unchanged files only at the verifying polls (and perhaps at
// the poll under way when the count was taken).
func checkReads(tb testing.TB, src *Source, reads, polls int64) {
	tb.Helper()
	n, p := src.reads.Load()-reads, src.polls.Load()-polls
	if max := 2 * (p/verifyEvery + 2); n > max {
		tb.Errorf("%d reads over %d polls of two unchanged files, want at most %d (the verifying polls)", n, p, max)
	}
	if p < 10 {
		tb.Errorf("only %d polls, want at least 10", p)
	}
}

// TestSourceReusesUnchangedObjects: when a file changes, the objects whose
// text did not change are taken from its last decode, the same pointers,
// and only the others are decoded again.
func TestSourceReusesUnchangedObjects(t *testing.T) {
	var snapshot bytes.Buffer
	if err := writeSnapshot(&snapshot, 3); err != nil {
		t.Fatal(err)
	}
	doc := func(name, ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + "}\nspec: {clusterIP: " + ip + ", ports: [{port: 80}]}\n"
	}
	jsonList := func(ip string) string {
		return `{"apiVersion": "v1", "items": [` +
			`{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "10.3.240.10"}},` +
			`{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"clusterIP": "` + ip + `"}}` +
			`], "kind": "List"}`
	}
	tests := []struct {
		name          string
		before, after string
		changed       []string // the objects decoded again
	}{
		{"kubectl List, one endpoint changed", snapshot.String(),
			strings.Replace(snapshot.String(), "    - 10.4.0.2\n", "    - 10.5.0.2\n", 1), []string{"svc-00001-x7k2p"}},
		{"documents, one changed", doc("a", "10.3.240.10") + "---\n" + doc("b", "10.3.240.11"),
			doc("a", "10.3.240.10") + "---\n" + doc("b", "10.3.240.12"), []string{"b"}},
		{"documents, one added", doc("a", "10.3.240.10"),
			doc("a", "10.3.240.10") + "---\n" + doc("b", "10.3.240.11"), []string{"b"}},
		{"JSON List, one changed", jsonList("10.3.240.11"), jsonList("10.3.240.12"), []string{"b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "services.yaml")
			replaceFile(t, path, tt.before)
			src, before, err := NewSource(path, discardLogger())
			if err != nil {
				t.Fatalf("NewSource: %v", err)
			}
			replaceFile(t, path, tt.after)
			_, files, err := src.poll(time.Now())
			if err != nil {
				t.Fatalf("poll: %v", err)
			}
			after := src.objects(files)
			old := make(map[string]any)
			for _, o := range before.Services {
				old[o.Name] = o
			}
			for _, o := range before.Slices {
				old[o.Name] = o
			}
			var changed []string
			check := func(name string, o any) {
				if old[name] != o {
					changed = append(changed, name)
				}
			}
			for _, o := range after.Services {
				check(o.Name, o)
			}
			for _, o := range after.Slices {
				check(o.Name, o)
			}
			if !slices.Equal(changed, tt.changed) {
				t.Errorf("objects decoded again: %v, want %v", changed, tt.changed)
			}
			fresh, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(after.Services, fresh.Services) || !reflect.DeepEqual(after.Slices, fresh.Slices) {
				t.Errorf("objects after the change differ from the file decoded afresh")
			}
		})
	}
}
