package keys

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"

	"coffer/crypto/secmem"
)

// DEK is one file's 256-bit data key. Its bytes are zeroed by Wipe; after that Bytes returns
// nil and Use returns ErrWiped, so a wiped key can never silently act as an all-zero key.
// A DEK formats as "DEK(redacted)" with every fmt verb.
//
// The bytes live in an ordinary heap slice that Wipe clears (locked memory from
// coffer/crypto/secmem can replace it without changing this API).
type DEK struct {
	mu    sync.RWMutex
	b     []byte
	wiped bool
}

// NewDEK makes a DEK that takes ownership of b (32 bytes): the caller must not keep b.
func NewDEK(b []byte) (*DEK, error) {
	if len(b) != DEKSize {
		return nil, fmt.Errorf("keys: a DEK is %d bytes, got %d", DEKSize, len(b))
	}
	return &DEK{b: b}, nil
}

// Bytes returns the key bytes (not a copy; nil after Wipe). Prefer Use when the key may be
// wiped concurrently (coffer lock): Use keeps Wipe waiting until the callback returns.
func (d *DEK) Bytes() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.wiped {
		return nil
	}
	return d.b
}

// Use calls f with the key bytes while holding off Wipe. f must not keep the slice.
func (d *DEK) Use(f func(key []byte) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.wiped {
		return ErrWiped
	}
	return f(d.b)
}

// Clone returns an independent copy (nil if d was wiped); the caller owns and wipes it.
func (d *DEK) Clone() *DEK {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.wiped {
		return nil
	}
	var b []byte
	secmem.Do(func() { // the copy passes through vector registers
		b = make([]byte, DEKSize)
		copy(b, d.b)
	})
	return &DEK{b: b}
}

// Wipe zeroes the key bytes. Safe to call more than once and on nil.
func (d *DEK) Wipe() {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.b)
	d.wiped = true
}

// Wiped reports whether Wipe was called.
func (d *DEK) Wiped() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.wiped
}

// String, GoString and Format keep key bytes out of logs and error messages.
func (d *DEK) String() string             { return "DEK(redacted)" }
func (d *DEK) GoString() string           { return "DEK(redacted)" }
func (d *DEK) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "DEK(redacted)") }

// NewFileKey makes a new file's key under KEK version kek.
// Wrap mode: random DEK and IV, sealed by the provider with WrapAAD as associated data.
// Derive mode: random salt; DEK = provider MAC over DeriveMessage.
func NewFileKey(ctx context.Context, p Provider, mode Mode, kek KEKRef, id FileIdentity) (Record, *DEK, error) {
	if err := kek.Validate(); err != nil {
		return Record{}, nil, err
	}
	switch mode {
	case ModeWrap:
		dek := make([]byte, DEKSize)
		iv := make([]byte, IVSize)
		_, _ = rand.Read(dek) // crypto/rand.Read never fails (Go >= 1.24)
		_, _ = rand.Read(iv)
		wrapped, err := p.Seal(ctx, kek, iv, dek, WrapAAD(id, kek))
		if err != nil {
			clear(dek)
			return Record{}, nil, fmt.Errorf("keys: wrap new file key with KEK %s: %w", kek, err)
		}
		if len(wrapped) != WrappedSize {
			clear(dek)
			return Record{}, nil, fmt.Errorf("keys: wrap new file key with KEK %s: provider returned %d bytes, want %d", kek, len(wrapped), WrappedSize)
		}
		return Record{Mode: ModeWrap, KEK: kek, IV: iv, Wrapped: wrapped}, &DEK{b: dek}, nil
	case ModeDerive:
		salt := make([]byte, SaltSize)
		_, _ = rand.Read(salt)
		dek, err := derive(ctx, p, kek, id, salt)
		if err != nil {
			return Record{}, nil, err
		}
		return Record{Mode: ModeDerive, KEK: kek, Salt: salt}, dek, nil
	default:
		return Record{}, nil, fmt.Errorf("keys: unknown key mode %q", string(mode))
	}
}

func derive(ctx context.Context, p Provider, kek KEKRef, id FileIdentity, salt []byte) (*DEK, error) {
	mac, err := p.MAC(ctx, kek, DeriveMessage(id, salt))
	if err != nil {
		return nil, fmt.Errorf("keys: derive file key with KEK %s: %w", kek, err)
	}
	if len(mac) != DEKSize {
		clear(mac)
		return nil, fmt.Errorf("keys: derive file key with KEK %s: provider returned %d bytes, want %d", kek, len(mac), DEKSize)
	}
	return &DEK{b: mac}, nil
}

// OpenFileKey recovers a file's DEK from its record. A record that was tampered with, moved
// to another file or volume, or wrapped by another key fails with ErrUnwrap; a destroyed KEK
// version with ErrKEKMissing.
func OpenFileKey(ctx context.Context, p Provider, rec Record, id FileIdentity) (*DEK, error) {
	if err := rec.Check(); err != nil {
		return nil, fmt.Errorf("keys: open file key: %w", err)
	}
	if rec.Mode == ModeDerive {
		return derive(ctx, p, rec.KEK, id, rec.Salt)
	}
	dek, err := p.Open(ctx, rec.KEK, rec.IV, rec.Wrapped, WrapAAD(id, rec.KEK))
	if err != nil {
		return nil, fmt.Errorf("keys: unwrap file key with KEK %s: %w", rec.KEK, err)
	}
	if len(dek) != DEKSize {
		clear(dek)
		return nil, fmt.Errorf("keys: unwrap file key with KEK %s: %w", rec.KEK,
			Errorf(ErrUnwrap, "unwrapped key is %d bytes, want %d", len(dek), DEKSize))
	}
	return &DEK{b: dek}, nil
}

// Rewrap re-seals a wrap-mode record's DEK under KEK version to (rotation, or moving a file
// to another user's chain), with a fresh IV. The DEK itself does not change, so no content is
// re-encrypted. Derive-mode records cannot be rewrapped: their files are re-encrypted.
func Rewrap(ctx context.Context, p Provider, rec Record, id FileIdentity, to KEKRef) (Record, error) {
	if rec.Mode != ModeWrap {
		return Record{}, fmt.Errorf("keys: rewrap: record is in %s mode; only wrap-mode keys can be rewrapped (derive-mode files are re-encrypted)", string(rec.Mode))
	}
	if err := to.Validate(); err != nil {
		return Record{}, err
	}
	dek, err := OpenFileKey(ctx, p, rec, id)
	if err != nil {
		return Record{}, fmt.Errorf("keys: rewrap to KEK %s: %w", to, err)
	}
	defer dek.Wipe()
	iv := make([]byte, IVSize)
	_, _ = rand.Read(iv)
	wrapped, err := p.Seal(ctx, to, iv, dek.b, WrapAAD(id, to))
	if err != nil {
		return Record{}, fmt.Errorf("keys: rewrap to KEK %s: %w", to, err)
	}
	if len(wrapped) != WrappedSize {
		return Record{}, fmt.Errorf("keys: rewrap to KEK %s: provider returned %d bytes, want %d", to, len(wrapped), WrappedSize)
	}
	return Record{Mode: ModeWrap, KEK: to, IV: iv, Wrapped: wrapped}, nil
}
