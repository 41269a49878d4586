// Package keys holds coffer's key hierarchy: KEK providers (an HSM over PKCS#11, or a
// passphrase), per-file data keys (DEKs) wrapped or derived by a KEK version, and a cache of
// unwrapped DEKs that can be wiped at once.
//
// The byte-level rules (associated data, derivation messages, record layout) are in
// FORMAT.md section 9; this package is their reference implementation.
package keys

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Sizes of the fields of a key record and of a DEK.
const (
	DEKSize     = 32 // AES-256 data key
	IVSize      = 12 // AES-GCM IV for wrapping, chosen by coffer
	TagSize     = 16 // AES-GCM tag
	WrappedSize = DEKSize + TagSize
	SaltSize    = 32 // derive-mode salt
	MACSize     = 32 // HMAC-SHA256 output
	IDSize      = 16 // volume id and file id
)

// Mode is how a file's DEK is obtained from a KEK version.
type Mode string

const (
	// ModeWrap: a random DEK sealed by the KEK (AES-256-GCM inside the provider).
	ModeWrap Mode = "wrap"
	// ModeDerive: DEK = HMAC-SHA256 inside the provider over a stored random salt.
	ModeDerive Mode = "derive"
)

// ParseMode parses "wrap" or "derive".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeWrap, ModeDerive:
		return Mode(s), nil
	}
	return "", fmt.Errorf("keys: unknown key mode %q (want wrap or derive)", s)
}

// KEKRef names one version of one KEK chain. Chain "" is the volume's chain; "u1000" is the
// per-user chain of uid 1000. Versions start at 1.
type KEKRef struct {
	Chain   string
	Version uint32
}

// String is for messages: "volume/v3", "u1000/v2".
func (r KEKRef) String() string {
	c := r.Chain
	if c == "" {
		c = "volume"
	}
	return c + "/v" + strconv.FormatUint(uint64(r.Version), 10)
}

// MaxChainLen bounds a chain name (it ends up in HSM labels, which tokens limit).
const MaxChainLen = 32

// Validate checks that the ref can be used in labels and associated data: version >= 1, and
// a chain of at most MaxChainLen characters from [A-Za-z0-9._-] ("volume" is reserved so
// that "" and "volume" cannot be confused in messages).
func (r KEKRef) Validate() error {
	if r.Version == 0 {
		return fmt.Errorf("keys: KEK %s: version must be >= 1", r)
	}
	if len(r.Chain) > MaxChainLen {
		return fmt.Errorf("keys: KEK chain %q longer than %d characters", r.Chain, MaxChainLen)
	}
	if r.Chain == "volume" {
		return fmt.Errorf("keys: KEK chain name %q is reserved", r.Chain)
	}
	for i := 0; i < len(r.Chain); i++ {
		c := r.Chain[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("keys: KEK chain %q: only letters, digits, '.', '_' and '-' allowed", r.Chain)
		}
	}
	return nil
}

// UserChain is the chain name of the per-user KEKs of uid.
func UserChain(uid uint32) string { return "u" + strconv.FormatUint(uint64(uid), 10) }

// FileIdentity is what a file's key is bound to.
type FileIdentity struct {
	Volume [IDSize]byte
	File   [IDSize]byte
}

// Record is what the catalog stores per file key. It holds no secret.
type Record struct {
	Mode    Mode   // ModeWrap | ModeDerive
	KEK     KEKRef // chain + version that wrapped/derived it
	IV      []byte // 12 bytes, wrap mode
	Wrapped []byte // 48 bytes (DEK ciphertext + tag), wrap mode
	Salt    []byte // 32 bytes, derive mode
}

// Check verifies that the record's fields have the lengths its mode requires. A record
// failing it was corrupted or tampered with: the error wraps ErrUnwrap.
func (r Record) Check() error {
	if err := r.KEK.Validate(); err != nil {
		return Errorf(ErrUnwrap, "malformed key record: %v", err)
	}
	switch r.Mode {
	case ModeWrap:
		if len(r.IV) != IVSize || len(r.Wrapped) != WrappedSize || len(r.Salt) != 0 {
			return Errorf(ErrUnwrap, "malformed key record: wrap mode needs a %d-byte IV and %d wrapped bytes (got %d and %d, salt %d)",
				IVSize, WrappedSize, len(r.IV), len(r.Wrapped), len(r.Salt))
		}
	case ModeDerive:
		if len(r.Salt) != SaltSize || len(r.IV) != 0 || len(r.Wrapped) != 0 {
			return Errorf(ErrUnwrap, "malformed key record: derive mode needs a %d-byte salt (got %d, iv %d, wrapped %d)",
				SaltSize, len(r.Salt), len(r.IV), len(r.Wrapped))
		}
	default:
		return Errorf(ErrUnwrap, "malformed key record: unknown mode %q", string(r.Mode))
	}
	return nil
}

// Provider holds KEK versions and runs the KEK operations (inside the HSM for pkcs11).
// All methods are safe for concurrent use. After Wipe every method returns ErrWiped.
type Provider interface {
	// Kind is "pkcs11", "passphrase" or "keyfile".
	Kind() string
	// CreateKEK makes version ref inside the provider: an AES-256 key (sealing) and a
	// 256-bit HMAC key (derive mode), both non-extractable in an HSM. It returns the material
	// the catalog must store for this version (nil for an HSM; for a passphrase, the random
	// KEK sealed under the passphrase-derived key). The new version is loaded.
	CreateKEK(ctx context.Context, ref KEKRef) (material []byte, err error)
	// Load makes an existing version usable (passphrase: unseal the material; HSM: find the
	// keys by label). ErrKEKMissing if the HSM has no such version.
	Load(ref KEKRef, material []byte) error
	// Seal is AES-256-GCM with the version's AES key; iv is 12 bytes.
	Seal(ctx context.Context, ref KEKRef, iv, plaintext, aad []byte) ([]byte, error)
	// Open reverses Seal; ErrUnwrap on authentication failure.
	Open(ctx context.Context, ref KEKRef, iv, ciphertext, aad []byte) ([]byte, error)
	// MAC is HMAC-SHA256 with the version's HMAC key.
	MAC(ctx context.Context, ref KEKRef, msg []byte) ([]byte, error)
	// DestroyKEK deletes the version (HSM: both objects, ErrKEKMissing if neither was there;
	// passphrase: forgets it, and the catalog must delete the material). Later use returns
	// ErrKEKMissing.
	DestroyKEK(ctx context.Context, ref KEKRef) error
	// Wipe zeroes all key bytes and closes HSM sessions; the provider is unusable after.
	Wipe() error
}

// Errors callers test with errors.Is. Messages built with Errorf say more (which token, which
// KEK version) but never a secret.
var (
	ErrWrongPIN        = errors.New("wrong PIN")
	ErrWrongPassphrase = errors.New("wrong passphrase")
	ErrKEKMissing      = errors.New("KEK version missing")
	ErrUnwrap          = errors.New("key unwrap failed: wrong key or tampered key record")
	ErrWiped           = errors.New("keys wiped")
	ErrModule          = errors.New("cannot load PKCS#11 module")
	ErrTokenNotFound   = errors.New("token not found")
)

// kindError carries a full message and a sentinel for errors.Is.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// Errorf returns an error whose message is exactly the formatted text and which matches kind
// with errors.Is. Never format a secret into it.
func Errorf(kind error, format string, a ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, a...)}
}
