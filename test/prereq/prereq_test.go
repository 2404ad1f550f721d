package prereq

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB that records how Require stopped it. Fatalf and
// Skipf end the goroutine, as the real ones do.
type recorder struct {
	testing.TB
	how, msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.how, r.msg = "fail", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.how, r.msg = "skip", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// stop runs f on a recorder in a goroutine of its own and returns how f
// stopped it ("" if it did not) and the message.
func stop(f func(testing.TB)) (how, msg string) {
	r := &recorder{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r.how, r.msg
}

// TestRequire: a missing prerequisite fails the test with CI set and skips
// it otherwise, naming it either way; a present one does nothing.
func TestRequire(t *testing.T) {
	missing := func(tb testing.TB) { Require(tb, "the widget (make widget)", fmt.Errorf("no widget")) }
	present := func(tb testing.TB) { Require(tb, "the widget", nil) }
	for _, tc := range []struct {
		ci      string
		f       func(testing.TB)
		wantHow string
	}{
		{"", missing, "skip"},
		{"true", missing, "fail"},
		{"", present, ""},
		{"true", present, ""},
	} {
		t.Setenv("CI", tc.ci)
		how, msg := stop(tc.f)
		if how != tc.wantHow {
			t.Errorf("CI=%q: stopped with %q (%q), want %q", tc.ci, how, msg, tc.wantHow)
		}
		if how != "" && !strings.Contains(msg, "the widget (make widget): no widget") {
			t.Errorf("CI=%q: message %q does not name the prerequisite and the error", tc.ci, msg)
		}
	}
}

// TestCommands names every missing command at once.
func TestCommands(t *testing.T) {
	t.Setenv("CI", "true")
	t.Setenv("PATH", t.TempDir())
	how, msg := stop(func(tb testing.TB) { Commands(tb, "kubetun-no-such-a", "kubetun-no-such-b") })
	if how != "fail" || !strings.Contains(msg, "commands kubetun-no-such-a, kubetun-no-such-b") {
		t.Errorf("Commands with neither on the PATH: %q (%q), want a failure naming both", how, msg)
	}
}
