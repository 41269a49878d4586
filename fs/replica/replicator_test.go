package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
	"coffer/remote/faulty"
)

// rtFixture is a real catalog with a replicator shipping to a local folder.
type rtFixture struct {
	t      *testing.T
	ctx    context.Context
	root   string
	state  string
	remDir string
	vol    meta.Volume
	cat    *meta.Catalog
	store  remote.Store
	ks     keySet
	n      int
}

func newRT(t *testing.T) *rtFixture {
	t.Helper()
	root := t.TempDir()
	f := &rtFixture{t: t, ctx: context.Background(), root: root, state: filepath.Join(root, "state"),
		remDir: filepath.Join(root, "remote"), ks: keySet{1: randomKey(t)}}
	f.vol = meta.Volume{ID: [16]byte{0xfe, 0xed, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, FormatVersion: 1,
		BlockSize: 16384, ChunkSize: 4 << 20, Remote: f.remDir, KeyMode: meta.KeyModeWrap, Provider: meta.ProviderPKCS11,
		HSMModule: "/usr/lib/softhsm/libsofthsm2.so", HSMToken: "coffer", Created: time.Now().UnixNano(), RootUID: 0, RootGID: 0}
	cat, err := meta.Create(f.ctx, f.state, f.vol)
	if err != nil {
		t.Fatal(err)
	}
	f.cat = cat
	t.Cleanup(func() { f.cat.Close() })
	store, err := remote.Open(f.ctx, f.remDir, remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.store = store
	t.Cleanup(func() { store.Close(context.Background()) })
	return f
}

func (f *rtFixture) config(cat *meta.Catalog, store remote.Store) Config {
	return Config{Catalog: cat, Store: store, Volume: f.vol.ID, Epoch: 1, Key: f.ks.fn(),
		Current: func() uint32 { return 1 }, StateFile: filepath.Join(filepath.Dir(cat.Path()), StateFileName),
		Interval: time.Hour, Logger: testLogger(f.t)}
}

func (f *rtFixture) start(cfg Config) *Replicator {
	f.t.Helper()
	r, err := Start(f.ctx, cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// mkdirs commits n directories, one transaction each.
func (f *rtFixture) mkdirs(cat *meta.Catalog, n int) error {
	for range n {
		f.n++
		a := meta.Inode{Mode: syscall.S_IFDIR | 0o755, Ctime: time.Now().UnixNano()}
		if _, err := cat.Mkdir(f.ctx, meta.RootIno, fmt.Appendf(nil, "d%05d", f.n), a); err != nil {
			return err
		}
	}
	return nil
}

// restore rebuilds the replica of epoch 1 and returns its dump.
func (f *rtFixture) restore() (RestoreResult, string) {
	f.t.Helper()
	dst := filepath.Join(f.t.TempDir(), "catalog.db")
	res, err := Restore(f.ctx, RestoreConfig{Store: f.store, Volume: f.vol.ID, Epoch: 1, Key: f.ks.fn(), Dst: dst})
	if err != nil {
		f.t.Fatal(err)
	}
	return res, dumpDB(f.t, dst)
}

func (f *rtFixture) names() []string {
	var out []string
	f.store.List(f.ctx, Prefix, func(name string, _ int64) error {
		out = append(out, name)
		return nil
	})
	return out
}

func countSnapshots(names []string) int {
	n := 0
	for _, s := range names {
		if strings.Contains(s, snapPartSep) {
			n++
		}
	}
	return n
}

// A crash leaves the WAL with everything shipped and more: the next start must
// continue the chain from the newest delta (no new snapshot), and a restore
// must give exactly the crashed catalog's committed state once it is shipped.
func TestResumeAfterCrash(t *testing.T) {
	f := newRT(t)
	r := f.start(f.config(f.cat, f.store))
	if err := f.cat.Sync(f.ctx); err != nil { // the first snapshot: a crash right after one starts a new chain
		t.Fatal(err)
	}
	if err := f.mkdirs(f.cat, 20); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.mkdirs(f.cat, 5); err != nil { // committed, never shipped
		t.Fatal(err)
	}
	// The crash image: the catalog file and its WAL as they are now.
	crash := filepath.Join(f.root, "crash")
	if err := os.MkdirAll(crash, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{meta.FileName, meta.FileName + "-wal"} {
		b, err := os.ReadFile(filepath.Join(f.state, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crash, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	before := f.names()
	posBefore := r.Status().Position
	// The first process is gone: stop it without its final shipping.
	r.stop()
	<-r.done
	f.cat.SetReplication(nil)

	cat2, err := meta.Open(f.ctx, crash)
	if err != nil {
		t.Fatal(err)
	}
	defer cat2.Close()
	r2 := f.start(f.config(cat2, f.store))
	if got := r2.Status().Position; got != posBefore {
		t.Fatalf("resumed at position %d, the remote's newest is %d", got, posBefore)
	}
	if err := cat2.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	after := f.names()
	if countSnapshots(after) != countSnapshots(before) {
		t.Fatalf("a resume after a crash wrote a snapshot: before %v, after %v", before, after)
	}
	if len(before) != 2 || len(after) != len(before)+1 {
		t.Fatalf("want one new delta with the 5 unshipped commits: before %v, after %v", before, after)
	}
	res, got := f.restore()
	if want := dumpDB(t, cat2.Path()); got != want {
		t.Fatalf("restore after resume differs from the crashed catalog: %s", firstDiff(got, want))
	}
	if res.Position != posBefore+1 || res.DroppedTail != "" {
		t.Fatalf("restored to %+v", res)
	}
	if err := r2.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
}

// After a clean Close the next Start continues from the recorded state, with
// no snapshot; a catalog file changed in between (by anything but coffer)
// makes it start a new chain instead.
func TestResumeAfterCleanClose(t *testing.T) {
	f := newRT(t)
	r := f.start(f.config(f.cat, f.store))
	if err := f.mkdirs(f.cat, 10); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.MarkClean(); err != nil {
		t.Fatal(err)
	}
	stateFile := filepath.Join(f.state, StateFileName)
	if _, err := os.Stat(stateFile); err != nil {
		t.Fatalf("a clean close recorded nothing: %v", err)
	}
	snaps := countSnapshots(f.names())

	cat, err := meta.Open(f.ctx, f.state)
	if err != nil {
		t.Fatal(err)
	}
	f.cat = cat
	r = f.start(f.config(cat, f.store))
	if _, err := os.Stat(stateFile); !os.IsNotExist(err) {
		t.Fatalf("the clean-state record survives a start (a crash would then look clean): %v", err)
	}
	if err := f.mkdirs(cat, 3); err != nil {
		t.Fatal(err)
	}
	if err := cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := countSnapshots(f.names()); got != snaps {
		t.Fatalf("%d snapshot parts after a clean restart, want %d", got, snaps)
	}
	if _, got := f.restore(); got != dumpDB(t, cat.Path()) {
		t.Fatal("restore differs from the live catalog after a clean restart")
	}
	if err := r.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
	cat.Close()
	if err := r.MarkClean(); err != nil {
		t.Fatal(err)
	}

	// The catalog file edited behind coffer's back: the record no longer matches.
	raw, err := os.OpenFile(filepath.Join(f.state, meta.FileName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := raw.Stat()
	if _, err := raw.WriteAt([]byte{0}, st.Size()-1); err != nil { // the last byte of the last page
		t.Fatal(err)
	}
	raw.Close()
	cat, err = meta.Open(f.ctx, f.state)
	if err != nil {
		t.Fatal(err)
	}
	f.cat = cat
	r = f.start(f.config(cat, f.store))
	if err := cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := countSnapshots(f.names()); got != snaps+1 {
		t.Fatalf("%d snapshot parts after the catalog changed behind coffer, want a new chain (%d)", got, snaps+1)
	}
	if _, got := f.restore(); got != dumpDB(t, cat.Path()) {
		t.Fatal("restore differs from the live catalog after a new chain")
	}
	r.Close(f.ctx)
}

// While the replica key is unavailable (a locked volume) an fsync with
// changes to ship fails with EKEYREVOKED; with the remote down, changes wait
// until the cap, then writes fail with ENOSPC; once the remote is back,
// everything ships and writes work again.
func TestLockedAndRemoteDown(t *testing.T) {
	f := newRT(t)
	fs := faulty.New(f.store, 1)
	var locked atomic.Bool
	cfg := f.config(f.cat, fs)
	key := cfg.Key
	cfg.Key = func(ctx context.Context, v uint32) (*keys.DEK, error) {
		if locked.Load() {
			return nil, keys.ErrLocked
		}
		return key(ctx, v)
	}
	cfg.MaxLag = 64 << 10
	r := f.start(cfg)
	defer r.Close(f.ctx)
	if err := f.cat.Sync(f.ctx); err != nil { // the first snapshot
		t.Fatal(err)
	}
	r.WipeKey()
	locked.Store(true)
	if err := f.mkdirs(f.cat, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Fatalf("fsync while locked with a change to ship: %v, want EKEYREVOKED", err)
	}
	locked.Store(false)
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatalf("fsync after unlock: %v", err)
	}

	fs.SetDown(true)
	var werr error
	for i := 0; i < 200 && werr == nil; i++ {
		werr = f.mkdirs(f.cat, 5)
		if werr == nil {
			if err := f.cat.Sync(f.ctx); err == nil {
				t.Fatal("fsync succeeded with the remote down")
			}
		}
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("writes with the remote down past the cap: %v, want ENOSPC", werr)
	}
	if st := r.Status(); st.LagBytes <= cfg.MaxLag || st.LastError == "" {
		t.Fatalf("status with the remote down: %+v", st)
	}
	fs.SetDown(false)
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatalf("fsync once the remote is back: %v", err)
	}
	if err := f.mkdirs(f.cat, 1); err != nil {
		t.Fatalf("write once the remote caught up: %v", err)
	}
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, got := f.restore(); got != dumpDB(t, f.cat.Path()) {
		t.Fatal("restore differs from the live catalog after the outage")
	}
}

// Once the remote says another host owns the volume, the replicator stops:
// writes fail with EROFS and nothing more is put.
func TestFencedByNewerOwner(t *testing.T) {
	f := newRT(t)
	var restored atomic.Bool
	cfg := f.config(f.cat, f.store)
	cfg.OwnerCheckEvery = time.Nanosecond
	cfg.CheckOwner = func(context.Context) error {
		if restored.Load() {
			return fmt.Errorf("%w: test", ErrNotOwner)
		}
		return nil
	}
	r := f.start(cfg)
	defer r.Close(f.ctx)
	if err := f.mkdirs(f.cat, 2); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	before := f.names()
	restored.Store(true)
	if err := f.mkdirs(f.cat, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); !errors.Is(err, syscall.EROFS) || !errors.Is(err, ErrNotOwner) {
		t.Fatalf("fsync once another host owns the volume: %v, want EROFS and ErrNotOwner", err)
	}
	if err := f.mkdirs(f.cat, 1); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write once another host owns the volume: %v, want EROFS", err)
	}
	if got := f.names(); strings.Join(got, " ") != strings.Join(before, " ") {
		t.Fatalf("a fenced replicator wrote to the remote: %v, before %v", got, before)
	}
	if st := r.Status(); !strings.Contains(st.LastError, "another host") {
		t.Fatalf("status does not say why: %+v", st)
	}
}

// Discard deletes every replica object (shred --volume) and ends shipping.
func TestDiscard(t *testing.T) {
	f := newRT(t)
	r := f.start(f.config(f.cat, f.store))
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.mkdirs(f.cat, 3); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.names()) < 2 {
		t.Fatalf("nothing replicated: %v", f.names())
	}
	if err := r.Discard(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.names(); len(got) != 0 {
		t.Fatalf("replica objects left after Discard: %v", got)
	}
	if err := f.mkdirs(f.cat, 1); err != nil {
		t.Fatal(err)
	}
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.names(); len(got) != 0 {
		t.Fatalf("shipping went on after Discard: %v", got)
	}
}

// A crash during the upload of the newest delta leaves it torn (local and
// SFTP puts are not atomic): the next start must not fail on it, and starts a
// new chain with a snapshot; restore gives the live catalog.
func TestResumeAfterTornTail(t *testing.T) {
	f := newRT(t)
	r := f.start(f.config(f.cat, f.store))
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := f.mkdirs(f.cat, 4); err != nil {
			t.Fatal(err)
		}
		if err := f.cat.Sync(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	p := r.Status().Position
	r.stop() // the crash
	<-r.done
	f.cat.SetReplication(nil)
	if err := os.Truncate(filepath.Join(f.remDir, deltaName(1, p)), 0); err != nil {
		t.Fatal(err)
	}
	r2 := f.start(f.config(f.cat, f.store))
	defer r2.Close(f.ctx)
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Stat(f.ctx, partName(1, p+1, 0)); err != nil {
		t.Fatalf("no new chain's snapshot at position %d after a torn tail: %v (have %v)", p+1, err, f.names())
	}
	res, got := f.restore()
	if got != dumpDB(t, f.cat.Path()) || res.Position != p+1 {
		t.Fatalf("restore after a torn tail: %+v, or content differs from the live catalog", res)
	}
}

// Deltas that outgrow the catalog make a new snapshot, and retention then
// drops what the window does not need: with no window, only the newest
// snapshot and the deltas after it stay, and restore still gives the live
// catalog; with a window, history inside it stays.
func TestCompactionAndRetention(t *testing.T) {
	old := compactMinBytes
	compactMinBytes = 1 // the catalog's own size decides
	defer func() { compactMinBytes = old }()
	for _, tc := range []struct {
		name   string
		window time.Duration
	}{{"no window", -1}, {"one hour", time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRT(t)
			cfg := f.config(f.cat, f.store)
			cfg.Window = tc.window
			r := f.start(cfg)
			defer r.Close(f.ctx)
			if err := f.cat.Sync(f.ctx); err != nil {
				t.Fatal(err)
			}
			for range 60 {
				if err := f.mkdirs(f.cat, 20); err != nil {
					t.Fatal(err)
				}
				if err := f.cat.Sync(f.ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.cat.Sync(f.ctx); err != nil { // the round after a due snapshot
				t.Fatal(err)
			}
			names := f.names()
			var snaps []uint64
			var deltas []uint64
			for _, n := range names {
				h, ok := ParseName(n)
				if !ok {
					t.Fatalf("unexpected object %s", n)
				}
				if h.Kind == format.ReplicaSnapshot {
					snaps = append(snaps, h.Position)
				} else {
					deltas = append(deltas, h.Position)
				}
			}
			p := r.Status().Position
			if len(snaps) < 1 || (tc.window < 0 && len(snaps) != 1) || (tc.window > 0 && len(snaps) < 2) {
				t.Fatalf("window %v: snapshots at %v (newest position %d), want %s", tc.window, snaps, p,
					map[bool]string{true: "only the newest", false: "every one since the start (inside the window)"}[tc.window < 0])
			}
			newest := slices.Max(snaps)
			if newest < 10 {
				t.Fatalf("no compaction snapshot: snapshots at %v after %d positions", snaps, p)
			}
			for _, d := range deltas {
				if tc.window < 0 && d <= newest {
					t.Fatalf("delta %d kept before the only snapshot %d", d, newest)
				}
			}
			if tc.window > 0 && len(deltas) < int(p)-len(snaps) {
				t.Fatalf("deltas inside the window were pruned: %d deltas for %d positions", len(deltas), p)
			}
			res, got := f.restore()
			if got != dumpDB(t, f.cat.Path()) || res.Position != p {
				t.Fatalf("restore after compaction: %+v (live at %d), or content differs", res, p)
			}
		})
	}
}

// Restore At a time between two shipped states gives the older one, also
// across a compaction snapshot taken after it; a time before every kept
// snapshot is ErrTooOld.
func TestRestoreAt(t *testing.T) {
	old := compactMinBytes
	compactMinBytes = 1
	defer func() { compactMinBytes = old }()
	f := newRT(t)
	cfg := f.config(f.cat, f.store)
	cfg.Window = time.Hour
	r := f.start(cfg)
	defer r.Close(f.ctx)
	if err := f.cat.Sync(f.ctx); err != nil {
		t.Fatal(err)
	}
	type point struct {
		at   time.Time
		dump string
		p    uint64
	}
	var points []point
	for range 12 {
		if err := f.mkdirs(f.cat, 15); err != nil {
			t.Fatal(err)
		}
		if err := f.cat.Sync(f.ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
		points = append(points, point{time.Now(), dumpDB(t, f.cat.Path()), r.Status().Position})
		time.Sleep(2 * time.Millisecond)
	}
	if snaps := countSnapshots(f.names()); snaps < 2 {
		t.Fatalf("want a compaction snapshot among the points: %v", f.names())
	}
	for _, pt := range points {
		dst := filepath.Join(t.TempDir(), "catalog.db")
		res, err := Restore(f.ctx, RestoreConfig{Store: f.store, Volume: f.vol.ID, Epoch: 1, Key: f.ks.fn(), Dst: dst, At: pt.at})
		if err != nil {
			t.Fatalf("restore at position %d's time: %v", pt.p, err)
		}
		// A compaction snapshot of the same state (a new chain at the next position)
		// may race with the point's reading of the position: either holds the same
		// catalog, which the dump below checks.
		if res.Position+1 < pt.p || res.Position > pt.p+1 || res.Time.After(pt.at) {
			t.Fatalf("restore at %v gave position %d (time %v), want %d", pt.at, res.Position, res.Time, pt.p)
		}
		if got := dumpDB(t, dst); got != pt.dump {
			t.Fatalf("restore at position %d's time differs from the catalog then: %s", pt.p, firstDiff(got, pt.dump))
		}
	}
	_, err := Restore(f.ctx, RestoreConfig{Store: f.store, Volume: f.vol.ID, Epoch: 1, Key: f.ks.fn(),
		Dst: filepath.Join(t.TempDir(), "catalog.db"), At: time.Now().Add(-time.Hour)})
	if !errors.Is(err, ErrTooOld) {
		t.Fatalf("restore before the first snapshot: %v, want ErrTooOld", err)
	}
}
