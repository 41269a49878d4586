package e2e

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// What a leak scan looks for.
type patKind uint8

const (
	kindContent patKind = 1 << iota // a content marker: never outside the mount, not even in the catalog or a log
	kindName                        // a file name: only the catalog (and logs) may hold names
	kindSecret                      // the PIN: nowhere at all
)

func (k patKind) String() string {
	switch k {
	case kindContent:
		return "plaintext content marker"
	case kindName:
		return "file name"
	case kindSecret:
		return "HSM PIN" // or passphrase
	}
	return "?"
}

type pattern struct {
	b    []byte
	kind patKind
}

// minScanName is the shortest tree name searched for on the remote; shorter names would
// match ciphertext or unrelated text by chance.
const minScanName = 10

// winLen is the window the matcher indexes: every pattern is at least this long.
const winLen = 8

// matcher finds many fixed byte strings in one pass: it indexes each pattern's first
// winLen bytes, filters every window of the input through a bitset of their hashes and
// confirms the rare candidates against the index.
type matcher struct {
	pats   []pattern
	index  map[uint64][]int
	filter []uint64 // 1<<filterBits bits
	maxLen int
	files  int   // files scanned by scanFile
	bytes  int64 // data bytes scanned by scanFile
}

const filterBits = 20

func winHash(w uint64) uint64 { return (w * 0x9E3779B97F4A7C15) >> (64 - filterBits) }

func newMatcher(pats []pattern) *matcher {
	m := &matcher{index: map[uint64][]int{}, filter: make([]uint64, 1<<filterBits/64)}
	for _, p := range pats {
		if len(p.b) < winLen {
			continue
		}
		i := len(m.pats)
		m.pats = append(m.pats, p)
		w := binary.LittleEndian.Uint64(p.b)
		m.index[w] = append(m.index[w], i)
		h := winHash(w)
		m.filter[h/64] |= 1 << (h % 64)
		m.maxLen = max(m.maxLen, len(p.b))
	}
	return m
}

// hit is one pattern found at an offset.
type hit struct {
	off int64
	pat *pattern
}

// scan reports the patterns that start at buf[i] for i < limit (and fit inside buf).
func (m *matcher) scan(buf []byte, limit int, base int64, fn func(hit)) {
	for i := 0; i < limit && i+winLen <= len(buf); i++ {
		w := binary.LittleEndian.Uint64(buf[i:])
		h := winHash(w)
		if m.filter[h/64]&(1<<(h%64)) == 0 {
			continue
		}
		for _, pi := range m.index[w] {
			p := &m.pats[pi]
			if i+len(p.b) <= len(buf) && string(buf[i:i+len(p.b)]) == string(p.b) {
				fn(hit{off: base + int64(i), pat: p})
			}
		}
	}
}

// scanBytes finds every pattern in b.
func (m *matcher) scanBytes(b []byte, fn func(hit)) { m.scan(b, len(b), 0, fn) }

// scanFile finds every pattern in the file's data, skipping holes (SEEK_DATA/SEEK_HOLE), so
// a sparse multi-GiB staging file costs only its data.
func (m *matcher) scanFile(path string, fn func(hit)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	m.files++
	fd := int(f.Fd())
	buf := make([]byte, 4<<20)
	var off int64
	for {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		if err != nil { // no SEEK_DATA: read everything
			start = off
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			end = 1<<63 - 1
		}
		// One data segment [start, end): patterns hold no zero bytes, so none spans a hole.
		carry := 0
		pos := start
		for pos < end {
			want := min(int64(len(buf)-carry), end-pos)
			n, rerr := f.ReadAt(buf[carry:carry+int(want)], pos)
			m.bytes += int64(n)
			data := buf[:carry+n]
			final := rerr != nil || pos+int64(n) >= end
			limit := len(data)
			if !final {
				limit = len(data) - (m.maxLen - 1)
			}
			m.scan(data, limit, pos-int64(carry), fn)
			pos += int64(n)
			if final {
				if rerr != nil && !errors.Is(rerr, io.EOF) {
					return rerr
				}
				break
			}
			carry = copy(buf, data[limit:])
		}
		if end == 1<<63-1 || pos <= start {
			return nil
		}
		off = pos
	}
}

// leakPatterns lists everything this volume's files must not leak.
func (v *Volume) leakPatterns() []pattern {
	pats := []pattern{
		{[]byte(markerPrefix), kindContent},
		{[]byte(hex.EncodeToString([]byte(markerPrefix))), kindContent},
		{[]byte(namePrefix), kindName},
		{[]byte(hex.EncodeToString([]byte(namePrefix))), kindName},
	}
	if s := v.secret(); len(s) >= winLen {
		pats = append(pats, pattern{append([]byte(nil), s...), kindSecret})
	}
	v.mu.Lock()
	for n := range v.names {
		pats = append(pats, pattern{[]byte(n), kindName})
	}
	v.mu.Unlock()
	return pats
}

// scanLeaks walks every place the daemon writes to and fails the test for each leak:
//   - the remote's objects (contents and object names): no content, name or secret;
//   - the state folder: the catalog (catalog.db and its -wal/-shm/-journal) may hold names,
//     nothing else; any other file (staging, cache) holds no content, name or secret;
//   - the daemon's TMPDIR and HOME, and the seal log: no content, name or secret;
//   - everything coffer printed: no content and no secret (names may be logged).
func (v *Volume) scanLeaks() {
	m := newMatcher(v.leakPatterns())
	all := kindContent | kindName | kindSecret
	var leaks []string
	report := func(where string, forbid patKind) func(hit) {
		return func(h hit) {
			if h.pat.kind&forbid == 0 {
				return
			}
			if len(leaks) < 40 {
				leaks = append(leaks, fmt.Sprintf("%s leaks a %s at offset %d: %q", where, h.pat.kind, h.off, clip(h.pat.b)))
			} else if len(leaks) == 40 {
				leaks = append(leaks, "... (more leaks not shown)")
			}
		}
	}
	walk := func(root, label string, forbid func(rel string) patKind) {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					leaks = append(leaks, fmt.Sprintf("cannot scan %s: %v", p, err))
				}
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil
			}
			where := label + " " + rel
			// Paths on the remote, in staging and in tmp must not carry names either.
			m.scanBytes([]byte(rel), report(where+" (its path)", all))
			if !d.Type().IsRegular() {
				return nil
			}
			if err := m.scanFile(p, report(where, forbid(rel))); err != nil {
				leaks = append(leaks, fmt.Sprintf("cannot scan %s: %v", p, err))
			}
			return nil
		})
	}
	everything := func(string) patKind { return all }
	walk(v.RemoteDir, "remote object", everything)
	walk(v.State, "state file", func(rel string) patKind {
		if isCatalogFile(rel) || rel == daemonLogName {
			return kindContent | kindSecret // the catalog holds names; a log may name files
		}
		return all
	})
	walk(v.TmpDir, "daemon TMPDIR file", everything)
	walk(v.HomeDir, "daemon HOME file", everything)
	if _, err := os.Stat(v.SealLog); err == nil {
		if err := m.scanFile(v.SealLog, report("seal log", all)); err != nil {
			leaks = append(leaks, err.Error())
		}
	}
	for _, p := range v.logFiles() {
		if err := m.scanFile(p, report("coffer output "+filepath.Base(p), kindContent|kindSecret)); err != nil {
			leaks = append(leaks, err.Error())
		}
	}
	if len(leaks) > 0 {
		v.t.Errorf("leak scan found %d problem(s):\n  %s", len(leaks), strings.Join(leaks, "\n  "))
	}
	v.t.Logf("leak scan: %d patterns (%d tree names) in %d files, %.1f MiB of data; %d content objects on the remote",
		len(m.pats), len(v.names), m.files, float64(m.bytes)/(1<<20), len(v.remoteContentObjects()))
}

// isCatalogFile reports whether a state-folder path is the SQLite catalog or one of its
// companion files: by design (SECURITY.md: the encryption host is trusted while it runs) it may hold names in plaintext.
func isCatalogFile(rel string) bool {
	base := filepath.Base(rel)
	for _, suf := range []string{"", "-wal", "-shm", "-journal"} {
		if base == "catalog.db"+suf {
			return true
		}
	}
	return false
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// checkSealLog checks COFFER_DEBUG_SEAL_LOG: no line (an object id, or a staging nonce) may
// appear twice, across every mount of the volume. A missing log while the remote holds
// content objects means the daemon ignored the variable.
func (v *Volume) checkSealLog() {
	f, err := os.Open(v.SealLog)
	if errors.Is(err, os.ErrNotExist) {
		if n := v.remoteObjectCount(); n > 0 {
			v.t.Errorf("COFFER_DEBUG_SEAL_LOG=%s was set but the daemon wrote no seal log, although the remote holds %d objects besides the volume marker", v.SealLog, n)
		}
		return
	}
	if err != nil {
		v.t.Errorf("open seal log: %v", err)
		return
	}
	defer f.Close()
	seen := map[string]int{}
	var dups []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if first, ok := seen[line]; ok {
			if len(dups) < 20 {
				dups = append(dups, fmt.Sprintf("line %d repeats line %d: %s", ln, first, line))
			}
			continue
		}
		seen[line] = ln
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		v.t.Errorf("seal log %s: a (key, nonce) pair was sealed twice:\n  %s", v.SealLog, strings.Join(dups, "\n  "))
	}
	// Every content object on the remote must have been logged, or the check above is blind.
	var missing []string
	n := 0
	for _, id := range v.remoteContentObjects() {
		n++
		if _, ok := seen["object "+id]; !ok && len(missing) < 10 {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		v.t.Errorf("seal log %s misses content objects found on the remote (of %d), e.g. %s", v.SealLog, n, strings.Join(missing, ", "))
	}
}

// remoteContentObjects lists the ids of the chunk objects on the remote (named
// c/<first two characters of the id>/<id>, FORMAT.md).
func (v *Volume) remoteContentObjects() []string {
	var ids []string
	_ = filepath.WalkDir(v.RemoteDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		name, parent := d.Name(), filepath.Base(filepath.Dir(p))
		if len(name) == 26 && len(parent) == 2 && strings.HasPrefix(name, parent) && filepath.Base(filepath.Dir(filepath.Dir(p))) == "c" {
			ids = append(ids, name)
		}
		return nil
	})
	return ids
}

// remoteObjectCount counts the regular files on the remote other than the volume marker.
func (v *Volume) remoteObjectCount() int {
	n := 0
	_ = filepath.WalkDir(v.RemoteDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != "coffer-volume" {
			n++
		}
		return nil
	})
	return n
}
