package replica

import (
	"encoding/binary"
	"fmt"
	"sort"

	"coffer/crypto/format"
)

// The plaintexts of replica objects (FORMAT.md 12.11, 12.12). All integers
// are big-endian.

// StateID names one catalog state of an epoch: the object id of the delta
// that produced it, or of part 0 of a snapshot that starts a chain. The next
// delta links to it, so an older copy of an object, or a dropped one, breaks
// the chain.
type StateID = format.ID

// Delta is the plaintext of a delta object: the pages that changed from
// position P-1 to P, each at its newest image.
type Delta struct {
	PageSize int
	DBPages  uint32 // database size in pages after the delta
	TimeNS   int64  // when the delta was built (its commits are older)
	Prev     StateID
	WAL      Position // where the WAL read stopped: lets a restarted daemon resume
	Pages    []Page   // sorted by page number, no duplicates
}

// Page is one database page image.
type Page struct {
	Pgno uint32
	Data []byte
}

const deltaHead = 4 + 4 + 8 + 16 + 4 + 4 + 8 + 4 + 4 + 4 // 60

// PagesFromFrames keeps each page's newest image, sorted by page number.
func PagesFromFrames(frames []Frame) []Page {
	newest := make(map[uint32][]byte, len(frames))
	for _, f := range frames {
		newest[f.Pgno] = f.Page
	}
	out := make([]Page, 0, len(newest))
	for p, d := range newest {
		out = append(out, Page{p, d})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pgno < out[j].Pgno })
	return out
}

// Marshal encodes d.
func (d *Delta) Marshal() []byte {
	b := make([]byte, 0, deltaHead+len(d.Pages)*(4+d.PageSize))
	b = binary.BigEndian.AppendUint32(b, uint32(d.PageSize))
	b = binary.BigEndian.AppendUint32(b, d.DBPages)
	b = binary.BigEndian.AppendUint64(b, uint64(d.TimeNS))
	b = append(b, d.Prev[:]...)
	b = binary.BigEndian.AppendUint32(b, d.WAL.Salt1)
	b = binary.BigEndian.AppendUint32(b, d.WAL.Salt2)
	b = binary.BigEndian.AppendUint64(b, uint64(d.WAL.Offset))
	b = binary.BigEndian.AppendUint32(b, d.WAL.Sum1)
	b = binary.BigEndian.AppendUint32(b, d.WAL.Sum2)
	b = binary.BigEndian.AppendUint32(b, uint32(len(d.Pages)))
	for _, p := range d.Pages {
		b = binary.BigEndian.AppendUint32(b, p.Pgno)
		b = append(b, p.Data...)
	}
	return b
}

// UnmarshalDelta decodes and checks a delta's plaintext.
func UnmarshalDelta(b []byte) (*Delta, error) {
	if len(b) < deltaHead {
		return nil, fmt.Errorf("delta of %d bytes is shorter than its %d-byte head", len(b), deltaHead)
	}
	be := binary.BigEndian
	d := &Delta{PageSize: int(be.Uint32(b[0:])), DBPages: be.Uint32(b[4:]), TimeNS: int64(be.Uint64(b[8:]))}
	if err := checkPageSize(d.PageSize); err != nil {
		return nil, fmt.Errorf("delta: %w", err)
	}
	copy(d.Prev[:], b[16:32])
	d.WAL = Position{Salt1: be.Uint32(b[32:]), Salt2: be.Uint32(b[36:]), Offset: int64(be.Uint64(b[40:])),
		Sum1: be.Uint32(b[48:]), Sum2: be.Uint32(b[52:]), PageSize: d.PageSize}
	n := int(be.Uint32(b[56:]))
	rest := b[deltaHead:]
	if n < 1 || len(rest) != n*(4+d.PageSize) {
		return nil, fmt.Errorf("delta: %d pages of %d bytes do not fill %d bytes", n, d.PageSize, len(rest))
	}
	if d.DBPages == 0 {
		return nil, fmt.Errorf("delta: database size of 0 pages")
	}
	d.Pages = make([]Page, n)
	for i := range n {
		p := Page{Pgno: be.Uint32(rest), Data: rest[4 : 4+d.PageSize]}
		if p.Pgno == 0 || i > 0 && p.Pgno <= d.Pages[i-1].Pgno {
			return nil, fmt.Errorf("delta: page %d out of order (entry %d)", p.Pgno, i)
		}
		d.Pages[i] = p
		rest = rest[4+d.PageSize:]
	}
	return d, nil
}

// SnapshotPart is the plaintext of one part of a snapshot: a run of pages of
// the catalog file as it was at position P.
type SnapshotPart struct {
	PageSize  int
	DBPages   uint32  // database size in pages
	TimeNS    int64   // when the snapshot was taken
	Parts     uint16  // how many parts the snapshot has
	FirstPgno uint32  // page number of the first page in this part
	State     StateID // the delta of P whose state this is; zero if the snapshot starts a chain
	Pages     []byte  // whole pages, from FirstPgno on
}

const snapHead = 4 + 4 + 8 + 2 + 4 + 16 // 38

// PagesPerPart is how many pages of pageSize one snapshot part holds (16 MiB).
func PagesPerPart(pageSize int) uint32 { return uint32(16 << 20 / pageSize) }

// Marshal encodes s.
func (s *SnapshotPart) Marshal() []byte {
	b := make([]byte, 0, snapHead+len(s.Pages))
	b = binary.BigEndian.AppendUint32(b, uint32(s.PageSize))
	b = binary.BigEndian.AppendUint32(b, s.DBPages)
	b = binary.BigEndian.AppendUint64(b, uint64(s.TimeNS))
	b = binary.BigEndian.AppendUint16(b, s.Parts)
	b = binary.BigEndian.AppendUint32(b, s.FirstPgno)
	b = append(b, s.State[:]...)
	return append(b, s.Pages...)
}

// UnmarshalSnapshotPart decodes and checks part k of a snapshot.
func UnmarshalSnapshotPart(b []byte, k uint16) (*SnapshotPart, error) {
	if len(b) < snapHead {
		return nil, fmt.Errorf("snapshot part of %d bytes is shorter than its %d-byte head", len(b), snapHead)
	}
	be := binary.BigEndian
	s := &SnapshotPart{PageSize: int(be.Uint32(b[0:])), DBPages: be.Uint32(b[4:]), TimeNS: int64(be.Uint64(b[8:])),
		Parts: be.Uint16(b[16:]), FirstPgno: be.Uint32(b[18:]), Pages: b[snapHead:]}
	copy(s.State[:], b[22:38])
	if err := checkPageSize(s.PageSize); err != nil {
		return nil, fmt.Errorf("snapshot part %d: %w", k, err)
	}
	per := PagesPerPart(s.PageSize)
	want := uint32(0)
	if first := uint64(k)*uint64(per) + 1; first <= uint64(s.DBPages) {
		want = min(per, s.DBPages-uint32(first)+1)
	}
	switch {
	case s.DBPages == 0:
		return nil, fmt.Errorf("snapshot part %d: database size of 0 pages", k)
	case s.Parts == 0 || k >= s.Parts:
		return nil, fmt.Errorf("snapshot part %d of %d parts", k, s.Parts)
	case uint64(s.Parts) != (uint64(s.DBPages)+uint64(per)-1)/uint64(per):
		return nil, fmt.Errorf("snapshot part %d: %d parts for %d pages", k, s.Parts, s.DBPages)
	case s.FirstPgno != uint32(k)*per+1:
		return nil, fmt.Errorf("snapshot part %d starts at page %d, want %d", k, s.FirstPgno, uint32(k)*per+1)
	case len(s.Pages) != int(want)*s.PageSize:
		return nil, fmt.Errorf("snapshot part %d holds %d bytes, want %d pages of %d", k, len(s.Pages), want, s.PageSize)
	}
	return s, nil
}

func checkPageSize(ps int) error {
	if ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return fmt.Errorf("bad page size %d", ps)
	}
	return nil
}
