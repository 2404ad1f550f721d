package main

import (
	"bytes"
	"strings"
	"testing"
)

// stream is `go test -json` of a package with a passing, a skipped, a
// failing test and a skipped subtest, as go 1.26 prints it (Time left out).
const stream = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestPass"}
{"Action":"output","Package":"p","Test":"TestPass","Output":"=== RUN   TestPass\n"}
{"Action":"output","Package":"p","Test":"TestPass","Output":"    a_test.go:3: chatter\n"}
{"Action":"output","Package":"p","Test":"TestPass","Output":"--- PASS: TestPass (0.00s)\n"}
{"Action":"pass","Package":"p","Test":"TestPass","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestSkip"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"=== RUN   TestSkip\n"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"    a_test.go:4: before\n"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"    a_test.go:4: no widget: make widget\n"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"--- SKIP: TestSkip (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestSkip","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestFail"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"=== RUN   TestFail\n"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"    a_test.go:5: broken\n"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"--- FAIL: TestFail (0.00s)\n"}
{"Action":"fail","Package":"p","Test":"TestFail","Elapsed":0}
{"Action":"run","Package":"p","Test":"TestSub"}
{"Action":"output","Package":"p","Test":"TestSub","Output":"=== RUN   TestSub\n"}
{"Action":"run","Package":"p","Test":"TestSub/s"}
{"Action":"output","Package":"p","Test":"TestSub/s","Output":"=== RUN   TestSub/s\n"}
{"Action":"output","Package":"p","Test":"TestSub/s","Output":"    a_test.go:6: sub skipped\n"}
{"Action":"output","Package":"p","Test":"TestSub/s","Output":"--- SKIP: TestSub/s (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestSub/s","Elapsed":0}
{"Action":"output","Package":"p","Test":"TestSub","Output":"--- PASS: TestSub (0.00s)\n"}
{"Action":"pass","Package":"p","Test":"TestSub","Elapsed":0}
{"Action":"output","Package":"p","Output":"FAIL\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.016s\n"}
{"Action":"fail","Package":"p","Elapsed":0.017}
not json: printed as it is
`

// TestRenderer: without -v only the failed test's output and the
// package's lines are printed; with -v everything; either way the skipped
// tests are listed with their reasons.
func TestRenderer(t *testing.T) {
	const skips = "p TestSkip: a_test.go:4: no widget: make widget\np TestSub/s: a_test.go:6: sub skipped\n"
	for _, tc := range []struct {
		verbose bool
		want    string
	}{
		{false, "    a_test.go:5: broken\n--- FAIL: TestFail (0.00s)\nFAIL\nFAIL\tp\t0.016s\nnot json: printed as it is\n"},
		{true, "=== RUN   TestPass\n    a_test.go:3: chatter\n--- PASS: TestPass (0.00s)\n=== RUN   TestSkip\n"},
	} {
		var out bytes.Buffer
		r := newRenderer(&out, tc.verbose)
		if err := r.read(strings.NewReader(stream)); err != nil {
			t.Fatal(err)
		}
		// With -v, the whole stream's text; without, exactly tc.want.
		if got := out.String(); !strings.HasPrefix(got, tc.want) || !tc.verbose && got != tc.want {
			t.Errorf("verbose %v: printed\n%s\nwant\n%s", tc.verbose, got, tc.want)
		}
		if got := string(r.skipList()); got != skips {
			t.Errorf("verbose %v: skip list\n%s\nwant\n%s", tc.verbose, got, skips)
		}
		out.Reset()
		r.summary()
		if got, want := out.String(), "gotest: 2 skipped:\n  "+strings.ReplaceAll(strings.TrimSuffix(skips, "\n"), "\n", "\n  ")+"\n"; got != want {
			t.Errorf("verbose %v: summary\n%s\nwant\n%s", tc.verbose, got, want)
		}
	}
}
