package content

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// WriteAt writes p at off into staging. It fails with ENOSPC when the
// staging area is at its cap (a write spanning chunks may then have written
// a prefix, whose length it returns), and with EKEYREVOKED while the volume
// is locked. It updates size and mtime in memory.
func (f *File) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	w := f.s.wipes.Load()
	n, err := f.writeAt(ctx, p, off)
	if err != nil && f.s.lockedDuring(err, w) {
		err = errLocked("write inode %d", f.ino)
	}
	return n, err
}

func (f *File) writeAt(ctx context.Context, p []byte, off int64) (int, error) {
	if f.s.keys.Locked() {
		return 0, errLocked("write inode %d", f.ino)
	}
	if off < 0 {
		return 0, errnof(syscall.EINVAL, "write inode %d at negative offset %d", f.ino, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off > MaxFileSize-int64(len(p)) {
		return 0, errnof(syscall.EFBIG, "write inode %d: past the largest file size", f.ino)
	}
	if err := f.checkLive(); err != nil {
		return 0, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	C := f.s.layout.ChunkSize
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		k, in := pos/C, pos%C
		m := int(min(int64(len(p)-done), C-in))
		if err := f.writeChunk(ctx, f.chunk(k), in, p[done:done+m], int64(m)); err != nil {
			if done > 0 {
				f.mtime.Store(time.Now().UnixNano())
			}
			return done, err
		}
		done += m
	}
	f.mtime.Store(time.Now().UnixNano())
	return done, nil
}

// writeChunk writes data (nil: zeros) over chunk bytes [in, in+n) into
// staging. f.mu is held (either way).
func (f *File) writeChunk(ctx context.Context, c *chunk, in int64, data []byte, n int64) error {
	s := f.s
	B := int64(s.layout.BlockSize)
	C := s.layout.ChunkSize
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureLoaded(ctx); err != nil {
		return err
	}
	if c.dead {
		return errnof(syscall.ESTALE, "write inode %d chunk %d: dropped", f.ino, c.idx)
	}
	first, last := in/B, (in+n-1)/B
	var newSlots int64
	touched := false
	for b := first; b <= last; b++ {
		if data == nil && c.isZero(b) {
			continue
		}
		touched = true
		if c.stg == nil || !c.stg.has(b) {
			newSlots++
		}
	}
	if !touched {
		return nil
	}
	reserved := newSlots * s.slot
	if err := s.reserve(reserved); err != nil {
		return &Error{Errno: syscall.ENOSPC, Op: "write inode " + itoa(f.ino) + ": staging area full (the remote is not taking uploads fast enough, or is down)", Err: err}
	}
	defer func() { s.staged.Add(-reserved) }() // give back what was not used
	if c.stg == nil {
		st, err := s.createStaging(ctx, c, stagingHeader{limit: c.hdrLimit()})
		if err != nil {
			return err
		}
		c.stg = st
		f.dirtyChunks.Add(1)
	}
	bp := getSlotBuf(B)
	defer putSlotBuf(bp)
	plain := (*bp)[:B]
	for b := first; b <= last; b++ {
		if data == nil && c.isZero(b) {
			continue
		}
		bStart := b * B
		lo, hi := max(in, bStart)-bStart, min(in+n, bStart+B)-bStart
		if lo != 0 || hi != B {
			if err := c.oldBlock(ctx, b, plain); err != nil {
				return err
			}
		}
		if data != nil {
			copy(plain[lo:hi], data[bStart+lo-in:bStart+hi-in])
		} else {
			clear(plain[lo:hi])
		}
		was := c.stg.has(b)
		if err := c.stg.writeBlock(b, plain); err != nil {
			c.gen++
			return localErr(err, "write inode %d chunk %d: staging file", f.ino, c.idx)
		}
		if !was {
			reserved -= s.slot
		}
	}
	clear(plain)
	c.gen++
	if end := in + n; data != nil && end > c.stg.hdr.extent {
		c.stg.hdr.extent = end
		if err := c.stg.writeHeader(); err != nil {
			return localErr(err, "write inode %d chunk %d: staging header", f.ino, c.idx)
		}
	}
	if data != nil {
		// Under the chunk lock, so an upload snapshot that sees the new
		// blocks also sees the size that covers them.
		f.growSize(c.idx*C + in + n)
	}
	s.up.touched(c)
	if s.staged.Load() > s.opt.StagingCap/2 {
		// Past half the cap: this chunk goes now, and every other soon.
		s.up.expedite(c)
		s.up.pressure()
	}
	return nil
}

// oldBlock fills plain (BlockSize bytes) with block b's current content.
// c.mu held exclusively.
func (c *chunk) oldBlock(ctx context.Context, b int64, plain []byte) error {
	f := c.f
	s := f.s
	B := int64(s.layout.BlockSize)
	switch {
	case c.stg != nil && c.stg.has(b):
		p, err := c.stg.readBlock(plain[:0], b)
		if err != nil && keyGone(err) {
			return fmt.Errorf("write inode %d chunk %d: staged block %d: %w", f.ino, c.idx, b, err)
		}
		if err != nil {
			s.log.Error("content: cannot read a staged block (local staging file damaged)",
				"staging", c.stg.name, "ino", f.ino, "chunk", c.idx, "block", b, "err", err)
			return errnof(syscall.EIO, "write inode %d chunk %d: staged block %d unreadable", f.ino, c.idx, b)
		}
		if len(p) != int(B) {
			return errnof(syscall.EIO, "write inode %d chunk %d: staged block %d has %d bytes", f.ino, c.idx, b, len(p))
		}
	case c.base != nil && b*B < c.baseLimit:
		pgen := s.cache.gen.Load()
		got, err := s.loadBlocks(ctx, f, c.base, []int64{b})
		if err != nil {
			return s.readFailed(ctx, f, c.idx, c.base, err)
		}
		return s.cache.use(pgen, func() error {
			blk := got[b]
			v := min(int64(len(blk)), c.baseLimit-b*B)
			n := copy(plain, blk[:v])
			clear(plain[n:])
			return nil
		})
	default:
		clear(plain)
	}
	return nil
}

// reserve takes n bytes of the staging cap, or fails (ENOSPC for the
// caller). Past half the cap every dirty chunk is sent to upload now.
func (s *DataPath) reserve(n int64) error {
	if n == 0 {
		return nil
	}
	for {
		cur := s.staged.Load()
		if cur+n > s.opt.StagingCap {
			s.up.pressure()
			return fmt.Errorf("%d of %d bytes staged: %w", cur, s.opt.StagingCap, syscall.ENOSPC)
		}
		if s.staged.CompareAndSwap(cur, cur+n) {
			return nil
		}
	}
}
