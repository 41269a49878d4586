package passphrase

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Cost is the Argon2id work factor. Stored with each volume so it can be raised later
// (coffer passwd re-derives with new parameters).
type Cost struct {
	Time      uint32 // passes (t)
	MemoryKiB uint32 // memory in KiB (m)
	Threads   uint8  // lanes (p)
}

// DefaultCost is t=3, m=64 MiB, p=4 (about 0.5 s on the reference 2-core machine).
var DefaultCost = Cost{Time: 3, MemoryKiB: 64 * 1024, Threads: 4}

// Limits on the cost, checked when parameters are decoded from the catalog and before any
// derivation (FORMAT.md 9.5.1). The catalog is not authenticated before unlocking, so anyone
// who can write it chooses these numbers. The upper bounds cap one unlock at 10 passes over
// 1 GiB (about 53 times the default's work, roughly half a minute of the reference machine's
// two cores) instead of hours or the host's memory; they are 16 times the default's memory,
// 3 times its passes and 4 times its lanes. The lower bounds refuse parameters too weak to
// mean anything. Argon2id cannot be stopped halfway, so these bounds
// are also what a cancelled unlock can still cost in the background (see OpenContext).
const (
	MinTime      = 1
	MaxTime      = 10
	MinMemoryKiB = 8 * 1024    // 8 MiB
	MaxMemoryKiB = 1024 * 1024 // 1 GiB
	MinThreads   = 1
	MaxThreads   = 16
)

// ErrOutOfRange is wrapped by every RangeError.
var ErrOutOfRange = errors.New("Argon2id parameters out of range")

// RangeError says which Argon2id parameter is outside its bounds. Stored is set when the
// parameters were read from storage (the catalog) rather than chosen by the caller.
type RangeError struct {
	Field    string // "time", "memory" or "threads"
	Unit     string // " KiB" for memory, else ""
	Value    uint64
	Min, Max uint64
	Stored   bool
}

func (e *RangeError) Error() string {
	op, bound := ">", e.Max
	if e.Value < e.Min {
		op, bound = "<", e.Min
	}
	what := "passphrase: Argon2id cost out of range"
	if e.Stored {
		what = "passphrase: the stored parameters are out of range (refused before any derivation)"
	}
	return fmt.Sprintf("%s: %s %d%s %s %d (coffer accepts %s %d..%d%s; FORMAT.md 9.5.1)",
		what, e.Field, e.Value, e.Unit, op, bound, e.Field, e.Min, e.Max, e.Unit)
}

func (e *RangeError) Unwrap() error { return ErrOutOfRange }

// Validate checks the cost against the limits; the error is a *RangeError.
func (c Cost) Validate() error {
	if err := c.check(); err != nil {
		return err
	}
	return nil
}

func (c Cost) check() *RangeError {
	for _, f := range []RangeError{
		{Field: "time", Value: uint64(c.Time), Min: MinTime, Max: MaxTime},
		{Field: "memory", Unit: " KiB", Value: uint64(c.MemoryKiB), Min: MinMemoryKiB, Max: MaxMemoryKiB},
		{Field: "threads", Value: uint64(c.Threads), Min: MinThreads, Max: MaxThreads},
	} {
		if f.Value < f.Min || f.Value > f.Max {
			return &f
		}
	}
	// Argon2 needs m >= 8*p; with these bounds it always holds (8192 >= 8*16).
	return nil
}

// SaltSize and CheckSize are the lengths of Params.Salt and Params.Check.
const (
	SaltSize  = 16
	CheckSize = 32
)

// Params is what a passphrase volume stores (not secret): the Argon2id cost, the salt, and a
// check value that tells a wrong passphrase from tampered key material.
type Params struct {
	Cost
	Salt  [SaltSize]byte
	Check [CheckSize]byte
}

// Encoding of Params (63 bytes, big-endian):
//
//	"CFPP" | version 0x01 | algorithm 0x01 (Argon2id v1.3) | time u32 | memory KiB u32 |
//	threads u8 | salt [16] | check [32]
const (
	paramsMagic   = "CFPP"
	paramsVersion = 1
	algArgon2id   = 1
	// EncodedParamsSize is the length of MarshalBinary's output.
	EncodedParamsSize = 4 + 1 + 1 + 4 + 4 + 1 + SaltSize + CheckSize
)

// MarshalBinary encodes the params for storage.
func (p Params) MarshalBinary() ([]byte, error) {
	if err := p.Cost.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, EncodedParamsSize)
	b = append(b, paramsMagic...)
	b = append(b, paramsVersion, algArgon2id)
	b = binary.BigEndian.AppendUint32(b, p.Time)
	b = binary.BigEndian.AppendUint32(b, p.MemoryKiB)
	b = append(b, p.Threads)
	b = append(b, p.Salt[:]...)
	b = append(b, p.Check[:]...)
	return b, nil
}

// UnmarshalBinary decodes stored params, refusing unknown versions and out-of-range costs
// (a *RangeError with Stored set, wrapping ErrOutOfRange).
func (p *Params) UnmarshalBinary(b []byte) error {
	if len(b) != EncodedParamsSize {
		return fmt.Errorf("passphrase: stored parameters are %d bytes, want %d", len(b), EncodedParamsSize)
	}
	if string(b[:4]) != paramsMagic {
		return errors.New("passphrase: stored parameters have a bad magic")
	}
	if b[4] != paramsVersion {
		return fmt.Errorf("passphrase: stored parameters have unknown version %d", b[4])
	}
	if b[5] != algArgon2id {
		return fmt.Errorf("passphrase: stored parameters name unknown algorithm %d", b[5])
	}
	var q Params
	q.Time = binary.BigEndian.Uint32(b[6:10])
	q.MemoryKiB = binary.BigEndian.Uint32(b[10:14])
	q.Threads = b[14]
	copy(q.Salt[:], b[15:15+SaltSize])
	copy(q.Check[:], b[15+SaltSize:])
	if err := q.Cost.check(); err != nil {
		err.Stored = true
		return err
	}
	*p = q
	return nil
}
