package content

import (
	"context"
	"errors"
	"syscall"

	"coffer/crypto/format"
	"coffer/keys"
)

// Revoke is the data path's part in crypto-shredding regular file ino on a live mount
// (coffer shred while mounted). It drops everything the data path holds for the file: staged
// writes (their queue rows and staging files), its DEK for good (a File never opens it
// again), every per-object cipher and staging key built from it, and the file's plaintext
// blocks in the block cache (zeroed). A read or write through a descriptor still open on the
// file fails from then on (ESTALE here; the node layer answers EKEYREVOKED before it gets
// this far). The catalog rows (key record, chunks) are the caller's to delete; objects of
// chunks already committed are queued for deletion with them. Calling it again, or on an
// inode the data path does not hold, only drops what is left.
func (s *DataPath) Revoke(ctx context.Context, ino uint64) error {
	objs := map[format.ID]bool{}
	// Objects the catalog lists for the file: blocks of a closed file may still be cached.
	rows, err := s.cat.Chunks(ctx, ino, 0, -1)
	if err != nil {
		return metaErr(err, "revoke inode %d: list its chunks", ino)
	}
	for _, r := range rows {
		objs[format.ID(r.Object)] = true
	}
	// Objects an open File holds (an upload may have replaced one since).
	s.mu.Lock()
	f := s.files[ino]
	s.mu.Unlock()
	if f != nil {
		select {
		case <-f.ready:
		case <-ctx.Done():
			return ioErr(ctx, ctx.Err(), "revoke inode %d", ino)
		}
		if f.loadErr == nil {
			for _, c := range f.allChunks() {
				c.mu.RLock()
				if c.base != nil {
					objs[c.base.id] = true
				}
				c.mu.RUnlock()
			}
		}
	}
	if err := s.Discard(ctx, ino); err != nil {
		return err
	}
	if n := s.cache.dropObjects(objs); n > 0 {
		s.log.Debug("content: revoked file's cached blocks zeroed", "ino", ino, "blocks", n)
	}
	return nil
}

// dropObjects zeroes and drops every cached block of the objects in objs, as wipe does for
// all of them: it waits for copies in progress and makes lookups made before it fail (their
// callers retry, and a revoked file's retry finds no key).
func (c *blockCache) dropObjects(objs map[format.ID]bool) int {
	if len(objs) == 0 {
		return 0
	}
	c.plainMu.Lock()
	defer c.plainMu.Unlock()
	c.gen.Add(1)
	defer c.gen.Add(1)
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for e := s.lru.Front(); e != nil; {
			next := e.Next()
			ent := e.Value.(*cacheEntry)
			if objs[ent.key.obj] {
				clear(ent.data)
				s.lru.Remove(e)
				delete(s.m, ent.key)
				sz := int64(len(ent.data)) + entryOverhead
				s.size -= sz
				c.bytes.Add(-sz)
				n++
			}
			e = next
		}
		s.mu.Unlock()
	}
	return n
}

// ReloadKeyRecords makes every file the data path holds take its key record from the catalog
// again, after a rotation re-wrapped them on a live mount. The DEK does not change (a
// re-wrap only re-seals it), so nothing cached is dropped; what changes is the record a
// File opens its key from when it needs it again (after coffer lock and unlock), which
// must not name a KEK version that is about to be retired. Only wrap-mode records are
// reloaded; a file whose record is gone (shredded) keeps what it has.
func (s *DataPath) ReloadKeyRecords(ctx context.Context) (int, error) {
	n := 0
	for _, f := range s.liveFiles() {
		select {
		case <-f.ready:
		case <-ctx.Done():
			return n, ctx.Err()
		}
		if f.loadErr != nil || f.discarded.Load() || f.rec.Mode != keys.ModeWrap {
			continue
		}
		kr, err := s.cat.GetKey(ctx, f.ino)
		if errors.Is(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			return n, metaErr(err, "reload the key record of inode %d", f.ino)
		}
		if keys.Mode(kr.Mode) != keys.ModeWrap {
			continue
		}
		f.keyMu.Lock()
		// Mode stays as it is: only the KEK, IV and wrapped key move (readers of Mode
		// take no lock).
		f.rec.KEK = keys.KEKRef{Chain: kr.Chain, Version: kr.Version}
		f.rec.IV = kr.IV
		f.rec.Wrapped = kr.Wrapped
		f.keyMu.Unlock()
		n++
	}
	return n, nil
}
