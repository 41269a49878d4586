package replica

// A real catalog replicated to a local-folder remote is rebuilt by the
// independent Python tool test/format/restore_replica.py (written from
// FORMAT.md 12.10-12.15) and by Restore: both must give the live catalog's
// file byte for byte, and both must refuse a tampered copy of the remote (or
// leave out its newest object) the same way. TestReplicaDocExample checks
// the worked example of FORMAT.md 12.16.

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
)

const pythonBin = "/usr/bin/python3"

var restoreScript = filepath.Join("..", "..", "test", "format", "restore_replica.py")

// keySet is K_rep by KEK version.
type keySet map[uint32][]byte

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// fn is the KeyFunc over ks: a fresh DEK per call, since callers wipe it.
func (ks keySet) fn() KeyFunc {
	return func(_ context.Context, v uint32) (*keys.DEK, error) {
		k, ok := ks[v]
		if !ok {
			return nil, fmt.Errorf("test: no replica key of KEK version %d", v)
		}
		return keys.NewDEK(bytes.Clone(k))
	}
}

// arg is the --key argument of restore_replica.py: "1=hex,2=hex".
func (ks keySet) arg() string {
	vs := make([]int, 0, len(ks))
	for v := range ks {
		vs = append(vs, int(v))
	}
	sort.Ints(vs)
	var parts []string
	for _, v := range vs {
		parts = append(parts, fmt.Sprintf("%d=%x", v, ks[uint32(v)]))
	}
	return strings.Join(parts, ",")
}

// outcome is what one implementation rebuilt.
type outcome struct {
	Epoch       uint32 `json:"epoch"`
	Position    uint64 `json:"position"`
	TimeNS      int64  `json:"time_ns"`
	Objects     int    `json:"objects"`
	Bytes       int64  `json:"bytes"`
	DroppedTail string `json:"dropped_tail"`
	err         string // "" on success
	db          []byte // the rebuilt file on success
}

func runPython(t *testing.T, dir string, vol format.ID, epoch uint32, ks keySet) outcome {
	t.Helper()
	out := filepath.Join(t.TempDir(), "py.db")
	cmd := exec.Command(pythonBin, restoreScript, "--dir", dir, "--volume", hex.EncodeToString(vol[:]),
		"--epoch", fmt.Sprint(epoch), "--key", ks.arg(), "--out", out, "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("restore_replica.py: %s", s)
	}
	var o outcome
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		o.err = strings.TrimSpace(stderr.String())
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("restore_replica.py refused but left %s behind", out)
		}
		return o
	case err != nil:
		t.Fatalf("restore_replica.py: %v\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), &o); err != nil {
		t.Fatalf("restore_replica.py printed %q: %v", stdout.String(), err)
	}
	if o.db, err = os.ReadFile(out); err != nil {
		t.Fatal(err)
	}
	return o
}

func runGo(t *testing.T, dir string, vol format.ID, epoch uint32, ks keySet) outcome {
	t.Helper()
	ctx := context.Background()
	store, err := remote.Open(ctx, dir, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)
	out := filepath.Join(t.TempDir(), "go.db")
	res, err := Restore(ctx, RestoreConfig{Store: store, Volume: vol, Epoch: epoch, Key: ks.fn(), Dst: out, Logger: testLogger(t)})
	if err != nil {
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("Restore failed but left %s behind", out)
		}
		return outcome{err: err.Error()}
	}
	o := outcome{Epoch: res.Epoch, Position: res.Position, TimeNS: res.Time.UnixNano(), Objects: res.Objects,
		Bytes: res.Bytes, DroppedTail: res.DroppedTail}
	if o.db, err = os.ReadFile(out); err != nil {
		t.Fatal(err)
	}
	return o
}

// expect is what a restore of one remote must give.
type expect struct {
	refuse   string // a phrase both refusals contain; "" means success
	position uint64
	dropped  string // the newest object left out, if any
	db       []byte // the exact file, or nil if not known in advance
	dump     string // else its logical content, or "" if not known
}

// checkBoth restores dir with both implementations, checks each against w
// and the two against each other. goBroken skips Restore (reported once).
func checkBoth(t *testing.T, dir string, vol format.ID, epoch uint32, ks keySet, w expect, goBroken bool) {
	t.Helper()
	results := map[string]outcome{"python": runPython(t, dir, vol, epoch, ks)}
	if !goBroken {
		results["go"] = runGo(t, dir, vol, epoch, ks)
	}
	for who, o := range results {
		if w.refuse != "" {
			if o.err == "" {
				t.Errorf("%s: restored to position %d, want a refusal containing %q", who, o.Position, w.refuse)
			} else if !strings.Contains(o.err, w.refuse) {
				t.Errorf("%s: refused with %q, want %q in it", who, o.err, w.refuse)
			}
			continue
		}
		if o.err != "" {
			t.Errorf("%s: refused: %s", who, o.err)
			continue
		}
		if o.Epoch != epoch || o.Position != w.position || o.DroppedTail != w.dropped {
			t.Errorf("%s: epoch %d position %d dropped %q, want %d %d %q", who, o.Epoch, o.Position, o.DroppedTail,
				epoch, w.position, w.dropped)
		}
		if w.db != nil && !bytes.Equal(o.db, w.db) {
			t.Errorf("%s: rebuilt file (%d bytes) differs from the expected one (%d bytes)", who, len(o.db), len(w.db))
		}
		if w.dump != "" {
			if got := dumpBytes(t, o.db); got != w.dump {
				t.Errorf("%s: rebuilt catalog's content differs from the live catalog's at position %d:\n%s",
					who, w.position, firstDiff(got, w.dump))
			}
		}
	}
	py, g := results["python"], results["go"]
	if goBroken || py.err != "" || g.err != "" {
		return
	}
	if py.Position != g.Position || py.TimeNS != g.TimeNS || py.Objects != g.Objects || py.Bytes != g.Bytes ||
		py.DroppedTail != g.DroppedTail {
		t.Errorf("python and go disagree: python %+v, go %+v", py, g)
	}
	if !bytes.Equal(py.db, g.db) {
		t.Errorf("python and go rebuilt different files (%d and %d bytes)", len(py.db), len(g.db))
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// dumpDB is the logical content of the SQLite database at path: the schema
// and every row of every table, in a fixed order. It also requires
// integrity_check to pass. The file is opened read-only.
func dumpDB(t *testing.T, path string) string {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ic string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&ic); err != nil || ic != "ok" {
		t.Fatalf("integrity_check of %s: %q, %v", path, ic, err)
	}
	var b strings.Builder
	rows, err := db.Query(`SELECT type, name, tbl_name, COALESCE(sql, '') FROM sqlite_schema ORDER BY type, name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var typ, name, tbl, q string
		if err := rows.Scan(&typ, &name, &tbl, &q); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "schema %s %s %s %s\n", typ, name, tbl, q)
		if typ == "table" && !strings.HasPrefix(name, "sqlite_") {
			tables = append(tables, name)
		}
	}
	rows.Close()
	for _, tbl := range tables {
		rows, err := db.Query(fmt.Sprintf(`SELECT * FROM "%s"`, tbl))
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		var lines []string
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var fields []string
			for _, v := range vals {
				if bv, ok := v.([]byte); ok {
					fields = append(fields, "x'"+hex.EncodeToString(bv)+"'")
				} else {
					fields = append(fields, fmt.Sprint(v))
				}
			}
			lines = append(lines, strings.Join(fields, "|"))
		}
		rows.Close()
		sort.Strings(lines)
		fmt.Fprintf(&b, "table %s %d rows\n%s\n", tbl, len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}

// dumpBytes is dumpDB of a database file's bytes (written to a scratch copy,
// so the original stays untouched).
func dumpBytes(t *testing.T, db []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(p, db, 0o600); err != nil {
		t.Fatal(err)
	}
	return dumpDB(t, p)
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  got  %.300s\n  want %.300s", i+1, x, y)
		}
	}
	return "(no line differs)"
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// reseal opens replica object name in dir, lets edit change its header and
// plaintext, and writes it back sealed under a fresh object id.
func reseal(t *testing.T, dir, name string, ks keySet, edit func(h *format.ReplicaHeader, plain []byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	obj, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h, err := format.ParseReplicaHeader(obj)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := format.OpenReplica(ks[h.KEKVersion], h, obj)
	if err != nil {
		t.Fatalf("reseal %s: %v", name, err)
	}
	plain = edit(&h, plain)
	if h.Object, err = format.NewID(); err != nil {
		t.Fatal(err)
	}
	if obj, err = format.SealReplica(ks[h.KEKVersion], h, plain); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, obj, 0o600); err != nil {
		t.Fatal(err)
	}
}

func deltaName(e uint32, p uint64) string {
	return Name(format.ReplicaHeader{Kind: format.ReplicaDelta, Epoch: e, Position: p})
}

func partName(e uint32, p uint64, k uint16) string {
	return Name(format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: e, Position: p, Part: k})
}

func needPython(t *testing.T) {
	if _, err := os.Stat(pythonBin); err != nil {
		t.Skipf("%s is missing (%v): the independent restore tool cannot run", pythonBin, err)
	}
}

// workload drives catalog changes through the fs/meta API.
type workload struct {
	t   *testing.T
	cat *meta.Catalog
	dir uint64 // a directory the files go into
	n   int
	ns  atomic.Int64
}

func (w *workload) now() int64 { return w.ns.Add(1000) }

func (w *workload) id() [16]byte {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		w.t.Fatal(err)
	}
	return b
}

// batch creates files with chunks and xattrs (xattrBytes each, 4 per file),
// a directory and a symlink, and unlinks and renames some older files.
func (w *workload) batch(files, xattrBytes int) {
	w.t.Helper()
	ctx := context.Background()
	c := w.cat
	w.n++
	d, err := c.Mkdir(ctx, w.dir, []byte(fmt.Sprintf("d%03d", w.n)), meta.Inode{Mode: 0o755, UID: 1000, GID: 1000, Ctime: w.now()})
	if err != nil {
		w.t.Fatal(err)
	}
	for i := range files {
		key := &meta.KeyRecord{Mode: meta.KeyModeWrap, Version: 1, IV: make([]byte, 12), Wrapped: bytes.Repeat([]byte{byte(i)}, 48)}
		f, err := c.CreateFile(ctx, d.Ino, []byte(fmt.Sprintf("file-%03d-%04d", w.n, i)),
			meta.Inode{Mode: 0o644, UID: 1000, GID: 1000, Ctime: w.now()}, key)
		if err != nil {
			w.t.Fatal(err)
		}
		chs := []meta.Chunk{{Index: 0, Object: w.id(), Length: c.ChunkSize()}, {Index: 1, Object: w.id(), Length: 1234}}
		if _, err := c.SetChunks(ctx, f.Ino, chs, c.ChunkSize()+1234, w.now()); err != nil {
			w.t.Fatal(err)
		}
		for x := range 4 {
			v := make([]byte, xattrBytes)
			rand.Read(v)
			if err := c.SetXattr(ctx, f.Ino, fmt.Sprintf("user.x%d", x), v, 0, w.now()); err != nil {
				w.t.Fatal(err)
			}
		}
	}
	if _, err := c.Symlink(ctx, d.Ino, []byte("link"), []byte("../elsewhere"), meta.Inode{Mode: 0o777, UID: 1000, GID: 1000, Ctime: w.now()}); err != nil {
		w.t.Fatal(err)
	}
	if w.n > 1 {
		prev, err := c.Lookup(ctx, w.dir, []byte(fmt.Sprintf("d%03d", w.n-1)))
		if err != nil {
			w.t.Fatal(err)
		}
		ents, err := c.ReadDir(ctx, prev.Ino, nil, 1000)
		if err != nil {
			w.t.Fatal(err)
		}
		for i, e := range ents {
			switch {
			case bytes.Equal(e.Name, []byte("link")):
			case i%3 == 0:
				if _, err := c.Unlink(ctx, prev.Ino, e.Name, w.now(), true); err != nil {
					w.t.Fatal(err)
				}
			case i%3 == 1:
				if _, err := c.Rename(ctx, prev.Ino, e.Name, d.Ino, append([]byte("moved-"), e.Name...), 0, w.now(), true); err != nil {
					w.t.Fatal(err)
				}
			}
		}
	}
}

// liveDump is the logical content of the live catalog, read through a
// connection of its own (WAL readers do not disturb the writer).
func liveDump(t *testing.T, cat *meta.Catalog) string {
	return dumpDB(t, cat.Path())
}

func TestPythonRestore(t *testing.T) {
	needPython(t)
	ctx := context.Background()
	root := t.TempDir()
	remDir := filepath.Join(root, "remote")
	vol := meta.Volume{ID: [16]byte{0xc0, 0xff, 0xee, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, FormatVersion: 1,
		BlockSize: 16384, ChunkSize: 4 << 20, Remote: remDir, KeyMode: meta.KeyModeWrap, Provider: meta.ProviderPKCS11,
		HSMModule: "/usr/lib/softhsm/libsofthsm2.so", HSMToken: "coffer", Created: time.Now().UnixNano(),
		RootUID: 1000, RootGID: 1000}
	cat, err := meta.Create(ctx, filepath.Join(root, "state"), vol)
	if err != nil {
		t.Fatal(err)
	}
	catOpen := true
	defer func() {
		if catOpen {
			cat.Close()
		}
	}()
	store, err := remote.Open(ctx, remDir, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)

	const epoch = 3
	ks := keySet{1: randomKey(t), 2: randomKey(t)}
	var current atomic.Uint32
	current.Store(1)
	w := &workload{t: t, cat: cat, dir: meta.RootIno}
	w.ns.Store(time.Now().UnixNano())
	w.batch(5, 100) // before the replicator: only the first snapshot holds it

	r, err := Start(ctx, Config{Catalog: cat, Store: store, Volume: vol.ID, Epoch: epoch, Key: ks.fn(),
		Current: current.Load, Interval: time.Hour, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			r.Close(ctx)
		}
	}()
	dumps := map[uint64]string{} // the live catalog's content at each position
	sync := func() uint64 {
		t.Helper()
		if err := cat.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		st := r.Status()
		if st.LastError != "" {
			t.Fatalf("replicator: %s", st.LastError)
		}
		dumps[st.Position] = liveDump(t, cat)
		return st.Position
	}
	if p := sync(); p != 1 {
		t.Fatalf("after the first Sync the replica is at position %d, want 1 (a snapshot)", p)
	}
	for i := range 4 {
		w.batch(10+i, 300)
		sync()
	}
	// Past checkpointAt of WAL: the replicator checkpoints after shipping,
	// and the next delta comes from a restarted WAL.
	w.batch(90, 16000)
	big := sync()
	if st, err := os.Stat(filepath.Join(remDir, deltaName(epoch, big))); err != nil || st.Size() <= checkpointAt {
		t.Fatalf("delta %d is not over %d bytes (%v): the checkpoint path is not exercised", big, checkpointAt, err)
	}
	if st, err := os.Stat(cat.Path() + "-wal"); err == nil && st.Size() > 0 {
		t.Fatalf("the WAL holds %d bytes after a delta over %d: the replicator did not checkpoint", st.Size(), checkpointAt)
	}
	w.batch(7, 500)
	sync()
	// A new KEK version of the volume chain: the next delta is sealed under
	// it, and the round after that starts a new chain with a snapshot of the
	// next position (snapshots never overwrite older objects).
	current.Store(2)
	w.batch(6, 200)
	rot := sync()
	snap := sync()
	if snap != rot+1 {
		t.Fatalf("after the first delta under the new KEK version (%d), the next round is at %d, want a snapshot at %d", rot, snap, rot+1)
	}
	if p := sync(); p != snap {
		t.Fatalf("a Sync with nothing committed moved the replica from %d to %d", snap, p)
	}
	for i := range 3 {
		w.batch(4+i, 700)
		sync()
	}
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	closed = true
	last := r.Status().Position
	if err := cat.Close(); err != nil {
		t.Fatal(err)
	}
	catOpen = false
	live, err := os.ReadFile(filepath.Join(root, "state", meta.FileName))
	if err != nil {
		t.Fatal(err)
	}
	liveContent := dumpBytes(t, live)
	if liveContent != dumps[last] {
		t.Fatalf("the closed catalog's content differs from its content at the last Sync:\n%s", firstDiff(liveContent, dumps[last]))
	}

	// What the remote holds: snapshot 1 (v1), deltas 2..rot, snapshot snap (v2),
	// deltas snap+1..last.
	for _, n := range []string{partName(epoch, 1, 0), partName(epoch, snap, 0)} {
		if _, err := os.Stat(filepath.Join(remDir, n)); err != nil {
			t.Fatalf("no %s on the remote: %v", n, err)
		}
	}
	for p := uint64(2); p <= last; p++ {
		_, err := os.Stat(filepath.Join(remDir, deltaName(epoch, p)))
		if p != snap && err != nil {
			t.Fatalf("no delta %d on the remote: %v", p, err)
		}
		if p == snap && err == nil {
			t.Fatalf("a delta at %d, the position of the snapshot that starts the new chain", p)
		}
	}
	if _, err := os.Stat(filepath.Join(remDir, deltaName(epoch, last+1))); err == nil {
		t.Fatalf("a delta after the last position %d", last)
	}
	t.Logf("remote: snapshots at 1 and %d, deltas 2..%d and %d..%d", snap, rot, snap+1, last)

	goBroken := false
	t.Run("untouched", func(t *testing.T) {
		g := runGo(t, remDir, vol.ID, epoch, ks)
		if g.err != "" {
			goBroken = true
			t.Errorf("replica.Restore fails on an untouched replica (the remaining cases check restore_replica.py only): %s", g.err)
		}
		checkBoth(t, remDir, vol.ID, epoch, ks, expect{position: last, db: live}, goBroken)
	})
	t.Run("meta opens the rebuilt catalog", func(t *testing.T) {
		py := runPython(t, remDir, vol.ID, epoch, ks)
		if py.err != "" {
			t.Fatal(py.err)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, meta.FileName), py.db, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := meta.OpenReadOnly(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		probs, err := c.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range probs {
			t.Errorf("check: inode %d: %s", p.Ino, p.Detail)
		}
		if e, err := c.ReplicaEpoch(ctx); err != nil || e != 0 {
			t.Errorf("replica epoch of the rebuilt catalog %d, %v (the test never set one)", e, err)
		}
	})
	t.Run("the new chain's snapshot deleted", func(t *testing.T) {
		// The old chain ends at rot: nothing continues it past the new chain's start.
		dir := copyDir(t, remDir)
		if err := os.Remove(filepath.Join(dir, partName(epoch, snap, 0))); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: fmt.Sprintf("hole at position %d", snap)}, goBroken)
	})
	t.Run("newest delta truncated", func(t *testing.T) {
		dir := copyDir(t, remDir)
		p := filepath.Join(dir, deltaName(epoch, last))
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, st.Size()-1000); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, dir, vol.ID, epoch, ks, expect{position: last - 1, dropped: deltaName(epoch, last), dump: dumps[last-1]}, goBroken)
	})
	t.Run("newest delta altered", func(t *testing.T) {
		dir := copyDir(t, remDir)
		p := filepath.Join(dir, deltaName(epoch, last))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x10
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, dir, vol.ID, epoch, ks, expect{position: last - 1, dropped: deltaName(epoch, last), dump: dumps[last-1]}, goBroken)
	})
	t.Run("a delta before the newest altered", func(t *testing.T) {
		dir := copyDir(t, remDir)
		p := filepath.Join(dir, deltaName(epoch, last-1))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[100] ^= 1
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: "tag mismatch"}, goBroken)
	})
	t.Run("hole", func(t *testing.T) {
		dir := copyDir(t, remDir)
		if err := os.Remove(filepath.Join(dir, deltaName(epoch, last-1))); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: "hole at position"}, goBroken)
	})
	t.Run("broken link", func(t *testing.T) {
		dir := copyDir(t, remDir)
		reseal(t, dir, deltaName(epoch, last-1), ks, func(_ *format.ReplicaHeader, plain []byte) []byte {
			plain[16] ^= 1 // prev
			return plain
		})
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: "does not follow the state before it"}, goBroken)
	})
	t.Run("a delta replaced by another copy of itself", func(t *testing.T) {
		// Same plaintext, another object id (as a re-ship would have): the
		// next delta's link no longer matches.
		dir := copyDir(t, remDir)
		reseal(t, dir, deltaName(epoch, last-1), ks, func(_ *format.ReplicaHeader, plain []byte) []byte { return plain })
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: "does not follow the state before it"}, goBroken)
	})
	t.Run("snapshot part without its last flag", func(t *testing.T) {
		dir := copyDir(t, remDir)
		reseal(t, dir, partName(epoch, snap, 0), ks, func(h *format.ReplicaHeader, plain []byte) []byte {
			h.Last = false
			return plain
		})
		checkBoth(t, dir, vol.ID, epoch, ks, expect{refuse: "last-part flag"}, goBroken)
	})
	t.Run("wrong key of version 2", func(t *testing.T) {
		checkBoth(t, remDir, vol.ID, epoch, keySet{1: ks[1], 2: randomKey(t)}, expect{refuse: "tag mismatch"}, goBroken)
	})
	t.Run("another volume", func(t *testing.T) {
		other := vol.ID
		other[15] ^= 1
		checkBoth(t, remDir, other, epoch, ks, expect{refuse: "stored header does not match the name"}, goBroken)
	})
	t.Run("empty epoch", func(t *testing.T) {
		checkBoth(t, remDir, vol.ID, epoch+1, ks, expect{refuse: "holds no replica of epoch"}, goBroken)
	})
}

// synthDB is a fake "database" of n pages of ps bytes (restore does not look
// inside pages).
func synthPages(n, ps int, seed byte) []byte {
	b := make([]byte, n*ps)
	for i := range b {
		b[i] = byte(i/ps)*7 + seed + byte(i%251)
	}
	return b
}

// putSynth seals plain as the object h names and writes it into the local
// remote dir; it returns the object id.
func putSynth(t *testing.T, dir string, key []byte, h format.ReplicaHeader, plain []byte) format.ID {
	t.Helper()
	var err error
	if h.Object, err = format.NewID(); err != nil {
		t.Fatal(err)
	}
	obj, err := format.SealReplica(key, h, plain)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, Name(h))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, obj, 0o600); err != nil {
		t.Fatal(err)
	}
	return h.Object
}

// TestPythonRestoreParts checks snapshots of several parts (a catalog over
// 16 MiB) with made-up pages: the part layout, deltas that grow and shrink
// the file, and parts that do not belong together.
func TestPythonRestoreParts(t *testing.T) {
	needPython(t)
	vol := format.ID{0x5e, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	const epoch, ps, dbPages = 9, 65536, 300 // 256 pages per part: parts of 256 and 44 pages
	ks := keySet{4: randomKey(t)}
	dir := t.TempDir()
	db := synthPages(dbPages, ps, 1)
	per := int(PagesPerPart(ps))
	now := time.Now().UnixNano()
	var state StateID
	for k := range 2 {
		first := k*per + 1
		n := min(per, dbPages-first+1)
		sp := SnapshotPart{PageSize: ps, DBPages: dbPages, TimeNS: now, Parts: 2, FirstPgno: uint32(first),
			Pages: db[(first-1)*ps : (first-1+n)*ps]}
		id := putSynth(t, dir, ks[4], format.ReplicaHeader{Kind: format.ReplicaSnapshot, KEKVersion: 4, Volume: vol,
			Epoch: epoch, Position: 4, Part: uint16(k), Last: k == 1}, sp.Marshal())
		if k == 0 {
			state = id
		}
	}
	// Delta 5 grows the file to 310 pages, delta 6 shrinks it to 200.
	d5 := Delta{PageSize: ps, DBPages: 310, TimeNS: now + 1, Prev: state}
	for _, pg := range []uint32{1, 256, 257, 301, 310} {
		d5.Pages = append(d5.Pages, Page{pg, synthPages(1, ps, byte(pg))})
	}
	id5 := putSynth(t, dir, ks[4], format.ReplicaHeader{Kind: format.ReplicaDelta, KEKVersion: 4, Volume: vol,
		Epoch: epoch, Position: 5}, d5.Marshal())
	d6 := Delta{PageSize: ps, DBPages: 200, TimeNS: now + 2, Prev: id5, Pages: []Page{{2, synthPages(1, ps, 99)}}}
	putSynth(t, dir, ks[4], format.ReplicaHeader{Kind: format.ReplicaDelta, KEKVersion: 4, Volume: vol,
		Epoch: epoch, Position: 6}, d6.Marshal())

	want := append([]byte(nil), db...)
	want = append(want, make([]byte, 10*ps)...)
	for _, pg := range d5.Pages {
		copy(want[int(pg.Pgno-1)*ps:], pg.Data)
	}
	copy(want[ps:], d6.Pages[0].Data)
	want = want[:200*ps]

	goBroken := false
	if g := runGo(t, dir, vol, epoch, ks); g.err != "" {
		goBroken = true
		t.Errorf("replica.Restore fails on an untouched replica (the remaining cases check restore_replica.py only): %s", g.err)
	}
	checkBoth(t, dir, vol, epoch, ks, expect{position: 6, db: want}, goBroken)

	t.Run("one bare key for every version", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "bare.db")
		b, err := exec.Command(pythonBin, restoreScript, "--dir", dir, "--volume", hex.EncodeToString(vol[:]),
			"--epoch", fmt.Sprint(epoch), "--key", hex.EncodeToString(ks[4]), "--out", out).CombinedOutput()
		if err != nil {
			t.Fatalf("restore_replica.py: %v\n%s", err, b)
		}
		if !strings.Contains(string(b), "restored epoch 9 to position 6") {
			t.Errorf("restore_replica.py printed %q", b)
		}
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
			t.Errorf("rebuilt file differs (%d bytes, %v)", len(got), err)
		}
		// --out must not exist: nothing is overwritten.
		b, err = exec.Command(pythonBin, restoreScript, "--dir", dir, "--volume", hex.EncodeToString(vol[:]),
			"--epoch", fmt.Sprint(epoch), "--key", hex.EncodeToString(ks[4]), "--out", out).CombinedOutput()
		if err == nil {
			t.Errorf("restore_replica.py overwrote an existing --out: %s", b)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Errorf("a refused restore changed the existing --out")
		}
	})

	// A crash during a snapshot leaves it cut short (a missing second part).
	cutShort := func(t *testing.T, d string, p uint64, prev StateID) {
		sp := SnapshotPart{PageSize: ps, DBPages: dbPages, TimeNS: now + 10, Parts: 2, FirstPgno: 1, State: prev,
			Pages: synthPages(per, ps, 42)}
		putSynth(t, d, ks[4], format.ReplicaHeader{Kind: format.ReplicaSnapshot, KEKVersion: 4, Volume: vol,
			Epoch: epoch, Position: p, Part: 0}, sp.Marshal())
	}
	t.Run("a new chain's snapshot cut short at the newest position", func(t *testing.T) {
		d := copyDir(t, dir)
		cutShort(t, d, 7, StateID{})
		checkBoth(t, d, vol, epoch, ks, expect{position: 6, dropped: partName(epoch, 7, 0), db: want}, goBroken)
	})
	t.Run("a snapshot of a delta's state cut short", func(t *testing.T) {
		d := copyDir(t, dir)
		cutShort(t, d, 5, id5)
		checkBoth(t, d, vol, epoch, ks, expect{position: 6, db: want}, goBroken)
	})
	t.Run("a torn newest delta, then a new chain's snapshot cut short", func(t *testing.T) {
		d := copyDir(t, dir)
		if err := os.Truncate(filepath.Join(d, deltaName(epoch, 6)), 0); err != nil {
			t.Fatal(err)
		}
		cutShort(t, d, 7, StateID{})
		checkBoth(t, d, vol, epoch, ks, expect{position: 5, dropped: deltaName(epoch, 6)}, goBroken)
	})
	t.Run("a new chain's snapshot cut short, with objects after it", func(t *testing.T) {
		d := copyDir(t, dir)
		cutShort(t, d, 7, StateID{})
		d8 := Delta{PageSize: ps, DBPages: 200, TimeNS: now + 20, Prev: id5, Pages: []Page{{3, synthPages(1, ps, 7)}}}
		putSynth(t, d, ks[4], format.ReplicaHeader{Kind: format.ReplicaDelta, KEKVersion: 4, Volume: vol,
			Epoch: epoch, Position: 8}, d8.Marshal())
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "has parts of another snapshot"}, goBroken)
	})
	t.Run("a part of another snapshot", func(t *testing.T) {
		d := copyDir(t, dir)
		reseal(t, d, partName(epoch, 4, 1), ks, func(_ *format.ReplicaHeader, plain []byte) []byte {
			binary.BigEndian.PutUint64(plain[8:], uint64(now-1)) // time_ns
			return plain
		})
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "has parts of another snapshot"}, goBroken)
	})
	t.Run("last flag on part 0", func(t *testing.T) {
		d := copyDir(t, dir)
		reseal(t, d, partName(epoch, 4, 0), ks, func(h *format.ReplicaHeader, plain []byte) []byte {
			h.Last = true
			return plain
		})
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "last-part flag"}, goBroken)
	})
	t.Run("a missing part", func(t *testing.T) {
		d := copyDir(t, dir)
		if err := os.Remove(filepath.Join(d, partName(epoch, 4, 1))); err != nil {
			t.Fatal(err)
		}
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "missing parts"}, goBroken)
	})
	t.Run("a part that holds the wrong pages", func(t *testing.T) {
		d := copyDir(t, dir)
		reseal(t, d, partName(epoch, 4, 1), ks, func(_ *format.ReplicaHeader, plain []byte) []byte {
			binary.BigEndian.PutUint32(plain[18:], 258) // first_pgno
			return plain
		})
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "starts at page"}, goBroken)
	})
	t.Run("pages out of order", func(t *testing.T) {
		d := copyDir(t, dir)
		reseal(t, d, deltaName(epoch, 5), ks, func(_ *format.ReplicaHeader, plain []byte) []byte {
			binary.BigEndian.PutUint32(plain[deltaHead+4+ps:], 1) // entry 1 names page 1 again
			return plain
		})
		checkBoth(t, d, vol, epoch, ks, expect{refuse: "out of order"}, goBroken)
	})
}

// The worked example of FORMAT.md 12.16: a delta of two 512-byte pages and
// the head of part 1 of a snapshot of 300 pages of 64 KiB.
func docExample() (Delta, SnapshotPart) {
	prev := StateID{0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf}
	d := Delta{PageSize: 512, DBPages: 3, TimeNS: 1_767_225_600_000_000_006, Prev: prev,
		WAL:   Position{Salt1: 0x9b1d6f3e, Salt2: 0x42a5c7e1, Offset: 32 + 3*(24+512), Sum1: 0x0badf00d, Sum2: 0x600dcafe},
		Pages: []Page{{1, bytes.Repeat([]byte{0x11}, 512)}, {3, bytes.Repeat([]byte{0x33}, 512)}}}
	state := StateID{0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf}
	s := SnapshotPart{PageSize: 65536, DBPages: 300, TimeNS: 1_767_225_600_000_000_007, Parts: 2, FirstPgno: 257,
		State: state, Pages: make([]byte, 44*65536)}
	return d, s
}

func TestReplicaDocExample(t *testing.T) {
	d, s := docExample()
	db, sb := d.Marshal(), s.Marshal()
	hx := func(b []byte, sizes ...int) string {
		var f []string
		for _, n := range sizes {
			f = append(f, hex.EncodeToString(b[:n]))
			b = b[n:]
		}
		return strings.Join(f, " ")
	}
	lines := []string{
		hx(db[0:16], 4, 4, 8),
		hx(db[16:32], 16),
		hx(db[32:60], 4, 4, 8, 4, 4, 4),
		hx(db[60:64], 4),
		hx(db[576:580], 4),
		hx(sb[0:22], 4, 4, 8, 2, 4),
		hx(sb[22:38], 16),
	}
	if len(db) != 1092 || !bytes.Equal(db[64:576], d.Pages[0].Data) || !bytes.Equal(db[580:], d.Pages[1].Data) {
		t.Fatalf("delta plaintext of %d bytes, want 1092 = 60 + 2 × 516", len(db))
	}
	if len(sb) != 38+44*65536 {
		t.Fatalf("snapshot part plaintext of %d bytes", len(sb))
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "FORMAT.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if !bytes.Contains(doc, []byte(l)) {
			t.Errorf("FORMAT.md 12.16 does not quote %q", l)
		}
	}
	// Both decode back, and the snapshot part is part 1 of its snapshot.
	if got, err := UnmarshalDelta(db); err != nil || got.Prev != d.Prev || got.WAL.Offset != d.WAL.Offset || len(got.Pages) != 2 {
		t.Errorf("UnmarshalDelta: %+v, %v", got, err)
	}
	if _, err := UnmarshalSnapshotPart(sb, 1); err != nil {
		t.Errorf("UnmarshalSnapshotPart: %v", err)
	}
	if _, err := UnmarshalSnapshotPart(sb, 0); err == nil {
		t.Errorf("UnmarshalSnapshotPart accepted part 1's plaintext as part 0")
	}
	// Python decodes the same bytes with its own code.
	needPython(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "d"), db, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "s"), sb, 0o600); err != nil {
		t.Fatal(err)
	}
	script := `import sys, json; sys.path.insert(0, sys.argv[1]); import restore_replica as r
d = r.decode_delta(open(sys.argv[2] + "/d", "rb").read())
s = r.decode_part(open(sys.argv[2] + "/s", "rb").read(), 1)
print(json.dumps([d["page_size"], d["db_pages"], d["time_ns"], d["prev"].hex(), list(d["wal"]), [p for p, _ in d["pages"]],
    s["page_size"], s["db_pages"], s["time_ns"], s["parts"], s["first"], s["state"].hex(), len(s["pages"])]))`
	out, err := exec.Command(pythonBin, "-c", script, filepath.Dir(restoreScript), dir).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := fmt.Sprintf(`[512, 3, %d, "%x", [%d, %d, %d, %d, %d], [1, 3], 65536, 300, %d, 2, 257, "%x", %d]`,
		d.TimeNS, d.Prev[:], d.WAL.Salt1, d.WAL.Salt2, d.WAL.Offset, d.WAL.Sum1, d.WAL.Sum2, s.TimeNS, s.State[:], 44*65536)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("python decoded the example as\n%s\nwant\n%s", got, want)
	}
	if testing.Verbose() {
		t.Logf("FORMAT.md 12.16 lines:\n%s", strings.Join(lines, "\n"))
	}
}
