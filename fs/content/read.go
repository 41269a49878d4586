package content

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// ReadAt reads len(dst) bytes at off. It returns fewer only at the end of
// the file. Errors carry an errno (EIO for remote or integrity failures,
// EKEYREVOKED while the volume is locked).
func (f *File) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	w := f.s.wipes.Load()
	n, err := f.readAt(ctx, dst, off)
	if err != nil && f.s.lockedDuring(err, w) {
		err = errLocked("read inode %d", f.ino)
	}
	return n, err
}

func (f *File) readAt(ctx context.Context, dst []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errnof(syscall.EINVAL, "read inode %d at negative offset %d", f.ino, off)
	}
	if err := f.checkLive(); err != nil {
		return 0, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	size := f.size.Load()
	if off >= size || len(dst) == 0 {
		return 0, nil
	}
	n := int(min(int64(len(dst)), size-off))
	dst = dst[:n]
	f.noteRead(ctx, off, int64(n), size)
	C := f.s.layout.ChunkSize
	done := 0
	for done < n {
		pos := off + int64(done)
		k, in := pos/C, pos%C
		m := int(min(int64(n-done), C-in))
		if err := f.readChunk(ctx, f.chunk(k), in, dst[done:done+m]); err != nil {
			return done, err
		}
		done += m
	}
	return n, nil
}

// readChunk reads chunk bytes [in, in+len(dst)). f.mu is held shared.
func (f *File) readChunk(ctx context.Context, c *chunk, in int64, dst []byte) error {
	s := f.s
	B := int64(s.layout.BlockSize)
	if err := c.load(ctx); err != nil {
		return err
	}
	first, last := in/B, (in+int64(len(dst))-1)/B
	for attempt := 0; ; attempt++ {
		pgen := s.cache.gen.Load() // before looking blocks up (see blockCache.use)
		c.mu.RLock()
		base := c.base
		var need []int64
		if base != nil {
			for b := first; b <= last && b*B < c.baseLimit; b++ {
				if c.stg == nil || !c.stg.has(b) {
					need = append(need, b)
				}
			}
		}
		if len(need) == 0 {
			err := c.assemble(dst, in, nil)
			c.mu.RUnlock()
			if err != nil && keyGone(err) && !s.keys.Locked() && attempt < 8 {
				continue // WipeKeys without a lock: the key comes back through the keyring
			}
			return err
		}
		c.mu.RUnlock()
		// The object is immutable: fetch it without holding the chunk.
		got, err := s.loadBlocks(ctx, f, base, need)
		c.mu.RLock()
		changed := c.base != base
		if err == nil && !changed {
			err = s.cache.use(pgen, func() error { return c.assemble(dst, in, got) })
			c.mu.RUnlock()
			if errors.Is(err, errMissingBlock) {
				if attempt < 8 {
					continue
				}
				return ioErr(ctx, err, "read inode %d chunk %d", f.ino, c.idx)
			}
			if err != nil && keyGone(err) && !s.keys.Locked() && attempt < 8 {
				continue
			}
			return err
		}
		c.mu.RUnlock()
		if changed && attempt < 8 {
			continue // an upload replaced the object meanwhile (and may have deleted the old one)
		}
		if err != nil && keyGone(err) && !s.keys.Locked() && attempt < 8 {
			continue // a key wiped under the fetch (WipeKeys, or a commit): open it again
		}
		return s.readFailed(ctx, f, c.idx, base, err)
	}
}

var errMissingBlock = errors.New("base block missing from the fetch")

// assemble copies chunk bytes [in, in+len(dst)) into dst from staged
// blocks, base blocks in got, and zeros. c.mu held.
func (c *chunk) assemble(dst []byte, in int64, got map[int64][]byte) error {
	f := c.f
	B := int64(f.s.layout.BlockSize)
	end := in + int64(len(dst))
	var plain []byte
	for b := in / B; b*B < end; b++ {
		bStart := b * B
		lo, hi := max(in, bStart), min(end, bStart+B)
		out := dst[lo-in : hi-in]
		switch {
		case c.stg != nil && c.stg.has(b):
			if plain == nil {
				plain = make([]byte, 0, B)
			}
			p, err := c.stg.readBlock(plain[:0], b)
			if err != nil && keyGone(err) {
				return fmt.Errorf("read inode %d chunk %d: staged block %d: %w", f.ino, c.idx, b, err)
			}
			if err != nil {
				f.s.log.Error("content: cannot read a staged block (local staging file damaged)",
					"staging", c.stg.name, "ino", f.ino, "chunk", c.idx, "block", b, "err", err)
				return errnof(syscall.EIO, "read inode %d chunk %d: staged block %d unreadable", f.ino, c.idx, b)
			}
			copy(out, p[lo-bStart:hi-bStart])
		case c.base != nil && bStart < c.baseLimit:
			blk, ok := got[b]
			if !ok {
				return errMissingBlock
			}
			v := min(int64(len(blk)), c.baseLimit-bStart) // valid bytes of the block
			n := 0
			if lo-bStart < v {
				n = copy(out, blk[lo-bStart:v])
			}
			clear(out[n:])
		default:
			clear(out)
		}
	}
	return nil
}
