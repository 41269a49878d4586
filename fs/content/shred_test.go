package content

import (
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
)

// cachedOf returns the cached plaintext blocks of the objects of ino's chunks.
func (e *env) cachedOf(ino uint64) [][]byte {
	objs := map[format.ID]bool{}
	for _, c := range e.chunks(ino) {
		objs[format.ID(c.Object)] = true
	}
	var out [][]byte
	for i := range e.s.cache.shards {
		sh := &e.s.cache.shards[i]
		sh.mu.Lock()
		for el := sh.lru.Front(); el != nil; el = el.Next() {
			if ent := el.Value.(*cacheEntry); objs[ent.key.obj] {
				out = append(out, ent.data)
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// TestRevoke: revoking a file that a handle holds open drops its key, its staged writes and
// its cached plaintext (zeroed); the handle's reads and writes fail from then on; another
// file's cached blocks, key and content are untouched.
func TestRevoke(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{})
	a, b := e.createFile("a"), e.createFile("b")
	fa, fb := e.openFile(a), e.openFile(b)
	da, db := pattern(1, 0, 40000), pattern(2, 0, 30000)
	e.write(fa, 0, da)
	e.write(fb, 0, db)
	e.sync(fa)
	e.sync(fb)
	e.s.cache.wipe() // reads below fill it from the remote
	mustEqual(t, e.read(fa, 0, len(da)), da, "a before")
	mustEqual(t, e.read(fb, 0, len(db)), db, "b before")
	e.write(fa, 100, []byte("staged, never uploaded"))
	blocksA, blocksB := e.cachedOf(a), e.cachedOf(b)
	if len(blocksA) == 0 || len(blocksB) == 0 {
		t.Fatalf("blocks not cached before the revoke: a %d, b %d", len(blocksA), len(blocksB))
	}

	if err := e.s.Revoke(e.ctx, a); err != nil {
		t.Fatal(err)
	}
	for i, blk := range blocksA {
		for _, c := range blk {
			if c != 0 {
				t.Fatalf("cached block %d of the revoked file not zeroed", i)
			}
		}
	}
	if n := len(e.cachedOf(a)); n != 0 {
		t.Fatalf("%d blocks of the revoked file still cached", n)
	}
	if n := len(e.cachedOf(b)); n != len(blocksB) {
		t.Fatalf("the other file's cached blocks went too: %d of %d left", n, len(blocksB))
	}
	_, err := fa.ReadAt(e.ctx, make([]byte, 10), 0)
	wantErrno(t, err, syscall.ESTALE, "read of a revoked file")
	_, err = fa.WriteAt(e.ctx, []byte("x"), 0)
	wantErrno(t, err, syscall.ESTALE, "write of a revoked file")
	if n := fa.keyCount(); n != 0 {
		t.Fatalf("the revoked file still holds %d keys", n)
	}
	if ups, err := e.v.Catalog().ListUploads(e.ctx, "", 0, 0); err != nil || len(ups) != 0 {
		t.Fatalf("staged writes of the revoked file still queued: %d (%v)", len(ups), err)
	}
	if left := stagingFiles(t, e.stage); len(left) != 0 {
		t.Fatalf("staging files left after the revoke: %v", left)
	}
	mustEqual(t, e.read(fb, 0, len(db)), db, "b after")
	e.release(fa)
	e.release(fb)
}

// TestReloadKeyRecords: an open file whose record a live rotation re-wrapped takes the new
// record, so that after the old version is destroyed its key still reopens (coffer lock and
// unlock wipe it) and it reads.
func TestReloadKeyRecords(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{})
	ino := e.createFile("f")
	f := e.openFile(ino)
	data := pattern(3, 0, 20000)
	e.write(f, 0, data)
	e.sync(f)

	// What keyops.Rotate does: a new version, the record re-wrapped by compare-and-swap.
	v2 := keys.KEKRef{Version: 2}
	mat, err := e.v.Provider().CreateKEK(e.ctx, v2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Catalog().AddKEKVersion(e.ctx, meta.KEK{Version: 2, Material: mat, Created: time.Now().UnixNano()}, "test"); err != nil {
		t.Fatal(err)
	}
	old, err := e.v.Catalog().GetKey(e.ctx, ino)
	if err != nil {
		t.Fatal(err)
	}
	in, err := e.v.Catalog().GetInode(e.ctx, ino)
	if err != nil {
		t.Fatal(err)
	}
	nrec, err := keys.Rewrap(e.ctx, e.v.Provider(), keys.Record{Mode: keys.Mode(old.Mode), KEK: keys.KEKRef{Version: old.Version}, IV: old.IV, Wrapped: old.Wrapped},
		keys.FileIdentity{Volume: e.v.ID, File: in.FileID}, v2)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := e.v.Catalog().SwapKey(e.ctx, ino, old, meta.KeyRecord{Mode: string(nrec.Mode), Version: 2, IV: nrec.IV, Wrapped: nrec.Wrapped}); err != nil || !ok {
		t.Fatalf("swap: %v %v", ok, err)
	}

	n, err := e.s.ReloadKeyRecords(e.ctx)
	if err != nil || n != 1 {
		t.Fatalf("ReloadKeyRecords: %d files, %v; want 1", n, err)
	}
	if err := e.v.Catalog().MarkDestroyed(e.ctx, "", 1, time.Now().UnixNano(), "test"); err != nil {
		t.Fatal(err)
	}
	if err := e.v.Provider().DestroyKEK(e.ctx, keys.KEKRef{Version: 1}); err != nil {
		t.Fatal(err)
	}
	e.lock()
	e.unlock()
	mustEqual(t, e.read(f, 0, len(data)), data, "read after the old version is destroyed, lock and unlock")
	e.release(f)
}
