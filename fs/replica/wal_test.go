package replica

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// source is a SQLite database in WAL mode that is never checkpointed
// automatically, driven through one pinned connection.
type source struct {
	t    testing.TB
	path string
	db   *sql.DB
	c    *sql.Conn
	rnd  *rand.Rand
	ps   int // page size
	next int // next transaction number
}

func newSource(t testing.TB, pageSize int) *source {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &source{t: t, path: path, db: db, c: c, ps: pageSize, rnd: rand.New(rand.NewPCG(1, uint64(pageSize)))}
	// A small cache makes big transactions spill frames into the WAL before
	// they commit (or roll back).
	s.exec(fmt.Sprintf("PRAGMA page_size = %d", pageSize))
	s.exec("PRAGMA journal_mode = WAL")
	s.exec("PRAGMA wal_autocheckpoint = 0")
	s.exec("PRAGMA cache_size = 16")
	s.exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB);
		CREATE INDEX t_k ON t(k);
		CREATE TABLE u(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID`)
	return s
}

func (s *source) exec(q string, args ...any) {
	s.t.Helper()
	if _, err := s.c.ExecContext(context.Background(), q, args...); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
}

func (s *source) blob(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(s.rnd.Uint32())
	}
	return b
}

// txs runs n transactions of mixed inserts, updates and deletes; among them,
// multi-page ones with blobs larger than a page, rolled-back ones and a
// VACUUM that shrinks the database.
func (s *source) txs(n int) {
	s.t.Helper()
	ctx := context.Background()
	for range n {
		i := s.next
		s.next++
		if i%97 == 96 {
			s.exec("DELETE FROM t WHERE id % 3 = 0")
			s.exec("VACUUM")
			continue
		}
		tx, err := s.c.BeginTx(ctx, nil)
		if err != nil {
			s.t.Fatal(err)
		}
		do := func(q string, args ...any) {
			if _, err := tx.Exec(q, args...); err != nil {
				s.t.Fatalf("transaction %d: %s: %v", i, q, err)
			}
		}
		switch {
		case i%53 == 52: // rolled back, big enough to spill
			for j := range 40 {
				do("INSERT INTO t(k, v) VALUES(?, ?)", fmt.Sprintf("rb%d.%d", i, j), s.blob(max(3000, 2*s.ps)))
			}
			if err := tx.Rollback(); err != nil {
				s.t.Fatal(err)
			}
			continue
		case i%37 == 36: // multi-page, overflow pages
			for j := range 6 {
				do("INSERT INTO t(k, v) VALUES(?, ?)", fmt.Sprintf("big%d.%d", i, j), s.blob(5000+s.rnd.IntN(20000)))
			}
		default:
			for range 1 + s.rnd.IntN(5) {
				id := 1 + s.rnd.IntN(4*i+1)
				switch s.rnd.IntN(4) {
				case 0, 1:
					do("INSERT INTO t(k, v) VALUES(?, ?)", fmt.Sprintf("k%d", s.rnd.IntN(1000)), s.blob(s.rnd.IntN(300)))
				case 2:
					do("UPDATE t SET v = ?, k = k || 'u' WHERE id = ?", s.blob(s.rnd.IntN(600)), id)
					do("INSERT INTO u VALUES(?, 1) ON CONFLICT(name) DO UPDATE SET n = n + 1", fmt.Sprintf("n%d", id%50))
				case 3:
					do("DELETE FROM t WHERE id = ?", id)
					do("DELETE FROM u WHERE name = ?", fmt.Sprintf("n%d", id%50))
				}
			}
		}
		if err := tx.Commit(); err != nil {
			s.t.Fatal(err)
		}
	}
}

// dump is a logical dump of a database: schema and every row, ordered.
func dump(t testing.TB, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}) string {
	t.Helper()
	var b strings.Builder
	for _, query := range []string{
		"SELECT type, name, sql FROM sqlite_schema ORDER BY name",
		"SELECT id, k, hex(v) FROM t ORDER BY id",
		"SELECT name, n FROM u ORDER BY name",
	} {
		rows, err := q.QueryContext(context.Background(), query)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&b, vals...)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return b.String()
}

func (s *source) dump() string { s.t.Helper(); return dump(s.t, s.c) }

// walBytes is the source's WAL as it is now.
func (s *source) walBytes() []byte {
	s.t.Helper()
	b, err := os.ReadFile(s.path + "-wal")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		s.t.Fatal(err)
	}
	return b
}

// checkDB opens a copy of the database file at path (SQLite may write to what
// it opens), and checks its integrity and that its dump is want.
func checkDB(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "check.db")
	if err := os.WriteFile(cp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", cp)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q, %v", ok, err)
	}
	if got := dump(t, db); got != want {
		t.Fatalf("dump differs: %d bytes, want %d", len(got), len(want))
	}
}

func readAll(t *testing.T, wal []byte, from Position) ([]Frame, Position) {
	t.Helper()
	frames, next, err := ReadCommitted(bytes.NewReader(wal), int64(len(wal)), from)
	if err != nil {
		t.Fatal(err)
	}
	return frames, next
}

// TestReplay rebuilds a database from its checkpointed file and the WAL frames
// read in several steps, and compares it with the source after every step.
func TestReplay(t *testing.T) {
	for _, ps := range []int{512, 4096, 65536} {
		t.Run(fmt.Sprint(ps), func(t *testing.T) {
			s := newSource(t, ps)
			s.txs(10)
			s.exec("PRAGMA wal_checkpoint(TRUNCATE)")
			base, err := os.ReadFile(s.path)
			if err != nil {
				t.Fatal(err)
			}
			replica := filepath.Join(t.TempDir(), "replica.db")
			if err := os.WriteFile(replica, base, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(replica, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()

			var pos Position
			uncommitted := 0
			for _, n := range []int{0, 1, 52, 43, 104, 100} { // 300 transactions; 105 rolls back
				s.txs(n)
				wal := s.walBytes()
				frames, next := readAll(t, wal, pos)
				if next.Offset < int64(len(wal)) {
					uncommitted++ // a rolled-back transaction spilled frames
				}
				if len(frames) > 0 && next.PageSize != ps {
					t.Fatalf("page size %d, want %d", next.PageSize, ps)
				}
				if err := ApplyFrames(f, ps, frames); err != nil {
					t.Fatal(err)
				}
				pos = next
				checkDB(t, replica, s.dump())
			}
			if uncommitted == 0 {
				t.Error("no read saw frames after the last commit")
			}
			// A checkpoint writes the same pages: the files are equal.
			s.exec("PRAGMA wal_checkpoint(TRUNCATE)")
			got, _ := os.ReadFile(replica)
			want, _ := os.ReadFile(s.path)
			if !bytes.Equal(got, want) {
				t.Errorf("replica (%d bytes) differs from the checkpointed source (%d bytes)", len(got), len(want))
			}
		})
	}
}

// walFixture is a WAL of a few transactions, the last one multi-frame, with
// the frames ReadCommitted returns and the offset of each.
func walFixture(t *testing.T) (s *source, wal []byte, frames []Frame, next Position) {
	s = newSource(t, 1024)
	s.txs(37) // the last one multi-page
	wal = s.walBytes()
	frames, next = readAll(t, wal, Position{})
	if next.Offset != int64(len(wal)) || len(frames) < 20 || frames[len(frames)-2].Commit != 0 {
		t.Fatalf("fixture: %d frames, next %d, WAL %d bytes", len(frames), next.Offset, len(wal))
	}
	return s, wal, frames, next
}

func frameOffset(i, pageSize int) int { return walHeaderSize + i*(frameHeadSize+pageSize) }

// lastCommitBefore is how many frames end at the last commit before frame i.
func lastCommitBefore(frames []Frame, i int) int {
	for i > 0 && frames[i-1].Commit == 0 {
		i--
	}
	return i
}

func TestUncommittedTail(t *testing.T) {
	_, wal, frames, _ := walFixture(t)
	ps := 1024
	lastTx := lastCommitBefore(frames, len(frames)-1) // first frame of the last transaction
	for _, cut := range []int{
		frameOffset(lastTx+1, ps),               // after its first frame
		frameOffset(len(frames)-1, ps),          // before its commit frame
		frameOffset(len(frames)-1, ps) + 100,    // in the middle of the commit frame
		frameOffset(len(frames), ps) - 1,        // one byte short
		frameOffset(len(frames)-1, ps) + 24,     // commit frame header only
		frameOffset(lastTx, ps) + frameHeadSize, // torn first frame
	} {
		got, next := readAll(t, wal[:cut], Position{})
		if len(got) != lastTx || next.Offset != int64(frameOffset(lastTx, ps)) {
			t.Errorf("cut at %d: %d frames up to %d, want %d up to %d", cut, len(got), next.Offset, lastTx, frameOffset(lastTx, ps))
		}
		// Resuming with the whole WAL returns the rest.
		rest, end := readAll(t, wal, next)
		if len(rest) != len(frames)-lastTx || end.Offset != int64(len(wal)) {
			t.Errorf("cut at %d: resuming gave %d frames up to %d", cut, len(rest), end.Offset)
		}
	}
}

func TestCorruptFrame(t *testing.T) {
	_, wal, frames, _ := walFixture(t)
	ps := 1024
	for _, i := range []int{0, 1, len(frames) / 2, len(frames) - 1} {
		for _, at := range []int{0, 3, 4, 7, 8, 12, 16, 20, 23, 24, 24 + ps/2, 24 + ps - 1} {
			bad := bytes.Clone(wal)
			bad[frameOffset(i, ps)+at] ^= 0x10
			got, next := readAll(t, bad, Position{})
			want := lastCommitBefore(frames, i)
			if len(got) != want || want > 0 && next.Offset != int64(frameOffset(want, ps)) || want == 0 && !next.IsZero() {
				t.Errorf("frame %d byte %d flipped: %d frames, want %d", i, at, len(got), want)
			}
			for j := range got {
				if got[j].Pgno != frames[j].Pgno || !bytes.Equal(got[j].Page, frames[j].Page) {
					t.Fatalf("frame %d byte %d flipped: frame %d differs", i, at, j)
				}
			}
		}
	}
}

func TestBadHeader(t *testing.T) {
	_, wal, _, next := walFixture(t)
	for _, c := range []struct {
		at   int
		mask byte
		want string
	}{
		{0, 0x04, "magic"},
		{3, 0x04, "magic"},
		{6, 0x01, "version"},
		{10, 0x01, "page size"}, // 1024 → 1280
		{9, 0x04, "page size"},  // 1024 → 263168
		{12, 0x01, "checksum"},  // checkpoint sequence: only the checksum notices
		{17, 0x01, "checksum"},
		{24, 0x01, "checksum"},
		{31, 0x80, "checksum"},
	} {
		bad := bytes.Clone(wal)
		bad[c.at] ^= c.mask
		for _, from := range []Position{{}, next} {
			frames, got, err := ReadCommitted(bytes.NewReader(bad), int64(len(bad)), from)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "offset") ||
				errors.Is(err, ErrWALReset) || frames != nil || got != from {
				t.Errorf("byte %d ^ %#x: %v, %d frames; want a %q error", c.at, c.mask, err, len(frames), c.want)
			}
		}
	}
	// A page size of 65536 is stored as is; 1 (the database header's code
	// for it) is not valid here, as in SQLite.
	bad := bytes.Clone(wal)
	binary.BigEndian.PutUint32(bad[8:], 1)
	if _, _, err := ReadCommitted(bytes.NewReader(bad), int64(len(bad)), Position{}); err == nil {
		t.Error("page size 1 accepted")
	}
}

func TestReset(t *testing.T) {
	for _, mode := range []string{"TRUNCATE", "PASSIVE"} {
		t.Run(mode, func(t *testing.T) {
			s := newSource(t, 4096)
			s.txs(20)
			_, old := readAll(t, s.walBytes(), Position{})
			s.exec("PRAGMA wal_checkpoint(" + mode + ")")
			if mode == "TRUNCATE" {
				wal := s.walBytes()
				if _, _, err := ReadCommitted(bytes.NewReader(wal), int64(len(wal)), old); !errors.Is(err, ErrWALReset) {
					t.Fatalf("empty WAL: %v, want ErrWALReset", err)
				}
				if frames, next := readAll(t, wal, Position{}); len(frames) != 0 || !next.IsZero() {
					t.Fatalf("empty WAL from zero: %d frames, %+v", len(frames), next)
				}
			}
			base, err := os.ReadFile(s.path)
			if err != nil {
				t.Fatal(err)
			}
			s.txs(5)
			wal := s.walBytes()
			_, _, err = ReadCommitted(bytes.NewReader(wal), int64(len(wal)), old)
			if !errors.Is(err, ErrWALReset) {
				t.Fatalf("restarted WAL: %v, want ErrWALReset", err)
			}
			// From the start, only the new frames count (after a PASSIVE
			// checkpoint the old ones follow with old salts), and they apply
			// to the checkpointed file.
			frames, next := readAll(t, wal, Position{})
			if next.Salt1 == old.Salt1 && next.Salt2 == old.Salt2 || next.Offset > old.Offset {
				t.Fatalf("new WAL %+v, old %+v", next, old)
			}
			replica := filepath.Join(t.TempDir(), "replica.db")
			if err := os.WriteFile(replica, base, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(replica, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := ApplyFrames(f, next.PageSize, frames); err != nil {
				t.Fatal(err)
			}
			checkDB(t, replica, s.dump())
		})
	}
}

// toBigEndian rewrites the first n bytes of a WAL (whole frames) with
// big-endian checksum words (magic 0x377f0683), as a big-endian host writes.
func toBigEndian(wal []byte, n int64) []byte {
	b := bytes.Clone(wal[:n])
	be := binary.BigEndian
	be.PutUint32(b, walMagic|1)
	s1, s2 := checksum(be, b[:24], 0, 0)
	be.PutUint32(b[24:], s1)
	be.PutUint32(b[28:], s2)
	ps := int(be.Uint32(b[8:]))
	for off := walHeaderSize; off < len(b); off += frameHeadSize + ps {
		s1, s2 = checksum(be, b[off:off+8], s1, s2)
		s1, s2 = checksum(be, b[off+frameHeadSize:off+frameHeadSize+ps], s1, s2)
		be.PutUint32(b[off+16:], s1)
		be.PutUint32(b[off+20:], s2)
	}
	return b
}

// TestBigEndianChecksums checks the big-endian variant against SQLite: it
// recovers the rewritten WAL, and ReadCommitted returns the same frames.
func TestBigEndianChecksums(t *testing.T) {
	s := newSource(t, 4096)
	s.exec("PRAGMA wal_checkpoint(TRUNCATE)")
	base, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	s.txs(30)
	wal := s.walBytes()
	frames, next := readAll(t, wal, Position{})
	bwal := toBigEndian(wal, next.Offset)
	bframes, bnext := readAll(t, bwal, Position{})
	if len(bframes) != len(frames) || bnext.Offset != next.Offset {
		t.Fatalf("big-endian: %d frames up to %d, want %d up to %d", len(bframes), bnext.Offset, len(frames), next.Offset)
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "be.db")
	if err := os.WriteFile(db, base, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db+"-wal", bwal, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := dump(t, c), s.dump(); got != want {
		t.Fatal("SQLite did not recover the big-endian WAL")
	}
}

// refValid checks, independently of ReadCommitted, that frames are exactly
// the valid frames of wal between from and next, ending with a commit.
func refValid(t *testing.T, wal []byte, from Position, frames []Frame, next Position) {
	t.Helper()
	u32 := func(b []byte) uint32 { return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) }
	if len(frames) == 0 {
		if next != from {
			t.Fatalf("no frames but moved from %+v to %+v", from, next)
		}
		return
	}
	swap := wal[3]&1 == 0 // little-endian checksum words
	word := func(b []byte) uint32 {
		if swap {
			return uint32(b[3])<<24 | uint32(b[2])<<16 | uint32(b[1])<<8 | uint32(b[0])
		}
		return u32(b)
	}
	sum := func(b []byte, s [2]uint32) [2]uint32 {
		for len(b) > 0 {
			s[0] += word(b) + s[1]
			s[1] += word(b[4:]) + s[0]
			b = b[8:]
		}
		return s
	}
	ps := int(u32(wal[8:]))
	s := [2]uint32{from.Sum1, from.Sum2}
	off := int(from.Offset)
	if from.IsZero() {
		s, off = sum(wal[:24], [2]uint32{}), walHeaderSize
	}
	for i, f := range frames {
		if off+frameHeadSize+ps > len(wal) {
			t.Fatalf("frame %d at %d runs past the WAL's %d bytes", i, off, len(wal))
		}
		h := wal[off : off+frameHeadSize]
		s = sum(wal[off+frameHeadSize:off+frameHeadSize+ps], sum(h[:8], s))
		if f.Pgno == 0 || f.Pgno != u32(h) || f.Commit != u32(h[4:]) || !bytes.Equal(h[8:16], wal[16:24]) ||
			s[0] != u32(h[16:]) || s[1] != u32(h[20:]) || !bytes.Equal(f.Page, wal[off+frameHeadSize:off+frameHeadSize+ps]) {
			t.Fatalf("frame %d at %d was not valid", i, off)
		}
		off += frameHeadSize + ps
	}
	if frames[len(frames)-1].Commit == 0 || next.Offset != int64(off) || next.Sum1 != s[0] || next.Sum2 != s[1] {
		t.Fatalf("next %+v after frames ending at %d, sums %x", next, off, s)
	}
}

func FuzzReadCommitted(f *testing.F) {
	s := newSource(f, 512)
	s.txs(4)
	wal := s.walBytes()
	_, next, err := ReadCommitted(bytes.NewReader(wal), int64(len(wal)), Position{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wal, uint16(700))
	f.Add(toBigEndian(wal, next.Offset), uint16(1300))
	f.Add(wal[:len(wal)-100], uint16(40))
	f.Fuzz(func(t *testing.T, wal []byte, split uint16) {
		size := int64(len(wal))
		frames, next, err := ReadCommitted(bytes.NewReader(wal), size, Position{})
		if err != nil {
			if frames != nil || !next.IsZero() {
				t.Fatalf("error %v with %d frames, next %+v", err, len(frames), next)
			}
			return
		}
		refValid(t, wal, Position{}, frames, next)
		// Reading a prefix and then resuming gives the same frames.
		cut := min(int(split), len(wal))
		f1, p1, err := ReadCommitted(bytes.NewReader(wal[:cut]), int64(cut), Position{})
		if err != nil {
			t.Fatalf("prefix of %d: %v", cut, err)
		}
		refValid(t, wal[:cut], Position{}, f1, p1)
		f2, p2, err := ReadCommitted(bytes.NewReader(wal), size, p1)
		if err != nil {
			t.Fatalf("resuming from %+v: %v", p1, err)
		}
		refValid(t, wal, p1, f2, p2)
		if len(f1)+len(f2) != len(frames) || p2 != next {
			t.Fatalf("in two reads %d+%d frames up to %+v, in one %d up to %+v", len(f1), len(f2), p2, len(frames), next)
		}
	})
}
