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

// Limits refuse parameters that would hang or exhaust the host when read from a tampered
// catalog, and ones too weak to mean anything.
const (
	MinMemoryKiB = 8 * 1024
	MaxMemoryKiB = 4 * 1024 * 1024 // 4 GiB
	MaxTime      = 64
)

// Validate checks the cost against the limits.
func (c Cost) Validate() error {
	switch {
	case c.Time < 1 || c.Time > MaxTime:
		return fmt.Errorf("passphrase: Argon2id time %d out of range 1..%d", c.Time, MaxTime)
	case c.Threads < 1:
		return errors.New("passphrase: Argon2id threads must be >= 1")
	case c.MemoryKiB < MinMemoryKiB || c.MemoryKiB > MaxMemoryKiB:
		return fmt.Errorf("passphrase: Argon2id memory %d KiB out of range %d..%d", c.MemoryKiB, MinMemoryKiB, MaxMemoryKiB)
	case c.MemoryKiB < 8*uint32(c.Threads):
		return fmt.Errorf("passphrase: Argon2id memory %d KiB below 8 KiB per thread", c.MemoryKiB)
	}
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

// UnmarshalBinary decodes stored params, refusing unknown versions and out-of-range costs.
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
	if err := q.Cost.Validate(); err != nil {
		return err
	}
	*p = q
	return nil
}
