package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCreateOpenVolume(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state") // Create makes it
	v := testVolume()
	v.KDFParams = []byte{1, 2, 3}
	v.PerUserKEKs = true
	v.RootMode = 0o750
	c, err := Create(ctx, dir, v)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v %v, want mode 0700", st.Mode(), err)
	}
	got, err := c.Volume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := v
	want.RootMode, want.RootUID, want.RootGID = 0, 0, 0
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("volume round trip:\n got %+v\nwant %+v", got, want)
	}
	root := stat(t, c, RootIno)
	if root.Mode != syscall.S_IFDIR|0o750 || root.Nlink != 2 || root.UID != 1000 || root.GID != 1000 || root.Ctime != v.Created {
		t.Fatalf("root inode %+v", root)
	}
	if c.ChunkSize() != v.ChunkSize {
		t.Fatalf("chunk size %d", c.ChunkSize())
	}
	ev, err := c.ListAudit(ctx, 0, 0)
	if err != nil || len(ev) != 1 || ev[0].Event != "volume.create" || !strings.Contains(ev[0].Detail, hexID(v.ID)) {
		t.Fatalf("audit after create: %+v %v", ev, err)
	}
	mkfile(t, c, RootIno, "f")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// A second Create in the same place is refused and leaves it intact.
	_, err = Create(ctx, dir, v)
	wantErrno(t, err, syscall.EEXIST)
	if !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("error should say the catalog exists: %v", err)
	}

	c, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got2, err := c.Volume(ctx)
	if err != nil || fmt.Sprint(got2) != fmt.Sprint(want) {
		t.Fatalf("volume after reopen %+v %v", got2, err)
	}
	if _, err := c.Lookup(ctx, RootIno, []byte("f")); err != nil {
		t.Fatalf("file lost across reopen: %v", err)
	}
	mustCheck(t, c)
}

func TestOpenMissing(t *testing.T) {
	_, err := Open(context.Background(), t.TempDir())
	wantErrno(t, err, syscall.ENOENT)
	if !strings.Contains(err.Error(), "coffer init") {
		t.Fatalf("error should point at coffer init: %v", err)
	}
	_, err = OpenReadOnly(context.Background(), t.TempDir())
	wantErrno(t, err, syscall.ENOENT)
}

func TestCreateValidation(t *testing.T) {
	for name, mod := range map[string]func(*Volume){
		"zero id":           func(v *Volume) { v.ID = [16]byte{} },
		"zero block":        func(v *Volume) { v.BlockSize = 0 },
		"chunk < block":     func(v *Volume) { v.ChunkSize = 1024 },
		"chunk not mult":    func(v *Volume) { v.ChunkSize = 4096*16 + 1 },
		"key mode":          func(v *Volume) { v.KeyMode = "xor" },
		"provider":          func(v *Volume) { v.Provider = "tpm" },
		"pkcs11 w/o module": func(v *Volume) { v.HSMModule = "" },
		"no remote":         func(v *Volume) { v.Remote = "" },
		"no time":           func(v *Volume) { v.Created = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			v := testVolume()
			mod(&v)
			dir := t.TempDir()
			_, err := Create(context.Background(), dir, v)
			wantErrno(t, err, syscall.EINVAL)
			if _, err := os.Stat(filepath.Join(dir, FileName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused Create left %s behind", FileName)
			}
		})
	}
	// A passphrase volume needs no HSM fields.
	v := testVolume()
	v.Provider, v.HSMModule, v.HSMToken, v.KDFParams = ProviderPassphrase, "", "", []byte("argon2id:t=3")
	c, err := Create(context.Background(), t.TempDir(), v)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestCreateRefusesStaleWAL(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName+"-wal"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Create(context.Background(), dir, testVolume())
	wantErrno(t, err, syscall.EEXIST)
	if !strings.Contains(err.Error(), "stale") {
		t.Fatalf("error should name the stale file: %v", err)
	}
}

func TestFileModes(t *testing.T) {
	old := syscall.Umask(0) // the most permissive umask: modes must not depend on it
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := t.TempDir()
	c, err := Create(ctx, dir, testVolume())
	if err != nil {
		t.Fatal(err)
	}
	mkfile(t, c, RootIno, "x") // make sure the WAL has frames
	path := filepath.Join(dir, FileName)
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), st.Mode().Perm())
		}
	}
	snap := filepath.Join(dir, "snap.db")
	if err := c.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(snap); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v %v, want 0600", st.Mode().Perm(), err)
	}
	c.Close()

	// Loosened by someone else: Open puts it back.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mkfile(t, c, RootIno, "y")
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("after reopen %s: %v %v, want 0600", filepath.Base(p), st.Mode().Perm(), err)
		}
	}
}

func TestPragmas(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	for q, want := range map[string]string{
		"PRAGMA journal_mode":  "wal",
		"PRAGMA foreign_keys":  "1",
		"PRAGMA secure_delete": "1",
		"PRAGMA synchronous":   "1", // NORMAL
		"PRAGMA busy_timeout":  "5000",
		"PRAGMA temp_store":    "2", // MEMORY
	} {
		var got string
		if err := c.w.QueryRowContext(ctx, q).Scan(&got); err != nil || got != want {
			t.Errorf("writer %s = %q (%v), want %q", q, got, err, want)
		}
	}
	var qo string
	if err := c.r.QueryRowContext(ctx, "PRAGMA query_only").Scan(&qo); err != nil || qo != "1" {
		t.Errorf("reader query_only = %q %v", qo, err)
	}
	if _, err := c.r.ExecContext(ctx, "DELETE FROM inodes"); err == nil {
		t.Error("the read pool accepted a write")
	}
}

func TestSecondOpenRefusedAndReadOnly(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	dir := dirOf(c)
	_, err := Open(ctx, dir)
	wantErrno(t, err, syscall.EBUSY)
	if !strings.Contains(err.Error(), "in use") {
		t.Fatalf("error should say the catalog is in use: %v", err)
	}

	ro, err := OpenReadOnly(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	f := mkfile(t, c, RootIno, "seen")
	got, err := ro.Lookup(ctx, RootIno, []byte("seen"))
	if err != nil || got.Ino != f.Ino {
		t.Fatalf("read-only view misses a committed write: %+v %v", got, err)
	}
	_, err = ro.CreateFile(ctx, RootIno, []byte("no"), fileAttr(), nil)
	wantErrno(t, err, syscall.EROFS)
	wantErrno(t, ro.PurgeDeleted(ctx), syscall.EROFS)
	if err := ro.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	c.Close()
	c2, err := Open(ctx, dir)
	if err != nil {
		t.Fatalf("open after the owner closed: %v", err)
	}
	c2.Close()
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	dir := dirOf(c)
	f := mkfile(t, c, RootIno, "kept")
	c.Close()
	setVersion := func(v int) {
		db, err := sql.Open("sqlite3", filepath.Join(dir, FileName))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
			t.Fatal(err)
		}
	}
	userVersion := func() int {
		db, err := sql.Open("sqlite3", filepath.Join(dir, FileName))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v int
		if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	t.Run("newer refused", func(t *testing.T) {
		setVersion(latestVersion() + 1)
		defer setVersion(latestVersion())
		_, err := Open(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), "newer than this coffer") {
			t.Fatalf("open of a newer catalog: %v", err)
		}
		_, err = OpenReadOnly(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), "newer than this coffer") {
			t.Fatalf("read-only open of a newer catalog: %v", err)
		}
		if userVersion() != latestVersion()+1 {
			t.Fatal("a refused open changed the schema version")
		}
	})

	t.Run("not a catalog", func(t *testing.T) {
		other := t.TempDir()
		db, err := sql.Open("sqlite3", filepath.Join(other, FileName))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec("CREATE TABLE x (a); PRAGMA user_version = 1"); err != nil {
			t.Fatal(err)
		}
		db.Close()
		_, err = Open(ctx, other)
		if err == nil || !strings.Contains(err.Error(), "not a coffer catalog") {
			t.Fatalf("open of a foreign database: %v", err)
		}
		if err := os.WriteFile(filepath.Join(other, FileName), []byte("this is not sqlite at all, just text padding it out"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(ctx, other); err == nil {
			t.Fatal("opened a text file as a catalog")
		}
	})

	saved := migrations
	defer func() { migrations = saved }()

	t.Run("failed migration rolls back", func(t *testing.T) {
		migrations = append(append([]migration{}, saved...), migration{latestVersion() + 1, "broken", []string{
			`CREATE TABLE half_done (a INTEGER) STRICT`,
			`ALTER TABLE no_such_table ADD COLUMN b INTEGER`,
		}})
		_, err := Open(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), "broken") {
			t.Fatalf("open with a failing migration: %v", err)
		}
		if v := userVersion(); v != saved[len(saved)-1].version {
			t.Fatalf("schema version %d after a failed migration", v)
		}
		db, _ := sql.Open("sqlite3", filepath.Join(dir, FileName))
		defer db.Close()
		var n int
		db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name = 'half_done'`).Scan(&n)
		if n != 0 {
			t.Fatal("half of a failed migration was kept")
		}
	})

	t.Run("old file upgraded", func(t *testing.T) {
		next := saved[len(saved)-1].version + 1
		migrations = append(append([]migration{}, saved...), migration{next, "test: inode flags", []string{
			`ALTER TABLE inodes ADD COLUMN flags INTEGER NOT NULL DEFAULT 7`,
		}})
		_, err := OpenReadOnly(ctx, dir)
		if err == nil || !strings.Contains(err.Error(), "needs an upgrade") {
			t.Fatalf("read-only open of an old catalog: %v", err)
		}
		c, err := Open(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var flags int
		if err := c.r.QueryRowContext(ctx, `SELECT flags FROM inodes WHERE ino = ?`, f.Ino).Scan(&flags); err != nil || flags != 7 {
			t.Fatalf("migrated column: %d %v", flags, err)
		}
		if got, err := c.Lookup(ctx, RootIno, []byte("kept")); err != nil || got.Ino != f.Ino {
			t.Fatalf("data lost in migration: %v", err)
		}
		c.Close()
		if v := userVersion(); v != next {
			t.Fatalf("schema version %d, want %d", v, next)
		}
	})
}

func TestSync(t *testing.T) {
	ctx := context.Background()
	c := newCatalog(t)
	count := func() int64 {
		var n int64
		if err := c.r.QueryRowContext(ctx, `SELECT sync_count FROM volume`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	base := count() // Create synced once
	if base != 1 {
		t.Fatalf("sync_count after Create = %d, want 1", base)
	}
	if err := c.Sync(ctx); err != nil || count() != base {
		t.Fatalf("Sync with nothing new wrote anyway (%v)", err)
	}
	mkfile(t, c, RootIno, "a")
	if err := c.Sync(ctx); err != nil || count() != base+1 {
		t.Fatalf("Sync after a commit: count %d (%v)", count(), err)
	}
	var mode int
	if err := c.w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&mode); err != nil || mode != 1 {
		t.Fatalf("writer left at synchronous=%d after Sync", mode)
	}
	// FULL mode needs no extra commit.
	f := newCatalogOpts(t, options{syncMode: "FULL"})
	mkfile(t, f, RootIno, "a")
	if err := f.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCrashMidTransaction kills a process in the middle of a rename-over
// (after both directory entries changed) and checks the catalog comes back
// without any of it, and that the dead process's lock is gone.
func TestCrashMidTransaction(t *testing.T) {
	if dir := os.Getenv("COFFER_META_CRASH_DIR"); dir != "" {
		crashChild(dir)
		return
	}
	ctx := context.Background()
	c := newCatalog(t)
	dir := dirOf(c)
	src := mkfile(t, c, RootIno, "src")
	dst := mkfile(t, c, RootIno, "dst")
	if _, err := c.SetChunk(ctx, dst.Ino, Chunk{Index: 0, Object: obj(1), Length: 10}, 10, now()); err != nil {
		t.Fatal(err)
	}
	before := dump(t, c)
	c.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashMidTransaction$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_META_CRASH_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child should die with status 3 mid-transaction: %v\n%s", err, out)
	}

	c, err = Open(ctx, dir)
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer c.Close()
	if after := dump(t, c); after != before {
		t.Fatalf("crash left changes behind:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got, err := c.Lookup(ctx, RootIno, []byte("dst")); err != nil || got.Ino != dst.Ino {
		t.Fatalf("dst after crash: %+v %v", got, err)
	}
	if got, err := c.Lookup(ctx, RootIno, []byte("src")); err != nil || got.Ino != src.Ino {
		t.Fatalf("src after crash: %+v %v", got, err)
	}
	mustCheck(t, c)
}

func crashChild(dir string) {
	c, err := Open(context.Background(), dir)
	if err != nil {
		fmt.Println("child open:", err)
		os.Exit(1)
	}
	c.testHook = func(step string) error {
		if step == "replaced" {
			os.Exit(3) // no rollback, no close: the process just dies
		}
		return nil
	}
	_, err = c.Rename(context.Background(), RootIno, []byte("src"), RootIno, []byte("dst"), 0, now(), true)
	fmt.Println("child: rename returned", err)
	os.Exit(1)
}

// TestDiskFull fills the catalog up (max_page_count stands in for a full
// disk): the failing operation returns ENOSPC and changes nothing, and the
// catalog works again once there is room.
func TestDiskFull(t *testing.T) {
	c := newCatalog(t)
	d := mkdir(t, c, RootIno, "d")
	var pages int
	if err := c.w.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := c.w.ExecContext(ctx, fmt.Sprintf("PRAGMA max_page_count = %d", pages+2)); err != nil {
		t.Fatal(err)
	}
	var err error
	var before string
	for i := 0; i < 10000; i++ {
		before = dump(t, c)
		name := fmt.Appendf(nil, "file-with-a-longish-name-%06d", i)
		if _, err = c.CreateFile(ctx, d.Ino, name, fileAttr(), testKey(1)); err != nil {
			break
		}
	}
	wantErrno(t, err, syscall.ENOSPC)
	if !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("error should say the disk is full: %v", err)
	}
	if dump(t, c) != before {
		t.Fatal("the failed create left a partial change")
	}
	if _, err := c.w.ExecContext(ctx, "PRAGMA max_page_count = 1073741823"); err != nil {
		t.Fatal(err)
	}
	mkfile(t, c, d.Ino, "after")
	mustCheck(t, c)
}

func TestCancelledContext(t *testing.T) {
	c := newCatalog(t)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := c.CreateFile(cctx, RootIno, []byte("x"), fileAttr(), nil)
	if Errno(err) != syscall.EINTR || !errors.Is(err, context.Canceled) {
		t.Fatalf("create with a cancelled context: %v (errno %v)", err, Errno(err))
	}
	_, err = c.Lookup(cctx, RootIno, []byte("x"))
	if Errno(err) != syscall.EINTR {
		t.Fatalf("lookup with a cancelled context: %v", err)
	}
	if _, err := c.Lookup(ctx, RootIno, []byte("x")); Errno(err) != syscall.ENOENT {
		t.Fatalf("the cancelled create happened: %v", err)
	}
	if Errno(nil) != 0 || Errno(errors.New("other")) != syscall.EIO {
		t.Fatal("Errno of nil / a plain error")
	}
}

func TestReadOnlyAfterClose(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	dir := dirOf(c)
	c.Close()
	ro, err := OpenReadOnly(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got, err := ro.Lookup(ctx, RootIno, []byte("f")); err != nil || got.Ino != f.Ino {
		t.Fatalf("lookup: %v", err)
	}
	if n, err := ro.VerifyAuditChain(ctx); err != nil || n != 1 {
		t.Fatalf("audit: %d %v", n, err)
	}
	probs, err := ro.Check(ctx)
	if err != nil || len(probs) != 0 {
		t.Fatalf("check: %v %v", probs, err)
	}
	// A read-only open does not keep the owner out.
	rw, err := Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	rw.Close()
}

// TestSnapshot checks the backup copy: a complete catalog that opens on its
// own (the restore path), taken while the owner keeps writing, without
// rows deleted before it.
func TestSnapshot(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	gone, err := c.CreateFile(ctx, RootIno, []byte("gone"), fileAttr(), &KeyRecord{Mode: KeyModeWrap, Wrapped: []byte("SNAPSHOT-MARKER-wrapped-key")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ShredKey(ctx, gone.Ino, now(), "t"); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	snap := filepath.Join(other, FileName)
	if err := c.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.Snapshot(ctx, snap), syscall.EEXIST)
	mkfile(t, c, RootIno, "later") // the owner carries on
	raw, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "SNAPSHOT-MARKER") {
		t.Fatal("the snapshot carries a shredded key record")
	}
	s, err := Open(ctx, other)
	if err != nil {
		t.Fatalf("open the snapshot as a catalog: %v", err)
	}
	defer s.Close()
	if got, err := s.Lookup(ctx, RootIno, []byte("f")); err != nil || got.Ino != f.Ino {
		t.Fatalf("snapshot lookup: %v", err)
	}
	if _, err := s.Lookup(ctx, RootIno, []byte("later")); Errno(err) != syscall.ENOENT {
		t.Fatalf("snapshot has a file made after it: %v", err)
	}
	mustCheck(t, s)
	if n, err := s.VerifyAuditChain(ctx); err != nil || n != 2 {
		t.Fatalf("snapshot audit chain %d %v", n, err)
	}
}

func TestOddStatePath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state ?#%20 dir")
	c, err := Create(ctx, dir, testVolume())
	if err != nil {
		t.Fatal(err)
	}
	mkfile(t, c, RootIno, "f")
	c.Close()
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Fatalf("catalog not where asked: %v", err)
	}
	c, err = Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Lookup(ctx, RootIno, []byte("f")); err != nil {
		t.Fatal(err)
	}
}
