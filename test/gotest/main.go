// Command gotest runs `go test -json` with the arguments after "--" and
// prints what `go test` itself would print, then the tests that were
// skipped, each with its reason: a run that passed says what it did not
// run. `make unit` and `make e2e` run the tests through it.
//
//	gotest [-v] [-skips FILE] -- [go test flags] [packages]
//
// Without -v, a test's output is printed only if it failed, as `go test`
// without -v does; with -v, all of it as it comes. -skips also writes the
// skipped tests to FILE, one "package test: reason" a line, which `make
// test` sums up at its end. The exit status is go test's.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	verbose := flag.Bool("v", false, "print every test's output as it comes, not only a failed test's")
	skipsFile := flag.String("skips", "", "also write the skipped tests to this `file`, one a line")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: gotest [-v] [-skips FILE] -- [go test flags] [packages]")
		flag.PrintDefaults()
	}
	flag.Parse()

	cmd := exec.Command("go", append([]string{"test", "-json"}, flag.Args()...)...)
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fatal(err)
	}
	// An interrupt from the terminal reaches go test and its test binaries
	// too (one process group): gotest keeps reading until they end, and
	// still prints what was skipped. A SIGTERM for gotest alone is passed on.
	signal.Ignore(os.Interrupt)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fatal(err)
	}
	go func() {
		for sig := range term {
			cmd.Process.Signal(sig)
		}
	}()

	r := newRenderer(os.Stdout, *verbose)
	readErr := r.read(out)
	waitErr := cmd.Wait()
	r.summary()
	if *skipsFile != "" {
		if err := os.WriteFile(*skipsFile, r.skipList(), 0o644); err != nil {
			fatal(err)
		}
	}
	var exit *exec.ExitError
	switch {
	case errors.As(waitErr, &exit):
		os.Exit(exit.ExitCode())
	case waitErr != nil:
		fatal(waitErr)
	case readErr != nil:
		fatal(readErr)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "gotest:", err)
	os.Exit(1)
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// skip is a test that was skipped, and why.
type skip struct {
	pkg, test, reason string
}

// renderer turns go test's JSON events back into its text output.
type renderer struct {
	w       io.Writer
	verbose bool
	held    map[[2]string][]string // package and test -> the test's output so far
	skips   []skip
}

func newRenderer(w io.Writer, verbose bool) *renderer {
	return &renderer{w: w, verbose: verbose, held: make(map[[2]string][]string)}
}

// read renders every event of r until its end. A line that is not an
// event (go test prints some of its own errors as text) is printed as it is.
func (r *renderer) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if !bytes.HasPrefix(line, []byte("{")) || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintf(r.w, "%s\n", line)
			continue
		}
		r.event(ev)
	}
	return sc.Err()
}

func (r *renderer) event(ev event) {
	key := [2]string{ev.Package, ev.Test}
	switch {
	case ev.Action == "build-output":
		io.WriteString(r.w, ev.Output)
	case ev.Test == "":
		// The package's own lines: "ok", "FAIL", a panic outside a test.
		// Without -v, go test prints no "PASS" of a package that passed.
		if ev.Action == "output" && (r.verbose || ev.Output != "PASS\n") {
			io.WriteString(r.w, ev.Output)
		}
	case ev.Action == "output":
		// Held in either mode until the test ends: a failed test's is
		// printed then, a skipped test's last line is the reason.
		r.held[key] = append(r.held[key], ev.Output)
		if r.verbose {
			io.WriteString(r.w, ev.Output)
		}
	case ev.Action == "skip":
		r.skips = append(r.skips, skip{ev.Package, ev.Test, reason(r.held[key])})
		delete(r.held, key)
	case ev.Action == "fail":
		if !r.verbose {
			for _, l := range r.held[key] {
				if !isFraming(l) {
					io.WriteString(r.w, l)
				}
			}
		}
		delete(r.held, key)
	case ev.Action == "pass":
		delete(r.held, key)
	}
}

// isFraming reports whether l is one of the lines go test -v puts around
// a test's own output ("=== RUN   TestX" and the like).
func isFraming(l string) bool {
	return strings.HasPrefix(l, "=== ")
}

// reason is a skipped test's last line of output before its "--- SKIP"
// line: t.Skip's message.
func reason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || isFraming(lines[i]) || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		return l
	}
	return "(no reason given)"
}

// summary prints the skipped tests, or that none was.
func (r *renderer) summary() {
	if len(r.skips) == 0 {
		fmt.Fprintln(r.w, "gotest: no test skipped")
		return
	}
	fmt.Fprintf(r.w, "gotest: %d skipped:\n", len(r.skips))
	for _, s := range r.skips {
		fmt.Fprintf(r.w, "  %s %s: %s\n", s.pkg, s.test, s.reason)
	}
}

// skipList is the skipped tests, one "package test: reason" a line.
func (r *renderer) skipList() []byte {
	var b bytes.Buffer
	for _, s := range r.skips {
		fmt.Fprintf(&b, "%s %s: %s\n", s.pkg, s.test, s.reason)
	}
	return b.Bytes()
}
