package content

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sealRecorder checks the no-nonce-reuse rule over a whole run: object ids
// sealed once, staging box nonces unique per staging key.
type sealRecorder struct {
	mu      sync.Mutex
	objects map[string]bool
	boxes   map[string]bool
	dups    []string
}

func newSealRecorder() *sealRecorder {
	return &sealRecorder{objects: map[string]bool{}, boxes: map[string]bool{}}
}

func (r *sealRecorder) hook(kind, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.objects
	if kind == "box" {
		m = r.boxes
	}
	if m[value] {
		r.dups = append(r.dups, kind+" "+value)
	}
	m[value] = true
}

func (r *sealRecorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.dups) > 0 {
		t.Fatalf("sealed twice: %v", r.dups)
	}
	if len(r.objects) == 0 || len(r.boxes) == 0 {
		t.Fatalf("seal hook saw %d objects and %d boxes; want both > 0", len(r.objects), len(r.boxes))
	}
	t.Logf("sealed %d objects and %d staging boxes, no repeats", len(r.objects), len(r.boxes))
}

func TestModelLocal(t *testing.T) { runModel(t, "local", 1, 2500) }
func TestModelS3(t *testing.T)    { runModel(t, "s3", 2, 700) }

// runModel runs random operations against the data path and an in-memory
// model of every file, checking every read, and periodically syncs and
// reopens the whole volume, or crashes it and recovers.
func runModel(t *testing.T, kind string, seed uint64, ops int) {
	rec := newSealRecorder()
	e := newEnv(t, kind, smallLayout, Options{DirtyDelay: 3 * time.Millisecond, SyncTimeout: 20 * time.Second,
		CacheBytes: 96 << 10, Readahead: 24 << 10, Uploaders: 3, sealHook: rec.hook})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, seed*7+1))
	const nfiles = 3
	const maxSize = 7*16<<10 + 5000 // a bit over 7 chunks
	inos := make([]uint64, nfiles)
	models := make([][]byte, nfiles)
	files := make([]*File, nfiles)
	for i := range inos {
		inos[i] = e.createFile("f" + itoa(uint64(i)))
	}
	openAll := func() {
		for i := range files {
			files[i] = e.openFile(inos[i])
		}
	}
	releaseAll := func() {
		for i := range files {
			e.release(files[i])
		}
	}
	verifyAll := func(when string) {
		for i, f := range files {
			if got := f.Size(); got != int64(len(models[i])) {
				t.Fatalf("%s: file %d size %d, model %d", when, i, got, len(models[i]))
			}
			mustEqual(t, e.read(f, 0, len(models[i])+100), models[i], when+": file "+itoa(uint64(i)))
		}
	}
	openAll()
	counts := map[string]int{}
	for op := 0; op < ops; op++ {
		i := rng.IntN(nfiles)
		f, m := files[i], models[i]
		r := rng.IntN(100)
		switch {
		case r < 34: // write
			off := rng.Int64N(maxSize)
			n := 1 + rng.IntN(3*4096)
			if rng.IntN(4) == 0 { // block aligned
				off &^= 4095
				n = 4096 * (1 + rng.IntN(3))
			}
			p := pattern(byte(op), off, n)
			e.write(f, off, p)
			if end := off + int64(n); end > int64(len(m)) {
				m = append(m, make([]byte, end-int64(len(m)))...)
			}
			copy(m[off:], p)
			counts["write"]++
		case r < 62: // read
			off := rng.Int64N(maxSize + 4096)
			n := 1 + rng.IntN(3*4096)
			got := e.read(f, off, n)
			var want []byte
			if off < int64(len(m)) {
				want = m[off:min(int64(len(m)), off+int64(n))]
			}
			mustEqual(t, got, want, "read")
			counts["read"]++
		case r < 66: // sequential read of the whole file (prefetch)
			var got []byte
			for off := int64(0); off < int64(len(m)); off += 8192 {
				got = append(got, e.read(f, off, 8192)...)
			}
			mustEqual(t, got, m, "sequential read")
			counts["seqread"]++
		case r < 72: // truncate
			size := rng.Int64N(maxSize)
			if err := e.s.Truncate(ctx, inos[i], size); err != nil {
				t.Fatalf("truncate: %v", err)
			}
			if size < int64(len(m)) {
				m = m[:size]
			} else {
				m = append(m, make([]byte, size-int64(len(m)))...)
			}
			counts["truncate"]++
		case r < 77: // punch or zero range
			off := rng.Int64N(maxSize)
			n := 1 + rng.Int64N(40000)
			mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
			grow := false
			if rng.IntN(2) == 0 {
				mode = unix.FALLOC_FL_ZERO_RANGE
				grow = true
			}
			if err := f.Allocate(ctx, off, n, mode); err != nil {
				t.Fatalf("fallocate %#x: %v", mode, err)
			}
			end := min(off+n, int64(len(m)))
			if off < end {
				clear(m[off:end])
			}
			if grow && off+n > int64(len(m)) {
				m = append(m, make([]byte, off+n-int64(len(m)))...)
			}
			counts["zero"]++
		case r < 80: // fallocate extend
			off, n := rng.Int64N(maxSize), 1+rng.Int64N(8000)
			if err := f.Allocate(ctx, off, n, 0); err != nil {
				t.Fatalf("fallocate: %v", err)
			}
			if off+n > int64(len(m)) {
				m = append(m, make([]byte, off+n-int64(len(m)))...)
			}
			counts["extend"]++
		case r < 86: // seek
			if len(m) == 0 {
				break
			}
			off := rng.Int64N(int64(len(m)))
			d, err := f.Seek(ctx, off, unix.SEEK_DATA)
			if err == nil {
				if d < off || d >= int64(len(m)) {
					t.Fatalf("SEEK_DATA from %d = %d (size %d)", off, d, len(m))
				}
				if !allZero(m[off:d]) {
					t.Fatalf("SEEK_DATA from %d skipped data before %d", off, d)
				}
			} else {
				wantErrno(t, err, 6 /* ENXIO */, "SEEK_DATA")
				if !allZero(m[off:]) {
					t.Fatalf("SEEK_DATA from %d: ENXIO but data follows", off)
				}
			}
			h, err := f.Seek(ctx, off, unix.SEEK_HOLE)
			if err != nil || h < off || h > int64(len(m)) {
				t.Fatalf("SEEK_HOLE from %d = %d, %v (size %d)", off, h, err, len(m))
			}
			if C := smallLayout.ChunkSize; h < int64(len(m)) && !allZero(m[h:min(int64(len(m)), (h/C+1)*C)]) {
				t.Fatalf("SEEK_HOLE from %d = %d, but that chunk holds data", off, h)
			}
			counts["seek"]++
		case r < 91: // fsync
			e.sync(f)
			counts["sync"]++
		case r < 94: // close and reopen one file
			e.release(f)
			files[i] = e.openFile(inos[i])
			counts["reopen-file"]++
		case r < 97: // unmount and mount the whole volume
			releaseAll()
			e.reopen()
			openAll()
			verifyAll("after remount")
			counts["remount"]++
		default: // crash and recover
			e.crash()
			e.open()
			openAll()
			verifyAll("after crash and recovery")
			counts["crash"]++
		}
		models[i] = m
	}
	releaseAll()
	e.reopen()
	openAll()
	verifyAll("final")
	releaseAll()
	if st := e.s.Stats(); st.StagedBytes != 0 || st.DirtyChunks != 0 {
		t.Fatalf("after final sync: %+v", st)
	}
	rec.check(t)
	t.Logf("ops: %v", counts)
}
