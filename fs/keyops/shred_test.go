package keyops

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(uint64(i)*0x9e3779b97f4a7c15>>56) ^ seed | 1
	}
	return p
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestShredProof proves a shred on a real SoftHSM2 token: (1) the shredded file's wrapped
// key, read from the catalog beforehand, is in neither catalog.db nor its WAL afterwards,
// every hard link is gone and its objects are deleted; (2) with the objects and catalog.db
// copied before the shred and restored after shred --now, the key cannot be opened with the
// HSM (ErrKEKMissing) — while before --now the old copy still opened it, which is why --now
// exists. Other files stay readable throughout.
func TestShredProof(t *testing.T) {
	e := newVol(t, volOpt{})
	dataA, dataB := pattern(1, 40000), pattern(2, 20000)
	a := e.writeFile("a", 0, dataA)
	b := e.writeFile("b", 0, dataB)
	e.addFiles("other", 20, 0)
	now := time.Now().UnixNano()
	docs, err := e.v.Catalog().Mkdir(ctx, meta.RootIno, []byte("docs"), meta.Inode{Mode: syscall.S_IFDIR | 0o755, Atime: now, Mtime: now, Ctime: now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Catalog().Link(ctx, a.Ino, docs.Ino, []byte("a-link"), now); err != nil {
		t.Fatal(err)
	}
	oldKey, err := e.v.Catalog().GetKey(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := e.v.Catalog().Chunks(ctx, a.Ino, 0, -1)
	if err != nil || len(chunks) < 2 {
		t.Fatalf("file a has %d chunks (%v), want several", len(chunks), err)
	}
	if !bytes.Contains(e.catalogBytes(), oldKey.Wrapped) {
		t.Fatal("test is broken: the wrapped key is not in the catalog files to begin with")
	}

	// The thief's copies: catalog.db (checkpointed, so it holds everything) and a's objects.
	if err := e.v.Catalog().PurgeDeleted(ctx); err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(e.dir, "backup")
	copyFile(t, filepath.Join(e.state, meta.FileName), filepath.Join(backup, meta.FileName))
	objs := map[string]string{}
	for _, c := range chunks {
		p := filepath.Join(e.remote, filepath.FromSlash(format.ObjectName(format.ID(c.Object))))
		objs[p] = filepath.Join(backup, "objects", filepath.Base(p))
		copyFile(t, p, objs[p])
	}

	res, err := ShredPaths(ctx, e.v, []string{"/docs/a-link"}, ShredOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 1 || res.Links != 2 || res.Deleted < len(chunks) || res.DeleteFailed != 0 {
		t.Fatalf("shred result %+v", res)
	}
	if res.OldVersions[keys.KEKRef{Version: 1}] != 1 {
		t.Fatalf("shred does not say which KEK version makes it final: %+v", res.OldVersions)
	}
	// (1) No copy of the record left in the catalog files; no entry, no inode, no object.
	if bytes.Contains(e.catalogBytes(), oldKey.Wrapped) {
		t.Fatal("the shredded wrapped key is still in catalog.db or catalog.db-wal")
	}
	for _, p := range []string{"/a", "/docs/a-link"} {
		if _, err := ResolvePath(ctx, e.v.Catalog(), p); err == nil {
			t.Errorf("%s still exists", p)
		}
	}
	if _, err := e.v.Catalog().GetInode(ctx, a.Ino); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("inode of a: %v, want ENOENT", err)
	}
	for p := range objs {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("object %s still on the remote", p)
		}
	}
	if n, _ := e.v.Catalog().PendingDeletes(ctx); n != 0 {
		t.Errorf("%d deletions still queued", n)
	}
	got, err := e.readFile(b.Ino)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, got, dataB, "b after shredding a")

	// Before --now, the old catalog copy still opens a's key with the HSM.
	oldCat, err := meta.OpenReadOnly(ctx, backup)
	if err != nil {
		t.Fatal(err)
	}
	defer oldCat.Close()
	oldRec, err := oldCat.GetKey(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	id := keys.FileIdentity{Volume: e.v.ID, File: a.FileID}
	dek, err := keys.OpenFileKey(ctx, e.v.Provider(), volume.RecordOf(oldRec), id)
	if err != nil {
		t.Fatalf("before --now the old copy's key should still open: %v", err)
	}
	dek.Wipe()

	rres, err := ShredNow(ctx, e.v, RotateOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if rres.Rewrapped != 21 || len(rres.Retired) != 1 || rres.Retired[0] != (keys.KEKRef{Version: 1}) {
		t.Fatalf("shred --now: %+v", rres)
	}
	if tv := e.tokenVersions(); contains(tv, "volume/v1") {
		t.Fatalf("v1 still on the token: %v", tv)
	}

	// (2) Restore the objects and open the old catalog copy: the key is gone for good.
	for p, bk := range objs {
		copyFile(t, bk, p)
	}
	if _, err := keys.OpenFileKey(ctx, e.v.Provider(), volume.RecordOf(oldRec), id); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("old copy's key after shred --now: %v, want ErrKEKMissing", err)
	}
	// (Opening a volume rebuilt from the old copy fails the same way: the CLI test
	// TestRotateCommand runs that path in a subprocess.)
	e.close()
	e.open()
	got, err = e.readFile(b.Ino)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, got, dataB, "b after shred --now")
}

// TestShredPathErrors: a bad path changes nothing.
func TestShredPathErrors(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true})
	inos := e.addFiles("f", 2, 0)
	now := time.Now().UnixNano()
	if _, err := e.v.Catalog().Mkdir(ctx, meta.RootIno, []byte("d"), meta.Inode{Mode: syscall.S_IFDIR | 0o755, Atime: now, Mtime: now, Ctime: now}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"/nope": "not found", "/d": "is a directory", "/f0/x": "not found", "/../f0": "not allowed"} {
		_, err := ShredPaths(ctx, e.v, []string{"/f0", path}, ShredOptions{Logger: quiet})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("shred %s: %v, want %q", path, err, want)
		}
	}
	if _, err := e.v.Catalog().GetKey(ctx, inos[0]); err != nil {
		t.Fatalf("a refused shred touched /f0: %v", err)
	}
}

// TestShredUser destroys one user's KEK chain on a per-user HSM volume: their files are
// gone and unrecoverable, another user's are untouched and readable.
func TestShredUser(t *testing.T) {
	e := newVol(t, volOpt{perUser: true})
	mine := e.writeFile("mine", 1000, pattern(3, 30000))
	e.addFiles("m", 30, 1000)
	theirs := pattern(4, 25000)
	other := e.writeFile("theirs", 2000, theirs)
	now := time.Now().UnixNano()
	if _, err := e.v.Catalog().Link(ctx, mine.Ino, meta.RootIno, []byte("mine-link"), now); err != nil {
		t.Fatal(err)
	}
	// A second version of u1000, so "all versions" means something.
	if _, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	objsBefore := len(e.objectFiles())
	res, err := ShredUser(ctx, e.v, 1000, ShredOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 31 || res.Links != 32 || len(res.Destroyed) != 2 || res.DeleteFailed != 0 {
		t.Fatalf("shred --user: %+v", res)
	}
	tv := e.tokenVersions()
	for _, gone := range []string{"u1000/v1", "u1000/v2"} {
		if contains(tv, gone) {
			t.Errorf("%s still on the token", gone)
		}
	}
	if !contains(tv, "u2000/v2") || !contains(tv, "volume/v2") {
		t.Fatalf("other chains lost: %v", tv)
	}
	if n := len(e.objectFiles()); n >= objsBefore {
		t.Errorf("objects on the remote: %d before, %d after", objsBefore, n)
	}
	for _, p := range []string{"/mine", "/mine-link", "/m0"} {
		if _, err := ResolvePath(ctx, e.v.Catalog(), p); err == nil {
			t.Errorf("%s survived", p)
		}
	}
	got, err := e.readFile(other.Ino)
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, got, theirs, "another user's file")
	// A rerun is harmless, and the volume still opens and verifies.
	if _, err := ShredUser(ctx, e.v, 1000, ShredOptions{Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	if rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID); err != nil || rep.Unsealed != 0 {
		t.Fatalf("audit: %+v %v", rep, err)
	}
	// uid 1000's next file gets a fresh version above the destroyed ones (the fs does this).
	if _, err := ShredUser(ctx, e.v, 1000, ShredOptions{}); err != nil {
		t.Fatal(err)
	}
	// A volume without per-user KEKs refuses.
	e2 := newVol(t, volOpt{passphrase: true})
	if _, err := ShredUser(ctx, e2.v, 1000, ShredOptions{}); err == nil || !strings.Contains(err.Error(), "--kek-per-user") {
		t.Fatalf("shred --user without per-user KEKs: %v", err)
	}
}

// TestShredVolume destroys every KEK version: nothing opens afterwards.
func TestShredVolume(t *testing.T) {
	e := newVol(t, volOpt{perUser: true})
	e.writeFile("f", 1000, pattern(5, 5000))
	refs, err := ShredVolume(ctx, e.v, ShredOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 {
		t.Fatalf("destroyed %v", refs)
	}
	if tv := e.tokenVersions(); len(tv) != 0 {
		t.Fatalf("token still holds %v", tv)
	}
	e.close()
	if _, err := volume.Open(ctx, e.state, e.secret, volume.OpenOptions{Logger: quiet}); err == nil {
		t.Fatal("a shredded volume opened")
	}
}

// TestShredOldCopyPassphrase: what a file shred, then shred --now, leaves to an older copy of
// the catalog (and the file's objects, as remote versioning keeps them). On an HSM volume
// the copy opens the file until --now and never after (the version is gone from the token):
// Finality.Passphrase is false, OldVersions names the version. On a passphrase volume the
// copy plus the passphrase reads the file back whole even after --now (the copy holds the
// KEK version sealed under the passphrase): Finality.Passphrase says so, which is what
// coffer shred prints instead of "final".
func TestShredOldCopyPassphrase(t *testing.T) {
	for _, pass := range []bool{false, true} {
		e := newVol(t, volOpt{passphrase: pass})
		data := pattern(5, 40000)
		a := e.writeFile("a", 0, data)
		e.writeFile("b", 0, pattern(6, 20000))
		old := e.copyCatalog(a.Ino)

		res, err := ShredPaths(ctx, e.v, []string{"/a"}, ShredOptions{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if res.Finality.Passphrase != pass || res.Finality.Derive || len(res.Finality.Moved) != 0 ||
			len(res.OldVersions) != 1 || res.OldVersions[keys.KEKRef{Version: 1}] != 1 {
			t.Fatalf("passphrase %v: shred result %+v", pass, res)
		}
		got, err := e.readFromCopy(old, a.Ino)
		if err != nil {
			t.Fatalf("passphrase %v: before --now the old copy should read the file: %v", pass, err)
		}
		mustEqualBytes(t, got, data, "the shredded file from the old copy, before --now")

		rres, err := ShredNow(ctx, e.v, RotateOptions{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if len(rres.Retired) != 1 || rres.Retired[0] != (keys.KEKRef{Version: 1}) || rres.Passphrase != pass {
			t.Fatalf("passphrase %v: shred --now %+v", pass, rres)
		}
		got, err = e.readFromCopy(old, a.Ino)
		if pass {
			if err != nil {
				t.Fatalf("passphrase volume: the old copy plus the passphrase should still read the file after --now: %v", err)
			}
			mustEqualBytes(t, got, data, "the shredded file from the old copy of a passphrase volume, after --now")
		} else if !errors.Is(err, keys.ErrKEKMissing) {
			t.Fatalf("HSM volume: the old copy after --now: %v, want ErrKEKMissing", err)
		}
	}
}

// TestShredUserAfterChown: a file uid 1000 made and gave to uid 2000 (a chown re-wraps its
// key under u2000 and audits key.moved) is shredded with uid 2000's chain, but an older copy
// of the catalog from before the chown holds its key under u1000/v1, which still exists (uid
// 1000 has other files): the copy reads the file back whole. The shred says so: u1000/v1 in
// OldVersions and Finality.Moved. Once u1000/v1 is retired (shred --now), the copy opens
// nothing. Without the chown history the shred looked final.
func TestShredUserAfterChown(t *testing.T) {
	e := newVol(t, volOpt{perUser: true})
	data := pattern(7, 30000)
	a := e.writeFile("a", 1000, data)
	e.writeFile("b", 1000, pattern(8, 10000))
	old := e.copyCatalog(a.Ino)
	e.writeFile("c", 2000, pattern(9, 10000))
	e.chown(a.Ino, 2000)
	if k, err := e.v.Catalog().GetKey(ctx, a.Ino); err != nil || k.Chain != "u2000" {
		t.Fatalf("key after chown: %+v %v", k, err)
	}

	res, err := ShredUser(ctx, e.v, 2000, ShredOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	u1000 := keys.KEKRef{Chain: "u1000", Version: 1}
	if res.Files != 2 || len(res.Destroyed) != 1 || res.Destroyed[0] != (keys.KEKRef{Chain: "u2000", Version: 1}) {
		t.Fatalf("shred --user 2000: %+v", res)
	}
	if len(res.OldVersions) != 1 || res.OldVersions[u1000] != 1 || len(res.Finality.Moved) != 1 ||
		res.Finality.Moved[0] != u1000 || res.Finality.MovedFiles != 1 {
		t.Fatalf("shred --user 2000 does not name the chain the chowned file's key was under: old %v, finality %+v", res.OldVersions, res.Finality)
	}
	got, err := e.readFromCopy(old, a.Ino)
	if err != nil {
		t.Fatalf("the copy from before the chown should still read the file: %v", err)
	}
	mustEqualBytes(t, got, data, "the chowned file from the old copy after shred --user")

	rres, err := ShredNow(ctx, e.v, RotateOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rres.Retired, u1000) {
		t.Fatalf("shred --now retired %v", rres.Retired)
	}
	// (The copy no longer opens as a volume, its volume/v1 being gone too; the file's own
	// key record in it is what matters.)
	oldCat, err := meta.OpenReadOnly(ctx, old.state)
	if err != nil {
		t.Fatal(err)
	}
	defer oldCat.Close()
	oldRec, err := oldCat.GetKey(ctx, a.Ino)
	if err != nil || oldRec.Chain != "u1000" {
		t.Fatalf("the copy's record: %+v %v", oldRec, err)
	}
	_, err = keys.OpenFileKey(ctx, e.v.Provider(), volume.RecordOf(oldRec), keys.FileIdentity{Volume: e.v.ID, File: a.FileID})
	if !errors.Is(err, keys.ErrKEKMissing) || !strings.Contains(err.Error(), "u1000/v1") {
		t.Fatalf("the copy's key after u1000/v1 is destroyed: %v, want ErrKEKMissing", err)
	}
	// A shred of a file that never changed owner names only its own chain.
	e.writeFile("d", 1000, pattern(10, 1000))
	res, err = ShredPaths(ctx, e.v, []string{"/d"}, ShredOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Finality.Moved) != 0 || len(res.OldVersions) != 1 || res.OldVersions[keys.KEKRef{Chain: "u1000", Version: 2}] != 1 {
		t.Fatalf("shred of a file that never moved: old %v, finality %+v", res.OldVersions, res.Finality)
	}
}
