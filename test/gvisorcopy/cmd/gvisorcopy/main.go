// Command gvisorcopy checks, makes anew or diffs third_party/gvisor, the
// trimmed and patched copy of gVisor kubetun builds with (package
// gvisorcopy says what it must be). Run it from the repository's root.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kubetun/kubetun/test/gvisorcopy"
)

func main() {
	write := flag.Bool("write", false, "make "+gvisorcopy.CopyDir+" anew from upstream and "+gvisorcopy.PatchesDir)
	diff := flag.Bool("diff", false, "print what "+gvisorcopy.CopyDir+" has beyond upstream and the patches: the next patch")
	flag.Parse()
	var err error
	switch {
	case *write:
		if err = gvisorcopy.Write("."); err == nil {
			var patches []string
			if patches, err = gvisorcopy.Verify("."); err == nil {
				fmt.Fprintf(os.Stderr, "gvisorcopy: wrote %s with %d patches\n", gvisorcopy.CopyDir, len(patches))
			}
		}
	case *diff:
		var out []byte
		if out, err = gvisorcopy.Diff("."); err == nil {
			_, err = os.Stdout.Write(out)
		}
	default:
		var patches []string
		if patches, err = gvisorcopy.Verify("."); err == nil {
			for i := range patches {
				patches[i] = filepath.Base(patches[i])
			}
			fmt.Fprintf(os.Stderr, "gvisorcopy: %s is upstream with %d patches %v\n", gvisorcopy.CopyDir, len(patches), patches)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gvisorcopy:", err)
		os.Exit(1)
	}
}
