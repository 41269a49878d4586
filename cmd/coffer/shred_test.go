package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/content"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/hsm"
	"coffer/keys/passphrase"
)

func (l *lcVol) link(t *testing.T, from, dir, name string) {
	t.Helper()
	ctx := context.Background()
	c, err := meta.Open(ctx, l.state)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now().UnixNano()
	in, err := c.Lookup(ctx, meta.RootIno, []byte(from))
	if err != nil {
		t.Fatal(err)
	}
	parent := uint64(meta.RootIno)
	if dir != "" {
		d, err := c.Mkdir(ctx, meta.RootIno, []byte(dir), meta.Inode{Mode: 0o40755, Atime: now, Mtime: now, Ctime: now})
		if err != nil {
			t.Fatal(err)
		}
		parent = d.Ino
	}
	if _, err := c.Link(ctx, in.Ino, parent, []byte(name), now); err != nil {
		t.Fatal(err)
	}
}

func TestShredCommand(t *testing.T) {
	l := newLCVol(t, false, false, false)
	l.populate(t, "a", 2, 0, []byte(strings.Repeat("secret ", 5000)))
	l.link(t, "a0", "d", "hard")
	objs := len(listFiles(t, filepath.Join(l.remote, "c")))

	// A hard-linked file, by its second name: both names go, its objects are deleted.
	r := coffer(t, l.env, "shred", "--state", l.state, "/d/hard")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded 1 files (2 entries removed); 1 objects deleted from the remote") ||
		!strings.Contains(r.stdout, "until KEK volume/v1 is destroyed") {
		t.Fatalf("shred (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if got := len(listFiles(t, filepath.Join(l.remote, "c"))); got != objs-1 {
		t.Fatalf("remote objects: %d before, %d after", objs, got)
	}
	r = coffer(t, l.env, "shred", "--state", l.state, "/a0")
	r.oneErrorLine(t, "/a0: not found in the volume")

	// --now: final at once.
	r = coffer(t, l.env, "shred", "--state", l.state, "--now", "a1")
	if r.code != 0 || !strings.Contains(r.stdout, "final: 0 other key records re-wrapped to volume/v2 and volume/v1 destroyed") {
		t.Fatalf("shred --now (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if labels := l.tok.ObjectLabels(t); len(labels) != 2 || !strings.Contains(labels[0], ":v2:") {
		t.Fatalf("token after shred --now: %v", labels)
	}
	r = coffer(t, nil, "audit", "--state", l.state)
	if strings.Count(r.stdout, "key.shred") != 2 {
		t.Errorf("audit:\n%s", r.stdout)
	}
	// Usage errors.
	if r = coffer(t, l.env, "shred", "--state", l.state); r.code != 2 {
		t.Errorf("shred without a target: exit %d %s", r.code, r.stderr)
	}
	if r = coffer(t, l.env, "shred", "--state", l.state, "--user", "x"); r.code != 2 {
		t.Errorf("--user x: exit %d", r.code)
	}
}

func TestShredUserCommand(t *testing.T) {
	l := newLCVol(t, false, false, true)
	l.populate(t, "mine", 3, 1000, []byte("mine"))
	l.populate(t, "theirs", 2, 2000, []byte("theirs"))
	r := coffer(t, l.env, "shred", "--state", l.state, "--user", "1000")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded uid 1000: KEK chain u1000 destroyed (u1000/v1), 3 files removed") {
		t.Fatalf("shred --user (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	labels := strings.Join(l.tok.ObjectLabels(t), " ")
	if strings.Contains(labels, ":u1000:") || !strings.Contains(labels, ":u2000:") {
		t.Fatalf("token after shred --user: %s", labels)
	}
	if l.count(t, "u2000", 1) != 2 {
		t.Fatal("the other user's keys were touched")
	}
	// Not a per-user volume: refused.
	l2 := newLCVol(t, true, false, false)
	r = coffer(t, l2.env, "shred", "--state", l2.state, "--user", "1000")
	r.oneErrorLine(t, "--kek-per-user")
}

func TestShredVolumeCommand(t *testing.T) {
	l := newLCVol(t, false, false, false)
	l.populate(t, "f", 2, 0, []byte("x"))
	// Not a terminal and no --yes: refused, nothing destroyed.
	r := coffer(t, l.env, "shred", "--state", l.state, "--volume")
	if r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("--volume without --yes: %d %s", r.code, r.stderr)
	}
	if n := len(l.tok.ObjectLabels(t)); n != 2 {
		t.Fatalf("refused --volume changed the token: %d objects", n)
	}
	r = coffer(t, l.env, "shred", "--state", l.state, "--volume", "--yes")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded: 1 KEK versions destroyed (volume/v1)") {
		t.Fatalf("--volume --yes (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if n := len(l.tok.ObjectLabels(t)); n != 0 {
		t.Fatalf("token still holds %d objects", n)
	}
	r = coffer(t, l.env, "rotate", "--state", l.state)
	if r.code == 0 {
		t.Fatal("a shredded volume rotated")
	}
}

// mount mounts the volume at a fresh mountpoint (unmounted again at the end of the test).
func (l *lcVol) mount(t *testing.T) string {
	t.Helper()
	mnt := filepath.Join(l.dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
		for _, pid := range daemonPIDs(l.state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if r := coffer(t, l.env, "mount", "--state", l.state, mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	return mnt
}

func (l *lcVol) unmount(t *testing.T, mnt string) {
	t.Helper()
	pids := daemonPIDs(l.state)
	if r := coffer(t, nil, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: %s", r.stderr)
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
}

// catalogCopy is an older copy of an unmounted volume's catalog, as a backup or a thief
// keeps it, and of the remote's objects (remote versioning keeps deleted objects).
type catalogCopy struct{ state, remote string }

func (l *lcVol) copyCatalog(t *testing.T) catalogCopy {
	t.Helper()
	dir, err := os.MkdirTemp(l.dir, "copy-")
	if err != nil {
		t.Fatal(err)
	}
	c := catalogCopy{state: filepath.Join(dir, "state"), remote: filepath.Join(dir, "remote")}
	copyTree(t, filepath.Join(l.state, meta.FileName), filepath.Join(c.state, meta.FileName))
	for _, suffix := range []string{"-wal", "-shm"} { // a closed catalog has none
		if _, err := os.Stat(filepath.Join(l.state, meta.FileName+suffix)); err == nil {
			t.Fatalf("the catalog is not closed (%s exists): copy it unmounted", meta.FileName+suffix)
		}
	}
	copyTree(t, filepath.Join(l.remote, "c"), filepath.Join(c.remote, "c"))
	return c
}

// copyTree copies a file or a directory tree.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// keyFromCopy opens the key of the file at volume path name from the copied catalog with
// the volume's PIN or passphrase and nothing else of the copy: the HSM's keys, or the KEK
// version's material sealed in the copy.
func (l *lcVol) keyFromCopy(t *testing.T, c catalogCopy, name string) error {
	t.Helper()
	ctx := context.Background()
	cat, err := meta.OpenReadOnly(ctx, c.state)
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	mv, err := cat.Volume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, err := keyops.ResolvePath(ctx, cat, name)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := cat.GetKey(ctx, in.Ino)
	if err != nil {
		t.Fatal(err)
	}
	var p keys.Provider
	if l.passphrase {
		var params passphrase.Params
		if err := params.UnmarshalBinary(mv.KDFParams); err != nil {
			t.Fatal(err)
		}
		pp, err := passphrase.Open(l.secret, mv.ID, params)
		if err != nil {
			return err
		}
		k, err := cat.GetKEK(ctx, rec.Chain, rec.Version)
		if err != nil {
			t.Fatal(err)
		}
		if err := pp.Load(keys.KEKRef{Chain: k.Chain, Version: k.Version}, k.Material); err != nil {
			return err
		}
		p = pp
	} else {
		hp, err := hsm.New(hsm.Config{Module: mv.HSMModule, Token: mv.HSMToken, PIN: l.secret, Volume: mv.ID})
		if err != nil {
			t.Fatal(err)
		}
		p = hp
	}
	defer p.Wipe()
	dek, err := keys.OpenFileKey(ctx, p, volume.RecordOf(rec), keys.FileIdentity{Volume: mv.ID, File: in.FileID})
	if err != nil {
		return err
	}
	dek.Wipe()
	return nil
}

// readFromCopy opens the key of the file at volume path name from the copied catalog
// (keyFromCopy), then puts the copied objects back on the remote, opens the volume from the
// copy with the volume's PIN or passphrase, as whoever holds the copy would, and reads the
// file. The error says where it stopped.
func (l *lcVol) readFromCopy(t *testing.T, c catalogCopy, name string) ([]byte, error) {
	t.Helper()
	if err := l.keyFromCopy(t, c, name); err != nil {
		return nil, err
	}
	copyTree(t, filepath.Join(c.remote, "c"), filepath.Join(l.remote, "c"))
	ctx := context.Background()
	v, err := volume.Open(ctx, c.state, l.secret, volume.OpenOptions{})
	if err != nil {
		return nil, err
	}
	defer v.Close(ctx)
	in, err := keyops.ResolvePath(ctx, v.Catalog(), name)
	if err != nil {
		return nil, err
	}
	s, err := content.New(v, content.Options{StagingDir: volume.StagingDir(c.state), DirtyDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	f, err := s.Open(ctx, in.Ino)
	if err != nil {
		return nil, err
	}
	defer f.Release(ctx)
	buf := make([]byte, f.Size())
	n, err := f.ReadAt(ctx, buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

// passphraseNotFinal is what a shred on a passphrase volume says instead of "final".
const passphraseNotFinal = "final for this catalog only: an older copy of the catalog plus the passphrase it was made with can still open them"

// TestShredPassphraseOldCopy: on a passphrase volume, shred --now destroys the KEK version
// in the catalog, yet an older copy of the catalog plus the passphrase still reads the file
// (the copy holds the version, sealed under the passphrase): the summary must not say
// "final", offline or on a live mount (the daemon's reply), and coffer passwd changes nothing
// to that. (The old code printed "final: ... destroyed" for both.)
func TestShredPassphraseOldCopy(t *testing.T) {
	l := newLCVol(t, true, false, false)
	data := []byte(strings.Repeat("passphrase secret ", 3000))
	l.populate(t, "a", 3, 0, data)
	old := l.copyCatalog(t)

	// Offline.
	r := coffer(t, l.env, "shred", "--state", l.state, "--now", "/a0")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded 1 files (1 entries removed)") ||
		!strings.Contains(r.stdout, "2 other key records re-wrapped to volume/v2 and volume/v1 destroyed; "+passphraseNotFinal) ||
		strings.Contains(r.stdout, "final:") {
		t.Fatalf("offline shred --now (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	// coffer passwd does not help either: the copy opens with the passphrase it was made with.
	newPass := "lifecycle passphrase 2"
	if r := coffer(t, append(l.env, "COFFER_NEW_PASSPHRASE="+newPass), "passwd", "--state", l.state); r.code != 0 {
		t.Fatalf("passwd: %s %s", r.stdout, r.stderr)
	}
	got, err := l.readFromCopy(t, old, "/a0")
	if err != nil {
		t.Fatalf("the old copy plus the passphrase should read the shredded file: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the shredded file read from the old copy differs")
	}
	l.secret, l.env = []byte(newPass), []string{"COFFER_PASSPHRASE=" + newPass}

	// Live: the daemon shreds, the summary says the same.
	mnt := l.mount(t)
	r = coffer(t, nil, "shred", "--state", l.state, "--now", filepath.Join(mnt, "a1"))
	if r.code != 0 || !strings.Contains(r.stdout, "shredded 1 files (1 entries removed)") ||
		!strings.Contains(r.stdout, "volume/v2 destroyed; "+passphraseNotFinal) || strings.Contains(r.stdout, "final:") {
		t.Fatalf("live shred --now (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	r = coffer(t, nil, "rotate", "--state", l.state, "--retire-old")
	if r.code != 0 || !strings.Contains(r.stdout, "destroyed volume/v3 in this catalog only: an older copy of the catalog keeps them") {
		t.Fatalf("live rotate --retire-old (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	l.unmount(t, mnt)
	l.secret = []byte("lifecycle passphrase 1") // the copy's
	got, err = l.readFromCopy(t, old, "/a1")
	if err != nil {
		t.Fatalf("the old copy plus its passphrase should read the file shredded live: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the file shredded live, read from the old copy, differs")
	}
}

// TestShredUserAfterChown: a file uid 1000 made and a chown on the mount gave to uid 2000
// (its key re-wrapped under u2000) is shredded with uid 2000's chain, but a copy of the
// catalog from before the chown holds its key under u1000/v1, which lives on (uid 1000 has
// other files): the copy reads the file back whole. The summary says so, naming u1000/v1
// (the old code said nothing, as if the shred were final); once rotate --retire-old has
// destroyed u1000/v1 the copy opens nothing.
func TestShredUserAfterChown(t *testing.T) {
	l := newLCVol(t, false, false, true)
	data := []byte(strings.Repeat("chowned secret ", 3000))
	l.populate(t, "mine", 2, 1000, data)
	old := l.copyCatalog(t)
	mnt := l.mount(t)
	if err := os.Chown(filepath.Join(mnt, "mine0"), 2000, 2000); err != nil {
		t.Fatal(err)
	}
	l.unmount(t, mnt)
	if l.count(t, "u2000", 1) != 1 {
		t.Fatal("the chown did not re-wrap the key under u2000/v1")
	}

	r := coffer(t, l.env, "shred", "--state", l.state, "--user", "2000")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded uid 2000: KEK chain u2000 destroyed (u2000/v1), 1 files removed") ||
		!strings.Contains(r.stdout, "not final yet: an older catalog copy can still open them until KEK u1000/v1 is destroyed") ||
		!strings.Contains(r.stdout, "u1000/v1: the chain of a previous owner, which wrapped the key of 1 of them before a chown") {
		t.Fatalf("shred --user 2000 (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	got, err := l.readFromCopy(t, old, "/mine0")
	if err != nil {
		t.Fatalf("the copy from before the chown should read the shredded file: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the shredded file read from the old copy differs")
	}

	r = coffer(t, l.env, "rotate", "--state", l.state, "--retire-old")
	if r.code != 0 || !strings.Contains(r.stdout, "u1000/v1") {
		t.Fatalf("rotate --retire-old (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if err := l.keyFromCopy(t, old, "/mine0"); !errors.Is(err, keys.ErrKEKMissing) || !strings.Contains(err.Error(), "u1000/v1") {
		t.Fatalf("the copy's key after u1000/v1 is destroyed: %v, want ErrKEKMissing", err)
	}
}
