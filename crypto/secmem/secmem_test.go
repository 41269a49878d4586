package secmem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// smaps returns the /proc/self/smaps entry of the mapping that starts at addr.
func smaps(t *testing.T, addr uintptr) (locked string, flags string) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatalf("open smaps: %v", err)
	}
	defer f.Close()
	want := fmt.Sprintf("%x-", addr)
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, want) { // the mapping's header line
			in = true
			continue
		}
		if !in {
			continue
		}
		if v, ok := strings.CutPrefix(line, "Locked:"); ok {
			locked = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok {
			flags = strings.TrimSpace(v)
			return locked, flags
		}
	}
	t.Fatalf("mapping at %#x not found in /proc/self/smaps", addr)
	return "", ""
}

func hasFlag(flags, f string) bool {
	for _, x := range strings.Fields(flags) {
		if x == f {
			return true
		}
	}
	return false
}

func TestAllocIsLockedAndNotDumpable(t *testing.T) {
	b, err := Alloc(100)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Destroy()
	p := b.Bytes()
	if len(p) != 100 || cap(p) != 100 || b.Len() != 100 {
		t.Fatalf("Bytes: len %d cap %d Len %d, want 100", len(p), cap(p), b.Len())
	}
	if !bytes.Equal(p, make([]byte, 100)) {
		t.Fatal("fresh buffer is not zeroed")
	}
	copy(p, "key material")
	locked, flags := smaps(t, uintptr(unsafe.Pointer(&p[0])))
	if !hasFlag(flags, "dd") {
		t.Errorf("VmFlags %q: no dd (MADV_DONTDUMP)", flags)
	}
	if !b.Locked() || !Locked() {
		t.Fatalf("mlock failed as root (Locked=%v, package Locked=%v)", b.Locked(), Locked())
	}
	if !hasFlag(flags, "lo") || locked == "0 kB" {
		t.Errorf("mapping not locked: Locked %q VmFlags %q", locked, flags)
	}
}

func TestDestroyZeroesBeforeUnmap(t *testing.T) {
	var seen []byte
	beforeUnmap = func(mem []byte) { seen = bytes.Clone(mem) }
	defer func() { beforeUnmap = nil }()

	b, err := Alloc(5000) // spans two pages
	if err != nil {
		t.Fatal(err)
	}
	p := b.Bytes()
	for i := range p {
		p[i] = 0xA5
	}
	b.Destroy()
	if len(seen) != 2*os.Getpagesize() {
		t.Fatalf("hook saw %d bytes, want the whole %d-byte mapping", len(seen), 2*os.Getpagesize())
	}
	if i := bytes.IndexFunc(seen, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Fatalf("byte %d not zeroed before unmap", i)
	}
	if b.Bytes() != nil {
		t.Fatal("Bytes() after Destroy is not nil")
	}
	// The mapping is gone: madvise on its first page must fail with ENOMEM.
	if err := unix.Madvise(unsafe.Slice(&p[:1][0], os.Getpagesize()), unix.MADV_NORMAL); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("madvise on the freed mapping: %v, want ENOMEM (still mapped)", err)
	}
}

func TestDestroyTwiceAndConcurrently(t *testing.T) {
	calls := 0
	beforeUnmap = func([]byte) { calls++ }
	defer func() { beforeUnmap = nil }()
	b, err := Alloc(32)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(b.Destroy)
	}
	wg.Wait()
	b.Destroy()
	if calls != 1 {
		t.Fatalf("mapping released %d times, want 1", calls)
	}
}

func TestMlockFailureFallsBack(t *testing.T) {
	defer func() { mlock = unix.Mlock; unlocked.Store(false) }()
	mlock = func([]byte) error { return unix.EPERM }
	b, err := Alloc(64)
	if err != nil {
		t.Fatalf("Alloc must not fail when mlock fails: %v", err)
	}
	defer b.Destroy()
	if b.Locked() || Locked() {
		t.Fatalf("Locked() = %v/%v after mlock failure, want false", b.Locked(), Locked())
	}
	p := b.Bytes()
	copy(p, "still usable")
	if string(p[:12]) != "still usable" {
		t.Fatal("fallback buffer not usable")
	}
	_, flags := smaps(t, uintptr(unsafe.Pointer(&p[0])))
	if !hasFlag(flags, "dd") || hasFlag(flags, "lo") {
		t.Errorf("fallback mapping: VmFlags %q, want dd and not lo", flags)
	}
}

func TestAllocRejectsBadSize(t *testing.T) {
	for _, n := range []int{0, -1} {
		if _, err := Alloc(n); err == nil {
			t.Errorf("Alloc(%d) succeeded", n)
		}
	}
}

func TestDroppedBufIsWipedByCleanup(t *testing.T) {
	done := make(chan []byte, 1)
	beforeUnmap = func(mem []byte) { done <- bytes.Clone(mem) }
	defer func() { beforeUnmap = nil }()
	func() {
		b, err := Alloc(16)
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Bytes(), "sixteen byte key")
	}()
	for range 20 {
		runtime.GC()
		select {
		case mem := <-done:
			if !bytes.Equal(mem, make([]byte, len(mem))) {
				t.Fatal("cleanup did not zero the mapping")
			}
			return
		default:
		}
	}
	t.Fatal("a dropped Buf was never released by its cleanup")
}

func TestZero(t *testing.T) {
	b := []byte("secret bytes")
	Zero(b)
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Fatal("Zero left bytes")
	}
	Zero(nil) // must not panic
}
