package fusefront

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/content"
	"coffer/keys"
)

var lockPass = []byte("fs test passphrase") // newVolume's passphrase

func patterned(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*31) ^ seed | 1
	}
	return p
}

func (m *mounted) stats() content.Stats {
	m.t.Helper()
	d := m.data
	if c, ok := d.(*counting); ok {
		d = c.dataPath
	}
	return d.(contentDataPath).Stats()
}

// TestLock: coffer lock on a live mount. A descriptor opened (and read, so its pages are
// cached) before the lock fails with EKEYREVOKED on read, write, fallocate and fsync instead
// of serving stale pages; opening, creating and truncating files fail likewise; names and
// attributes keep working; a write staged before the lock stays staged and uploads after
// unlock; a wrong passphrase leaves the mount locked; the closed file's cached pages were
// dropped too. Lock with 1,000 cached keys is well under 100 ms.
func TestLock(t *testing.T) {
	var c *counting
	m := mountFS(t, mountConfig{dirtyDelay: time.Hour,
		wrap: func(d dataPath) dataPath { c = &counting{dataPath: d}; return c }})
	dataA := patterned(1, 300<<10)
	dataB := patterned(2, 100<<10)
	dataC := patterned(3, 70<<10)
	m.write("a", string(dataA))
	m.write("b", string(dataB))
	m.fsync("a")
	m.fsync("b")
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}

	fa, err := os.OpenFile(m.path("a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	buf := make([]byte, len(dataA))
	if _, err := fa.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, dataA) {
		t.Fatalf("read a: %v", err)
	}
	// b is read and closed: FOPEN_KEEP_CACHE keeps its pages, and a second read never
	// reaches the file system.
	if got := m.read("b"); got != string(dataB) {
		t.Fatal("read b")
	}
	before := c.reads.Load()
	if got := m.read("b"); got != string(dataB) {
		t.Fatal("read b again")
	}
	if c.reads.Load() != before {
		t.Fatal("the second read of b was not served from the page cache; the test cannot see the lock drop it")
	}
	if _, err := fa.ReadAt(buf, 0); err != nil || c.reads.Load() != before {
		t.Fatalf("a is not served from the page cache either (%v)", err)
	}
	// A write staged (DirtyDelay is an hour) and not fsynced.
	fc, err := os.OpenFile(m.path("c"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	if _, err := fc.WriteAt(dataC, 0); err != nil {
		t.Fatal(err)
	}
	if st := m.stats(); st.DirtyChunks == 0 {
		t.Fatalf("nothing staged before the lock: %+v", st)
	}
	// 1,000 more keys in the keyring's cache.
	for i := range 1000 {
		var fid [16]byte
		fid[0], fid[1], fid[15] = byte(i), byte(i>>8), 0xEE
		_, d, err := m.vol.Keys().NewFileKey(context.Background(), m.vol.KeyMode, m.vol.KEK(), fid)
		if err != nil {
			t.Fatal(err)
		}
		d.Wipe()
	}

	took, err := m.fs.Lock()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FS.Lock with 1,000+ cached keys, 3 files open or cached: %v", took)
	if took > 100*time.Millisecond {
		t.Errorf("Lock took %v, want well under 100 ms", took)
	}
	if !m.fs.Locked() || !m.stats().Locked {
		t.Fatal("not locked after Lock")
	}

	// Contents: refused, through the old descriptor too (no stale page-cache data).
	n, err := fa.ReadAt(buf[:4096], 0)
	wantErrno(t, "read through a descriptor opened before the lock", err, syscall.EKEYREVOKED)
	if n > 0 {
		t.Fatalf("read %d bytes while locked", n)
	}
	_, err = fa.WriteAt([]byte("x"), 10)
	wantErrno(t, "write through an old descriptor", err, syscall.EKEYREVOKED)
	wantErrno(t, "fsync of a staged file", fc.Sync(), syscall.EKEYREVOKED)
	wantErrno(t, "fallocate", syscall.Fallocate(int(fa.Fd()), 0, 0, 1<<20), syscall.EKEYREVOKED)
	wantErrno(t, "ftruncate", fa.Truncate(10), syscall.EKEYREVOKED)
	wantErrno(t, "truncate", os.Truncate(m.path("b"), 10), syscall.EKEYREVOKED)
	_, err = os.Open(m.path("b"))
	wantErrno(t, "open", err, syscall.EKEYREVOKED)
	_, err = os.ReadFile(m.path("a"))
	wantErrno(t, "open a", err, syscall.EKEYREVOKED)
	_, err = os.OpenFile(m.path("d/new"), os.O_RDWR|os.O_CREATE, 0o644)
	wantErrno(t, "create", err, syscall.EKEYREVOKED)
	wantErrno(t, "mknod", syscall.Mknod(m.path("d/node"), syscall.S_IFREG|0o644, 0), syscall.EKEYREVOKED)

	// Names and attributes keep working.
	if st := m.lstat("a"); st.Size != int64(len(dataA)) {
		t.Fatalf("stat a while locked: size %d", st.Size)
	}
	if st := m.lstat("c"); st.Size != int64(len(dataC)) {
		t.Fatalf("stat c (staged) while locked: size %d", st.Size)
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil || len(ents) != 4 {
		t.Fatalf("ls while locked: %d entries, %v", len(ents), err)
	}
	if err := os.Mkdir(m.path("d/sub"), 0o700); err != nil {
		t.Fatalf("mkdir while locked: %v", err)
	}
	if err := os.Rename(m.path("b"), m.path("d/b")); err != nil {
		t.Fatalf("rename while locked: %v", err)
	}
	if err := os.Chmod(m.path("d/b"), 0o600); err != nil {
		t.Fatalf("chmod while locked: %v", err)
	}
	if err := os.Symlink("a", m.path("d/link")); err != nil {
		t.Fatalf("symlink while locked: %v", err)
	}
	// Uploads are paused, not failing; nothing was dropped.
	time.Sleep(200 * time.Millisecond)
	if st := m.stats(); st.DirtyChunks == 0 || st.UploadsFailing != 0 || st.CachedKeys != 0 || st.CacheBytes != 0 {
		t.Fatalf("while locked: %+v", st)
	}
	// close(2) of a descriptor works while locked (its size was recorded).
	if err := fc.Close(); err != nil {
		t.Fatalf("close while locked: %v", err)
	}
	if l := m.log.String(); strings.Contains(l, "level=ERROR") {
		t.Fatalf("operations refused by the lock were logged as errors:\n%s", l)
	}

	err = m.fs.Unlock(context.Background(), []byte("not the passphrase"))
	if !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("unlock with a wrong passphrase: %v", err)
	}
	if !m.fs.Locked() {
		t.Fatal("a wrong passphrase unlocked the mount")
	}
	if _, err := fa.ReadAt(buf[:10], 0); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Fatalf("read after a failed unlock: %v", err)
	}

	if err := m.fs.Unlock(context.Background(), lockPass); err != nil {
		t.Fatal(err)
	}
	if m.fs.Locked() {
		t.Fatal("still locked after Unlock")
	}
	// The old descriptor works again.
	if _, err := fa.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, dataA) {
		t.Fatalf("read through the old descriptor after unlock: %v", err)
	}
	// The staged write goes out and reads back.
	m.fsync("c")
	if st := m.stats(); st.DirtyChunks != 0 || st.StagedBytes != 0 {
		t.Fatalf("after unlock and fsync: %+v", st)
	}
	if got := m.read("c"); got != string(dataC) {
		t.Fatal("the write staged before the lock did not read back")
	}
	// b's pages were dropped by the lock: reading it now reaches the file system.
	before = c.reads.Load()
	if got := m.read("d/b"); got != string(dataB) {
		t.Fatal("read b after unlock")
	}
	if c.reads.Load() == before {
		t.Fatal("b was served from pages cached before the lock: the lock did not drop them")
	}
	m.write("d/new", "created after unlock")
	if got := m.read("d/new"); got != "created after unlock" {
		t.Fatal("create after unlock")
	}
	if ents, _ := os.ReadDir(filepath.Join(m.dir, "d")); len(ents) != 4 {
		t.Fatalf("d has %d entries after unlock", len(ents))
	}
}

// TestLockTwice: locking a locked mount and unlocking an unlocked one succeed and change
// nothing.
func TestLockTwice(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "hello")
	if _, err := m.fs.Lock(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.fs.Lock(); err != nil {
		t.Fatalf("second lock: %v", err)
	}
	if _, err := os.ReadFile(m.path("f")); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Fatalf("read while locked: %v", err)
	}
	if err := m.fs.Unlock(context.Background(), lockPass); err != nil {
		t.Fatal(err)
	}
	if err := m.fs.Unlock(context.Background(), []byte("anything")); err != nil {
		t.Fatalf("unlock of an unlocked mount: %v", err)
	}
	if got := m.read("f"); got != "hello" {
		t.Fatalf("read after unlock: %q", got)
	}
}
