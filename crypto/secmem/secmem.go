// Package secmem holds key bytes outside the Go heap: in an anonymous mmap
// that is mlock'ed (never swapped to disk) and marked MADV_DONTDUMP (left out
// of core dumps), zeroed and unmapped on Destroy. The garbage collector never
// moves or copies it, so clearing it really erases the key.
package secmem

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Syscalls behind variables so tests can inject failures (RLIMIT_MEMLOCK).
var (
	mlock   = unix.Mlock
	madvise = unix.Madvise
	// beforeUnmap, when set by a test, sees the mapping after it was zeroed
	// and just before it is unmapped.
	beforeUnmap func(mem []byte)
)

var unlocked atomic.Bool

// Locked reports whether every buffer allocated so far got locked memory.
// It turns false for good the first time mlock fails (RLIMIT_MEMLOCK too
// low without CAP_IPC_LOCK); the daemon should warn the operator then.
func Locked() bool { return !unlocked.Load() }

// Buf is a fixed-size buffer of locked, non-dumpable memory.
type Buf struct {
	mu      sync.Mutex
	mem     []byte // the whole mapping (page-rounded)
	n       int
	locked  bool
	cleanup runtime.Cleanup
}

// Alloc returns a zeroed buffer of n bytes (n > 0). If the memory cannot be
// locked, it falls back to unlocked memory and Locked() reports false; it
// fails only if the mapping itself fails.
func Alloc(n int) (*Buf, error) {
	if n <= 0 {
		return nil, fmt.Errorf("secmem: alloc %d bytes: size must be positive", n)
	}
	page := os.Getpagesize()
	size := (n + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("secmem: alloc %d bytes: mmap: %w", n, err)
	}
	// Not dumpable and not inherited by a child forked from the daemon.
	if err := madvise(mem, unix.MADV_DONTDUMP); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("secmem: alloc %d bytes: madvise(MADV_DONTDUMP): %w", n, err)
	}
	_ = madvise(mem, unix.MADV_DONTFORK) // best effort: a fork would copy the keys
	b := &Buf{mem: mem, n: n}
	if err := mlock(mem); err == nil {
		b.locked = true
	} else {
		unlocked.Store(true)
	}
	// A Buf dropped without Destroy is still wiped when collected.
	b.cleanup = runtime.AddCleanup(b, release, mem)
	return b, nil
}

// Bytes returns the buffer (n bytes), or nil after Destroy. Do not keep the
// slice past Destroy: the memory is unmapped and touching it faults.
func (b *Buf) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return nil
	}
	return b.mem[:b.n:b.n]
}

// Len is the usable size given to Alloc.
func (b *Buf) Len() int { return b.n }

// Locked reports whether this buffer's memory is mlock'ed.
func (b *Buf) Locked() bool { return b.locked }

// Destroy zeroes the whole mapping, unlocks and unmaps it. It is idempotent
// and safe to call from several goroutines.
func (b *Buf) Destroy() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return
	}
	b.cleanup.Stop()
	release(b.mem)
	b.mem = nil
}

func release(mem []byte) {
	Zero(mem)
	if beforeUnmap != nil {
		beforeUnmap(mem)
	}
	_ = unix.Munlock(mem)
	_ = unix.Munmap(mem)
}

// Zero overwrites b with zeros. clear() compiles to a memclr the compiler
// does not elide; KeepAlive keeps b reachable until it has run.
func Zero(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}
