// Package pattern is the deterministic pseudo-random byte stream that podserver's
// bytes port serves. A test generates the same stream locally and compares hashes,
// so a multi-megabyte download is checked without storing a reference copy.
package pattern

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
)

// seed fixes the stream; ChaCha8's output for a given seed is stable across Go
// releases (math/rand/v2 documents it), so podserver and the test agree.
var seed = [32]byte([]byte("kubetun test pattern, seed no. 1"))

// Reader returns a reader of the first n bytes of the pattern.
func Reader(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// SHA256 returns the hex SHA-256 of the first n bytes of the pattern, in the
// form sha256sum prints.
func SHA256(n int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, Reader(n)); err != nil {
		panic("pattern: hashing an in-memory stream failed: " + err.Error())
	}
	return hex.EncodeToString(h.Sum(nil))
}
