package format

import (
	"errors"
	"fmt"
	"math/bits"
)

// Bounds of a Layout. Blocks below 4 KiB waste tag space and per-call cost;
// above 1 MiB a small random read decrypts too much. Chunks above 64 MiB make
// a 4 KiB overwrite re-upload too much.
const (
	MinBlockSize = 4 << 10
	MaxBlockSize = 1 << 20
	MaxChunkSize = 64 << 20
)

// TagSize is the GCM tag appended to every sealed block.
const TagSize = 16

// Layout fixes how a volume cuts file content into chunks (one remote object
// each) and chunks into independently sealed blocks. It is chosen at init and
// never changes for a volume.
type Layout struct {
	BlockSize int   // plaintext bytes per block: a power of two, 4 KiB..1 MiB
	ChunkSize int64 // plaintext bytes per chunk: a multiple of BlockSize, up to 64 MiB
}

// DefaultLayout is 16 KiB blocks in 4 MiB chunks, chosen by measurement
// (BenchmarkReadPath, FORMAT.md "Choice of defaults"): AES-GCM throughput is
// flat from 4 KiB up, so the block size only trades read amplification
// against tags. A cold, page-aligned 4 KiB random read costs the daemon
// about 1.7 µs with 4 KiB blocks, 6 µs with 16 KiB and 22 µs with 64 KiB,
// next to ~60 µs for the FUSE round trip itself; 16 KiB keeps that within a
// few percent of the best while storing 4x fewer tags (0.1 % overhead).
// Sequential 128 KiB reads cost the same at 4..64 KiB. 4 MiB chunks bound
// what a small overwrite re-uploads while keeping object counts low.
var DefaultLayout = Layout{BlockSize: 16 << 10, ChunkSize: 4 << 20}

// Validate checks the layout's bounds.
func (l Layout) Validate() error {
	bs := l.BlockSize
	switch {
	case bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0:
		return fmt.Errorf("format: block size %d: want a power of two from %d to %d", bs, MinBlockSize, MaxBlockSize)
	case l.ChunkSize < int64(bs) || l.ChunkSize > MaxChunkSize:
		return fmt.Errorf("format: chunk size %d: want from the block size (%d) to %d", l.ChunkSize, bs, MaxChunkSize)
	case l.ChunkSize%int64(bs) != 0:
		return fmt.Errorf("format: chunk size %d: not a multiple of the block size %d", l.ChunkSize, bs)
	}
	return nil
}

// blockShift is log2(BlockSize); valid only after Validate.
func (l Layout) blockShift() int { return bits.TrailingZeros(uint(l.BlockSize)) }

// BlocksPerChunk is the number of blocks in a full chunk.
func (l Layout) BlocksPerChunk() int64 { return l.ChunkSize / int64(l.BlockSize) }

// SealedBlockSize is the stored size of a full block (BlockSize + TagSize).
func (l Layout) SealedBlockSize() int64 { return int64(l.BlockSize) + TagSize }

var errNegative = errors.New("negative value")

// Locate maps a plaintext file offset to the chunk that holds it and the
// offset inside that chunk.
func (l Layout) Locate(off int64) (chunk, inChunk int64, err error) {
	if err := l.Validate(); err != nil {
		return 0, 0, err
	}
	if off < 0 {
		return 0, 0, fmt.Errorf("format: locate offset %d: %w", off, errNegative)
	}
	return off / l.ChunkSize, off % l.ChunkSize, nil
}

// Chunks is the number of chunks of a file of size bytes (0 for an empty file).
func (l Layout) Chunks(size int64) (int64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	if size < 0 {
		return 0, fmt.Errorf("format: chunks of size %d: %w", size, errNegative)
	}
	return ceilDiv(size, l.ChunkSize), nil
}

// ceilDiv is ⌈a/b⌉ for a >= 0, b > 0, without overflow near MaxInt64.
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}

// ChunkLen is the plaintext length of chunk number chunk of a file of size
// bytes: ChunkSize for all but the last chunk, 0 past the end.
func (l Layout) ChunkLen(size, chunk int64) (int64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	if size < 0 || chunk < 0 {
		return 0, fmt.Errorf("format: length of chunk %d of size %d: %w", chunk, size, errNegative)
	}
	if chunk >= ceilDiv(size, l.ChunkSize) {
		return 0, nil
	}
	return min(l.ChunkSize, size-chunk*l.ChunkSize), nil
}

// checkChunkLen validates a chunk's plaintext length as read from the
// catalog: a stored chunk is never empty and never longer than ChunkSize.
func (l Layout) checkChunkLen(chunkLen int64) error {
	if err := l.Validate(); err != nil {
		return err
	}
	if chunkLen < 1 || chunkLen > l.ChunkSize {
		return fmt.Errorf("format: chunk length %d: want 1 to %d", chunkLen, l.ChunkSize)
	}
	return nil
}

// Blocks is the number of blocks of a chunk of chunkLen plaintext bytes.
func (l Layout) Blocks(chunkLen int64) (int64, error) {
	if err := l.checkChunkLen(chunkLen); err != nil {
		return 0, err
	}
	return (chunkLen + int64(l.BlockSize) - 1) >> l.blockShift(), nil
}

// LastBlock is the index of the block sealed with the last-block flag in a
// chunk of chunkLen bytes.
func (l Layout) LastBlock(chunkLen int64) (int64, error) {
	n, err := l.Blocks(chunkLen)
	return n - 1, err
}

// BlockLen is the plaintext length of block index of a chunk of chunkLen
// bytes: BlockSize except for the last block, which holds the rest (1 to
// BlockSize bytes, never 0).
func (l Layout) BlockLen(chunkLen, index int64) (int, error) {
	n, err := l.Blocks(chunkLen)
	if err != nil {
		return 0, err
	}
	if index < 0 || index >= n {
		return 0, fmt.Errorf("format: block %d of a %d-byte chunk: want 0 to %d", index, chunkLen, n-1)
	}
	if index < n-1 {
		return l.BlockSize, nil
	}
	return int(chunkLen - index<<l.blockShift()), nil
}

// BlockSpan maps the plaintext range [off, off+n) inside a chunk of chunkLen
// bytes to the first and last block that hold it. The range must be non-empty
// and inside the chunk.
func (l Layout) BlockSpan(chunkLen, off, n int64) (first, last int64, err error) {
	if err := l.checkChunkLen(chunkLen); err != nil {
		return 0, 0, err
	}
	if off < 0 || n < 1 || off > chunkLen-n {
		return 0, 0, fmt.Errorf("format: range [%d, +%d) of a %d-byte chunk: want a non-empty range inside the chunk", off, n, chunkLen)
	}
	s := l.blockShift()
	return off >> s, (off + n - 1) >> s, nil
}

// CiphertextRange is the byte range [off, off+n) of the object that holds
// sealed blocks first..last (inclusive) of a chunk of chunkLen bytes: fetch
// it with one ranged GET and pass it to OpenRange. The header is not
// included; it occupies [0, HeaderSize).
func (l Layout) CiphertextRange(chunkLen, first, last int64) (off, n int64, err error) {
	nb, err := l.Blocks(chunkLen)
	if err != nil {
		return 0, 0, err
	}
	if first < 0 || first > last || last >= nb {
		return 0, 0, fmt.Errorf("format: blocks %d..%d of a %d-block chunk: want 0 <= first <= last < %d", first, last, nb, nb)
	}
	sb := l.SealedBlockSize()
	off = HeaderSize + first*sb
	end := HeaderSize + (last+1)*sb
	if last == nb-1 {
		end = l.objectSize(chunkLen, nb)
	}
	return off, end - off, nil
}

// ObjectSize is the stored size of the object of a chunk of chunkLen bytes:
// header, plaintext, and one tag per block.
func (l Layout) ObjectSize(chunkLen int64) (int64, error) {
	nb, err := l.Blocks(chunkLen)
	if err != nil {
		return 0, err
	}
	return l.objectSize(chunkLen, nb), nil
}

func (l Layout) objectSize(chunkLen, blocks int64) int64 {
	return HeaderSize + chunkLen + blocks*TagSize
}
