package format

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strings"
)

// IDSize is the length of volume, file and object ids in bytes.
const IDSize = 16

// IDTextLen is the length of an ID's text form (26 base32 characters).
const IDTextLen = 26

// ID is a 16-byte random identifier of a volume, a file or an object.
type ID [IDSize]byte

// idEncoding is RFC 4648 base32 with a lowercase alphabet and no padding:
// names on the remote use only [a-z2-7].
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns a fresh random ID from crypto/rand.
func NewID() (ID, error) {
	var id ID
	if _, err := rand.Read(id[:]); err != nil {
		return ID{}, fmt.Errorf("format: new id: %w", err)
	}
	return id, nil
}

// IDFromBytes converts a stored 16-byte id (a catalog BLOB) to an ID.
func IDFromBytes(b []byte) (ID, error) {
	if len(b) != IDSize {
		return ID{}, fmt.Errorf("format: id is %d bytes, want %d", len(b), IDSize)
	}
	return ID(b), nil
}

// String returns the 26-character lowercase base32 form of the id.
func (id ID) String() string { return idEncoding.EncodeToString(id[:]) }

// IsZero reports whether id is all zero bytes (an unset id).
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the text form written by String. Only the canonical form is
// accepted: exactly 26 lowercase characters with the two unused trailing bits
// zero, so every id has exactly one name.
func ParseID(s string) (ID, error) {
	id, why := parseID(s)
	if why != "" {
		return ID{}, fmt.Errorf("format: parse id %q: %s", clip(s), why)
	}
	return id, nil
}

func parseID(s string) (ID, string) {
	var id ID
	if len(s) != IDTextLen {
		return ID{}, fmt.Sprintf("want %d characters, got %d", IDTextLen, len(s))
	}
	n, err := idEncoding.Decode(id[:], []byte(s))
	if err != nil || n != IDSize {
		return ID{}, "not lowercase base32"
	}
	if id.String() != s {
		return ID{}, "not canonical"
	}
	return id, ""
}

// ObjectPrefix is the first path element of every chunk object name.
const ObjectPrefix = "c/"

// ObjectName returns the remote name of a chunk object:
// "c/" + first two characters of the id + "/" + the 26-character id.
// The two-character fan-out keeps listings of any one directory small.
func ObjectName(id ID) string {
	s := id.String()
	return ObjectPrefix + s[:2] + "/" + s
}

// ParseObjectName is the inverse of ObjectName; it refuses anything that
// ObjectName would not have produced.
func ParseObjectName(name string) (ID, error) {
	rest, ok := strings.CutPrefix(name, ObjectPrefix)
	if !ok || len(rest) != 3+IDTextLen || rest[2] != '/' {
		return ID{}, fmt.Errorf("format: parse object name %q: want c/<2 chars>/<%d chars>", clip(name), IDTextLen)
	}
	id, why := parseID(rest[3:])
	if why != "" {
		return ID{}, fmt.Errorf("format: parse object name %q: %s", clip(name), why)
	}
	if rest[:2] != rest[3:5] {
		return ID{}, fmt.Errorf("format: parse object name %q: directory does not match id", clip(name))
	}
	return id, nil
}

// clip shortens untrusted text quoted in error messages.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
