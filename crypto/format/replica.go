package format

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Replica objects (FORMAT.md section 12): the sealed container every object
// of a catalog replica uses (a delta, or one part of a snapshot). It reuses
// the chunk object's block sealing (index nonce, header and last flag in the
// associated data) with its own 64-byte header, key label and AAD label.
// The container is fixed at version 1; fs/replica defines what deltas and
// snapshot parts hold inside it.

// ReplicaHeaderSize is the size of the header at the start of every replica object.
const ReplicaHeaderSize = 64

// ReplicaVersion is the replica container version written by this package.
const ReplicaVersion = 1

// ReplicaBlockSize is the block size B of every replica object (64 KiB). The
// header keeps a log2(B) field, but only this value is accepted for now.
const ReplicaBlockSize = 1 << replicaBlockShift

const replicaBlockShift = 16

// Purpose labels of replica objects (FORMAT.md 12.6).
const (
	LabelReplicaObject   = "coffer/v1 replica object"
	labelReplicaBlockAAD = "coffer/v1 replica block"
)

// ReplicaKind says what a replica object holds.
type ReplicaKind byte

const (
	ReplicaDelta    ReplicaKind = 'd' // catalog changes from position P-1 to P
	ReplicaSnapshot ReplicaKind = 's' // one part of a snapshot of position P
)

func (k ReplicaKind) String() string {
	switch k {
	case ReplicaDelta:
		return "delta"
	case ReplicaSnapshot:
		return "snapshot"
	}
	return fmt.Sprintf("kind 0x%02x", byte(k))
}

// Replica header byte layout (FORMAT.md 12.2).
const (
	rhMagic     = 0  // 8 bytes "COFREPL1"
	rhVersion   = 8  // 1 byte
	rhKind      = 9  // 1 byte, 'd' or 's'
	rhAEAD      = 10 // 1 byte, aeadAES256GCM
	rhBlockLog2 = 11 // 1 byte, log2(B) = 16
	rhKEK       = 12 // 4 bytes, KEK version of the volume chain
	rhVolume    = 16 // 16 bytes
	rhEpoch     = 32 // 4 bytes
	rhPosition  = 36 // 8 bytes
	rhPart      = 44 // 2 bytes
	rhFlags     = 46 // 2 bytes
	rhObject    = 48 // 16 bytes

	replicaFlagLast = 1 // flags bit 0: last part of a snapshot
)

var replicaMagic = [8]byte{'C', 'O', 'F', 'R', 'E', 'P', 'L', '1'}

// ReplicaHeader is the parsed form of a replica object's header. The name
// of the object (and the replica listing) gives Kind, Epoch, Position and
// Part, the volume gives Volume and KEKVersion; Object and Last are known
// only from the stored header (authenticated by the blocks).
type ReplicaHeader struct {
	Kind       ReplicaKind // ReplicaDelta or ReplicaSnapshot
	BlockSize  int         // ReplicaBlockSize; 0 is taken as ReplicaBlockSize
	KEKVersion uint32      // version v of the volume chain that gave K_rep (1 or more)
	Volume     ID
	Epoch      uint32
	Position   uint64 // P
	Part       uint16 // snapshot part k; always 0 for a delta
	Last       bool   // flags bit 0: the last part of a snapshot (never set on a delta)
	Object     ID     // random, fresh for every Put
}

func (h ReplicaHeader) String() string {
	s := fmt.Sprintf("%s epoch %d position %d", h.Kind, h.Epoch, h.Position)
	if h.Kind == ReplicaSnapshot {
		s += fmt.Sprintf(" part %d", h.Part)
	}
	return s + fmt.Sprintf(" (volume %s, key version %d)", h.Volume, h.KEKVersion)
}

// check validates the fields a header carries, except the object id.
func (h ReplicaHeader) check() error {
	switch {
	case h.Kind != ReplicaDelta && h.Kind != ReplicaSnapshot:
		return fmt.Errorf("unknown kind 0x%02x (want 'd' or 's')", byte(h.Kind))
	case h.BlockSize != 0 && h.BlockSize != ReplicaBlockSize:
		return fmt.Errorf("block size %d, want %d", h.BlockSize, ReplicaBlockSize)
	case h.KEKVersion == 0:
		return fmt.Errorf("KEK version 0")
	case h.Volume.IsZero():
		return fmt.Errorf("zero volume id")
	case h.Kind == ReplicaDelta && h.Part != 0:
		return fmt.Errorf("delta with part %d (want 0)", h.Part)
	case h.Kind == ReplicaDelta && h.Last:
		return fmt.Errorf("delta flagged as a snapshot's last part")
	}
	return nil
}

// Marshal returns the 64-byte header. It fails on a header that
// ParseReplicaHeader would refuse (or that has a zero object id).
func (h ReplicaHeader) Marshal() ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("format: marshal replica header: %w", err)
	}
	if h.Object.IsZero() {
		return nil, fmt.Errorf("format: marshal replica header: zero object id")
	}
	b := h.marshal()
	return b[:], nil
}

// marshal encodes h, which must have passed check.
func (h ReplicaHeader) marshal() [ReplicaHeaderSize]byte {
	var b [ReplicaHeaderSize]byte
	copy(b[rhMagic:], replicaMagic[:])
	b[rhVersion] = ReplicaVersion
	b[rhKind] = byte(h.Kind)
	b[rhAEAD] = aeadAES256GCM
	b[rhBlockLog2] = replicaBlockShift
	binary.BigEndian.PutUint32(b[rhKEK:], h.KEKVersion)
	copy(b[rhVolume:], h.Volume[:])
	binary.BigEndian.PutUint32(b[rhEpoch:], h.Epoch)
	binary.BigEndian.PutUint64(b[rhPosition:], h.Position)
	binary.BigEndian.PutUint16(b[rhPart:], h.Part)
	if h.Last {
		binary.BigEndian.PutUint16(b[rhFlags:], replicaFlagLast)
	}
	copy(b[rhObject:], h.Object[:])
	return b
}

// ParseReplicaHeader parses and checks the first 64 bytes of b: magic,
// version 1, kind 'd' or 's', AEAD id 1, log2(B) = 16, a KEK version of 1 or
// more, a non-zero volume id, part 0 and no flags on a delta, reserved flag
// bits zero, a non-zero object id. It authenticates nothing: only
// OpenReplica does.
func ParseReplicaHeader(b []byte) (ReplicaHeader, error) {
	h, err := parseReplicaHeader(b)
	if err != nil {
		return ReplicaHeader{}, fmt.Errorf("format: parse replica header: %w", err)
	}
	return h, nil
}

func parseReplicaHeader(b []byte) (ReplicaHeader, error) {
	if len(b) < ReplicaHeaderSize {
		return ReplicaHeader{}, fmt.Errorf("%d bytes, want %d", len(b), ReplicaHeaderSize)
	}
	b = b[:ReplicaHeaderSize]
	if !bytes.Equal(b[rhMagic:rhMagic+len(replicaMagic)], replicaMagic[:]) {
		return ReplicaHeader{}, fmt.Errorf("not a coffer replica object (bad magic)")
	}
	if b[rhVersion] != ReplicaVersion {
		return ReplicaHeader{}, fmt.Errorf("unsupported replica version %d", b[rhVersion])
	}
	if b[rhAEAD] != aeadAES256GCM {
		return ReplicaHeader{}, fmt.Errorf("unsupported cipher %d", b[rhAEAD])
	}
	if b[rhBlockLog2] != replicaBlockShift {
		return ReplicaHeader{}, fmt.Errorf("block size 2^%d, want 2^%d", b[rhBlockLog2], replicaBlockShift)
	}
	flags := binary.BigEndian.Uint16(b[rhFlags:])
	if flags&^replicaFlagLast != 0 {
		return ReplicaHeader{}, fmt.Errorf("reserved flag bits set (flags 0x%04x)", flags)
	}
	h := ReplicaHeader{
		Kind:       ReplicaKind(b[rhKind]),
		BlockSize:  ReplicaBlockSize,
		KEKVersion: binary.BigEndian.Uint32(b[rhKEK:]),
		Epoch:      binary.BigEndian.Uint32(b[rhEpoch:]),
		Position:   binary.BigEndian.Uint64(b[rhPosition:]),
		Part:       binary.BigEndian.Uint16(b[rhPart:]),
		Last:       flags&replicaFlagLast != 0,
	}
	copy(h.Volume[:], b[rhVolume:])
	copy(h.Object[:], b[rhObject:])
	if err := h.check(); err != nil {
		return ReplicaHeader{}, err
	}
	if h.Object.IsZero() {
		return ReplicaHeader{}, fmt.Errorf("zero object id")
	}
	return h, nil
}

// ReplicaError says which check failed when opening a replica object. It
// matches ErrAuth: every ReplicaError is caused by the stored bytes (or by
// a name, key or expectation that does not fit them).
type ReplicaError struct {
	Header ReplicaHeader // the expected header (from the name and the listing)
	Block  int64         // HeaderBlock for the header and the object size
	Reason string
}

func (e *ReplicaError) Error() string {
	if e.Block == HeaderBlock {
		return fmt.Sprintf("format: replica %s header: %s: %v", e.Header, e.Reason, ErrAuth)
	}
	return fmt.Sprintf("format: replica %s block %d: %s: %v", e.Header, e.Block, e.Reason, ErrAuth)
}

// Unwrap makes errors.Is(err, ErrAuth) true.
func (e *ReplicaError) Unwrap() error { return ErrAuth }

// Associated data of replica block i (FORMAT.md 12.4):
// LP(label) || LP(header) || LP(u64(i)) || LP(last flag byte).
const (
	replicaAADSize     = 4 + len(labelReplicaBlockAAD) + 4 + ReplicaHeaderSize + 4 + 8 + 4 + 1
	replicaAADIndexOff = replicaAADSize - 1 - 4 - 8
	replicaAADLastOff  = replicaAADSize - 1
)

func replicaAAD(hdr *[ReplicaHeaderSize]byte) [replicaAADSize]byte {
	var a [replicaAADSize]byte
	t := a[:0]
	t = AppendLP(t, []byte(labelReplicaBlockAAD))
	t = AppendLP(t, hdr[:])
	t = AppendLP(t, make([]byte, 8))
	t = AppendLP(t, []byte{0})
	if len(t) != replicaAADSize {
		panic("format: replica associated data has the wrong size")
	}
	return a
}

func replicaBlockAAD(tmpl *[replicaAADSize]byte, i uint64, last bool) [replicaAADSize]byte {
	a := *tmpl
	binary.BigEndian.PutUint64(a[replicaAADIndexOff:], i)
	if last {
		a[replicaAADLastOff] = 1
	}
	return a
}

func replicaNonce(i uint64) [NonceSize]byte {
	var n [NonceSize]byte
	binary.BigEndian.PutUint64(n[4:], i)
	return n
}

// replicaKDFFields are the DeriveKey fields of K_obj (FORMAT.md 12.3):
// volume id, u32 epoch, u64 P, kind byte, u16 part, object id.
func replicaKDFFields(h ReplicaHeader) [][]byte {
	return [][]byte{
		h.Volume[:],
		binary.BigEndian.AppendUint32(nil, h.Epoch),
		binary.BigEndian.AppendUint64(nil, h.Position),
		{byte(h.Kind)},
		binary.BigEndian.AppendUint16(nil, h.Part),
		h.Object[:],
	}
}

// replicaObjectKey derives K_obj from K_rep. The caller clears the result.
func replicaObjectKey(key []byte, h ReplicaHeader) ([]byte, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("format: replica %s: replica key is %d bytes, want %d", h, len(key), KeySize)
	}
	return DeriveKey(key, LabelReplicaObject, replicaKDFFields(h)...)
}

// ReplicaBlocks returns the number of blocks of a replica object holding
// plainLen bytes: ceil(plainLen / B), and 1 for an empty plaintext (one
// empty last block).
func ReplicaBlocks(plainLen int64) int64 {
	if plainLen <= 0 {
		return 1
	}
	return (plainLen + ReplicaBlockSize - 1) / ReplicaBlockSize
}

// ReplicaObjectSize is the size of the replica object holding plainLen
// bytes: 64 + plainLen + 16 * ReplicaBlocks(plainLen).
func ReplicaObjectSize(plainLen int64) int64 {
	return ReplicaHeaderSize + plainLen + TagSize*ReplicaBlocks(plainLen)
}

// ReplicaPlainLen inverts ReplicaObjectSize: the plaintext length of a
// replica object of size bytes, or false if no plaintext gives that size.
func ReplicaPlainLen(size int64) (int64, bool) {
	r := size - ReplicaHeaderSize
	if r < TagSize {
		return 0, false
	}
	const sb = ReplicaBlockSize + TagSize
	full, rem := r/sb, r%sb
	switch {
	case rem == 0: // the last block is full-sized
		return full * ReplicaBlockSize, true
	case full == 0 && rem == TagSize: // empty plaintext: one empty block
		return 0, true
	case rem > TagSize: // a short last block of rem-16 bytes
		return full*ReplicaBlockSize + rem - TagSize, true
	}
	return 0, false
}

// SealReplica seals plain into a replica object under the replica key K_rep
// (32 bytes, keys.VolumeKey(..., "replica") of version h.KEKVersion):
// header || sealed blocks. h.Object must be a fresh random id (NewID) for
// every call: K_obj is derived from it and the block index is the nonce, so
// sealing twice under one object id would reuse nonces.
func SealReplica(key []byte, h ReplicaHeader, plain []byte) ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("format: seal replica %s: %w", h, err)
	}
	if h.Object.IsZero() {
		return nil, fmt.Errorf("format: seal replica %s: zero object id", h)
	}
	h.BlockSize = ReplicaBlockSize
	sub, err := replicaObjectKey(key, h)
	if err != nil {
		return nil, err
	}
	a, err := newAEAD(sub)
	clear(sub)
	if err != nil {
		return nil, fmt.Errorf("format: seal replica %s: %w", h, err)
	}
	hdr := h.marshal()
	tmpl := replicaAAD(&hdr)
	n := uint64(ReplicaBlocks(int64(len(plain))))
	out := make([]byte, 0, ReplicaObjectSize(int64(len(plain))))
	out = append(out, hdr[:]...)
	for i := range n {
		k := min(ReplicaBlockSize, len(plain))
		nonce := replicaNonce(i)
		aad := replicaBlockAAD(&tmpl, i, i == n-1)
		out = a.Seal(out, nonce[:], plain[:k], aad[:])
		plain = plain[k:]
	}
	return out, nil
}

// OpenReplica opens a whole replica object. want is the header the reader
// expects from the object's name and the listing: Kind, Epoch, Position,
// Part, Volume and KEKVersion (and the block size); want.Object and
// want.Last are ignored. The stored header must equal want in every other
// byte; its object id and flags are taken from it and authenticated by the
// blocks (the object id through K_obj and the AAD, the flags through the
// AAD). After a successful open, ParseReplicaHeader(obj) gives them. Any
// failure caused by obj (or by a key or want that does not fit it) is a
// *ReplicaError matching ErrAuth, and no plaintext is returned.
func OpenReplica(key []byte, want ReplicaHeader, obj []byte) ([]byte, error) {
	if err := want.check(); err != nil {
		return nil, fmt.Errorf("format: open replica %s: expected header: %w", want, err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("format: open replica %s: replica key is %d bytes, want %d", want, len(key), KeySize)
	}
	fail := func(block int64, format string, args ...any) error {
		return &ReplicaError{Header: want, Block: block, Reason: fmt.Sprintf(format, args...)}
	}
	if len(obj) < ReplicaHeaderSize {
		return nil, fail(HeaderBlock, "object is %d bytes, shorter than its header (truncated)", len(obj))
	}
	stored, err := parseReplicaHeader(obj)
	if err != nil {
		return nil, fail(HeaderBlock, "stored header: %v", err)
	}
	if err := replicaHeaderMatches(stored, want); err != nil {
		return nil, fail(HeaderBlock, "stored header does not match the name: %v", err)
	}
	plainLen, ok := ReplicaPlainLen(int64(len(obj)))
	if !ok {
		return nil, fail(HeaderBlock, "object size %d is not the size of any replica object (truncated or extended)", len(obj))
	}
	sub, err := replicaObjectKey(key, stored)
	if err != nil {
		return nil, err
	}
	a, err := newAEAD(sub)
	clear(sub)
	if err != nil {
		return nil, fmt.Errorf("format: open replica %s: %w", want, err)
	}
	hdr := stored.marshal()
	tmpl := replicaAAD(&hdr)
	n := uint64(ReplicaBlocks(plainLen))
	out := make([]byte, 0, plainLen)
	ct := obj[ReplicaHeaderSize:]
	for i := range n {
		k := min(ReplicaBlockSize+TagSize, len(ct))
		nonce := replicaNonce(i)
		aad := replicaBlockAAD(&tmpl, i, i == n-1)
		out, err = a.Open(out, nonce[:], ct[:k], aad[:])
		if err != nil {
			clear(out[:cap(out)])
			return nil, fail(int64(i), "tag mismatch (tampered, swapped, renamed, truncated, or wrong key or key version)")
		}
		ct = ct[k:]
	}
	return out, nil
}

// replicaHeaderMatches compares a stored (parsed) header with the expected
// one in every field but the object id and the flags, naming the first
// field that differs.
func replicaHeaderMatches(stored, want ReplicaHeader) error {
	switch {
	case stored.Kind != want.Kind:
		return fmt.Errorf("kind %s, want %s", stored.Kind, want.Kind)
	case stored.KEKVersion != want.KEKVersion:
		return fmt.Errorf("key version %d, want %d", stored.KEKVersion, want.KEKVersion)
	case stored.Volume != want.Volume:
		return fmt.Errorf("volume %s, want %s", stored.Volume, want.Volume)
	case stored.Epoch != want.Epoch:
		return fmt.Errorf("epoch %d, want %d", stored.Epoch, want.Epoch)
	case stored.Position != want.Position:
		return fmt.Errorf("position %d, want %d", stored.Position, want.Position)
	case stored.Part != want.Part:
		return fmt.Errorf("part %d, want %d", stored.Part, want.Part)
	}
	// Belt and braces: the encodings agree byte for byte outside the object
	// id and the flags.
	w := want
	w.Object, w.Last, w.BlockSize = stored.Object, stored.Last, ReplicaBlockSize
	if w.marshal() != stored.marshal() {
		return fmt.Errorf("header bytes differ")
	}
	return nil
}
