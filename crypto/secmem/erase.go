package secmem

import (
	"crypto/aes"
	"crypto/cipher"
)

// Erasing reports whether Do really erases: the binary was built with
// GOEXPERIMENT=runtimesecret (the Makefile sets it). Without it Do just calls f,
// and stack copies of keys and AES key schedules can outlive a wipe.
const Erasing = erasing

// Do runs f so that what it leaves behind is erased: registers and stack when
// it returns, and every heap object it allocated once the garbage collector
// frees it (runtime/secret). Run key derivations and cipher constructions in
// it, never a cgo call (the runtime aborts): HSM calls stay outside.
func Do(f func()) { do(f) }

// EraseRegisters clears the calling thread's registers. Call it after a cgo
// call that handled key bytes (the HSM): a cgo call cannot run inside Do.
func EraseRegisters() { do(func() {}) }

// NewAESGCM returns AES-256-GCM (12-byte nonce, 16-byte tag) under key,
// built inside Do: Go keeps the expanded key schedule on the heap with no way
// to clear it, so it must be allocated where the runtime erases it once the
// cipher is dropped and collected. Seal and Open run inside Do too: the AES
// code keeps round keys in vector registers, which a signal would otherwise
// spill to the thread's signal stack, where they stay. key is not retained.
func NewAESGCM(key []byte) (cipher.AEAD, error) {
	var a cipher.AEAD
	var err error
	Do(func() {
		var block cipher.Block
		if block, err = aes.NewCipher(key); err == nil {
			a, err = cipher.NewGCM(block)
		}
	})
	if err != nil {
		return nil, err
	}
	return erasingAEAD{a}, nil
}

type erasingAEAD struct{ a cipher.AEAD }

func (e erasingAEAD) NonceSize() int { return e.a.NonceSize() }
func (e erasingAEAD) Overhead() int  { return e.a.Overhead() }

func (e erasingAEAD) Seal(dst, nonce, plaintext, additionalData []byte) (out []byte) {
	Do(func() { out = e.a.Seal(dst, nonce, plaintext, additionalData) })
	return out
}

func (e erasingAEAD) Open(dst, nonce, ciphertext, additionalData []byte) (out []byte, err error) {
	Do(func() { out, err = e.a.Open(dst, nonce, ciphertext, additionalData) })
	return out, err
}
