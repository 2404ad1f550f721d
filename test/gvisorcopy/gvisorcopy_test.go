package gvisorcopy

import (
	"path/filepath"
	"testing"

	"github.com/kubetun/kubetun/test/prereq"
)

// TestCopyIsUpstreamWithPatches fails when third_party/gvisor is not the
// pinned upstream module with exactly the patches applied: a patch dropped,
// changed or failing to apply after a version bump, or an edit made to the
// copy without a patch.
func TestCopyIsUpstreamWithPatches(t *testing.T) {
	prereq.Commands(t, "go", "patch", "diff")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	patches, err := Verify(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s is %s with %d patches", CopyDir, Module, len(patches))
}
