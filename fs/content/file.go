package content

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// keyring is what the data path needs of keys.Keyring.
type keyring interface {
	FileKey(ctx context.Context, rec keys.Record, file [keys.IDSize]byte) (*keys.DEK, error)
	// Locked reports coffer lock: FileKey fails with keys.ErrLocked.
	Locked() bool
}

// File is the content of one regular file, shared by all its open handles
// (one per inode). It stays in memory while it has handles, internal pins
// or staged changes; then its size and mtime are committed and its keys
// wiped.
//
// Locking: mu is held shared by reads and writes of data and exclusively
// by truncation, hole punching and discard; each chunk has its own lock;
// commitMu orders the file's catalog commits so sizes never go backwards.
// Order: mu, then a chunk's mu, then commitMu. cmu (the chunk map) is a
// leaf: nothing is locked or waited for while it is held (walk allChunks).
// A caller that holds claimed cache blocks (flights others wait for) takes
// only leaf locks before it finishes them (keyMu, then the keyring and its
// provider; see claimPrefetch).
type File struct {
	s   *DataPath
	ino uint64

	ready   chan struct{} // closed once loaded
	loadErr error

	// under s.mu
	handles int
	pins    int
	gone    bool

	id  format.ID // the file's crypto identity (inode FileID)
	rec keys.Record

	mu    sync.RWMutex
	size  atomic.Int64
	mtime atomic.Int64
	floor int64 // under mu: catalog size at load, lowered by truncations
	// noRows: the catalog had no chunk row for the file at load. Rows then
	// only appear through this File's own chunks (a File lives until its
	// uploads are committed), so a chunk not in memory has none: no query.
	noRows bool

	cmu    sync.Mutex
	chunks map[int64]*chunk

	commitMu       sync.Mutex
	committedSize  atomic.Int64
	committedMtime atomic.Int64

	keyMu   sync.Mutex
	dek     *keys.DEK            // current key record's DEK; nil after WipeKeys
	oldDEKs map[uint32]*keys.DEK // derive mode: DEKs of older key versions still used by chunks
	freed   bool                 // keys wiped for good
	// keyGen is bumped by wipeKeys when it starts and when it ends (odd
	// while one runs; wipeMu serializes them). Whoever builds a DEK, cipher
	// or box reads it first and checks, after publishing the result, that
	// it was even and has not moved: a wipe that started later will find
	// the result, and one that overlapped is detected and the result taken
	// back. So nothing built concurrently with a wipe survives it.
	keyGen atomic.Uint64
	wipeMu sync.Mutex

	dirtyChunks atomic.Int64
	discarded   atomic.Bool

	raMu    sync.Mutex
	raNext  int64 // where a sequential read would continue
	raSeq   int   // consecutive sequential reads
	raAhead int64 // prefetched (or being prefetched) up to here
}

func newFile(s *DataPath, ino uint64) *File {
	return &File{s: s, ino: ino, ready: make(chan struct{}), chunks: make(map[int64]*chunk)}
}

// load reads the inode and its key record and opens the file's DEK.
func (f *File) load(ctx context.Context) error {
	s := f.s
	in, err := s.cat.GetInode(ctx, f.ino)
	if err != nil {
		return metaErr(err, "open inode %d", f.ino)
	}
	if !in.IsRegular() {
		if in.IsDir() {
			return errnof(syscall.EISDIR, "open inode %d: a directory has no content", f.ino)
		}
		return errnof(syscall.EINVAL, "open inode %d: not a regular file", f.ino)
	}
	if in.FileID == ([16]byte{}) {
		s.log.Error("content: regular file has no file id in the catalog", "ino", f.ino)
		return errnof(syscall.EIO, "open inode %d: no file id", f.ino)
	}
	kr, err := s.cat.GetKey(ctx, f.ino)
	if err != nil {
		s.log.Error("content: regular file has no key record", "ino", f.ino, "err", err)
		return ioErr(ctx, err, "open inode %d: key record", f.ino)
	}
	f.id = format.ID(in.FileID)
	f.rec = volume.RecordOf(kr)
	kgen := f.keyGen.Load()
	dek, err := s.keys.FileKey(ctx, f.rec, f.id)
	if err != nil {
		if s.keyLocked(err) {
			return errLocked("open inode %d", f.ino)
		}
		if ctx.Err() == nil {
			s.log.Error("content: cannot open the file's key (tampered or moved key record, or a missing KEK version)",
				"ino", f.ino, "kek", f.rec.KEK.String(), "err", err)
		}
		return ioErr(ctx, err, "open inode %d: file key", f.ino)
	}
	f.keyMu.Lock()
	if !keysMoved(&f.keyGen, kgen) {
		f.dek = dek
	} else {
		dek.Wipe() // WipeKeys ran meanwhile: the key is opened again on first use
	}
	f.keyMu.Unlock()
	f.size.Store(in.Size)
	f.mtime.Store(in.Mtime)
	f.floor = in.Size
	f.noRows = in.Stored == 0 // Stored sums the lengths of its chunk rows (each >= 1)
	f.committedSize.Store(in.Size)
	f.committedMtime.Store(in.Mtime)
	return nil
}

// keyVersion is the key version recorded with chunks sealed now.
func (f *File) keyVersion() uint32 {
	if f.rec.Mode == keys.ModeDerive {
		return f.rec.KEK.Version
	}
	return 0
}

// dekFor returns the DEK that sealed a chunk recorded with key version v
// (derive mode: an older version re-derived from the same salt). The
// returned DEK belongs to the File.
func (f *File) dekFor(ctx context.Context, v uint32) (*keys.DEK, error) {
	f.keyMu.Lock()
	defer f.keyMu.Unlock()
	if f.dek == nil {
		if f.freed {
			return nil, keys.ErrWiped
		}
		// WipeKeys (coffer lock) dropped it: open it again, which works
		// only once the keyring is usable again.
		d, err := f.s.keys.FileKey(ctx, f.rec, f.id)
		if err != nil {
			return nil, err
		}
		f.dek = d
	}
	if f.rec.Mode != keys.ModeDerive || v == 0 || v == f.rec.KEK.Version {
		return f.dek, nil
	}
	if d := f.oldDEKs[v]; d != nil {
		return d, nil
	}
	rec := f.rec
	rec.KEK.Version = v
	d, err := f.s.keys.FileKey(ctx, rec, f.id)
	if err != nil {
		return nil, err
	}
	if f.oldDEKs == nil {
		f.oldDEKs = make(map[uint32]*keys.DEK)
	}
	f.oldDEKs[v] = d
	return d, nil
}

// keyCount counts the file's DEKs in memory, for status. keyMu is held across a key
// provider call (dekFor): rather than wait behind an HSM call that may hang, a busy file
// counts as one key.
func (f *File) keyCount() int64 {
	if !f.keyMu.TryLock() {
		return 1
	}
	defer f.keyMu.Unlock()
	n := int64(len(f.oldDEKs))
	if f.dek != nil {
		n++
	}
	return n
}

// wipe zeroes the file's keys for good (the File is being forgotten).
func (f *File) wipe() {
	f.keyMu.Lock()
	f.freed = true
	f.keyMu.Unlock()
	f.wipeKeys()
}

// wipeKeys zeroes the file's DEKs and drops every cipher and staging box
// built from them; they are rebuilt on next use unless the File is freed.
func (f *File) wipeKeys() {
	f.wipeMu.Lock()
	defer f.wipeMu.Unlock()
	f.keyGen.Add(1)
	defer f.keyGen.Add(1)
	for _, c := range f.allChunks() { // one created meanwhile sees keyGen moved
		c.mu.RLock()
		if c.base != nil {
			c.base.wipe()
		}
		if c.stg != nil {
			c.stg.wipeBox()
		}
		c.mu.RUnlock()
	}
	f.keyMu.Lock()
	f.dek.Wipe()
	f.dek = nil
	for v, d := range f.oldDEKs {
		d.Wipe()
		delete(f.oldDEKs, v)
	}
	f.keyMu.Unlock()
}

// keysMoved reports whether a wipe overlapped the time since gen was read
// from g, a counter bumped when a wipe starts and when it ends (File.keyGen,
// blockCache.gen).
func keysMoved(g *atomic.Uint64, gen uint64) bool {
	return gen%2 == 1 || g.Load() != gen
}

// Size is the file's current size.
func (f *File) Size() int64 { return f.size.Load() }

// growSize raises the size to at least n.
func (f *File) growSize(n int64) {
	for {
		cur := f.size.Load()
		if n <= cur || f.size.CompareAndSwap(cur, n) {
			return
		}
	}
}

func (f *File) needsFlush() bool {
	return f.size.Load() != f.committedSize.Load() || f.mtime.Load() != f.committedMtime.Load()
}

// flush commits the in-memory size and mtime to the catalog if they changed
// (not durably: see meta.Catalog.Sync).
func (f *File) flush(ctx context.Context) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.commitMu.Lock()
	defer f.commitMu.Unlock()
	size, mtime := f.size.Load(), f.mtime.Load()
	if size == f.committedSize.Load() && mtime == f.committedMtime.Load() {
		return nil
	}
	if _, err := f.s.cat.SetAttr(ctx, f.ino, meta.AttrChange{Size: &size, Mtime: &mtime}, time.Now().UnixNano()); err != nil {
		return metaErr(err, "record size of inode %d", f.ino)
	}
	f.committedSize.Store(size)
	f.committedMtime.Store(mtime)
	return nil
}

// Flush is close(2) on a handle: the size and mtime go to the catalog (not
// necessarily durably); uploads are not waited for.
func (f *File) Flush(ctx context.Context) error {
	return f.flush(ctx)
}

// Release drops one handle. The last one asks for the file's dirty chunks
// to be uploaded now (without waiting); the keys are wiped once they are.
func (f *File) Release(ctx context.Context) error {
	s := f.s
	s.mu.Lock()
	f.handles--
	last := f.handles == 0
	s.mu.Unlock()
	if last {
		for _, t := range f.dirtyTargets() {
			s.up.expedite(t.c)
		}
	}
	s.maybeFree(f)
	return nil
}

// syncTarget is a chunk and the generation of its staged content that must
// be on the remote.
type syncTarget struct {
	c   *chunk
	gen uint64
}

// dirtyTargets lists the file's chunks with staged changes.
func (f *File) dirtyTargets() []syncTarget {
	var out []syncTarget
	for _, c := range f.allChunks() {
		c.mu.RLock()
		if c.stg != nil && !c.dead && c.committedGen < c.gen {
			out = append(out, syncTarget{c, c.gen})
		}
		c.mu.RUnlock()
	}
	return out
}

// Sync is fsync: it returns once every change to the file made before the
// call is on the remote and the catalog has committed durably. If the
// remote cannot be reached it fails with EIO after Options.SyncTimeout,
// and the data stays staged. While the volume is locked it fails at once
// with EKEYREVOKED if anything is staged (uploads wait for unlock).
func (f *File) Sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, f.s.opt.SyncTimeout)
	defer cancel()
	if err := f.s.up.waitUploaded(ctx, f.dirtyTargets(), "fsync inode "+itoa(f.ino)); err != nil {
		return err
	}
	if err := f.flush(ctx); err != nil {
		return err
	}
	if err := f.s.cat.Sync(ctx); err != nil {
		return metaErr(err, "fsync inode %d: make the catalog durable", f.ino)
	}
	return nil
}

// chunk returns the in-memory state of chunk idx, creating it (not yet
// loaded from the catalog) if needed.
func (f *File) chunk(idx int64) *chunk {
	f.cmu.Lock()
	defer f.cmu.Unlock()
	c := f.chunks[idx]
	if c == nil {
		c = &chunk{f: f, idx: idx}
		f.chunks[idx] = c
	}
	return c
}

// allChunks returns the chunks in memory now. Callers lock each one after
// cmu is released: holding cmu while waiting for a chunk closed a cycle
// (a GETATTR held cmu waiting for a write's chunk, the write waited for
// blocks a read's prefetch had claimed, the prefetch waited for cmu).
func (f *File) allChunks() []*chunk {
	f.cmu.Lock()
	defer f.cmu.Unlock()
	return slices.Collect(maps.Values(f.chunks))
}

// knownChunk returns chunk idx if it is in memory.
func (f *File) knownChunk(idx int64) *chunk {
	f.cmu.Lock()
	defer f.cmu.Unlock()
	return f.chunks[idx]
}

func (f *File) checkLive() error {
	if f.discarded.Load() {
		return errnof(syscall.ESTALE, "inode %d was discarded", f.ino)
	}
	return nil
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
