package content

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"coffer/keys"
)

// lock is what fusefront.FS.Lock does below FUSE: keyring first, then the data path.
func (e *env) lock() {
	e.t.Helper()
	if err := e.v.Lock(); err != nil {
		e.t.Fatalf("lock: %v", err)
	}
	e.s.WipeKeys()
}

func (e *env) unlock() {
	e.t.Helper()
	if err := e.v.Unlock(e.ctx, e.pass); err != nil {
		e.t.Fatalf("unlock: %v", err)
	}
	e.s.Resume()
}

// reachableKeys counts the key material the data path can still reach: file DEKs, object
// ciphers, staging boxes, and bytes in the plaintext block cache.
func (s *DataPath) reachableKeys() (deks, ciphers, boxes int, cached int64) {
	for _, f := range s.liveFiles() {
		f.keyMu.Lock()
		if f.dek != nil {
			deks++
		}
		deks += len(f.oldDEKs)
		f.keyMu.Unlock()
		f.cmu.Lock()
		for _, c := range f.chunks {
			c.mu.RLock()
			if c.base != nil && c.base.cipher.Load() != nil {
				ciphers++
			}
			if c.stg != nil && c.stg.box.Load() != nil {
				boxes++
			}
			c.mu.RUnlock()
		}
		f.cmu.Unlock()
	}
	for i := range s.cache.shards {
		sh := &s.cache.shards[i]
		sh.mu.Lock()
		cached += int64(sh.lru.Len())
		sh.mu.Unlock()
	}
	return
}

// cachedBlocks returns the plaintext slices the block cache holds (to see them zeroed).
func (s *DataPath) cachedBlocks() [][]byte {
	var out [][]byte
	for i := range s.cache.shards {
		sh := &s.cache.shards[i]
		sh.mu.Lock()
		for el := sh.lru.Front(); el != nil; el = el.Next() {
			out = append(out, el.Value.(*cacheEntry).data)
		}
		sh.mu.Unlock()
	}
	return out
}

// TestLock: after the keyring is locked and WipeKeys ran, no key or plaintext is reachable
// from the data path (and what was there is zeroed); reads, writes, fallocate, truncate and
// opens fail with EKEYREVOKED, also through a file opened before; fsync fails at once; staged
// data stays staged without counting as a failing upload; after unlock it uploads and
// everything reads back.
func TestLock(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour, SyncTimeout: 5 * time.Second})
	a := e.openFile(e.createFile("a"))
	dataA := pattern(1, 0, 40000)
	e.write(a, 0, dataA)
	e.sync(a)
	mustEqual(t, e.read(a, 0, len(dataA)), dataA, "a before lock") // cached plaintext now
	b := e.openFile(e.createFile("b"))
	dataB := pattern(2, 0, 20000)
	e.write(b, 0, dataB) // staged only (DirtyDelay is an hour)
	inoC := e.createFile("c")

	if d, c, _, n := e.s.reachableKeys(); d == 0 || c == 0 || n == 0 {
		t.Fatalf("before lock: %d DEKs, %d ciphers, %d cached blocks: the test sees nothing", d, c, n)
	}
	a.keyMu.Lock()
	heldDEK := a.dek
	heldBytes := heldDEK.Bytes()
	a.keyMu.Unlock()
	blocks := e.s.cachedBlocks()
	e.count.reset()
	e.logs.reset()

	start := time.Now()
	e.lock()
	t.Logf("volume lock + WipeKeys: %v", time.Since(start))

	st := e.s.Stats()
	if !st.Locked || st.CachedKeys != 0 || st.CacheBytes != 0 {
		t.Fatalf("after lock: %+v", st)
	}
	if d, c, bx, n := e.s.reachableKeys(); d+c+bx != 0 || n != 0 {
		t.Fatalf("after lock the data path still reaches %d DEKs, %d ciphers, %d staging keys, %d cached blocks", d, c, bx, n)
	}
	if !heldDEK.Wiped() || !bytes.Equal(heldBytes, make([]byte, len(heldBytes))) {
		t.Fatal("a file's DEK was not zeroed")
	}
	for i, blk := range blocks {
		if !bytes.Equal(blk, make([]byte, len(blk))) {
			t.Fatalf("cached plaintext block %d was not zeroed", i)
		}
	}

	buf := make([]byte, 1000)
	_, err := a.ReadAt(e.ctx, buf, 0)
	wantErrno(t, err, syscall.EKEYREVOKED, "read of a file opened before the lock")
	if !errors.Is(err, keys.ErrLocked) || !strings.Contains(err.Error(), "coffer unlock") {
		t.Fatalf("read error %q does not say to unlock", err)
	}
	_, err = b.ReadAt(e.ctx, buf, 0)
	wantErrno(t, err, syscall.EKEYREVOKED, "read of staged data")
	_, err = a.WriteAt(e.ctx, buf, 5)
	wantErrno(t, err, syscall.EKEYREVOKED, "write")
	_, err = b.WriteAt(e.ctx, buf, 100) // into an existing staging file
	wantErrno(t, err, syscall.EKEYREVOKED, "write into staging")
	wantErrno(t, a.Allocate(e.ctx, 10, 100, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE), syscall.EKEYREVOKED, "fallocate")
	wantErrno(t, e.s.Truncate(e.ctx, a.ino, 1000), syscall.EKEYREVOKED, "truncate inside a block")
	_, err = e.s.Open(e.ctx, inoC)
	wantErrno(t, err, syscall.EKEYREVOKED, "open")
	start = time.Now()
	wantErrno(t, b.Sync(e.ctx), syscall.EKEYREVOKED, "fsync of staged data")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("fsync while locked took %v; it should fail at once", d)
	}
	if a.Size() != int64(len(dataA)) || b.Size() != int64(len(dataB)) {
		t.Fatalf("sizes changed by refused operations: %d, %d", a.Size(), b.Size())
	}

	// Uploads pause: the staged chunk is pushed but nothing goes out and nothing fails.
	for _, tg := range b.dirtyTargets() {
		e.s.up.expedite(tg.c)
	}
	time.Sleep(300 * time.Millisecond)
	st = e.s.Stats()
	if st.DirtyChunks == 0 || st.StagedBytes == 0 || st.UploadsFailing != 0 || st.LastUploadError != "" {
		t.Fatalf("while locked: %+v", st)
	}
	if _, _, puts, _ := e.count.snapshot(); len(puts) != 0 {
		t.Fatalf("uploaded %d objects while locked", len(puts))
	}
	if l := e.logs.String(); strings.Contains(l, "level=ERROR") {
		t.Fatalf("locked operations logged errors:\n%s", l)
	}
	if d, c, bx, n := e.s.reachableKeys(); d+c+bx != 0 || n != 0 {
		t.Fatalf("refused operations left %d DEKs, %d ciphers, %d staging keys, %d cached blocks", d, c, bx, n)
	}

	// A wrong passphrase keeps it locked.
	if err := e.v.Unlock(e.ctx, []byte("wrong")); !errors.Is(err, keys.ErrWrongPassphrase) || !e.s.Stats().Locked {
		t.Fatalf("wrong passphrase: %v", err)
	}

	e.unlock()
	e.sync(b) // the staged write goes out now
	if st := e.s.Stats(); st.Locked || st.DirtyChunks != 0 || st.StagedBytes != 0 || st.UploadsFailing != 0 {
		t.Fatalf("after unlock and fsync: %+v", st)
	}
	if _, _, puts, _ := e.count.snapshot(); len(puts) == 0 {
		t.Fatal("nothing uploaded after unlock")
	}
	mustEqual(t, e.read(a, 0, len(dataA)), dataA, "a after unlock")
	mustEqual(t, e.read(b, 0, len(dataB)), dataB, "b after unlock")
	c := e.openFile(inoC)
	e.write(c, 0, []byte("hello"))
	e.sync(c)
	e.release(a)
	e.release(b)
	e.release(c)
	e.reopen()
	a = e.openFile(a.ino)
	b = e.openFile(b.ino)
	mustEqual(t, e.read(a, 0, len(dataA)), dataA, "a after remount")
	mustEqual(t, e.read(b, 0, len(dataB)), dataB, "b after remount")
	e.release(a)
	e.release(b)
}

// TestLockUploadsResumeWithoutFsync: data staged before the lock uploads by itself after
// unlock (no fsync, no close), and a lock while an upload is pending drops nothing.
func TestLockUploadsResumeWithoutFsync(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: 100 * time.Millisecond})
	f := e.openFile(e.createFile("f"))
	data := pattern(3, 0, 50000)
	e.write(f, 0, data)
	e.lock()
	time.Sleep(400 * time.Millisecond) // past DirtyDelay: would have uploaded
	if st := e.s.Stats(); st.DirtyChunks == 0 || st.UploadsFailing != 0 {
		t.Fatalf("while locked: %+v", st)
	}
	if len(e.chunks(f.ino)) != 0 {
		t.Fatal("chunks committed while locked")
	}
	e.unlock()
	waitFor(t, 5*time.Second, "uploads after unlock", func() bool { return e.s.Stats().DirtyChunks == 0 })
	if n := len(e.chunks(f.ino)); n != 4 {
		t.Fatalf("%d chunks committed after unlock, want 4", n)
	}
	e.release(f)
	e.reopen()
	f = e.openFile(f.ino)
	mustEqual(t, e.read(f, 0, len(data)), data, "after remount")
	e.release(f)
}

// TestLockRace: readers and writers run while the volume is locked and unlocked over and
// over. Each operation either works (and reads the right bytes) or fails with EKEYREVOKED;
// right after each lock nothing is reachable, and stays so while operations keep failing.
func TestLockRace(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: 20 * time.Millisecond, SyncTimeout: 5 * time.Second})
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(e.logs.String(), "\n") {
				if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
					t.Log(l)
				}
			}
		}
	})
	const files = 4
	const size = 48 << 10
	fs := make([]*File, files)
	want := make([][]byte, files)
	var wmu sync.Mutex // guards want: writers update it before writing... see below
	for i := range fs {
		fs[i] = e.openFile(e.createFile(string(rune('a' + i))))
		want[i] = pattern(byte(i), 0, size)
		e.write(fs[i], 0, want[i])
		e.sync(fs[i])
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, refused atomic.Int64
	fail := func(format string, a ...any) {
		t.Errorf(format, a...)
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 6000)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := (g + i) % files
				f := fs[n]
				off := int64((i * 7919) % (size - len(buf)))
				if g == 0 && i%3 == 0 {
					// Rewrite a range with the same bytes: content never changes, so readers
					// can check every byte, and staging and uploads run all the time.
					wmu.Lock()
					p := want[n][off : off+int64(len(buf))]
					wmu.Unlock()
					_, err := f.WriteAt(e.ctx, p, off)
					switch {
					case err == nil:
						ok.Add(1)
					case Errno(err) == syscall.EKEYREVOKED:
						refused.Add(1)
					default:
						fail("write: %v", err)
						return
					}
					continue
				}
				got, err := f.ReadAt(e.ctx, buf, off)
				switch {
				case err == nil:
					if w := want[n][off : off+int64(got)]; !bytes.Equal(buf[:got], w) {
						i := 0
						for buf[i] == w[i] {
							i++
						}
						j := i
						for j < got && buf[j] != w[j] {
							j++
						}
						ck := f.knownChunk((off + int64(i)) / smallLayout.ChunkSize)
						ck.mu.RLock()
						desc := fmt.Sprintf("base %v limit %d stg %v loaded %v gen %d", ck.base != nil, ck.baseLimit, ck.stg != nil, ck.loaded, ck.gen)
						if ck.stg != nil {
							desc += fmt.Sprintf(" staged %d", ck.stg.n)
						}
						ck.mu.RUnlock()
						fail("read of inode %d at %d (+%d) returned wrong bytes at file offset %d..%d (got %x, want %x); chunk: %s; rows %+v",
							f.ino, off, got, off+int64(i), off+int64(j), buf[i:min(i+8, got)], w[i:min(i+8, got)], desc, e.chunks(f.ino))
						return
					}
					ok.Add(1)
				case Errno(err) == syscall.EKEYREVOKED:
					refused.Add(1)
				default:
					fail("read: %v", err)
					return
				}
			}
		}()
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer halt()
	for round := range 15 {
		time.Sleep(15 * time.Millisecond)
		e.lock()
		for check := range 3 {
			if d, c, bx, n := e.s.reachableKeys(); d+c+bx != 0 || n != 0 {
				t.Errorf("round %d check %d: %d DEKs, %d ciphers, %d staging keys, %d cached blocks reachable while locked",
					round, check, d, c, bx, n)
				return
			}
			time.Sleep(3 * time.Millisecond)
		}
		if st := e.s.Stats(); st.UploadsFailing != 0 {
			t.Errorf("round %d: uploads counted as failing while locked: %+v", round, st)
			return
		}
		e.unlock()
	}
	halt()
	if t.Failed() {
		return
	}
	t.Logf("%d operations served, %d refused while locked", ok.Load(), refused.Load())
	if ok.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("the race did not happen: %d served, %d refused", ok.Load(), refused.Load())
	}
	for i, f := range fs {
		e.sync(f)
		mustEqual(t, e.read(f, 0, size), want[i], "after the race")
		e.release(f)
	}
	if l := e.logs.String(); strings.Contains(l, "level=ERROR") {
		t.Fatalf("locking logged errors:\n%s", l)
	}
	_ = context.Background
}
