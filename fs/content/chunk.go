package content

import (
	"context"
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

	// upload scheduling, under uploader.schedMu
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
	if f.s.hasLost.Load() {
		lost, err := f.s.cat.IsLost(ctx, f.ino, c.idx)
		if err != nil {
			return metaErr(err, "read upload queue of inode %d", f.ino)
		}
		if lost {
			return errnof(syscall.EIO, "inode %d chunk %d: its newest data was staged on a host that was lost and never reached the remote "+
				"(coffer fsck --repair truncates the file to its last uploaded content)", f.ino, c.idx)
		}
	}
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
