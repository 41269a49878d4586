package format

import (
	"crypto/rand"
	"fmt"
	"sync/atomic"
)

// BoxOverhead is what a box adds to its plaintext: nonce and tag.
const BoxOverhead = NonceSize + TagSize

// Box seals data that may be sealed more than once under the same key
// (staging files, disk caches, catalog backups): AES-256-GCM with a random
// 96-bit nonce, stored as nonce || ciphertext || tag. Keep each key under
// 2^32 seals (random-nonce GCM bound) by deriving a fresh key per staging
// file, cache generation or backup with DeriveKey. A Box is safe for
// concurrent use.
type Box struct {
	aead atomic.Pointer[aeadRef]
}

// NewBox builds a Box from a 32-byte key. The key is not retained.
func NewBox(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("format: new box: key is %d bytes, want %d", len(key), KeySize)
	}
	a, err := newAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("format: new box: %w", err)
	}
	b := new(Box)
	b.aead.Store(&aeadRef{a})
	return b, nil
}

// Wipe drops the cipher; later calls fail with ErrWiped. Idempotent.
func (b *Box) Wipe() { b.aead.Store(nil) }

// Seal appends nonce || ciphertext || tag of plain, bound to aad, to dst.
func (b *Box) Seal(dst, plain, aad []byte) ([]byte, error) {
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("format: seal box: %w", err)
	}
	return b.sealWithNonce(dst, nonce[:], plain, aad)
}

// sealWithNonce is Seal with a chosen nonce, for test vectors only.
func (b *Box) sealWithNonce(dst, nonce, plain, aad []byte) ([]byte, error) {
	r := b.aead.Load()
	if r == nil {
		return nil, fmt.Errorf("format: seal box: %w", ErrWiped)
	}
	dst = append(dst, nonce...)
	return r.Seal(dst, nonce, plain, aad), nil
}

// Open authenticates a box sealed with aad and appends its plaintext to dst.
// A tampered, truncated or foreign box, or a wrong key or aad, fails with an
// error matching ErrAuth and returns no plaintext.
func (b *Box) Open(dst, box, aad []byte) ([]byte, error) {
	r := b.aead.Load()
	if r == nil {
		return nil, fmt.Errorf("format: open box: %w", ErrWiped)
	}
	if len(box) < BoxOverhead {
		return nil, fmt.Errorf("format: open box: %d bytes, want at least %d: %w", len(box), BoxOverhead, ErrAuth)
	}
	out, err := r.Open(dst, box[:NonceSize], box[NonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("format: open box: tag mismatch: %w", ErrAuth)
	}
	return out, nil
}

// SealBox seals plain under a 32-byte key with a random nonce (one-shot Box).
func SealBox(key, plain, aad []byte) ([]byte, error) {
	b, err := NewBox(key)
	if err != nil {
		return nil, err
	}
	defer b.Wipe()
	return b.Seal(nil, plain, aad)
}

// OpenBox opens a box sealed by SealBox or Box.Seal (one-shot Box).
func OpenBox(key, box, aad []byte) ([]byte, error) {
	b, err := NewBox(key)
	if err != nil {
		return nil, err
	}
	defer b.Wipe()
	return b.Open(nil, box, aad)
}
