// Package prereq stops a test whose prerequisite is missing: root, a
// command, a built binary, an unpacked package. With CI set (to anything
// but empty) the test fails, naming what is missing, so that a CI run
// cannot pass without having run every test; otherwise it skips, saying
// what is missing and how to get it.
package prereq

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// CI reports whether the environment variable CI is set, as CI services
// set it: a missing prerequisite then fails the test.
func CI() bool { return os.Getenv("CI") != "" }

// Require stops t when err says that the prerequisite what is missing:
// t.Fatalf with CI set, t.Skipf otherwise. what names the prerequisite and
// how to get it, e.g. "systemd-resolved unpacked (make deps)". It does
// nothing when err is nil.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if CI() {
		t.Fatalf("missing prerequisite: %s: %v (CI is set: failing, not skipping)", what, err)
	}
	t.Skipf("missing prerequisite: %s: %v (with CI set, this fails)", what, err)
}

// Root requires root; why says what for, e.g. "network namespaces".
func Root(t testing.TB, why string) {
	t.Helper()
	var err error
	if uid := os.Geteuid(); uid != 0 {
		err = fmt.Errorf("running as uid %d", uid)
	}
	Require(t, "root ("+why+")", err)
}

// Commands requires every command named on the PATH, and names all that
// are missing at once.
func Commands(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		Require(t, "commands "+strings.Join(missing, ", ")+" (make deps installs them)", errNotInPath)
	}
}

var errNotInPath = errors.New("not found in $PATH")
