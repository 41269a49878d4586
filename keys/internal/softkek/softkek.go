// Package softkek is a KEK version held in process memory: 32 bytes of AES-256 key for
// sealing (AES-256-GCM, 12-byte IV) and 32 bytes of HMAC-SHA256 key for derivation. The
// passphrase provider uses it; its results are byte-identical to an HSM holding the same keys.
package softkek

import (
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"coffer/crypto/secmem"
)

// Size is the length of a KEK version's key material: AES key || HMAC key.
const Size = 64

// ErrAuth is returned by Open when authentication fails.
var ErrAuth = errors.New("softkek: message authentication failed")

// ErrWiped is returned after Wipe.
var ErrWiped = errors.New("softkek: key wiped")

// KEK is one version's keys. Safe for concurrent use.
type KEK struct {
	mu   sync.RWMutex
	key  []byte      // Size bytes: [0:32] AES, [32:64] HMAC; zeroed by Wipe
	aead cipher.AEAD // built once: Go keeps the AES key schedule on the heap and offers no
	// way to zero it, so we make exactly one per KEK version instead of one per operation.
}

// New takes ownership of key (Size bytes) and returns the KEK.
func New(key []byte) (*KEK, error) {
	if len(key) != Size {
		return nil, fmt.Errorf("softkek: key material is %d bytes, want %d", len(key), Size)
	}
	aead, err := secmem.NewAESGCM(key[:32])
	if err != nil {
		return nil, fmt.Errorf("softkek: %w", err)
	}
	return &KEK{key: key, aead: aead}, nil
}

// Seal is AES-256-GCM(iv, plaintext, aad); iv must be 12 bytes.
func (k *KEK) Seal(iv, plaintext, aad []byte) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return nil, ErrWiped
	}
	if len(iv) != k.aead.NonceSize() {
		return nil, fmt.Errorf("softkek: IV is %d bytes, want %d", len(iv), k.aead.NonceSize())
	}
	return k.aead.Seal(nil, iv, plaintext, aad), nil
}

// Open reverses Seal; ErrAuth if the ciphertext, IV or aad do not match.
func (k *KEK) Open(iv, ciphertext, aad []byte) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return nil, ErrWiped
	}
	if len(iv) != k.aead.NonceSize() {
		return nil, fmt.Errorf("softkek: IV is %d bytes, want %d", len(iv), k.aead.NonceSize())
	}
	pt, err := k.aead.Open(nil, iv, ciphertext, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

// MAC is HMAC-SHA256(HMAC key, msg).
func (k *KEK) MAC(msg []byte) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return nil, ErrWiped
	}
	return HMAC(k.key[32:], msg), nil
}

// Wipe zeroes the key bytes and drops the cipher. Idempotent.
func (k *KEK) Wipe() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.key)
	k.aead = nil
}

// HMAC computes HMAC-SHA256 (RFC 2104) with a key of at most 64 bytes, zeroing its padded-key
// buffers and resetting the hash states before it returns (crypto/hmac keeps copies of the
// padded key that cannot be cleared).
func HMAC(key, msg []byte) []byte {
	if len(key) > sha256.BlockSize {
		panic("softkek: HMAC key longer than one block")
	}
	var out []byte
	secmem.Do(func() { out = hmacSHA256(key, msg) })
	return out
}

func hmacSHA256(key, msg []byte) []byte {
	var pad [sha256.BlockSize]byte
	defer clear(pad[:])
	copy(pad[:], key)
	for i := range pad {
		pad[i] ^= 0x36
	}
	h := sha256.New()
	defer h.Reset()
	h.Write(pad[:])
	h.Write(msg)
	var inner [sha256.Size]byte
	h.Sum(inner[:0])
	for i := range pad {
		pad[i] ^= 0x36 ^ 0x5c
	}
	h.Reset()
	h.Write(pad[:])
	h.Write(inner[:])
	return h.Sum(nil)
}
