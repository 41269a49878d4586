// Package replica replicates the catalog to the volume's remote and restores it
// (FORMAT.md section 12, ARCHITECTURE.md "Catalog replication"): the SQLite WAL
// reader (this file), the Replicator that ships committed frames as sealed deltas
// and snapshots, retention, and Restore.
package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The SQLite WAL file format (https://sqlite.org/fileformat2.html#walformat).
// Header fields are big-endian; the magic's low bit selects the byte order of
// the 32-bit words the checksums run over (1: big-endian).
const (
	walMagic       = 0x377f0682
	walVersion     = 3007000
	walHeaderSize  = 32
	frameHeadSize  = 24
	minPageSize    = 512
	maxPageSize    = 65536
	frameSumPrefix = 8 // bytes of a frame header covered by the checksum

	readBatchFrames = 256 // frames ReadCommitted reads at a time (1 MiB of 4 KiB pages)
)

// ErrWALReset means the WAL no longer continues from the Position given: it
// was checkpointed and restarted (new salts) or truncated, so frames may have
// been lost and the caller must start over from a snapshot.
var ErrWALReset = errors.New("replica: WAL was reset since the last read")

// Position says where a read of the WAL stopped, so the next read resumes
// there. The zero Position is the start of the WAL.
type Position struct {
	Salt1, Salt2 uint32 // the WAL header's salts
	Offset       int64  // byte offset of the next frame
	Sum1, Sum2   uint32 // running checksum up to Offset
	PageSize     int
}

// IsZero reports whether p is the start of the WAL.
func (p Position) IsZero() bool { return p == Position{} }

// Frame is one WAL frame: a database page image.
type Frame struct {
	Pgno   uint32 // page number, from 1
	Commit uint32 // database size in pages after commit; 0 if not a commit frame
	Page   []byte
}

// walHeader is the decoded 32-byte WAL header.
type walHeader struct {
	order        binary.ByteOrder // of the checksum words
	pageSize     int
	salt1, salt2 uint32
	sum1, sum2   uint32
}

func parseHeader(b []byte) (walHeader, error) {
	be := binary.BigEndian
	var h walHeader
	switch m := be.Uint32(b[0:]); m {
	case walMagic:
		h.order = binary.LittleEndian
	case walMagic | 1:
		h.order = binary.BigEndian
	default:
		return h, fmt.Errorf("bad WAL magic %#08x at offset 0", m)
	}
	if v := be.Uint32(b[4:]); v != walVersion {
		return h, fmt.Errorf("unsupported WAL format version %d at offset 4", v)
	}
	// A 4-byte field: 65536 is stored as is (unlike the database header's 1).
	ps := be.Uint32(b[8:])
	if ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return h, fmt.Errorf("bad WAL page size %d at offset 8", ps)
	}
	h.pageSize = int(ps)
	// Bytes 12..15, the checkpoint sequence, are not needed: the salts change
	// at every restart too.
	h.salt1, h.salt2 = be.Uint32(b[16:]), be.Uint32(b[20:])
	h.sum1, h.sum2 = checksum(h.order, b[:24], 0, 0)
	if s1, s2 := be.Uint32(b[24:]), be.Uint32(b[28:]); s1 != h.sum1 || s2 != h.sum2 {
		return h, fmt.Errorf("bad WAL header checksum %08x%08x at offset 24, computed %08x%08x",
			s1, s2, h.sum1, h.sum2)
	}
	return h, nil
}

// checksum continues SQLite's WAL checksum (walChecksumBytes) from s1, s2
// over b, whose length is a multiple of 8.
func checksum(order binary.ByteOrder, b []byte, s1, s2 uint32) (uint32, uint32) {
	for i := 0; i+8 <= len(b); i += 8 {
		s1 += order.Uint32(b[i:]) + s2
		s2 += order.Uint32(b[i+4:]) + s1
	}
	return s1, s2
}

// ReadCommitted reads the WAL in r (size bytes long) from position from, and
// returns every frame up to and including the last valid commit frame, with
// the position just after it. Frames after that commit belong to a
// transaction not (yet) committed and are not returned; the scan also ends at
// the first torn or invalid frame (wrong salts, page number 0, checksum
// mismatch), as SQLite's own recovery does. With nothing new, frames is empty
// and next is from.
//
// If the WAL was restarted or truncated since from (unless from is the zero
// Position), the error wraps ErrWALReset. A WAL shorter than its header is
// empty. Any other error is a bad header or a failed read.
func ReadCommitted(r io.ReaderAt, size int64, from Position) (frames []Frame, next Position, err error) {
	if size < walHeaderSize {
		if from.IsZero() {
			return nil, from, nil
		}
		return nil, from, fmt.Errorf("WAL of %d bytes has no header: %w", size, ErrWALReset)
	}
	var hb [walHeaderSize]byte
	if err := readAt(r, hb[:], 0); err != nil {
		return nil, from, fmt.Errorf("reading WAL header: %w", err)
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		return nil, from, err
	}
	frameSize := int64(frameHeadSize + h.pageSize)
	pos := from
	if from.IsZero() {
		pos = Position{Salt1: h.salt1, Salt2: h.salt2, Offset: walHeaderSize,
			Sum1: h.sum1, Sum2: h.sum2, PageSize: h.pageSize}
	} else {
		switch {
		case from.Salt1 != h.salt1 || from.Salt2 != h.salt2:
			return nil, from, fmt.Errorf("WAL salts %08x %08x, resuming from %08x %08x: %w",
				h.salt1, h.salt2, from.Salt1, from.Salt2, ErrWALReset)
		case from.PageSize != h.pageSize:
			return nil, from, fmt.Errorf("WAL page size %d, resuming with %d", h.pageSize, from.PageSize)
		case from.Offset < walHeaderSize || (from.Offset-walHeaderSize)%frameSize != 0:
			return nil, from, fmt.Errorf("resume offset %d is not a frame boundary", from.Offset)
		case from.Offset > size:
			return nil, from, fmt.Errorf("WAL of %d bytes ends before the resume offset %d: %w",
				size, from.Offset, ErrWALReset)
		}
	}

	next = from
	ncommitted := 0
	// Frames are read in batches: one read per frame cost a system call per
	// page, the bulk of a replication round's CPU under a burst of creates.
	var batch []byte
	var batchAt int64
	for ; pos.Offset+frameSize <= size; pos.Offset += frameSize {
		if batch == nil || pos.Offset >= batchAt+int64(len(batch)) {
			n := min(readBatchFrames, (size-pos.Offset)/frameSize)
			if batch == nil || cap(batch) < int(n*frameSize) {
				batch = make([]byte, n*frameSize)
			}
			batch, batchAt = batch[:n*frameSize], pos.Offset
			if err := readAt(r, batch, pos.Offset); err != nil {
				return nil, from, fmt.Errorf("reading WAL frames at offset %d: %w", pos.Offset, err)
			}
		}
		buf := batch[pos.Offset-batchAt : pos.Offset-batchAt+frameSize]
		be := binary.BigEndian
		pgno, commit := be.Uint32(buf[0:]), be.Uint32(buf[4:])
		if pgno == 0 || be.Uint32(buf[8:]) != h.salt1 || be.Uint32(buf[12:]) != h.salt2 {
			break
		}
		s1, s2 := checksum(h.order, buf[:frameSumPrefix], pos.Sum1, pos.Sum2)
		s1, s2 = checksum(h.order, buf[frameHeadSize:], s1, s2)
		if be.Uint32(buf[16:]) != s1 || be.Uint32(buf[20:]) != s2 {
			break
		}
		pos.Sum1, pos.Sum2 = s1, s2
		frames = append(frames, Frame{Pgno: pgno, Commit: commit,
			Page: append([]byte(nil), buf[frameHeadSize:]...)})
		if commit != 0 {
			ncommitted = len(frames)
			next = pos
			next.Offset += frameSize
		}
	}
	return frames[:ncommitted:ncommitted], next, nil
}

// readAt fills b from offset off; io.EOF with b filled is success, as
// io.ReaderAt allows at the end of the input.
func readAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// PageFile is a database file being rebuilt; *os.File is one.
type PageFile interface {
	io.WriterAt
	Truncate(size int64) error
}

// ApplyFrames writes frames (as ReadCommitted returns them, ending with a
// commit frame) into the database file dst, as a SQLite checkpoint would:
// each page at (pgno-1)*pageSize, later frames winning, then the file
// truncated to the size the last commit frame gives. It does not sync dst.
func ApplyFrames(dst PageFile, pageSize int, frames []Frame) error {
	if len(frames) == 0 {
		return nil
	}
	last := frames[len(frames)-1]
	if last.Commit == 0 {
		return fmt.Errorf("applying %d WAL frames: the last is not a commit frame", len(frames))
	}
	for i, f := range frames {
		if f.Pgno == 0 || len(f.Page) != pageSize {
			return fmt.Errorf("applying WAL frame %d: page %d of %d bytes, page size %d",
				i, f.Pgno, len(f.Page), pageSize)
		}
		if _, err := dst.WriteAt(f.Page, int64(f.Pgno-1)*int64(pageSize)); err != nil {
			return fmt.Errorf("applying WAL frame %d (page %d): %w", i, f.Pgno, err)
		}
	}
	if err := dst.Truncate(int64(last.Commit) * int64(pageSize)); err != nil {
		return fmt.Errorf("truncating the database to %d pages: %w", last.Commit, err)
	}
	return nil
}
