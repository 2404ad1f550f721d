package connection

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTUNName(t *testing.T) {
	for _, tc := range []struct {
		context string
		taken   []string
		want    string
	}{
		{context: "kind-kind", want: "kt-kind-kind"},
		{context: "staging", want: "kt-staging"},
		{context: "Prod_EU", want: "kt-prod-eu"},
		{context: "", want: "kt-default"},
		{context: "kind-kind", taken: []string{"kt-kind-kind"}, want: "kt-kind-kind-2"},
		{context: "kind-kind", taken: []string{"kt-kind-kind", "kt-kind-kind-2"}, want: "kt-kind-kind-3"},
		// Too long: the start and 4 hex digits of the context's hash.
		{context: "gke_project_europe-west1_a", want: "kt-gke-pro-" + hash4("gke_project_europe-west1_a")},
		{context: "gke_project_europe-west1_b", want: "kt-gke-pro-" + hash4("gke_project_europe-west1_b")},
		{context: "arn:aws:eks:us-east-1:123456789012:cluster/dev", want: "kt-arn-aws-" + hash4("arn:aws:eks:us-east-1:123456789012:cluster/dev")},
	} {
		taken := func(n string) bool {
			for _, x := range tc.taken {
				if x == n {
					return true
				}
			}
			return false
		}
		got, err := TUNName(tc.context, taken)
		if err != nil || got != tc.want {
			t.Errorf("TUNName(%q, %v) = %q, %v; want %q", tc.context, tc.taken, got, err, tc.want)
		}
		if len(got) > maxIfName {
			t.Errorf("TUNName(%q) = %q: longer than %d", tc.context, got, maxIfName)
		}
	}
	if a, b := must(TUNName("gke_project_europe-west1_a", nil)), must(TUNName("gke_project_europe-west1_b", nil)); a == b {
		t.Errorf("two long contexts got one name %q", a)
	}
	if _, err := TUNName("x", func(string) bool { return true }); err == nil {
		t.Error("TUNName with every name taken: want an error")
	}
}

func hash4(s string) string {
	n := fit(strings.Repeat("x", 20), s, "")
	return n[len(n)-4:]
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

func TestDomain(t *testing.T) {
	for _, tc := range []struct{ context, want string }{
		{"kind-kind", "kind-kind"},
		{"Staging", "staging"},
		{"gke_proj_europe-west1_c", "gke-proj-europe-west1-c"},
		{"arn:aws:eks:us-east-1:1:cluster/dev", "arn-aws-eks-us-east-1-1-cluster-dev"},
		{"..", "default"},
		{strings.Repeat("a", 70), strings.Repeat("a", 63)},
	} {
		if got := Domain(tc.context); got != tc.want {
			t.Errorf("Domain(%q) = %q, want %q", tc.context, got, tc.want)
		}
	}
}

func TestRegisterList(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	now := time.Now().Round(0)
	a := Record{PID: os.Getpid(), Context: "kind-a", TUN: "kt-kind-a", StatusAddr: "127.0.0.1:40001", Domains: []string{"cluster.local", "kind-a"}, Started: now}
	b := Record{PID: os.Getpid(), Context: "kind-b", TUN: "kt-kind-b", StatusAddr: "127.0.0.1:40002", Domains: []string{"kind-b"}, Started: now.Add(time.Second)}
	removeA, err := Register(dir, a)
	if err != nil {
		t.Fatal(err)
	}
	removeB, err := Register(other, b)
	if err != nil {
		t.Fatal(err)
	}

	// A record of a process that is gone: a connection killed with -9.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skipf("no process to outlive: %v", err)
	}
	stale := Record{PID: dead.Process.Pid, Context: "gone", TUN: "kt-gone", Started: now.Add(-time.Hour)}
	if _, err := Register(dir, stale); err != nil {
		t.Fatal(err)
	}

	got, err := List(dir, other, filepath.Join(dir, "absent"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].TUN != a.TUN || got[1].TUN != b.TUN || got[0].StatusAddr != a.StatusAddr || len(got[0].Domains) != 2 {
		t.Fatalf("List = %+v, want kt-kind-a then kt-kind-b", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "kt-gone.json")); !os.IsNotExist(err) {
		t.Errorf("stale record left behind: %v", err)
	}

	// One TUN, one connection: another live process's record is refused.
	if _, err := Register(dir, Record{PID: os.Getppid(), Context: "x", TUN: a.TUN}); err == nil {
		t.Errorf("Register of a TUN a live process holds: want an error")
	}

	if err := removeA(); err != nil {
		t.Fatal(err)
	}
	if err := removeB(); err != nil {
		t.Fatal(err)
	}
	if got, _ := List(dir, other); len(got) != 0 {
		t.Errorf("List after remove = %+v, want none", got)
	}
	if _, err := Register(dir, Record{PID: 1, TUN: "a/b"}); err == nil {
		t.Error("Register of TUN a/b: want an error")
	}
}

func TestDirs(t *testing.T) {
	t.Setenv("KUBETUN_RUNTIME_DIR", "/tmp/kt-test-dirs")
	if got := Dirs(); len(got) != 1 || got[0] != "/tmp/kt-test-dirs" {
		t.Errorf("Dirs with KUBETUN_RUNTIME_DIR = %v", got)
	}
	t.Setenv("KUBETUN_RUNTIME_DIR", "")
	got := Dirs()
	if os.Geteuid() == 0 && (len(got) != 1 || got[0] != "/run/kubetun/connect") {
		t.Errorf("Dirs as root = %v, want /run/kubetun/connect", got)
	}
	if os.Geteuid() != 0 && (len(got) != 2 || got[1] != "/run/kubetun/connect") {
		t.Errorf("Dirs as a user = %v, want the user's, then root's", got)
	}
}

// TestLock checks that a second Lock of one directory waits for the first
// to be released.
func TestLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		u, err := Lock(dir)
		if err != nil {
			t.Error(err)
		} else {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second Lock went through while the first was held")
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("a second Lock still waits after the first was released")
	}
}
