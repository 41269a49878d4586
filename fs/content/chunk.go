package content

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
)

// chunk is the in-memory state of one chunk of an open file: the committed
// object it is based on (if any), how much of that object is still valid,
// and the staging file holding blocks written since (if any).
type chunk struct {
	f   *File
	idx int64

	mu        sync.RWMutex
	loaded    bool     // base and baseLimit read from the catalog
	dead      bool     // dropped (truncate, punch, discard): an upload in flight must not commit
	base      *baseObj // committed object; nil = none (a hole, or never written)
	baseLimit int64    // bytes of base still valid; the rest reads as zeros
	stg       *staging // staged blocks; nil = clean
	gen       uint64   // bumped by every change to staged content
	// committedGen is the generation whose content the catalog now holds:
	// fsync waits for it to reach the generation it saw.
	committedGen uint64
	// cut is the lowest in-chunk truncation since the last upload snapshot:
	// the object that upload commits is valid only below it.
	cut int64

	// upload scheduling, under DataPath.schedMu
	dueAt      time.Time
	firstDirty time.Time
	queued     bool // handed to (or held by) an uploader
	urgent     bool // fsync, release or pressure: upload again at once if still dirty
	failures   int
}

// baseObj is a committed chunk object and its cipher (built on first use).
type baseObj struct {
	row    meta.Chunk
	id     format.ID
	cipher atomic.Pointer[format.Cipher]
}

func (b *baseObj) wipe() {
	if c := b.cipher.Swap(nil); c != nil {
		c.Wipe()
	}
}

func (b *baseObj) name() string { return format.ObjectName(b.id) }

// cipherFor returns the cipher of base object b of file f.
func (f *File) cipherFor(ctx context.Context, b *baseObj) (*format.Cipher, error) {
	if c := b.cipher.Load(); c != nil {
		return c, nil
	}
	kgen := f.keyGen.Load()
	dek, err := f.dekFor(ctx, b.row.KeyVersion)
	if err != nil {
		return nil, err
	}
	var c *format.Cipher
	err = dek.Use(func(k []byte) error {
		var err error
		c, err = format.NewCipher(k, format.Binding{Volume: f.s.volID, File: f.id, Object: b.id}, f.s.layout)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !b.cipher.CompareAndSwap(nil, c) {
		c.Wipe()
		c = b.cipher.Load()
	}
	if c == nil || keysMoved(&f.keyGen, kgen) {
		// WipeKeys ran meanwhile and may have missed it: take it back.
		if c != nil && b.cipher.CompareAndSwap(c, nil) {
			c.Wipe()
		}
		return nil, fmt.Errorf("object %s: cipher: %w", b.name(), keys.ErrWiped)
	}
	return c, nil
}

// ensureLoaded reads the chunk's catalog row. Called with c.mu held
// exclusively and f.mu held (either way).
func (c *chunk) ensureLoaded(ctx context.Context) error {
	if c.loaded {
		return nil
	}
	f := c.f
	C := f.s.layout.ChunkSize
	c.cut = C
	if f.noRows {
		c.loaded = true
		return nil
	}
	rows, err := f.s.cat.Chunks(ctx, f.ino, c.idx, c.idx+1)
	if err != nil {
		return metaErr(err, "read chunk list of inode %d", f.ino)
	}
	if len(rows) == 1 {
		row := rows[0]
		if row.Length < 1 || row.Length > C {
			f.s.log.Error("content: catalog chunk row has an impossible length", "ino", f.ino, "chunk", c.idx,
				"object", format.ObjectName(format.ID(row.Object)), "length", row.Length)
			return errnof(syscall.EIO, "inode %d chunk %d: bad chunk length %d in the catalog", f.ino, c.idx, row.Length)
		}
		c.base = &baseObj{row: row, id: format.ID(row.Object)}
		// A row can outlast a truncation that cut into it (the rewrite is
		// uploaded later); never read past the size the catalog gave.
		c.baseLimit = min(row.Length, max(0, f.floor-c.idx*C))
	}
	c.loaded = true
	return nil
}

// load makes sure the chunk's row is loaded, taking the lock as needed.
func (c *chunk) load(ctx context.Context) error {
	c.mu.RLock()
	ok := c.loaded
	c.mu.RUnlock()
	if ok {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ensureLoaded(ctx)
}

// hdrLimit is the staging header's limit for the chunk's current state.
func (c *chunk) hdrLimit() int64 {
	if c.base != nil {
		return c.baseLimit
	}
	return c.f.s.layout.ChunkSize
}

// isZero reports whether block b certainly reads as zeros. c.mu held.
func (c *chunk) isZero(b int64) bool {
	if c.stg != nil && c.stg.has(b) {
		return false
	}
	return c.base == nil || b*int64(c.f.s.layout.BlockSize) >= c.baseLimit
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
	s.touched(c)
	if s.staged.Load() > s.opt.StagingCap/2 {
		// Past half the cap: this chunk goes now, and every other soon.
		s.expedite(c)
		s.pressure()
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
			s.touched(c)
		}
	}
	return nil
}
