package content

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
)

var (
	chunkBufPool sync.Pool // *[]byte, plaintext of one chunk
	objBufPool   sync.Pool // *[]byte, one sealed object
)

func getBuf(p *sync.Pool, n int) *[]byte {
	if b, ok := p.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

var zeroPage [16 << 10]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var errRetryNow = errors.New("chunk changed under the upload; retrying")

// upload makes one dirty chunk durable on the remote: it assembles the
// chunk's plaintext (staged blocks over the base object's, zeros for
// holes), seals it under a fresh object id, puts it, and commits the new
// object in one catalog transaction (which queues the replaced object for
// deletion). The staging file goes only if nothing was written to the
// chunk since the snapshot; otherwise its blocks stay as valid overlays.
func (u *uploader) upload(c *chunk) error {
	s := u.dp
	f := c.f
	ctx := s.bg
	B := int64(s.layout.BlockSize)
	C := s.layout.ChunkSize

	// What the base object must supply; fetched without holding the chunk.
	pgen := s.cache.gen.Load() // before looking blocks up (see blockCache.use)
	f.mu.RLock()
	c.mu.RLock()
	if c.dead || c.stg == nil || f.discarded.Load() {
		c.mu.RUnlock()
		f.mu.RUnlock()
		return nil
	}
	base := c.base
	var need []int64
	if base != nil {
		for b := int64(0); b*B < c.baseLimit; b++ {
			if !c.stg.has(b) {
				need = append(need, b)
			}
		}
	}
	c.mu.RUnlock()
	f.mu.RUnlock()
	var got map[int64][]byte
	if len(need) > 0 {
		var err error
		if got, err = s.loadBlocks(ctx, f, base, need); err != nil {
			if ctx.Err() != nil {
				return err
			}
			c.mu.RLock()
			changed := c.base != base || c.dead
			c.mu.RUnlock()
			if changed {
				return nil
			}
			return s.readFailed(ctx, f, c.idx, base, err)
		}
	}

	// Assemble under the chunk lock: writers rewrite staged slots in place.
	pb := getBuf(&chunkBufPool, int(C))
	defer chunkBufPool.Put(pb)
	f.mu.RLock()
	c.mu.Lock()
	if c.dead || c.stg == nil || f.discarded.Load() {
		c.mu.Unlock()
		f.mu.RUnlock()
		return nil
	}
	if c.base != base {
		c.mu.Unlock()
		f.mu.RUnlock()
		return errRetryNow
	}
	gen, stg := c.gen, c.stg
	L := max(0, min(C, f.size.Load()-c.idx*C))
	plain := (*pb)[:L]
	c.cut = C
	var asmErr error
	for b := int64(0); b*B < L && asmErr == nil; b++ {
		seg := plain[b*B : min(L, b*B+B)]
		switch {
		case stg.has(b):
			var p []byte
			p, asmErr = stg.readBlock(seg[:0:len(seg)], b)
			if asmErr == nil && len(p) < len(seg) {
				asmErr = fmt.Errorf("staged block %d has %d bytes", b, len(p))
			}
			if asmErr == nil && &p[0] != &seg[0] {
				copy(seg, p)
			}
			if asmErr != nil && !keyGone(asmErr) {
				s.log.Error("content: cannot read a staged block (local staging file damaged)",
					"staging", stg.name, "ino", f.ino, "chunk", c.idx, "block", b, "err", asmErr)
			}
		case base != nil && b*B < c.baseLimit:
			blk, ok := got[b]
			if !ok {
				var g map[int64][]byte
				if g, asmErr = s.loadBlocks(ctx, f, base, []int64{b}); asmErr != nil {
					asmErr = s.readFailed(ctx, f, c.idx, base, asmErr)
					break
				}
				blk = g[b]
			}
			asmErr = s.cache.use(pgen, func() error {
				v := min(int64(len(blk)), c.baseLimit-b*B)
				n := copy(seg, blk[:v])
				clear(seg[n:])
				return nil
			})
		default:
			clear(seg)
		}
	}
	c.mu.Unlock()
	f.mu.RUnlock()
	if asmErr != nil {
		clear(plain)
		return asmErr
	}

	// Seal under a fresh id (an object id is sealed exactly once) and put.
	zero := allZero(plain)
	var id format.ID
	if !zero {
		var err error
		if id, err = format.NewID(); err != nil {
			clear(plain)
			return err
		}
		dek, err := f.dekFor(ctx, 0)
		if err != nil {
			clear(plain)
			return err
		}
		ob := getBuf(&objBufPool, 0)
		defer objBufPool.Put(ob)
		var obj []byte
		err = dek.Use(func(k []byte) error {
			ciph, err := format.NewCipher(k, format.Binding{Volume: s.volID, File: f.id, Object: id}, s.layout)
			if err != nil {
				return err
			}
			defer ciph.Wipe()
			obj, err = ciph.SealChunk((*ob)[:0], plain)
			return err
		})
		clear(plain)
		if err != nil {
			return fmt.Errorf("seal inode %d chunk %d: %w", f.ino, c.idx, err)
		}
		*ob = obj[:0]
		s.seal.object(id)
		if err := s.remote.Put(ctx, format.ObjectName(id), obj); err != nil {
			return err
		}
	}
	return u.commit(c, base, gen, stg, id, L, zero)
}

// commit records an uploaded chunk (or a chunk that turned out all zeros,
// which is dropped instead of stored) in one catalog transaction.
func (u *uploader) commit(c *chunk, base *baseObj, gen uint64, stg *staging, id format.ID, L int64, zero bool) error {
	s := u.dp
	f := c.f
	ctx := s.bg
	f.mu.RLock()
	defer f.mu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	f.commitMu.Lock()
	defer f.commitMu.Unlock()
	now := time.Now().UnixNano()
	orphan := func() {
		if !zero {
			if err := s.cat.EnqueueDelete(ctx, meta.ObjectName(id), now, now); err != nil {
				s.log.Warn("content: could not queue an unused object for deletion", "object", format.ObjectName(id), "err", err)
			}
			s.del.kick()
		}
	}
	if c.dead || f.discarded.Load() || c.base != base {
		orphan()
		return nil
	}
	clean := c.gen == gen && c.stg == stg
	newSize, mtime := f.size.Load(), f.mtime.Load()
	err := s.cat.Update(ctx, func(tx *meta.Tx) error {
		if zero {
			if _, err := tx.DropChunks(f.ino, c.idx, c.idx+1, now); err != nil {
				return err
			}
			if _, err := tx.SetChunks(f.ino, nil, newSize, mtime); err != nil {
				return err
			}
		} else {
			ch := meta.Chunk{Index: c.idx, Object: id, Length: L, KeyVersion: f.keyVersion()}
			if _, err := tx.SetChunks(f.ino, []meta.Chunk{ch}, newSize, mtime); err != nil {
				return err
			}
		}
		if clean {
			return tx.CompleteUpload(stg.upload)
		}
		return nil
	})
	if err != nil {
		orphan()
		if errors.Is(err, syscall.ENOENT) {
			if _, gerr := s.cat.GetInode(ctx, f.ino); errors.Is(gerr, syscall.ENOENT) {
				// The inode is gone (reaped without Discard): nothing to keep.
				s.log.Warn("content: dropping staged data of a deleted inode", "ino", f.ino, "chunk", c.idx)
				c.dead = true
				s.dropStaging(c)
				u.forget(c)
				_ = s.cat.CompleteUpload(ctx, stg.upload)
				return nil
			}
		}
		return metaErr(err, "record upload of inode %d chunk %d", f.ino, c.idx)
	}
	f.committedSize.Store(newSize)
	f.committedMtime.Store(mtime)
	old := c.base
	if zero {
		c.base, c.baseLimit = nil, 0
	} else {
		c.base = &baseObj{row: meta.Chunk{Index: c.idx, Object: id, Length: L, KeyVersion: f.keyVersion()}, id: id}
		c.baseLimit = min(L, c.cut)
	}
	if old != nil {
		old.wipe() // readers still on it see ErrWiped, notice the new base and retry
	}
	c.committedGen = gen
	if clean {
		s.dropStaging(c)
	} else {
		stg.hdr.limit = c.hdrLimit()
		if err := stg.writeHeader(); err != nil {
			s.log.Warn("content: could not update a staging header", "staging", stg.name, "err", err)
		}
	}
	if old != nil || zero {
		s.del.kick()
	}
	return nil
}
