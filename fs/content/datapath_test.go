package content

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"coffer/crypto/format"
	"coffer/remote"
	"coffer/remote/faulty"
)

// TestLazyRead: 4 KiB from the middle of a large file costs one ranged GET
// of one sealed block; holes cost nothing; sequential reads prefetch ahead
// in few, large GETs.
func TestLazyRead(t *testing.T) {
	for _, kind := range []string{"local", "s3"} {
		t.Run(kind, func(t *testing.T) {
			const ra = 1 << 20
			e := newEnv(t, kind, format.DefaultLayout, Options{Readahead: ra})
			ino := e.createFile("big")
			f := e.openFile(ino)
			const dataOff = 24 << 20
			data := pattern(7, dataOff, 12<<20) // chunks 6, 7 and 8
			e.write(f, dataOff, data)
			if err := f.Allocate(e.ctx, 0, 1<<30, 0); err != nil {
				t.Fatal(err)
			}
			e.sync(f)
			e.release(f)
			e.reopen() // cold cache
			f = e.openFile(ino)
			defer e.release(f)
			if f.Size() != 1<<30 {
				t.Fatalf("size %d", f.Size())
			}

			e.count.reset()
			off := int64(dataOff + 5<<20 + 3*4096)
			mustEqual(t, e.read(f, off, 4096), data[off-dataOff:][:4096], "4 KiB from the middle")
			gets, got, _, _ := e.count.snapshot()
			sealed := int64(format.DefaultLayout.BlockSize + format.TagSize)
			if gets != 1 || got != sealed {
				t.Fatalf("4 KiB read fetched %d bytes in %d GETs; want one GET of one sealed block (%d bytes)", got, gets, sealed)
			}
			t.Logf("4 KiB random read of a 1 GiB file: %d GET, %d bytes", gets, got)

			e.count.reset()
			mustEqual(t, e.read(f, 100<<20, 4096), make([]byte, 4096), "hole")
			if gets, _, _, _ := e.count.snapshot(); gets != 0 {
				t.Fatalf("reading a hole made %d GETs", gets)
			}

			e.count.reset()
			const seqLen = 6 << 20
			var buf []byte
			for pos := int64(dataOff); pos < dataOff+seqLen; pos += 128 << 10 {
				buf = append(buf, e.read(f, pos, 128<<10)...)
			}
			mustEqual(t, buf, data[:seqLen], "sequential read")
			gets, got, _, _ = e.count.snapshot()
			if gets > 16 || got > seqLen+ra+(ra/int64(format.DefaultLayout.BlockSize)+2)*sealed {
				t.Fatalf("sequential 6 MiB read: %d GETs, %d bytes; want few GETs and at most the data plus the readahead window", gets, got)
			}
			t.Logf("sequential 6 MiB read in 128 KiB reads: %d GETs, %d bytes", gets, got)
		})
	}
}

// TestPartialWrite: 4 KiB changed in the middle of a large file uploads
// only the chunk touched, as a new object; the old object is deleted.
func TestPartialWrite(t *testing.T) {
	e := newEnv(t, "local", format.DefaultLayout, Options{})
	ino := e.createFile("big")
	f := e.openFile(ino)
	C := format.DefaultLayout.ChunkSize
	data := pattern(3, 0, int(3*C))
	e.write(f, 0, data)
	e.write(f, 1<<30-C/2, pattern(4, 1<<30-C/2, int(C/2))) // the file ends at 1 GiB
	e.sync(f)
	before := e.chunks(ino)
	if len(before) != 4 || f.Size() != 1<<30 {
		t.Fatalf("chunks %+v, size %d", before, f.Size())
	}
	e.count.reset()
	off := C + C/2
	p := pattern(5, off, 4096)
	e.write(f, off, p)
	copy(data[off:], p)
	e.sync(f)
	gets, _, puts, _ := e.count.snapshot()
	puts = slices.DeleteFunc(puts, func(n string) bool { return strings.HasPrefix(n, "r/") }) // the catalog's replica
	after := e.chunks(ino)
	if len(puts) != 1 || len(after) != 4 {
		t.Fatalf("a 4 KiB write put %v; chunks now %+v", puts, after)
	}
	for i := range after {
		changed := after[i].Object != before[i].Object
		if changed != (after[i].Index == 1) {
			t.Fatalf("chunk %d changed=%v; only chunk 1 should have a new object", after[i].Index, changed)
		}
	}
	if puts[0] != format.ObjectName(format.ID(after[1].Object)) {
		t.Fatalf("put %s, catalog names %s", puts[0], format.ObjectName(format.ID(after[1].Object)))
	}
	if gets > 2 { // the block under the write, then the rest of the chunk for the upload
		t.Fatalf("rewriting one chunk read its base with %d GETs, want at most 2", gets)
	}
	old := format.ObjectName(format.ID(before[1].Object))
	waitFor(t, 5*time.Second, "the replaced object to be deleted", func() bool {
		_, err := e.v.Store().Stat(e.ctx, old)
		n, _ := e.v.Catalog().PendingDeletes(e.ctx)
		return errors.Is(err, remote.ErrNotFound) && n == 0
	})
	e.release(f)
	e.reopen()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, int(3*C)), data, "after reopen")
	e.release(f)
}

// TestUploadTriggers: a dirty chunk goes out when idle for DirtyDelay, on
// the last release (which does not wait), and under staging pressure.
func TestUploadTriggers(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		e := newEnv(t, "local", smallLayout, Options{DirtyDelay: 150 * time.Millisecond})
		ino := e.createFile("a")
		f := e.openFile(ino)
		defer e.release(f)
		start := time.Now()
		e.write(f, 0, pattern(1, 0, 100))
		if st := e.s.Stats(); st.DirtyChunks != 1 || st.StagedBytes != e.s.slot {
			t.Fatalf("after a write: %+v", st)
		}
		waitFor(t, 5*time.Second, "the idle chunk to upload", func() bool { return len(e.chunks(ino)) == 1 })
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Fatalf("uploaded after %v, before the 150 ms idle delay", d)
		}
		waitFor(t, time.Second, "staging to empty", func() bool { return e.s.Stats().StagedBytes == 0 })
	})
	t.Run("release", func(t *testing.T) {
		e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
		ino := e.createFile("a")
		f := e.openFile(ino)
		e.write(f, 0, pattern(1, 0, 40000))
		if st := e.s.Stats(); st.CachedKeys != 1 || st.OpenFiles != 1 {
			t.Fatalf("open file: %+v", st)
		}
		// The upload is held up: release must not wait for it.
		remove := e.fault.Inject(faulty.Fault{Ops: faulty.Put, Kind: faulty.Delay, Latency: 300 * time.Millisecond})
		start := time.Now()
		e.release(f)
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("release took %v", d)
		}
		remove()
		waitFor(t, 5*time.Second, "release to upload", func() bool { return len(e.chunks(ino)) == 3 })
		waitFor(t, time.Second, "keys to be wiped", func() bool {
			st := e.s.Stats()
			return st.CachedKeys == 0 && st.OpenFiles == 0 && st.StagedBytes == 0
		})
		if _, _, ok := e.s.Attr(ino); ok {
			t.Fatal("Attr still overrides a file that is closed and clean")
		}
		in, err := e.v.Catalog().GetInode(e.ctx, ino)
		if err != nil || in.Size != 40000 {
			t.Fatalf("catalog size %d, %v", in.Size, err)
		}
	})
	t.Run("pressure", func(t *testing.T) {
		e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour, StagingCap: 20 * (4096 + format.BoxOverhead)})
		ino := e.createFile("a")
		f := e.openFile(ino)
		defer e.release(f)
		e.write(f, 0, pattern(1, 0, 12*4096)) // past half the cap
		waitFor(t, 5*time.Second, "pressure to upload", func() bool { return e.s.Stats().StagedBytes == 0 })
		if n := len(e.chunks(ino)); n != 3 {
			t.Fatalf("%d chunks uploaded, want 3", n)
		}
	})
}

// TestWriteDuringUpload: writes that land on a chunk while it uploads are
// not lost: the staging file stays, and a second upload carries them.
func TestWriteDuringUpload(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	ino := e.createFile("a")
	f := e.openFile(ino)
	a, b := pattern(1, 0, 4096), pattern(2, 4096, 4096)
	e.write(f, 0, a)
	// Both uploads are held up, so the state between them can be seen.
	e.fault.Inject(faulty.Fault{Ops: faulty.Put, Prefix: "c/", Kind: faulty.Delay, Latency: 300 * time.Millisecond, Count: 2}) // chunk objects, not the catalog replica
	done := make(chan error, 1)
	go func() { done <- f.Sync(e.ctx) }()
	waitFor(t, 2*time.Second, "the upload to start", func() bool { return e.s.Stats().UploadsInFlight == 1 })
	e.write(f, 4096, b) // while the first upload's Put is held up
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := e.s.Stats(); st.DirtyChunks != 1 {
		t.Fatalf("the write made during the upload was dropped from staging: %+v", st)
	}
	if cs := e.chunks(ino); len(cs) != 1 || cs[0].Length != 4096 {
		t.Fatalf("first upload committed %+v, want the 4096 bytes of its snapshot", cs)
	}
	e.sync(f)
	if cs := e.chunks(ino); len(cs) != 1 || cs[0].Length != 8192 {
		t.Fatalf("second upload committed %+v", cs)
	}
	e.release(f)
	e.reopen()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, 10000), append(a, b...), "both writes")
	e.release(f)
}

// TestLargeOffsets: a sparse file past 4 GiB (int64 offsets everywhere).
func TestLargeOffsets(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{})
	ino := e.createFile("huge")
	f := e.openFile(ino)
	off1 := int64(1<<32 - 100) // across the 4 GiB line
	off2 := int64(5<<30 + 12345)
	p1, p2 := pattern(1, off1, 200), pattern(2, off2, 10000)
	e.write(f, off1, p1)
	e.write(f, off2, p2)
	e.sync(f)
	e.release(f)
	e.reopen()
	f = e.openFile(ino)
	defer e.release(f)
	if f.Size() != off2+10000 {
		t.Fatalf("size %d", f.Size())
	}
	mustEqual(t, e.read(f, off1, 200), p1, "at 4 GiB")
	mustEqual(t, e.read(f, off2, 20000), p2, "at 5 GiB")
	mustEqual(t, e.read(f, 3<<30, 4096), make([]byte, 4096), "hole at 3 GiB")
	C := smallLayout.ChunkSize
	cs := e.chunks(ino)
	if len(cs) != 4 || cs[0].Index != off1/C || cs[1].Index != off1/C+1 || cs[2].Index != off2/C || cs[3].Index != off2/C+1 {
		t.Fatalf("chunks %+v", cs)
	}
	if d, err := f.Seek(e.ctx, 0, unix.SEEK_DATA); err != nil || d != off1/C*C {
		t.Fatalf("SEEK_DATA from 0 = %d, %v; want %d", d, err, off1/C*C)
	}
	// Both chunks were stored whole (the file went on past them).
	if h, err := f.Seek(e.ctx, off1, unix.SEEK_HOLE); err != nil || h != (off1/C+2)*C {
		t.Fatalf("SEEK_HOLE from %d = %d, %v; want %d", off1, h, err, (off1/C+2)*C)
	}
	if err := e.s.Truncate(e.ctx, ino, off1+50); err != nil {
		t.Fatal(err)
	}
	mustEqual(t, e.read(f, off1, 200), p1[:50], "after truncate")
}

// TestSeek: SEEK_DATA / SEEK_HOLE at chunk granularity, committed and
// staged data alike, ENXIO at and past the end.
func TestSeek(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	C := smallLayout.ChunkSize
	ino := e.createFile("sparse")
	f := e.openFile(ino)
	defer e.release(f)
	e.write(f, 0, pattern(1, 0, 100))
	e.sync(f) // chunk 0 is stored as 100 bytes
	e.write(f, 2*C, pattern(2, 2*C, int(C)))
	if err := f.Allocate(e.ctx, 0, 5*C, 0); err != nil {
		t.Fatal(err)
	}
	e.sync(f)
	e.write(f, 4*C+10, pattern(3, 4*C+10, 10)) // staged only
	for _, c := range []struct {
		whence    int
		off, want int64
	}{
		{unix.SEEK_DATA, 0, 0}, {unix.SEEK_HOLE, 0, 100}, {unix.SEEK_HOLE, 50, 100},
		{unix.SEEK_DATA, 100, 2 * C}, {unix.SEEK_HOLE, 100, 100}, {unix.SEEK_DATA, 2*C + 7, 2*C + 7},
		{unix.SEEK_HOLE, 2 * C, 3 * C}, {unix.SEEK_DATA, 3 * C, 4 * C}, {unix.SEEK_HOLE, 4 * C, 5 * C},
		{unix.SEEK_HOLE, 5*C - 1, 5 * C},
	} {
		got, err := f.Seek(e.ctx, c.off, c.whence)
		if err != nil || got != c.want {
			t.Errorf("seek(%d, %d) = %d, %v; want %d", c.off, c.whence, got, err, c.want)
		}
	}
	for _, w := range []int{unix.SEEK_DATA, unix.SEEK_HOLE} {
		_, err := f.Seek(e.ctx, 5*C, w)
		wantErrno(t, err, syscall.ENXIO, "seek at the end")
		_, err = f.Seek(e.ctx, -1, w)
		wantErrno(t, err, syscall.ENXIO, "seek before the start")
	}
	if err := e.s.Truncate(e.ctx, ino, 4*C); err != nil { // drops the staged chunk
		t.Fatal(err)
	}
	_, err := f.Seek(e.ctx, 3*C, unix.SEEK_DATA)
	wantErrno(t, err, syscall.ENXIO, "SEEK_DATA in a trailing hole")
}

// TestFallocate covers every supported mode and the refused ones.
func TestFallocate(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	C := smallLayout.ChunkSize
	ino := e.createFile("f")
	f := e.openFile(ino)
	defer e.release(f)
	if err := f.Allocate(e.ctx, 0, 40000, 0); err != nil || f.Size() != 40000 {
		t.Fatalf("mode 0: size %d, %v", f.Size(), err)
	}
	if len(e.chunks(ino)) != 0 {
		t.Fatal("mode 0 stored chunks")
	}
	if err := f.Allocate(e.ctx, 0, 1<<20, unix.FALLOC_FL_KEEP_SIZE); err != nil || f.Size() != 40000 {
		t.Fatalf("KEEP_SIZE: size %d, %v", f.Size(), err)
	}
	mustEqual(t, e.read(f, 0, 60000), make([]byte, 40000), "allocated range")

	data := pattern(1, 0, int(3*C+100))
	e.write(f, 0, data)
	e.sync(f)
	before := e.chunks(ino)
	if len(before) != 4 {
		t.Fatalf("chunks %+v", before)
	}
	// Punch chunk 1 whole and the start of chunk 2.
	if err := f.Allocate(e.ctx, C, C+100, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); err != nil {
		t.Fatal(err)
	}
	clear(data[C : 2*C+100])
	if cs := e.chunks(ino); len(cs) != 3 || cs[1].Index != 2 {
		t.Fatalf("after punching chunk 1 the catalog has %+v", cs)
	}
	mustEqual(t, e.read(f, 0, len(data)+10), data, "after punch")
	// Punch the whole in-file part of the last chunk.
	if err := f.Allocate(e.ctx, 3*C, 1000, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); err != nil {
		t.Fatal(err)
	}
	clear(data[3*C:])
	if cs := e.chunks(ino); len(cs) != 2 || f.Size() != 3*C+100 {
		t.Fatalf("after punching the tail: %+v, size %d", cs, f.Size())
	}
	// ZERO_RANGE past the end grows the file; with KEEP_SIZE it does not.
	if err := f.Allocate(e.ctx, 3*C+90, 100, unix.FALLOC_FL_ZERO_RANGE); err != nil || f.Size() != 3*C+190 {
		t.Fatalf("ZERO_RANGE: size %d, %v", f.Size(), err)
	}
	data = append(data, make([]byte, 90)...)
	if err := f.Allocate(e.ctx, 10, 1<<20, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE); err != nil || f.Size() != 3*C+190 {
		t.Fatalf("ZERO_RANGE|KEEP_SIZE: size %d, %v", f.Size(), err)
	}
	clear(data[10:])
	mustEqual(t, e.read(f, 0, len(data)+10), data, "after zero range")
	e.sync(f)
	// Chunk 0 now holds 10 bytes of data; everything else is zeros and
	// must not be stored.
	if cs := e.chunks(ino); len(cs) != 1 || cs[0].Index != 0 {
		t.Fatalf("after zeroing, the catalog still stores %+v", cs)
	}
	// Zeros written with write(2) are not stored either.
	e.write(f, 0, make([]byte, 10))
	e.sync(f)
	if cs := e.chunks(ino); len(cs) != 0 {
		t.Fatalf("an all-zero chunk was stored: %+v", cs)
	}
	for _, c := range []struct {
		off, n int64
		mode   uint32
		want   syscall.Errno
	}{
		{0, 10, unix.FALLOC_FL_PUNCH_HOLE, syscall.EINVAL},
		{0, 10, unix.FALLOC_FL_COLLAPSE_RANGE, syscall.EOPNOTSUPP},
		{0, 10, unix.FALLOC_FL_INSERT_RANGE, syscall.EOPNOTSUPP},
		{-1, 10, 0, syscall.EINVAL},
		{0, 0, 0, syscall.EINVAL},
		{MaxFileSize, 10, 0, syscall.EFBIG},
	} {
		wantErrno(t, f.Allocate(e.ctx, c.off, c.n, c.mode), c.want, "fallocate")
	}
}

// TestTruncateClosedFile: setattr(size) on a file with no handle, down
// into a chunk and up again: the cut part reads as zeros, also after a
// remount, and the rewritten chunk is smaller.
func TestTruncateClosedFile(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	C := smallLayout.ChunkSize
	ino := e.createFile("f")
	f := e.openFile(ino)
	data := pattern(1, 0, int(2*C))
	e.write(f, 0, data)
	e.sync(f)
	e.release(f)
	if err := e.s.Truncate(e.ctx, ino, C+1000); err != nil {
		t.Fatal(err)
	}
	if size, _, ok := e.s.Attr(ino); !ok || size != C+1000 {
		t.Fatalf("Attr = %d, %v; the cut chunk is dirty, so the data path holds the file", size, ok)
	}
	e.reopen()
	if cs := e.chunks(ino); len(cs) != 2 || cs[1].Length != 1000 {
		t.Fatalf("chunks %+v; want chunk 1 rewritten to 1000 bytes", cs)
	}
	if err := e.s.Truncate(e.ctx, ino, 2*C); err != nil {
		t.Fatal(err)
	}
	clear(data[C+1000:])
	e.reopen()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, int(3*C)), data, "after truncate down and up")
	e.release(f)
	if err := e.s.Truncate(e.ctx, ino, 0); err != nil {
		t.Fatal(err)
	}
	if cs := e.chunks(ino); len(cs) != 0 {
		t.Fatalf("truncate to 0 left %+v", cs)
	}
	wantErrno(t, e.s.Truncate(e.ctx, ino, -1), syscall.EINVAL, "negative size")
}

// TestDiscard: a reaped inode's staged data and queued uploads go.
func TestDiscard(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	ino := e.createFile("f")
	f := e.openFile(ino)
	e.write(f, 0, pattern(1, 0, 40000))
	e.release(f) // the upload starts; it may or may not finish first
	if err := e.s.Discard(e.ctx, ino); err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Catalog().Reap(e.ctx, ino, time.Now().UnixNano()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "staging and queues to empty", func() bool {
		ups, _ := e.v.Catalog().ListUploads(e.ctx, "", 0, 0)
		st := e.s.Stats()
		return len(ups) == 0 && st.StagedBytes == 0 && st.DirtyChunks == 0 && st.CachedKeys == 0 &&
			len(stagingFiles(t, e.stage)) == 0
	})
	// Every object that was put is deleted again.
	waitFor(t, 5*time.Second, "objects of the discarded file to be deleted", func() bool {
		n := 0
		_ = e.v.Store().List(e.ctx, format.ObjectPrefix, func(string, int64) error { n++; return nil })
		return n == 0
	})
}

// TestSealLogEnv: COFFER_DEBUG_SEAL_LOG gets one line per sealed object
// and per staging box, with no repeats.
func TestSealLogEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.log")
	t.Setenv(SealLogEnv, path)
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	ino := e.createFile("f")
	f := e.openFile(ino)
	for i := range 3 {
		e.write(f, 0, pattern(byte(i), 0, 20000))
		e.sync(f)
	}
	e.release(f)
	e.close()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	seen := map[string]bool{}
	kinds := map[string]int{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := sc.Text()
		if seen[line] {
			t.Fatalf("sealed twice: %q", line)
		}
		seen[line] = true
		kinds[strings.Fields(line)[0]]++
	}
	if kinds["object"] != 6 || kinds["box"] < 15 {
		t.Fatalf("seal log has %v; want 6 objects (2 chunks x 3 syncs) and every staging box", kinds)
	}
	if bytes.Contains([]byte(strings.Join(mapKeys(seen), "\n")), marker) {
		t.Fatal("seal log holds content")
	}
}

func mapKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

var _ sync.Mutex

// TestWipeKeys: coffer lock wipes every key and cached plaintext the data
// path holds; while the keyring is locked reads, writes and fsync fail
// with EKEYREVOKED and staged data stays; keys come back through the keyring.
func TestWipeKeys(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour, SyncTimeout: 300 * time.Millisecond})
	ino := e.createFile("f")
	f := e.openFile(ino)
	data := pattern(1, 0, 40000)
	e.write(f, 0, data)
	e.sync(f)
	mustEqual(t, e.read(f, 0, 40000), data, "before lock")
	e.write(f, 100, data[100:200]) // staged
	if st := e.s.Stats(); st.CachedKeys != 1 || st.CacheBytes == 0 {
		t.Fatalf("before lock: %+v", st)
	}
	e.s.WipeKeys()
	if st := e.s.Stats(); st.CachedKeys != 0 || st.CacheBytes != 0 {
		t.Fatalf("after WipeKeys: %+v", st)
	}
	// The keyring still works here: keys are re-opened on use.
	mustEqual(t, e.read(f, 0, 40000), data, "after WipeKeys")

	// Now the keyring itself is locked.
	if err := e.v.Lock(); err != nil {
		t.Fatal(err)
	}
	e.s.WipeKeys()
	buf := make([]byte, 100)
	_, err := f.ReadAt(e.ctx, buf, 0)
	wantErrno(t, err, syscall.EKEYREVOKED, "read while locked")
	_, err = f.WriteAt(e.ctx, buf, 20000)
	wantErrno(t, err, syscall.EKEYREVOKED, "write while locked")
	wantErrno(t, f.Sync(e.ctx), syscall.EKEYREVOKED, "fsync while locked")
	if st := e.s.Stats(); st.DirtyChunks != 1 || st.CachedKeys != 0 {
		t.Fatalf("while locked: %+v", st)
	}
	e.crash() // as a daemon killed while locked
	e.open()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, 40000), data, "after remount")
	e.release(f)
}

// A prefetch window is cut into GETs of at most n blocks, in order, losing none.
func TestSplitJobs(t *testing.T) {
	blocks := func(from, to int64) []int64 {
		var b []int64
		for i := from; i < to; i++ {
			b = append(b, i)
		}
		return b
	}
	jobs := []prefetchJob{{chunk: 0, blocks: blocks(10, 256)}, {chunk: 1, blocks: blocks(0, 64)}, {chunk: 2, blocks: blocks(3, 4)}}
	got := splitJobs(jobs, 64)
	var sizes []int
	var next = map[int64]int64{0: 10, 1: 0, 2: 3}
	for _, j := range got {
		sizes = append(sizes, len(j.blocks))
		for _, b := range j.blocks {
			if b != next[j.chunk] {
				t.Fatalf("chunk %d: block %d where %d was next", j.chunk, b, next[j.chunk])
			}
			next[j.chunk]++
		}
	}
	if fmt.Sprint(sizes) != "[64 64 64 54 64 1]" || next[0] != 256 || next[1] != 64 || next[2] != 4 {
		t.Fatalf("pieces %v, ends %v", sizes, next)
	}
}
