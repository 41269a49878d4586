package format

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"coffer/crypto/secmem"
)

// NonceSize is the GCM nonce size (96 bits).
const NonceSize = 12

// Binding is the identity a chunk object is sealed to. All three values come
// from the catalog, never from the object, so an object moved, swapped or
// rolled back under another identity fails to open.
type Binding struct {
	Volume ID // the volume
	File   ID // the file's crypto identity
	Object ID // this object (fresh and random for every upload)
}

func (b Binding) check() error {
	switch {
	case b.Volume.IsZero():
		return fmt.Errorf("format: binding has a zero volume id")
	case b.File.IsZero():
		return fmt.Errorf("format: binding has a zero file id")
	case b.Object.IsZero():
		return fmt.Errorf("format: binding has a zero object id")
	}
	return nil
}

// Associated data of a block (FORMAT.md, "Associated data"):
// LP(label) || LP(header) || LP(volume) || LP(file) || LP(object) ||
// LP(uint64be(index)) || LP(last flag byte).
const (
	aadSize     = 4 + len(labelBlockAAD) + 4 + HeaderSize + 3*(4+IDSize) + 4 + 8 + 4 + 1
	aadIndexOff = aadSize - 1 - 4 - 8
	aadLastOff  = aadSize - 1
)

// Cipher seals and opens the blocks of one chunk object with the object's
// subkey. It is safe for concurrent use; Wipe may race with other calls,
// which then fail with ErrWiped.
//
// The object scheme uses the block index as the nonce, which is safe only
// because an object id is sealed exactly once: seal each object once, at
// upload, under a fresh id from NewID. Never use it for data that is
// re-sealed (staging, cache): use Box.
type Cipher struct {
	layout Layout
	bind   Binding
	header [HeaderSize]byte
	aad    [aadSize]byte // template: index and flag are filled per call
	aead   atomic.Pointer[aeadRef]
}

type aeadRef struct{ cipher.AEAD }

// scratch holds the per-call nonce and associated data: pooled so the block
// hot path does not allocate (slices passed through the cipher.AEAD interface
// escape to the heap).
type scratch struct {
	nonce [NonceSize]byte
	aad   [aadSize]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// newAEAD is the one place that turns key bytes into an AES-256-GCM cipher,
// so that a later change can build ciphers inside runtime/secret and have
// the expanded key schedule erased when it is collected.
func newAEAD(key []byte) (cipher.AEAD, error) {
	return secmem.NewAESGCM(key)
}

// NewCipher derives the object subkey from the file's 32-byte DEK and the
// binding, for layout l. The subkey bytes are cleared before it returns;
// dek is not retained.
func NewCipher(dek []byte, b Binding, l Layout) (*Cipher, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if err := b.check(); err != nil {
		return nil, err
	}
	if len(dek) != KeySize {
		return nil, fmt.Errorf("format: object %s: data key is %d bytes, want %d", b.Object, len(dek), KeySize)
	}
	sub, err := DeriveKey(dek, LabelObjectKey, b.Volume[:], b.File[:], b.Object[:])
	if err != nil {
		return nil, err
	}
	a, err := newAEAD(sub)
	clear(sub)
	if err != nil {
		return nil, fmt.Errorf("format: object %s: %w", b.Object, err)
	}
	c := &Cipher{layout: l, bind: b, header: marshalHeader(l, b.Object)}
	t := c.aad[:0]
	t = AppendLP(t, []byte(labelBlockAAD))
	t = AppendLP(t, c.header[:])
	t = AppendLP(t, b.Volume[:])
	t = AppendLP(t, b.File[:])
	t = AppendLP(t, b.Object[:])
	t = AppendLP(t, make([]byte, 8))
	t = AppendLP(t, []byte{0})
	if len(t) != aadSize {
		panic("format: associated data template has the wrong size")
	}
	c.aead.Store(&aeadRef{a})
	return c, nil
}

// Layout returns the layout the cipher was built for.
func (c *Cipher) Layout() Layout { return c.layout }

// Binding returns the binding the cipher was built for.
func (c *Cipher) Binding() Binding { return c.bind }

// Header returns a copy of the object's canonical header, as written at the
// start of the object and bound into every block.
func (c *Cipher) Header() []byte {
	h := c.header
	return h[:]
}

// CheckHeader compares a stored header with the one rebuilt from the catalog.
func (c *Cipher) CheckHeader(stored []byte) error {
	if !bytes.Equal(stored, c.header[:]) {
		return &AuthError{Object: c.bind.Object, Block: HeaderBlock, Reason: "stored header does not match the catalog"}
	}
	return nil
}

// Wipe drops the cipher (and with it the only copy of the subkey schedule
// this package holds; the subkey bytes were cleared at construction). Later
// calls fail with ErrWiped. Wipe is idempotent.
func (c *Cipher) Wipe() { c.aead.Store(nil) }

func (c *Cipher) load() (cipher.AEAD, error) {
	a := c.aead.Load()
	if a == nil {
		return nil, fmt.Errorf("object %s: %w", c.bind.Object, ErrWiped)
	}
	return a.AEAD, nil
}

func (c *Cipher) checkIndex(index int64) error {
	if index < 0 || index >= c.layout.BlocksPerChunk() {
		return fmt.Errorf("format: object %s: block index %d out of range 0..%d", c.bind.Object, index, c.layout.BlocksPerChunk()-1)
	}
	return nil
}

// prepare fills a pooled nonce and associated data for block index.
func (c *Cipher) prepare(index int64, last bool) *scratch {
	s := scratchPool.Get().(*scratch)
	clear(s.nonce[:4])
	binary.BigEndian.PutUint64(s.nonce[4:], uint64(index))
	s.aad = c.aad
	binary.BigEndian.PutUint64(s.aad[aadIndexOff:], uint64(index))
	if last {
		s.aad[aadLastOff] = 1
	}
	return s
}

// SealBlock appends the sealed form of block index (plaintext || tag) to
// dst. plain must hold BlockSize bytes, or 1..BlockSize bytes if last is
// set; last must be set on exactly the final block of the chunk. dst and
// plain may overlap exactly (dst = plain[:0]) or not at all.
func (c *Cipher) SealBlock(dst, plain []byte, index int64, last bool) ([]byte, error) {
	a, err := c.load()
	if err != nil {
		return nil, err
	}
	if err := c.checkIndex(index); err != nil {
		return nil, err
	}
	if n := len(plain); n < 1 || n > c.layout.BlockSize || (!last && n != c.layout.BlockSize) {
		return nil, fmt.Errorf("format: object %s: seal block %d (last=%t): %d bytes, want %s", c.bind.Object, index, last, n, c.wantPlain(last))
	}
	s := c.prepare(index, last)
	dst = a.Seal(dst, s.nonce[:], plain, s.aad[:])
	scratchPool.Put(s)
	return dst, nil
}

func (c *Cipher) wantPlain(last bool) string {
	if last {
		return fmt.Sprintf("1 to %d", c.layout.BlockSize)
	}
	return fmt.Sprint(c.layout.BlockSize)
}

// OpenBlock authenticates and decrypts sealed block index and appends the
// plaintext to dst. last must say whether index is the chunk's last block,
// as computed from the catalog's chunk length (Layout.LastBlock). Any
// failure caused by the stored bytes is an *AuthError matching ErrAuth; no
// plaintext is returned then. dst and sealed may overlap exactly.
func (c *Cipher) OpenBlock(dst, sealed []byte, index int64, last bool) ([]byte, error) {
	a, err := c.load()
	if err != nil {
		return nil, err
	}
	if err := c.checkIndex(index); err != nil {
		return nil, err
	}
	n, bs := len(sealed), c.layout.BlockSize
	if n < TagSize+1 || n > bs+TagSize || (!last && n != bs+TagSize) {
		return nil, &AuthError{Object: c.bind.Object, Block: index,
			Reason: fmt.Sprintf("sealed block is %d bytes, want %s (truncated?)", n, c.wantSealed(last))}
	}
	s := c.prepare(index, last)
	out, err := a.Open(dst, s.nonce[:], sealed, s.aad[:])
	scratchPool.Put(s)
	if err != nil {
		return nil, &AuthError{Object: c.bind.Object, Block: index,
			Reason: "tag mismatch (tampered, swapped, rolled back, truncated, or wrong key)"}
	}
	return out, nil
}

func (c *Cipher) wantSealed(last bool) string {
	if last {
		return fmt.Sprintf("%d to %d", TagSize+1, c.layout.BlockSize+TagSize)
	}
	return fmt.Sprint(c.layout.BlockSize + TagSize)
}

// SealChunk appends the whole object for a chunk (header, then every block
// sealed in order, the final one flagged last) to dst. plain holds the
// chunk: 1 to ChunkSize bytes.
func (c *Cipher) SealChunk(dst, plain []byte) ([]byte, error) {
	n := int64(len(plain))
	if n < 1 || n > c.layout.ChunkSize {
		return nil, fmt.Errorf("format: object %s: seal chunk of %d bytes: want 1 to %d", c.bind.Object, n, c.layout.ChunkSize)
	}
	size, _ := c.layout.ObjectSize(n)
	dst = slices.Grow(dst, int(size))
	dst = append(dst, c.header[:]...)
	bs := c.layout.BlockSize
	for i := 0; len(plain) > 0; i++ {
		k := min(bs, len(plain))
		var err error
		if dst, err = c.SealBlock(dst, plain[:k], int64(i), k == len(plain)); err != nil {
			return nil, err
		}
		plain = plain[k:]
	}
	return dst, nil
}

// OpenRange opens sealed blocks first..last (inclusive) of a chunk of
// chunkLen plaintext bytes (from the catalog) and appends their plaintext to
// dst. ct must be exactly the bytes of Layout.CiphertextRange(chunkLen,
// first, last); anything shorter or longer is an *AuthError. The plaintext
// starts at chunk offset first*BlockSize.
func (c *Cipher) OpenRange(dst, ct []byte, chunkLen, first, last int64) ([]byte, error) {
	l := c.layout
	_, want, err := l.CiphertextRange(chunkLen, first, last)
	if err != nil {
		return nil, fmt.Errorf("format: object %s: %w", c.bind.Object, err)
	}
	if int64(len(ct)) != want {
		short := first + min(int64(len(ct)), want)/l.SealedBlockSize()
		return nil, &AuthError{Object: c.bind.Object, Block: short,
			Reason: fmt.Sprintf("blocks %d..%d are %d bytes, want %d (truncated or extended object)", first, last, len(ct), want)}
	}
	lastBlock, _ := l.LastBlock(chunkLen)
	sb := int(l.SealedBlockSize())
	start := len(dst)
	for i := first; i <= last; i++ {
		k := min(sb, len(ct))
		out, err := c.OpenBlock(dst, ct[:k], i, i == lastBlock)
		if err != nil {
			clear(dst[start:]) // no partial plaintext from a failed range
			return nil, err
		}
		dst = out
		ct = ct[k:]
	}
	return dst, nil
}

// OpenChunk opens a whole object (as stored) of a chunk of chunkLen bytes:
// it checks the object size and the header, then opens every block.
func (c *Cipher) OpenChunk(dst, obj []byte, chunkLen int64) ([]byte, error) {
	size, err := c.layout.ObjectSize(chunkLen)
	if err != nil {
		return nil, fmt.Errorf("format: object %s: %w", c.bind.Object, err)
	}
	if int64(len(obj)) != size {
		return nil, &AuthError{Object: c.bind.Object, Block: HeaderBlock,
			Reason: fmt.Sprintf("object is %d bytes, want %d for a %d-byte chunk (truncated or extended)", len(obj), size, chunkLen)}
	}
	if err := c.CheckHeader(obj[:HeaderSize]); err != nil {
		return nil, err
	}
	last, _ := c.layout.LastBlock(chunkLen)
	return c.OpenRange(dst, obj[HeaderSize:], chunkLen, 0, last)
}

// SealChunk seals a whole chunk into a new object (one-shot form of
// NewCipher + Cipher.SealChunk + Wipe).
func SealChunk(dek []byte, b Binding, l Layout, plain []byte) ([]byte, error) {
	c, err := NewCipher(dek, b, l)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()
	return c.SealChunk(nil, plain)
}

// OpenRange opens blocks first..last of a chunk object (one-shot form of
// Cipher.OpenRange); ct is exactly the bytes of Layout.CiphertextRange.
func OpenRange(dek []byte, b Binding, l Layout, chunkLen, first, last int64, ct []byte) ([]byte, error) {
	c, err := NewCipher(dek, b, l)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()
	return c.OpenRange(nil, ct, chunkLen, first, last)
}

// OpenChunk opens a whole stored object (one-shot form of Cipher.OpenChunk).
func OpenChunk(dek []byte, b Binding, l Layout, chunkLen int64, obj []byte) ([]byte, error) {
	c, err := NewCipher(dek, b, l)
	if err != nil {
		return nil, err
	}
	defer c.Wipe()
	return c.OpenChunk(nil, obj, chunkLen)
}
