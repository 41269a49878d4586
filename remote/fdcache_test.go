package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openLocal opens a local-folder store (no retries) with a descriptor cache of max entries.
func openLocal(t *testing.T, max int) (*rcloneStore, string) {
	t.Helper()
	root := t.TempDir()
	st, err := openRclone(context.Background(), root, Options{NoSync: true}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if st.fds == nil {
		t.Fatal("a local store has no descriptor cache")
	}
	st.fds = newFDCache(max)
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	return st, root
}

// openUnder counts this process's descriptors open on files under root.
func openUnder(t *testing.T, root string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(p, root+"/") {
			n++
		}
	}
	return n
}

func mustGet(t *testing.T, st *rcloneStore, name string, off, n int64, want []byte) {
	t.Helper()
	got, err := st.GetRange(context.Background(), name, off, n)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("GetRange(%s, %d, %d) = %q, %v; want %q", name, off, n, got, err, want)
	}
}

func TestFDCacheSeesPutAndDelete(t *testing.T) {
	ctx := context.Background()
	st, _ := openLocal(t, 4)
	name := "c/ab/obj"
	if err := st.Put(ctx, name, []byte("the old and longer content")); err != nil {
		t.Fatal(err)
	}
	mustGet(t, st, name, 4, 3, []byte("old"))
	if st.fds.len() != 1 {
		t.Fatalf("cache holds %d descriptors after a read; want 1", st.fds.len())
	}
	if err := st.Put(ctx, name, []byte("new")); err != nil {
		t.Fatal(err)
	}
	mustGet(t, st, name, 0, -1, []byte("new"))
	if _, err := st.GetRange(ctx, name, 0, 10); !errors.Is(err, io.ErrUnexpectedEOF) || IsTransient(err) {
		t.Errorf("range past the new end: %v; want a permanent io.ErrUnexpectedEOF", err)
	}
	if err := st.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetRange(ctx, name, 0, 3); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRange after Delete = %v; want ErrNotFound", err)
	}
	if st.fds.len() != 0 {
		t.Errorf("cache holds %d descriptors after Delete; want 0", st.fds.len())
	}
}

// Changes made to the folder behind coffer's back read as they would without the cache.
func TestFDCacheSeesOutsideChanges(t *testing.T) {
	ctx := context.Background()
	st, root := openLocal(t, 4)
	path := func(n string) string { return filepath.Join(root, filepath.FromSlash(n)) }
	for _, n := range []string{"c/aa/gone", "c/aa/short", "c/aa/swapped"} {
		if err := st.Put(ctx, n, []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		mustGet(t, st, n, 0, 4, []byte("0123"))
	}
	if err := os.Remove(path("c/aa/gone")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetRange(ctx, "c/aa/gone", 0, 4); !errors.Is(err, ErrNotFound) {
		t.Errorf("read of an object deleted on disk = %v; want ErrNotFound", err)
	}
	if err := os.Truncate(path("c/aa/short"), 3); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetRange(ctx, "c/aa/short", 0, 4); !errors.Is(err, io.ErrUnexpectedEOF) || IsTransient(err) {
		t.Errorf("read of an object truncated on disk = %v; want a permanent io.ErrUnexpectedEOF", err)
	}
	tmp := path("c/aa/tmp")
	if err := os.WriteFile(tmp, []byte("abcdefghij"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path("c/aa/swapped")); err != nil {
		t.Fatal(err)
	}
	mustGet(t, st, "c/aa/swapped", 0, 4, []byte("abcd"))
}

// Readers across more names than the cache holds, with evictions under them, all read
// the right bytes; the cache stays within its bound.
func TestFDCacheConcurrentEviction(t *testing.T) {
	ctx := context.Background()
	const max, names, workers, reads = 8, 40, 8, 300
	st, root := openLocal(t, max)
	objs := make([][]byte, names)
	for i := range objs {
		objs[i] = bytes.Repeat([]byte{byte(i)}, 4096)
		copy(objs[i], fmt.Sprintf("object %d", i))
		if err := st.Put(ctx, fmt.Sprintf("c/%02d/o", i), objs[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range reads {
				i := r.IntN(names)
				off := int64(r.IntN(4000))
				got, err := st.GetRange(ctx, fmt.Sprintf("c/%02d/o", i), off, 96)
				if err != nil || !bytes.Equal(got, objs[i][off:off+96]) {
					errs <- fmt.Errorf("object %d at %d: %q, %v", i, off, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := st.fds.len(); n != max {
		t.Errorf("cache holds %d descriptors; want its bound %d", n, max)
	}
	if n := openUnder(t, root); n != max {
		t.Errorf("%d descriptors open under the remote after the readers finished; want %d", n, max)
	}
}

// An entry evicted or invalidated while a reader holds it stays open until released.
func TestFDCacheRefCounts(t *testing.T) {
	dir := t.TempDir()
	c := newFDCache(1)
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("data of "+n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a, _, err := c.acquire("a", filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := c.acquire("b", filepath.Join(dir, "b")) // evicts a
	if err != nil {
		t.Fatal(err)
	}
	c.invalidate("b")
	for _, e := range []*fdEntry{a, b} {
		buf := make([]byte, 6)
		if _, err := e.f.ReadAt(buf, 0); err != nil || string(buf) != "data o" {
			t.Errorf("%s: read while held after eviction/invalidation: %q, %v", e.name, buf, err)
		}
	}
	c.release(a)
	c.release(b)
	for _, e := range []*fdEntry{a, b} {
		if _, err := e.f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s: descriptor still open after its last release: %v", e.name, err)
		}
	}
	if c.len() != 0 {
		t.Errorf("cache holds %d entries; want 0", c.len())
	}
}

func TestFDCacheClosedByClose(t *testing.T) {
	ctx := context.Background()
	st, root := openLocal(t, 64)
	for i := range 20 {
		name := fmt.Sprintf("c/%02d/o", i)
		if err := st.Put(ctx, name, []byte("x")); err != nil {
			t.Fatal(err)
		}
		mustGet(t, st, name, 0, 1, []byte("x"))
	}
	if n := openUnder(t, root); n != 20 {
		t.Fatalf("%d descriptors open under the remote after 20 reads; want 20 (cached)", n)
	}
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := openUnder(t, root); n != 0 {
		t.Errorf("%d descriptors still open under the remote after Close", n)
	}
}

// BenchmarkLocalRead prices the parts of a local ranged read of one 16 KiB block, from
// the page cache (warm) or from disk (cold: the range is dropped from the page cache
// first, which the timing includes for every variant): through run (a goroutine, a
// channel and a cancellable context per call, so a hung folder can be abandoned),
// through GetRange (runLocal: the goroutine without the context), the pread path alone,
// and the pread path without the descriptor cache.
// Measured warm on 2 loaded cores: run 11.9 us, runLocal (what GetRange uses) 10.1,
// direct 8.2, direct without the cache 15.9.
//
//	go test -run '^$' -bench LocalRead ./remote/
func BenchmarkLocalRead(b *testing.B) {
	ctx := context.Background()
	root := b.TempDir()
	st, err := openRclone(ctx, root, Options{}.withDefaults())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close(ctx)
	const names = 64
	drop := make([]*os.File, names)
	for i := range names {
		name := fmt.Sprintf("c/%02d/o", i)
		if err := st.Put(ctx, name, remotetestBytes(4<<20)); err != nil {
			b.Fatal(err)
		}
		if drop[i], err = os.Open(filepath.Join(root, name)); err != nil {
			b.Fatal(err)
		}
		defer drop[i].Close()
	}
	for _, cold := range []bool{false, true} {
		read := func(b *testing.B, get func(name string, off int64) error) {
			b.SetBytes(16 << 10)
			for i := 0; b.Loop(); i++ {
				off := int64(i*7%256) * (16 << 10)
				if cold {
					_ = unix.Fadvise(int(drop[i%names].Fd()), off, 16<<10, unix.FADV_DONTNEED)
				}
				if err := get(fmt.Sprintf("c/%02d/o", i%names), off); err != nil {
					b.Fatal(err)
				}
			}
		}
		kind := map[bool]string{false: "warm", true: "cold"}[cold]
		b.Run(kind+"/run", func(b *testing.B) {
			read(b, func(name string, off int64) error {
				return st.run(ctx, func(context.Context) error { _, err := st.getRangeLocal(name, off, 16<<10); return err }, nil)
			})
		})
		b.Run(kind+"/GetRange", func(b *testing.B) {
			read(b, func(name string, off int64) error { _, err := st.GetRange(ctx, name, off, 16<<10); return err })
		})
		b.Run(kind+"/direct", func(b *testing.B) {
			read(b, func(name string, off int64) error { _, err := st.getRangeLocal(name, off, 16<<10); return err })
		})
		b.Run(kind+"/direct-nocache", func(b *testing.B) {
			fds := st.fds
			st.fds = newFDCache(0)
			defer func() { st.fds = fds }()
			read(b, func(name string, off int64) error { _, err := st.getRangeLocal(name, off, 16<<10); return err })
		})
	}
}

// A read of a hung local folder returns at the caller's deadline, and Close ends the
// wait of a caller without one. A FIFO stands in for the hung file: opening it blocks
// until a writer comes.
func TestLocalReadAbandonedWhenHung(t *testing.T) {
	st, root := openLocal(t, 4)
	st.inline = false // folders on local disks are read inline, with no way to abandon a read
	fifo := filepath.Join(root, "c", "ab", "hung")
	if err := os.MkdirAll(filepath.Dir(fifo), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	defer func() { // a writer lets the blocked opens return; none left: ENXIO
		for range 50 {
			f, err := os.OpenFile(fifo, os.O_WRONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				return
			}
			_ = f.Close()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	read := func(ctx context.Context) chan error {
		res := make(chan error, 1)
		go func() { _, err := st.GetRange(ctx, "c/ab/hung", 0, 10); res <- err }()
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	select {
	case err := <-read(ctx):
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("read of a hung file = %v; want context.DeadlineExceeded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read of a hung file still blocked 5 s after its 200 ms deadline")
	}
	res := read(context.Background())
	time.Sleep(100 * time.Millisecond)
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer ccancel()
	if err := st.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with reads blocked = %v; want it to give up waiting", err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("read of a hung file during Close = %v; want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Close did not end the wait of a read of a hung file")
	}
}

func remotetestBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(b)
	return b
}

// Reads of a folder on a local disk run inline; any other folder (NFS, FUSE, ...) keeps
// the goroutine that can abandon a hung read.
func TestInlineReadsOnlyOnLocalDisks(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs(t.TempDir(), &st); err != nil {
		t.Fatal(err)
	}
	if want := st.Type == unix.EXT4_SUPER_MAGIC || st.Type == unix.TMPFS_MAGIC; want && !onLocalDisk(t.TempDir()) {
		t.Errorf("the test folder (file system type %#x) is on a local disk; onLocalDisk says no", st.Type)
	}
	if onLocalDisk("/proc") || onLocalDisk("/sys") || onLocalDisk("/nonexistent-folder") {
		t.Error("onLocalDisk says yes for /proc, /sys or a missing folder")
	}
}
