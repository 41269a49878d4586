package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// markedData returns n random bytes with a fresh content marker every 512 bytes, so that a
// leak of any part of a file is caught by the leak scans.
func markedData(n int) []byte {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	for off := 0; off+len(markerPrefix)+16 <= n; off += 512 {
		copy(b[off:], marker())
	}
	return b
}

// markedText is a line of text holding a marker, for text files (git, sqlite rows).
func markedText(what string) string { return fmt.Sprintf("%s %s\n", what, marker()) }

// errIs checks that err is the errno want (0: success).
func errIs(t testing.TB, what string, err error, want unix.Errno) {
	t.Helper()
	wantName := "OK"
	if want != 0 {
		wantName = unix.ErrnoName(want)
	}
	if got := errnoName(err); got != wantName {
		t.Errorf("%s: got %s, want %s", what, got, wantName)
	}
}

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func mustWrite(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	must(t, "write "+p, os.WriteFile(p, data, mode))
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, "read "+p, err)
	return b
}

// sameBytes fails with the first differing offset instead of dumping megabytes.
func sameBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Errorf("%s: content differs: got %d bytes, want %d; first difference at offset %d", what, len(got), len(want), i)
}

func lstat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, "lstat "+p, unix.Lstat(p, &st))
	return st
}

func preadN(t testing.TB, fd int, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	got, err := unix.Pread(fd, b, off)
	must(t, fmt.Sprintf("pread %d@%d", n, off), err)
	return b[:got]
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
