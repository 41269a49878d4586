package content

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
)

// Staging files (FORMAT.md section 10): one per dirty chunk, named
// "<staging id>.stg", holding ciphertext only. A 64-byte header slot is
// followed by one fixed slot per block of the chunk; a slot of zero bytes
// (a hole in the sparse file) holds nothing. Every slot is a format.Box
// (random nonce) under a key derived from the file's DEK and the staging id,
// bound to volume, file, staging id, chunk and block, so a slot can neither
// be moved nor read without the file's key.
const (
	LabelStagingKey    = "coffer/v1 staging"
	labelStagingBlock  = "coffer/v1 staging block"
	labelStagingHeader = "coffer/v1 staging header"

	stagingHeaderSlot = 64
	stagingHeaderLen  = 16 // plaintext: u64 limit || u64 extent
	stagingSuffix     = ".stg"

	uploadStateStaged  = "staged"
	uploadStateFailing = "failing"
)

// stagingHeader is what a staging file says about its chunk beyond the
// staged blocks.
type stagingHeader struct {
	// limit: bytes of the chunk's committed object that are still valid;
	// anything at or past it reads as zeros (a truncation cut the chunk
	// and the rewrite is not uploaded yet). ChunkSize when nothing was cut.
	limit int64
	// extent: end of the chunk's content as known to staged writes (the
	// file is at least chunk start + extent long).
	extent int64
}

type staging struct {
	id     format.ID
	name   string // file name in the staging directory
	path   string
	fd     *os.File
	f      *File
	box    atomic.Pointer[format.Box] // nil after WipeKeys: rebuilt from the DEK on next use
	upload int64                      // upload queue row id
	bits   []uint64
	n      int64 // staged blocks
	hdr    stagingHeader

	vol, file format.ID
	chunk     int64
	slot      int64
	seal      *sealLog
}

func stagingName(id format.ID) string { return id.String() + stagingSuffix }

func parseStagingName(name string) (format.ID, error) {
	s, ok := strings.CutSuffix(name, stagingSuffix)
	if !ok {
		return format.ID{}, fmt.Errorf("staging file name %q does not end in %s", name, stagingSuffix)
	}
	return format.ParseID(s)
}

func (st *staging) has(b int64) bool { return st.bits[b/64]&(1<<(b%64)) != 0 }
func (st *staging) set(b int64)      { st.bits[b/64] |= 1 << (b % 64) }
func (st *staging) unset(b int64)    { st.bits[b/64] &^= 1 << (b % 64) }

func (st *staging) slotOff(b int64) int64 { return stagingHeaderSlot + b*st.slot }

func (st *staging) aad(label string, block int64) []byte {
	var u [8]byte
	a := make([]byte, 0, 4+len(label)+3*(4+format.IDSize)+2*12)
	a = format.AppendLP(a, []byte(label))
	a = format.AppendLP(a, st.vol[:])
	a = format.AppendLP(a, st.file[:])
	a = format.AppendLP(a, st.id[:])
	binary.BigEndian.PutUint64(u[:], uint64(st.chunk))
	a = format.AppendLP(a, u[:])
	if block >= 0 {
		binary.BigEndian.PutUint64(u[:], uint64(block))
		a = format.AppendLP(a, u[:])
	}
	return a
}

// newStagingBox derives the staging key from the file's DEK and builds the
// box; the key bytes are cleared before it returns.
func newStagingBox(f *File, id format.ID) (*format.Box, error) {
	d, err := f.dekFor(context.Background(), 0)
	if err != nil {
		return nil, err
	}
	var box *format.Box
	err = d.Use(func(dek []byte) error {
		key, err := format.DeriveKey(dek, LabelStagingKey, f.s.volID[:], f.id[:], id[:])
		if err != nil {
			return err
		}
		box, err = format.NewBox(key)
		clear(key)
		return err
	})
	return box, err
}

var slotPool sync.Pool // *[]byte of at least one slot

func getSlotBuf(n int64) *[]byte {
	if p, ok := slotPool.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n)
	return &b
}

func putSlotBuf(p *[]byte) { slotPool.Put(p) }

// createStaging makes the staging file of chunk c and records it in the
// catalog's upload queue, so a crash leaves a findable trail. Called with
// c.mu held.
func (s *DataPath) createStaging(ctx context.Context, c *chunk, hdr stagingHeader) (*staging, error) {
	f := c.f
	id, err := format.NewID()
	if err != nil {
		return nil, localErr(err, "stage inode %d chunk %d", f.ino, c.idx)
	}
	kgen := f.keyGen.Load()
	box, err := newStagingBox(f, id)
	if err != nil {
		return nil, ioErr(ctx, err, "stage inode %d chunk %d: staging key", f.ino, c.idx)
	}
	if keysMoved(&f.keyGen, kgen) {
		// WipeKeys may have passed this chunk already (the caller holds
		// c.mu, which it needs to see the box): do not keep the key.
		box.Wipe()
		return nil, ioErr(ctx, keys.ErrWiped, "stage inode %d chunk %d: staging key", f.ino, c.idx)
	}
	st := &staging{id: id, name: stagingName(id), f: f, vol: s.volID, file: f.id, chunk: c.idx,
		slot: s.slot, seal: s.seal, hdr: hdr,
		bits: make([]uint64, (s.layout.BlocksPerChunk()+63)/64)}
	st.box.Store(box)
	st.path = filepath.Join(s.dir, st.name)
	// Registered before the file exists, so that Recover never takes it
	// for a leftover.
	s.mu.Lock()
	s.stgNames[st.name] = true
	s.mu.Unlock()
	unregister := func() {
		s.mu.Lock()
		delete(s.stgNames, st.name)
		s.mu.Unlock()
	}
	st.fd, err = os.OpenFile(st.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		box.Wipe()
		unregister()
		return nil, localErr(err, "stage inode %d chunk %d: create staging file", f.ino, c.idx)
	}
	fail := func(e error) (*staging, error) {
		st.close()
		_ = os.Remove(st.path)
		unregister()
		return nil, e
	}
	if err := st.writeHeader(); err != nil {
		return fail(localErr(err, "stage inode %d chunk %d: write staging header", f.ino, c.idx))
	}
	st.upload, err = s.cat.EnqueueUpload(ctx, meta.Upload{Ino: f.ino, Index: c.idx, Staging: st.name,
		State: uploadStateStaged, Created: time.Now().UnixNano()})
	if err != nil {
		return fail(metaErr(err, "stage inode %d chunk %d: queue upload", f.ino, c.idx))
	}
	return st, nil
}

func (st *staging) writeHeader() error {
	var p [stagingHeaderLen]byte
	binary.BigEndian.PutUint64(p[0:], uint64(st.hdr.limit))
	binary.BigEndian.PutUint64(p[8:], uint64(st.hdr.extent))
	var buf [stagingHeaderSlot]byte
	bx, err := st.getBox()
	if err != nil {
		return err
	}
	box, err := bx.Seal(buf[:0], p[:], st.aad(labelStagingHeader, -1))
	if err != nil {
		return err
	}
	st.seal.box(st.id, box)
	_, err = st.fd.WriteAt(buf[:], 0)
	return err
}

func (st *staging) readHeader() (stagingHeader, error) {
	var buf [stagingHeaderSlot]byte
	if _, err := st.fd.ReadAt(buf[:], 0); err != nil {
		return stagingHeader{}, err
	}
	n := format.BoxOverhead + stagingHeaderLen
	bx, err := st.getBox()
	if err != nil {
		return stagingHeader{}, err
	}
	p, err := bx.Open(nil, buf[:n], st.aad(labelStagingHeader, -1))
	if err != nil {
		return stagingHeader{}, err
	}
	return stagingHeader{limit: int64(binary.BigEndian.Uint64(p[0:])), extent: int64(binary.BigEndian.Uint64(p[8:]))}, nil
}

// writeBlock seals one block (BlockSize bytes of plaintext) into its slot.
func (st *staging) writeBlock(b int64, plain []byte) error {
	bp := getSlotBuf(st.slot)
	defer putSlotBuf(bp)
	bx, err := st.getBox()
	if err != nil {
		return err
	}
	box, err := bx.Seal((*bp)[:0], plain, st.aad(labelStagingBlock, b))
	if err != nil {
		return err
	}
	st.seal.box(st.id, box)
	if _, err := st.fd.WriteAt(box, st.slotOff(b)); err != nil {
		return err
	}
	if !st.has(b) {
		st.set(b)
		st.n++
	}
	return nil
}

// readBlock appends the plaintext of staged block b to dst.
func (st *staging) readBlock(dst []byte, b int64) ([]byte, error) {
	bp := getSlotBuf(st.slot)
	defer putSlotBuf(bp)
	if _, err := st.fd.ReadAt(*bp, st.slotOff(b)); err != nil {
		return nil, err
	}
	bx, err := st.getBox()
	if err != nil {
		return nil, err
	}
	return bx.Open(dst, *bp, st.aad(labelStagingBlock, b))
}

// clearBlock forgets staged block b: the slot becomes a hole again.
func (st *staging) clearBlock(b int64) error {
	if !st.has(b) {
		return nil
	}
	off := st.slotOff(b)
	err := unix.Fallocate(int(st.fd.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, st.slot)
	if err != nil { // a file system without hole punching: write zeros
		bp := getSlotBuf(st.slot)
		clear(*bp)
		_, err = st.fd.WriteAt(*bp, off)
		putSlotBuf(bp)
		if err != nil {
			return err
		}
	}
	st.unset(b)
	st.n--
	return nil
}

// getBox returns the staging file's box, rebuilding it from the file's
// DEK after WipeKeys (which fails while the keys are locked).
func (st *staging) getBox() (*format.Box, error) {
	if b := st.box.Load(); b != nil {
		return b, nil
	}
	kgen := st.f.keyGen.Load()
	b, err := newStagingBox(st.f, st.id)
	if err != nil {
		return nil, err
	}
	if !st.box.CompareAndSwap(nil, b) {
		b.Wipe()
		b = st.box.Load()
	}
	if b == nil || keysMoved(&st.f.keyGen, kgen) {
		// WipeKeys ran meanwhile and may have missed it: take it back.
		if b != nil && st.box.CompareAndSwap(b, nil) {
			b.Wipe()
		}
		return nil, fmt.Errorf("staging %s: %w", st.name, keys.ErrWiped)
	}
	return b, nil
}

func (st *staging) wipeBox() {
	if b := st.box.Swap(nil); b != nil {
		b.Wipe()
	}
}

func (st *staging) close() {
	if st.fd != nil {
		_ = st.fd.Close()
		st.fd = nil
	}
	st.wipeBox()
}

// openStaging opens an existing staging file for chunk c (recovery) and
// scans its slots: slots that do not open (a write torn by a crash, or
// tampering) are reported and forgotten.
func (s *DataPath) openStaging(c *chunk, u meta.Upload) (*staging, error) {
	f := c.f
	id, err := parseStagingName(u.Staging)
	if err != nil {
		return nil, err
	}
	box, err := newStagingBox(f, id)
	if err != nil {
		return nil, err
	}
	st := &staging{id: id, name: u.Staging, f: f, upload: u.ID, vol: s.volID, file: f.id, chunk: c.idx,
		slot: s.slot, seal: s.seal, bits: make([]uint64, (s.layout.BlocksPerChunk()+63)/64)}
	st.box.Store(box)
	st.path = filepath.Join(s.dir, st.name)
	st.fd, err = os.OpenFile(st.path, os.O_RDWR, 0)
	if err != nil {
		box.Wipe()
		return nil, err
	}
	st.hdr, err = st.readHeader()
	if err != nil {
		st.close()
		return nil, fmt.Errorf("staging header: %w", err)
	}
	zero := make([]byte, s.slot)
	bp := getSlotBuf(s.slot)
	defer putSlotBuf(bp)
	for b := range s.layout.BlocksPerChunk() {
		n, err := st.fd.ReadAt(*bp, st.slotOff(b))
		if errors.Is(err, io.EOF) && n == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			st.close()
			return nil, err
		}
		if bytes.Equal((*bp)[:n], zero[:n]) {
			continue
		}
		if _, err := box.Open(nil, (*bp)[:n], st.aad(labelStagingBlock, b)); err != nil {
			s.log.Error("content: a staged block does not authenticate (write torn by a crash, or tampered); dropping it",
				"staging", st.name, "ino", f.ino, "chunk", c.idx, "block", b)
			continue
		}
		st.set(b)
		st.n++
	}
	return st, nil
}

// dropStaging removes chunk c's staging file (its queue row is the
// caller's business). c.mu is held.
func (s *DataPath) dropStaging(c *chunk) {
	st := c.stg
	if st == nil {
		return
	}
	c.stg = nil
	st.close()
	if err := os.Remove(st.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("content: could not remove a staging file", "staging", st.name, "err", err)
	}
	s.staged.Add(-st.n * s.slot)
	c.f.dirtyChunks.Add(-1)
	s.mu.Lock()
	delete(s.stgNames, st.name)
	s.mu.Unlock()
}
