package content

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime/pprof"
	"sync"
	"sync/atomic"
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

// A read whose prefetch has claimed blocks of chunk 0 and must not wait for
// chunk 1's lock; a write holding chunk 0 waits for those blocks; a
// GETATTR (StagedBytes) walks the chunk map. Before the fix the three
// formed a cycle (prefetch -> chunk map -> chunk 0 -> prefetch) and the
// mount hung for good (seen once in TestConcurrentWriters over S3).
func TestPrefetchClaimsNeverWait(t *testing.T) {
	// ReadTimeout well past the 10 s below: its bound on waits must not hide a cycle.
	e := newEnv(t, "local", smallLayout, Options{Readahead: 48 << 10, ReadTimeout: time.Hour})
	ino := e.createFile("f")
	f := e.openFile(ino)
	e.write(f, 0, pattern(5, 0, 48<<10)) // three 16 KiB chunks
	e.sync(f)
	e.s.cache.reset(false)

	c1 := f.chunk(1)
	c1.mu.Lock() // a writer busy in chunk 1
	var unlock sync.Once
	release := func() { unlock.Do(c1.mu.Unlock) }
	t.Cleanup(release) // before the env's: Close locks every chunk
	done := make(chan string, 3)
	var wrote atomic.Bool
	go func() { // P: a read at 0 counts as sequential and prefetches the rest of the file
		buf := make([]byte, 4096)
		if _, err := f.ReadAt(e.ctx, buf, 0); err != nil {
			t.Errorf("read: %v", err)
		}
		done <- "read"
	}()
	c0 := f.chunk(0)
	waitFor(t, 5*time.Second, "the prefetch to claim chunk 0's blocks", func() bool {
		c0.mu.RLock()
		base := c0.base
		c0.mu.RUnlock()
		if base == nil {
			return false
		}
		sh := e.s.cache.shard(blockKey{base.id, 1})
		sh.mu.Lock()
		defer sh.mu.Unlock()
		_, claimed := sh.flights[blockKey{base.id, 1}]
		_, cached := sh.m[blockKey{base.id, 1}]
		return claimed || cached
	})
	go func() { // W: a partial block in chunk 0 needs block 1's old content
		if _, err := f.WriteAt(e.ctx, make([]byte, 100), 4096+10); err != nil {
			t.Errorf("write: %v", err)
		}
		wrote.Store(true)
		done <- "write"
	}()
	waitFor(t, 5*time.Second, "the write to finish or to hold chunk 0", func() bool {
		if c0.mu.TryRLock() {
			c0.mu.RUnlock()
			return wrote.Load()
		}
		return true
	})
	go func() { // G: GETATTR, after the write holds chunk 0
		e.s.StagedBytes(ino)
		done <- "getattr"
	}()
	time.Sleep(100 * time.Millisecond)
	release()
	deadline := time.After(10 * time.Second)
	for range 3 {
		select {
		case <-done:
		case <-deadline:
			buf := new(bytes.Buffer)
			_ = pprof.Lookup("goroutine").WriteTo(buf, 1)
			e.s = nil // Close would hang on the same locks
			t.Fatalf("read, write and GETATTR did not all return: deadlock\n%s", buf)
		}
	}
	want := pattern(5, 0, 48<<10)
	copy(want[4096+10:], make([]byte, 100))
	mustEqual(t, e.read(f, 0, 48<<10), want, "after the write")
	e.release(f)
}

// Stats (coffer status) does not wait behind a file whose key is being fetched from the
// provider (keyMu is held across the HSM call, which may hang).
func TestStatsDoesNotWaitForKeyFetch(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{})
	f := e.openFile(e.createFile("f"))
	e.write(f, 0, pattern(1, 0, 100))
	f.keyMu.Lock() // a dekFor in the provider
	done := make(chan Stats, 1)
	go func() { done <- e.s.Stats() }()
	select {
	case st := <-done:
		if st.CachedKeys < 1 {
			t.Errorf("Stats with a key being fetched: CachedKeys = %d, want >= 1", st.CachedKeys)
		}
	case <-time.After(5 * time.Second):
		f.keyMu.Unlock()
		t.Fatal("Stats waited for a key fetch")
	}
	f.keyMu.Unlock()
	e.release(f)
}
