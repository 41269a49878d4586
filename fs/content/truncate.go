package content

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"coffer/fs/meta"
)

// Truncate sets the size of regular file ino (setattr size), whether or
// not it is open: bytes past the new end are gone, a grown file reads as
// zeros there. The new size and mtime are committed to the catalog (not
// durably). The node layer must not also pass the size to meta.SetAttr.
func (s *DataPath) Truncate(ctx context.Context, ino uint64, size int64) error {
	f, err := s.acquire(ctx, ino, false)
	if err != nil {
		return err
	}
	defer s.drop(f, false)
	if s.keys.Locked() {
		// Cutting into a block rewrites it: refuse before changing anything.
		return errLocked("truncate inode %d", ino)
	}
	w := s.wipes.Load()
	if err := f.truncate(ctx, size); err != nil {
		if s.lockedDuring(err, w) {
			return errLocked("truncate inode %d", ino)
		}
		return err
	}
	return nil
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

func (f *File) truncate(ctx context.Context, size int64) error {
	s := f.s
	switch {
	case size < 0:
		return errnof(syscall.EINVAL, "truncate inode %d to %d", f.ino, size)
	case size > MaxFileSize:
		return errnof(syscall.EFBIG, "truncate inode %d: past the largest file size", f.ino)
	}
	if err := f.checkLive(); err != nil {
		return err
	}
	C := s.layout.ChunkSize
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.size.Load()
	now := time.Now().UnixNano()
	var dropped []*chunk
	if size < old {
		// The chunk across the new end first: its staging file must record
		// the cut before the catalog hears of the smaller size.
		if in := size % C; in != 0 {
			c := f.chunk(size / C)
			c.mu.Lock()
			err := f.cutChunk(ctx, c, in)
			c.mu.Unlock()
			if err != nil {
				return err
			}
		}
		dropped = f.killChunks(ceilDiv(size, C), -1)
		f.floor = min(f.floor, size)
	}
	f.size.Store(size)
	f.mtime.Store(now)
	return f.commitDrop(ctx, dropped, func(tx *meta.Tx) error {
		_, err := tx.SetAttr(f.ino, meta.AttrChange{Size: &size, Mtime: &now}, now)
		return err
	}, size, now, "truncate")
}

// killChunks marks the in-memory chunks with from <= idx < to (to < 0: no
// bound) dead and forgets them; it returns those with staging files, whose
// queue rows and files the caller removes. f.mu is held exclusively.
func (f *File) killChunks(from, to int64) []*chunk {
	f.cmu.Lock()
	var cs []*chunk
	for k, c := range f.chunks {
		if k >= from && (to < 0 || k < to) {
			cs = append(cs, c)
			delete(f.chunks, k)
		}
	}
	f.cmu.Unlock()
	var staged []*chunk
	for _, c := range cs {
		c.mu.Lock()
		c.dead = true
		if c.stg != nil {
			staged = append(staged, c)
		}
		if c.base != nil {
			c.base.wipe()
		}
		c.mu.Unlock()
	}
	return staged
}

// commitDrop runs the catalog change fn together with taking the upload
// rows of the dropped chunks off the queue, records the committed size and
// mtime, then removes the dropped chunks' staging files (also if the
// commit failed: their content is gone either way, and Recover clears rows
// whose file is missing).
func (f *File) commitDrop(ctx context.Context, dropped []*chunk, fn func(tx *meta.Tx) error, size, mtime int64, what string) error {
	s := f.s
	f.commitMu.Lock()
	err := s.cat.Update(ctx, func(tx *meta.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		for _, c := range dropped {
			if err := tx.CompleteUpload(c.stg.upload); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		f.committedSize.Store(size)
		f.committedMtime.Store(mtime)
	}
	f.commitMu.Unlock()
	for _, c := range dropped {
		c.mu.Lock()
		s.dropStaging(c)
		s.up.forget(c)
		c.mu.Unlock()
	}
	s.del.kick()
	s.up.notify()
	if err != nil {
		return metaErr(err, "%s inode %d", what, f.ino)
	}
	return nil
}

// Allocate is fallocate(2): mode 0 extends the size (no preallocation is
// needed: chunks are written when data arrives), KEEP_SIZE alone does
// nothing, PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (with or without KEEP_SIZE)
// make the range read as zeros, dropping whole chunks. Other modes are
// EOPNOTSUPP.
func (f *File) Allocate(ctx context.Context, off, n int64, mode uint32) error {
	w := f.s.wipes.Load()
	if err := f.allocate(ctx, off, n, mode); err != nil {
		if f.s.lockedDuring(err, w) {
			return errLocked("fallocate inode %d", f.ino)
		}
		return err
	}
	return nil
}

func (f *File) allocate(ctx context.Context, off, n int64, mode uint32) error {
	if f.s.keys.Locked() {
		return errLocked("fallocate inode %d", f.ino)
	}
	if off < 0 || n <= 0 {
		return errnof(syscall.EINVAL, "fallocate inode %d: offset %d length %d", f.ino, off, n)
	}
	if off > MaxFileSize-n {
		return errnof(syscall.EFBIG, "fallocate inode %d: past the largest file size", f.ino)
	}
	if err := f.checkLive(); err != nil {
		return err
	}
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		if keep {
			return nil
		}
		return f.extend(ctx, off+n)
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keep {
			return errnof(syscall.EINVAL, "fallocate inode %d: PUNCH_HOLE needs KEEP_SIZE", f.ino)
		}
		return f.zeroRange(ctx, off, off+n, false)
	case unix.FALLOC_FL_ZERO_RANGE:
		return f.zeroRange(ctx, off, off+n, !keep)
	}
	return errnof(syscall.EOPNOTSUPP, "fallocate inode %d: mode %#x not supported", f.ino, mode)
}

// extend grows the file to end bytes (holes), if it is shorter.
func (f *File) extend(ctx context.Context, end int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end <= f.size.Load() {
		return nil
	}
	now := time.Now().UnixNano()
	f.size.Store(end)
	f.mtime.Store(now)
	return f.commitDrop(ctx, nil, func(tx *meta.Tx) error {
		_, err := tx.SetAttr(f.ino, meta.AttrChange{Size: &end, Mtime: &now}, now)
		return err
	}, end, now, "fallocate")
}

// zeroRange makes [lo, hi) read as zeros: chunks wholly inside are dropped
// (no row, no object), the ends are written as zeros. With grow, the file
// is extended to hi.
func (f *File) zeroRange(ctx context.Context, lo, hi int64, grow bool) error {
	s := f.s
	C := s.layout.ChunkSize
	f.mu.Lock()
	defer f.mu.Unlock()
	size := f.size.Load()
	end := min(hi, size)
	var drops [][2]int64 // runs of whole chunks [from, to)
	for pos := lo; pos < end; {
		k := pos / C
		segEnd := min(end, (k+1)*C)
		if pos == k*C && (segEnd == (k+1)*C || segEnd == size) {
			if n := len(drops); n > 0 && drops[n-1][1] == k {
				drops[n-1][1] = k + 1
			} else {
				drops = append(drops, [2]int64{k, k + 1})
			}
		} else if err := f.writeChunk(ctx, f.chunk(k), pos-k*C, nil, segEnd-pos); err != nil {
			return err
		}
		pos = segEnd
	}
	var dropped []*chunk
	for _, r := range drops {
		dropped = append(dropped, f.killChunks(r[0], r[1])...)
	}
	now := time.Now().UnixNano()
	newSize := size
	if grow && hi > size {
		newSize = hi
	}
	f.size.Store(newSize)
	f.mtime.Store(now)
	return f.commitDrop(ctx, dropped, func(tx *meta.Tx) error {
		for _, r := range drops {
			if _, err := tx.DropChunks(f.ino, r[0], r[1], now); err != nil {
				return err
			}
		}
		_, err := tx.SetAttr(f.ino, meta.AttrChange{Size: &newSize, Mtime: &now}, now)
		return err
	}, newSize, now, "fallocate")
}

// Seek answers lseek(2) with SEEK_DATA (3) and SEEK_HOLE (4) at chunk
// granularity (a chunk with an object or staged data is data, up to the
// end of its object's content); SEEK_SET and SEEK_END are answered too.
// Offsets at or past the end are ENXIO.
func (f *File) Seek(ctx context.Context, off int64, whence int) (int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	size := f.size.Load()
	switch whence {
	case 0:
		if off < 0 {
			return 0, errnof(syscall.EINVAL, "seek inode %d to %d", f.ino, off)
		}
		return off, nil
	case 2:
		if size+off < 0 {
			return 0, errnof(syscall.EINVAL, "seek inode %d to end%+d", f.ino, off)
		}
		return size + off, nil
	case unix.SEEK_DATA, unix.SEEK_HOLE:
	default:
		return 0, errnof(syscall.EINVAL, "seek inode %d: whence %d", f.ino, whence)
	}
	if off < 0 || off >= size {
		return 0, errnof(syscall.ENXIO, "seek inode %d: offset %d is not inside the %d-byte file", f.ino, off, size)
	}
	exts, err := f.dataExtents(ctx, off/f.s.layout.ChunkSize, size)
	if err != nil {
		return 0, err
	}
	if whence == unix.SEEK_DATA {
		for _, e := range exts {
			if e[1] > off {
				return max(off, e[0]), nil
			}
		}
		return 0, errnof(syscall.ENXIO, "seek inode %d: no data after %d", f.ino, off)
	}
	pos := off
	for _, e := range exts {
		if e[0] > pos {
			break
		}
		pos = max(pos, e[1])
	}
	return min(pos, size), nil
}

// dataExtents lists the file's data regions from chunk from on, sorted and
// merged, clipped to size. f.mu is held.
func (f *File) dataExtents(ctx context.Context, from, size int64) ([][2]int64, error) {
	C := f.s.layout.ChunkSize
	rows, err := f.s.cat.Chunks(ctx, f.ino, from, -1)
	if err != nil {
		return nil, metaErr(err, "seek inode %d", f.ino)
	}
	ext := map[int64]int64{} // chunk -> data bytes from its start
	for _, r := range rows {
		ext[r.Index] = min(r.Length, max(0, f.floor-r.Index*C))
	}
	for _, c := range f.allChunks() {
		if c.idx < from {
			continue
		}
		c.mu.RLock()
		switch {
		case c.stg != nil:
			ext[c.idx] = C
		case c.loaded && c.base != nil:
			ext[c.idx] = c.baseLimit
		case c.loaded:
			delete(ext, c.idx)
		}
		c.mu.RUnlock()
	}
	keys := make([]int64, 0, len(ext))
	for k, n := range ext {
		if n > 0 && k*C < size {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out [][2]int64
	for _, k := range keys {
		e := [2]int64{k * C, min(size, k*C+ext[k])}
		if n := len(out); n > 0 && out[n-1][1] >= e[0] {
			out[n-1][1] = max(out[n-1][1], e[1])
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Discard forgets an inode that is being reaped (no links, last close):
// its staged data and pending uploads are dropped and its keys wiped. An
// upload already running puts an object nobody refers to, which is queued
// for deletion. Call it before meta.Catalog.Reap.
func (s *DataPath) Discard(ctx context.Context, ino uint64) error {
	s.mu.Lock()
	f := s.files[ino]
	s.mu.Unlock()
	if f != nil {
		<-f.ready
		if f.loadErr != nil {
			f = nil
		}
	}
	if f == nil {
		return s.discardRows(ctx, ino)
	}
	f.discarded.Store(true)
	f.mu.Lock()
	dropped := f.killChunks(0, -1)
	f.mu.Unlock()
	var err error
	if len(dropped) > 0 { // no empty write transaction per unlinked file
		f.commitMu.Lock()
		err = s.cat.Update(ctx, func(tx *meta.Tx) error {
			for _, c := range dropped {
				if err := tx.CompleteUpload(c.stg.upload); err != nil && !errors.Is(err, syscall.ENOENT) {
					return err
				}
			}
			return nil
		})
		f.commitMu.Unlock()
	}
	for _, c := range dropped {
		c.mu.Lock()
		s.dropStaging(c)
		s.up.forget(c)
		c.mu.Unlock()
	}
	s.mu.Lock()
	if !f.gone {
		f.gone = true
		delete(s.files, ino)
	}
	s.mu.Unlock()
	f.wipe()
	if fk, ok := s.keys.(interface{ Forget([16]byte) }); ok {
		fk.Forget(f.id)
	}
	s.up.notify()
	if err != nil {
		return metaErr(err, "discard inode %d", ino)
	}
	return s.discardRows(ctx, ino)
}

// discardRows removes queue rows (and their staging files) of ino that no
// live chunk holds (an inode never opened since the last mount).
func (s *DataPath) discardRows(ctx context.Context, ino uint64) error {
	ups, err := s.cat.UploadsOf(ctx, ino)
	if err != nil {
		return metaErr(err, "discard inode %d", ino)
	}
	for _, u := range ups {
		s.mu.Lock()
		inUse := s.stgNames[u.Staging]
		s.mu.Unlock()
		if inUse {
			continue
		}
		if _, err := parseStagingName(u.Staging); err == nil {
			_ = os.Remove(filepath.Join(s.dir, u.Staging))
		}
		if err := s.cat.CompleteUpload(ctx, u.ID); err != nil && !errors.Is(err, syscall.ENOENT) {
			return metaErr(err, "discard inode %d", ino)
		}
	}
	return nil
}

// cutChunk truncates chunk c to in bytes (0 < in < ChunkSize): staged
// blocks past it go, a staged block across it loses its tail, and the base
// object is masked from in on (and rewritten later). f.mu held exclusively,
// c.mu held.
func (f *File) cutChunk(ctx context.Context, c *chunk, in int64) error {
	s := f.s
	B := int64(s.layout.BlockSize)
	if err := c.ensureLoaded(ctx); err != nil {
		return err
	}
	changed := false
	// What needs the file's key comes first (rewriting the block across
	// the cut, creating a staging file), so that a failure there (coffer
	// lock, a full disk) leaves the chunk as it was.
	if c.stg != nil {
		if b := in / B; in%B != 0 && c.stg.has(b) {
			bp := getSlotBuf(B)
			defer putSlotBuf(bp)
			plain := (*bp)[:B]
			if err := c.oldBlock(ctx, b, plain); err != nil {
				return err
			}
			clear(plain[in%B:])
			err := c.stg.writeBlock(b, plain)
			clear(plain)
			if err != nil {
				return localErr(err, "truncate inode %d chunk %d: staging file", f.ino, c.idx)
			}
			changed = true
		}
		for b := (in + B - 1) / B; b < s.layout.BlocksPerChunk(); b++ {
			if c.stg.has(b) {
				if err := c.stg.clearBlock(b); err != nil {
					return localErr(err, "truncate inode %d chunk %d: staging file", f.ino, c.idx)
				}
				s.staged.Add(-s.slot)
				changed = true
			}
		}
	}
	if c.base != nil && c.baseLimit > in {
		if c.stg == nil {
			// The object still holds bytes past the cut: a staging file
			// (even with no blocks) records the cut and gets the chunk
			// rewritten, so the stale tail can never come back.
			st, err := s.createStaging(ctx, c, stagingHeader{limit: in, extent: in})
			if err != nil {
				return err
			}
			c.stg = st
			f.dirtyChunks.Add(1)
		}
		c.baseLimit = in
		changed = true
	}
	c.cut = min(c.cut, in)
	if c.stg != nil {
		c.stg.hdr.limit = c.hdrLimit()
		c.stg.hdr.extent = min(c.stg.hdr.extent, in)
		if err := c.stg.writeHeader(); err != nil {
			return localErr(err, "truncate inode %d chunk %d: staging header", f.ino, c.idx)
		}
	}
	if changed {
		c.gen++
		if c.stg != nil {
			s.up.touched(c)
		}
	}
	return nil
}
