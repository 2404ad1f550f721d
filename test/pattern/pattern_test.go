package pattern

import (
	"bytes"
	"io"
	"testing"
)

func TestReaderDeterministicAndPrefix(t *testing.T) {
	long, err := io.ReadAll(Reader(100_000))
	if err != nil || len(long) != 100_000 {
		t.Fatalf("ReadAll(Reader(100000)) = %d bytes, %v", len(long), err)
	}
	again, _ := io.ReadAll(Reader(100_000))
	if !bytes.Equal(long, again) {
		t.Errorf("two Reader(100000) streams differ")
	}
	short, _ := io.ReadAll(Reader(777))
	if !bytes.Equal(short, long[:777]) {
		t.Errorf("Reader(777) is not the first 777 bytes of Reader(100000)")
	}
	if bytes.Count(long, long[:8]) != 1 {
		t.Errorf("pattern repeats its first 8 bytes; it should look random")
	}
}

func TestSHA256(t *testing.T) {
	// The SHA-256 of no bytes, as sha256sum prints it.
	if got, want := SHA256(0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; got != want {
		t.Errorf("SHA256(0) = %s, want %s", got, want)
	}
}
