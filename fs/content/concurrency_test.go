package content

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestConcurrency runs writers, readers, truncations and syncs at once on
// one shared file (writers own interleaved blocks, so every chunk is
// written by all of them) and on files of their own, with uploads running
// underneath. Run it with -race.
func TestConcurrency(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: 2 * time.Millisecond, CacheBytes: 64 << 10,
		Readahead: 16 << 10, Uploaders: 4})
	const (
		writers = 4
		blocks  = 32 // 8 chunks
		rounds  = 120
		B       = 4096
	)
	shared := e.createFile("shared")
	own := []uint64{e.createFile("own0"), e.createFile("own1")}
	fs := e.openFile(shared)
	last := make([][blocks]byte, writers) // per writer: last value written to each of its blocks
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	fail := func(format string, a ...any) {
		select {
		case errs <- fmt.Errorf(format, a...):
		default:
		}
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			f, err := e.s.Open(e.ctx, shared) // a handle of its own
			if err != nil {
				fail("open: %v", err)
				return
			}
			defer f.Release(e.ctx)
			for r := range rounds {
				b := rng.IntN(blocks/writers)*writers + w
				v := byte(w<<4 | (r%15 + 1))
				if _, err := f.WriteAt(e.ctx, bytes.Repeat([]byte{v}, B), int64(b)*B); err != nil {
					fail("write: %v", err)
					return
				}
				last[w][b] = v
			}
		}()
	}
	stop := make(chan struct{})
	var rg sync.WaitGroup
	for r := range 3 {
		rg.Add(1)
		go func() {
			defer rg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 10))
			buf := make([]byte, 3*B)
			for {
				select {
				case <-stop:
					return
				default:
				}
				first := rng.IntN(blocks - 2)
				n, err := fs.ReadAt(e.ctx, buf, int64(first)*B)
				if err != nil {
					fail("read: %v", err)
					return
				}
				for i := 0; i+B <= n; i += B {
					blk := buf[i : i+B]
					b := first + i/B
					if blk[0] != 0 && int(blk[0]>>4) != b%writers {
						fail("block %d holds value %#x of writer %d", b, blk[0], blk[0]>>4)
					}
					if !bytes.Equal(blk, bytes.Repeat(blk[:1], B)) {
						fail("block %d is torn", b)
					}
				}
			}
		}()
	}
	// Files of their own: a writer with truncations against a model each.
	for k := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ino := own[k]
			f, err := e.s.Open(e.ctx, ino)
			if err != nil {
				fail("open: %v", err)
				return
			}
			defer f.Release(e.ctx)
			rng := rand.New(rand.NewPCG(uint64(k), 11))
			var m []byte
			for r := range rounds {
				switch rng.IntN(5) {
				case 0:
					size := rng.Int64N(60000)
					if err := e.s.Truncate(e.ctx, ino, size); err != nil {
						fail("truncate: %v", err)
						return
					}
					if size < int64(len(m)) {
						m = m[:size]
					} else {
						m = append(m, make([]byte, size-int64(len(m)))...)
					}
				case 1:
					if err := f.Sync(e.ctx); err != nil {
						fail("fsync: %v", err)
						return
					}
				default:
					off, n := rng.Int64N(60000), 1+rng.IntN(9000)
					p := pattern(byte(r), off, n)
					if _, err := f.WriteAt(e.ctx, p, off); err != nil {
						fail("write: %v", err)
						return
					}
					if end := off + int64(n); end > int64(len(m)) {
						m = append(m, make([]byte, end-int64(len(m)))...)
					}
					copy(m[off:], p)
				}
				got := make([]byte, len(m)+10)
				n, err := f.ReadAt(e.ctx, got, 0)
				if err != nil || !bytes.Equal(got[:n], m) {
					fail("own file %d round %d: read %d bytes, %v; content differs from the model", k, r, n, err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 10 {
			if err := fs.Sync(e.ctx); err != nil {
				fail("fsync: %v", err)
			}
			time.Sleep(3 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := make([]byte, blocks*B)
	for w := range writers {
		for b, v := range last[w] {
			if v != 0 {
				copy(want[b*B:], bytes.Repeat([]byte{v}, B))
			}
		}
	}
	// The file ends at the last block anyone wrote.
	end := len(want)
	for end > 0 && want[end-1] == 0 {
		end--
	}
	want = want[:end]
	mustEqual(t, e.read(fs, 0, blocks*B), want, "shared file")
	e.release(fs)
	e.reopen()
	fs = e.openFile(shared)
	mustEqual(t, e.read(fs, 0, blocks*B), want, "shared file after remount")
	e.release(fs)
}
