package format

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"coffer/crypto/secmem"
)

// KeySize is the size of every key this package takes or derives (AES-256).
const KeySize = 32

// Purpose labels. Each derived key and each block's associated data starts
// with a label naming its use and the format version, so a key derived for
// one use can never be confused with a key for another.
const (
	LabelObjectKey = "coffer/v1 object key"
	labelBlockAAD  = "coffer/v1 block"
)

// AppendLP appends LP(x) to dst and returns the result: len(x) as a 4-byte
// big-endian integer, then the bytes of x (FORMAT.md section 1). Every bound
// field of an AAD, a KDF info or a MAC input is length-prefixed this way, so
// no two different field lists encode to the same bytes. It is the one
// implementation of LP: keys and fs/content call it too.
func AppendLP(dst, x []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(x)))
	return append(dst, x...)
}

// kdfInfo builds the HKDF info: LP(purpose) || LP(field 1) || LP(field 2) ...
func kdfInfo(purpose string, fields [][]byte) []byte {
	n := 4 + len(purpose)
	for _, f := range fields {
		n += 4 + len(f)
	}
	info := make([]byte, 0, n)
	info = AppendLP(info, []byte(purpose))
	for _, f := range fields {
		info = AppendLP(info, f)
	}
	return info
}

// DeriveKey derives a 32-byte key from master (at least 32 bytes) with
// HKDF-SHA256: empty salt, info = LP(purpose) || LP(fields[0]) || ...,
// where LP prefixes a 4-byte big-endian length. Use a distinct purpose label
// of the form "coffer/v1 <use>" for every use (staging, cache, catalog
// backup, audit MAC) and bind the identities the key belongs to as fields.
// The caller owns the result and must clear() it when done. Fields and purpose
// are not secret; master is never copied into an error or a string.
func DeriveKey(master []byte, purpose string, fields ...[]byte) ([]byte, error) {
	if len(master) < KeySize {
		return nil, fmt.Errorf("format: derive %q key: master key is %d bytes, want at least %d", purpose, len(master), KeySize)
	}
	if purpose == "" {
		return nil, fmt.Errorf("format: derive key: empty purpose label")
	}
	info := string(kdfInfo(purpose, fields))
	var k []byte
	var err error
	// HMAC states holding master live on the stack and heap: erase them.
	secmem.Do(func() { k, err = hkdf.Key(sha256.New, master, nil, info, KeySize) })
	if err != nil {
		return nil, fmt.Errorf("format: derive %q key: %w", purpose, err)
	}
	return k, nil
}
