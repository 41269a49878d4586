package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/hsm"
)

// Key operations on a live mount: coffer rotate and coffer shred find the daemon serving
// --state and have it do the work (fs/daemon/keyops.go).

// catalog opens the volume's catalog read-only, alongside the daemon.
func (v *Volume) catalog(t *testing.T) *meta.Catalog {
	t.Helper()
	cat, err := meta.OpenReadOnly(context.Background(), v.State)
	if err != nil {
		t.Fatalf("open catalog read-only: %v", err)
	}
	t.Cleanup(func() { cat.Close() })
	return cat
}

// remoteSums maps every object on the remote to its SHA-256, except the catalog's replica
// (r/...), which every catalog change adds to.
func (v *Volume) remoteSums(t *testing.T) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(v.RemoteDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(b)
		rel, _ := filepath.Rel(v.RemoteDir, p)
		if strings.HasPrefix(rel, "r/") {
			return nil
		}
		sums[rel] = hex.EncodeToString(s[:])
		return nil
	})
	must(t, "walk remote", err)
	return sums
}

func fsyncPath(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, "open "+p, err)
	must(t, "fsync "+p, f.Sync())
	must(t, "close", f.Close())
}

// keyOf returns the inode and key record of the file at volume path rel.
func keyOf(t *testing.T, cat *meta.Catalog, rel string) (meta.Inode, meta.KeyRecord) {
	t.Helper()
	ctx := context.Background()
	in, err := keyops.ResolvePath(ctx, cat, rel)
	must(t, "resolve "+rel, err)
	k, err := cat.GetKey(ctx, in.Ino)
	must(t, "key record of "+rel, err)
	return in, k
}

func kekStates(t *testing.T, cat *meta.Catalog) string {
	t.Helper()
	keks, err := cat.ListKEKs(context.Background())
	must(t, "list KEKs", err)
	var s []string
	for _, k := range keks {
		s = append(s, fmt.Sprintf("v%d:%s", k.Version, k.State))
	}
	return strings.Join(s, " ")
}

// TestLiveRotate: coffer rotate on a mounted volume is done by the daemon while files are
// read (no error, and no remote object changes: same listing, same checksums) and then,
// with --retire-old, while files are written and created: every file reads back, files made
// during and after the rotation are keyed under the new version, the old versions are
// destroyed, and a file held open across the rotation still reads after lock and unlock
// (its key reopens from its re-wrapped record).
func TestLiveRotate(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote)
	files := map[string][]byte{}
	for i := range 40 {
		n := []int{0, 1, 5000, 70000, 5 << 20}[i%5]
		p := v.P(fmt.Sprintf("%s-%d", uniqueName(), i))
		files[p] = markedData(n)
		mustWrite(t, p, files[p], 0o644)
		fsyncPath(t, p)
	}
	held := v.P(uniqueName())
	files[held] = markedData(100000)
	mustWrite(t, held, files[held], 0o644)
	fsyncPath(t, held)
	hf, err := os.Open(held)
	must(t, "open held file", err)
	defer hf.Close()

	readAll := func(when string) {
		t.Helper()
		for p, want := range files {
			sameBytes(t, when+": "+filepath.Base(p), mustRead(t, p), want)
		}
	}
	before := v.remoteSums(t)

	// Phase 1: readers only.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	var readErr atomic.Value
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for p, want := range files {
					got, err := os.ReadFile(p)
					if err != nil || !bytes.Equal(got, want) {
						readErr.Store(fmt.Sprintf("%s: err %v, %d bytes (want %d)", filepath.Base(p), err, len(got), len(want)))
						return
					}
					reads.Add(1)
					break
				}
			}
		}()
	}
	r := v.run(time.Minute, "rotate", "--state", v.State)
	close(stop)
	wg.Wait()
	if r.code != 0 || !strings.Contains(r.stdout, "rotated: current KEK volume/v2; 41 key records re-wrapped") {
		t.Fatalf("live rotate: %s", r)
	}
	if e := readErr.Load(); e != nil {
		t.Fatalf("a read during the live rotation failed: %v", e)
	}
	if reads.Load() == 0 {
		t.Fatal("no read ran during the rotation")
	}
	after := v.remoteSums(t)
	if len(after) != len(before) {
		t.Fatalf("the rotation changed the remote listing: %d objects before, %d after", len(before), len(after))
	}
	for name, sum := range before {
		if after[name] != sum {
			t.Fatalf("the rotation changed remote object %s (%s -> %q)", name, sum, after[name])
		}
	}
	readAll("after the live rotation")

	// Phase 2: writers and creators during rotate --retire-old.
	stop = make(chan struct{})
	var mu sync.Mutex
	var werr error
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := v.P(fmt.Sprintf("%s-w%d-%d", uniqueName(), w, i))
				data := markedData(3000 + i)
				err := os.WriteFile(p, data, 0o644)
				mu.Lock()
				if err != nil && werr == nil {
					werr = err
				}
				if err == nil {
					files[p] = data
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	r = v.run(time.Minute, "rotate", "--state", v.State, "--retire-old")
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatalf("a write during the live rotation failed: %v", werr)
	}
	if r.code != 0 || !strings.Contains(r.stdout, "current KEK volume/v3") || !strings.Contains(r.stdout, "destroyed volume/v1, volume/v2") {
		t.Fatalf("live rotate --retire-old: %s", r)
	}
	newFile := v.P(uniqueName())
	files[newFile] = markedData(1234)
	mustWrite(t, newFile, files[newFile], 0o644)

	cat := v.catalog(t)
	if got := kekStates(t, cat); got != "v1:destroyed v2:destroyed v3:active" {
		t.Fatalf("KEK versions after rotate --retire-old: %s", got)
	}
	for p := range files {
		if _, k := keyOf(t, cat, strings.TrimPrefix(p, v.Mnt)); k.Version != 3 {
			t.Fatalf("%s is keyed under KEK v%d after the rotation, want v3", filepath.Base(p), k.Version)
		}
	}
	readAll("after rotate --retire-old")

	// Every key is wiped and reopened from its re-wrapped record, the held file's too.
	if r := v.run(time.Minute, "lock", v.Mnt); r.code != 0 {
		t.Fatalf("%s", r)
	}
	if r := v.run(time.Minute, "unlock", "--hsm-pin-file", v.PINFile, v.Mnt); r.code != 0 {
		t.Fatalf("%s", r)
	}
	got := make([]byte, len(files[held]))
	_, err = hf.ReadAt(got, 0)
	must(t, "read the file held open across the rotation, after lock and unlock", err)
	sameBytes(t, "held file", got, files[held])
	readAll("after lock and unlock")

	audit := v.run(time.Minute, "audit", "--state", v.State)
	for _, e := range []string{"rotate.start", "rotate.end", "kek.destroy"} {
		if !strings.Contains(audit.stdout, e) {
			t.Fatalf("audit log lacks %s after the live rotations:\n%s", e, audit.stdout)
		}
	}
}

// TestLiveShredOpenHardLinked: coffer shred of a path under the mountpoint, on a file with
// two hard links that a process holds open: the descriptor's next read, write, fstat and
// fsync fail with EKEYREVOKED (also for pages the kernel had cached), close succeeds, both
// names are gone at once (the kernel's cached names dropped), the inode, its key record and
// its objects are gone, the wrapped key appears nowhere in the catalog files, and other files
// are untouched.
func TestLiveShredOpenHardLinked(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote)
	dir := v.P(uniqueName())
	must(t, "mkdir", os.Mkdir(dir, 0o755))
	a, link, other := v.P(uniqueName()), filepath.Join(dir, uniqueName()), v.P(uniqueName())
	secret, keep := markedData(300000), markedData(5000)
	mustWrite(t, a, secret, 0o644)
	must(t, "link", os.Link(a, link))
	mustWrite(t, other, keep, 0o644)
	fsyncPath(t, a)
	fsyncPath(t, other)

	cat := v.catalog(t)
	in, key := keyOf(t, cat, strings.TrimPrefix(a, v.Mnt))
	chunks, err := cat.Chunks(context.Background(), in.Ino, 0, -1)
	must(t, "chunks", err)
	objsBefore := len(v.remoteContentObjects())

	fd, err := unix.Open(a, unix.O_RDWR, 0)
	must(t, "open", err)
	sameBytes(t, "before the shred", preadN(t, fd, 0, len(secret)), secret) // the kernel caches its pages
	lstat(t, link)                                                          // and both names

	r := v.run(time.Minute, "shred", "--state", v.State, a)
	if r.code != 0 || !strings.Contains(r.stdout, "shredded 1 files (2 entries removed)") {
		t.Fatalf("live shred: %s", r)
	}
	buf := make([]byte, 4096)
	_, err = unix.Pread(fd, buf, 0)
	errIs(t, "pread of the shredded file", err, unix.EKEYREVOKED)
	_, err = unix.Pwrite(fd, []byte("x"), 10)
	errIs(t, "pwrite of the shredded file", err, unix.EKEYREVOKED)
	var st unix.Stat_t
	errIs(t, "fstat of the shredded file", unix.Fstat(fd, &st), unix.EKEYREVOKED)
	errIs(t, "fsync of the shredded file", unix.Fsync(fd), unix.EKEYREVOKED)
	must(t, "close the shredded file", unix.Close(fd))
	for _, p := range []string{a, link} {
		_, err := os.Lstat(p)
		errIs(t, "lstat of a shredded name", err, unix.ENOENT)
	}
	sameBytes(t, "other file", mustRead(t, other), keep)

	if _, err := cat.GetInode(context.Background(), in.Ino); err == nil {
		t.Fatal("the shredded inode is still in the catalog")
	}
	if _, err := cat.GetKey(context.Background(), in.Ino); err == nil {
		t.Fatal("the shredded file's key record is still in the catalog")
	}
	for _, f := range []string{meta.FileName, meta.FileName + "-wal"} {
		b, err := os.ReadFile(filepath.Join(v.State, f))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if bytes.Contains(b, key.Wrapped) {
			t.Fatalf("%s still holds the shredded file's wrapped key", f)
		}
	}
	if got := len(v.remoteContentObjects()); got != objsBefore-len(chunks) {
		t.Fatalf("remote holds %d content objects after the shred, want %d (%d before, the file had %d)", got, objsBefore-len(chunks), objsBefore, len(chunks))
	}
	audit := v.run(time.Minute, "audit", "--state", v.State)
	if !strings.Contains(audit.stdout, "key.shred") || !strings.Contains(audit.stdout, "uid:0") {
		t.Fatalf("audit log lacks the shred:\n%s", audit.stdout)
	}
	// Its name can be used again, for a new file with a new key.
	mustWrite(t, a, keep, 0o600)
	sameBytes(t, "new file under the shredded name", mustRead(t, a), keep)
}

// TestLiveShredNowAndLocked: shred --now on a mounted volume retires the old version (other
// files read back, also after their keys are reopened); a locked mount refuses rotate and
// shred with a clear error, and works again after unlock.
func TestLiveShredNowAndLocked(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote)
	a, b := v.P(uniqueName()), v.P(uniqueName())
	da, db := markedData(10000), markedData(20000)
	mustWrite(t, a, da, 0o644)
	mustWrite(t, b, db, 0o644)

	r := v.run(time.Minute, "shred", "--state", v.State, "--now", a)
	if r.code != 0 || !strings.Contains(r.stdout, "final: 1 other key records re-wrapped to volume/v2 and volume/v1 destroyed") {
		t.Fatalf("live shred --now: %s", r)
	}
	if got := kekStates(t, v.catalog(t)); got != "v1:destroyed v2:active" {
		t.Fatalf("KEK versions after shred --now: %s", got)
	}
	sameBytes(t, "other file", mustRead(t, b), db)

	if r := v.run(time.Minute, "lock", v.Mnt); r.code != 0 {
		t.Fatalf("%s", r)
	}
	for _, args := range [][]string{{"rotate", "--state", v.State}, {"shred", "--state", v.State, b}} {
		r := v.run(time.Minute, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "the mount is locked: coffer unlock first") {
			t.Fatalf("%s on a locked mount: %s", args[0], r)
		}
	}
	if r := v.run(time.Minute, "unlock", "--hsm-pin-file", v.PINFile, v.Mnt); r.code != 0 {
		t.Fatalf("%s", r)
	}
	sameBytes(t, "other file after unlock", mustRead(t, b), db)
	if r := v.run(time.Minute, "rotate", "--state", v.State, "--retire-old"); r.code != 0 || !strings.Contains(r.stdout, "destroyed volume/v2") {
		t.Fatalf("rotate after unlock: %s", r)
	}
	// A missing path changes nothing and says which.
	r = v.run(time.Minute, "shred", "--state", v.State, b, "/"+uniqueName())
	if r.code != 1 || !strings.Contains(r.stderr, "not found in the volume") {
		t.Fatalf("shred of a missing path: %s", r)
	}
	sameBytes(t, "file named with a missing one", mustRead(t, b), db)
}

// TestLiveShredUserAfterChown: on a per-user volume, a file root wrote and then gave to uid
// 2000 with chown (the daemon re-wraps its key under u2000 and audits key.moved) is shredded
// live with uid 2000's chain. A catalog copy from before the chown still holds the key under
// u0/v1, which lives on (root's other files): the copy opens it with the PIN. The daemon's
// summary says so, naming u0/v1 (the old code said nothing, as if final); once rotate
// --retire-old destroys u0/v1, the copy's key no longer opens.
func TestLiveShredUserAfterChown(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote, withInitArgs("--kek-per-user"))
	a, b := v.P(uniqueName()), v.P(uniqueName())
	mustWrite(t, a, markedData(100000), 0o644)
	mustWrite(t, b, markedData(1000), 0o644)
	rel := strings.TrimPrefix(a, v.Mnt)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	copyState := filepath.Join(v.Dir, "catalog-copy")
	must(t, "mkdir", os.Mkdir(copyState, 0o700))
	cb, err := os.ReadFile(v.catalogPath())
	must(t, "read the catalog", err)
	must(t, "copy the catalog", os.WriteFile(filepath.Join(copyState, meta.FileName), cb, 0o600))
	v.Mount()

	must(t, "chown", os.Chown(a, 2000, 2000))
	if _, k := keyOf(t, v.catalog(t), rel); k.Chain != "u2000" {
		t.Fatalf("after the chown the key is under %q", k.Chain)
	}
	r := v.run(time.Minute, "shred", "--state", v.State, "--user", "2000")
	if r.code != 0 || !strings.Contains(r.stdout, "shredded uid 2000: KEK chain u2000 destroyed (u2000/v1), 1 files removed") ||
		!strings.Contains(r.stdout, "not final yet: an older catalog copy can still open them until KEK u0/v1 is destroyed") ||
		!strings.Contains(r.stdout, "u0/v1: the chain of a previous owner, which wrapped the key of 1 of them before a chown") {
		t.Fatalf("live shred --user 2000: %s", r)
	}

	// The copy's key record, opened with the PIN and nothing else of the copy.
	ctx := context.Background()
	old, err := meta.OpenReadOnly(ctx, copyState)
	must(t, "open the copy", err)
	defer old.Close()
	in, rec := keyOf(t, old, rel)
	mv, err := old.Volume(ctx)
	must(t, "the copy's volume", err)
	openOld := func() error {
		p, err := hsm.New(hsm.Config{Module: mv.HSMModule, Token: mv.HSMToken, PIN: v.Token.PIN, Volume: mv.ID})
		must(t, "log in to the token", err)
		defer p.Wipe()
		dek, err := keys.OpenFileKey(ctx, p, volume.RecordOf(rec), keys.FileIdentity{Volume: mv.ID, File: in.FileID})
		if err == nil {
			dek.Wipe()
		}
		return err
	}
	if rec.Chain != "u0" || rec.Version != 1 {
		t.Fatalf("the copy's record is under %s/v%d", rec.Chain, rec.Version)
	}
	must(t, "open the shredded file's key from the copy (u0/v1 lives on)", openOld())
	if r := v.run(time.Minute, "rotate", "--state", v.State, "--retire-old"); r.code != 0 || !strings.Contains(r.stdout, "u0/v1") {
		t.Fatalf("live rotate --retire-old: %s", r)
	}
	if err := openOld(); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("the copy's key after u0/v1 is destroyed: %v, want ErrKEKMissing", err)
	}
}

// populateOffline adds n empty files with real key records to the unmounted volume, fast
// (one catalog transaction per 500), and mounts it again.
func (v *Volume) populateOffline(t *testing.T, n int) {
	t.Helper()
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	ctx := context.Background()
	vol, err := volume.Open(ctx, v.State, v.Token.PIN, volume.OpenOptions{})
	must(t, "open volume", err)
	for done := 0; done < n; {
		k := min(500, n-done)
		type file struct {
			id  [16]byte
			rec meta.KeyRecord
		}
		fs := make([]file, k)
		for i := range fs {
			rand.Read(fs[i].id[:])
			rec, dek, err := keys.NewFileKey(ctx, vol.Provider(), keys.ModeWrap, vol.KEK(), keys.FileIdentity{Volume: vol.ID, File: fs[i].id})
			must(t, "new file key", err)
			dek.Wipe()
			fs[i].rec = volume.CatalogRecord(rec)
		}
		err := vol.Catalog().Update(ctx, func(tx *meta.Tx) error {
			for i := range fs {
				_, err := tx.CreateFile(meta.RootIno, []byte(fmt.Sprintf("bulk-%07d", done+i)),
					meta.Inode{Mode: syscall.S_IFREG | 0o644, Ctime: time.Now().UnixNano(), FileID: fs[i].id}, &fs[i].rec)
				if err != nil {
					return err
				}
			}
			return nil
		})
		must(t, "create files", err)
		done += k
	}
	must(t, "close volume", vol.Close(ctx))
	v.Mount()
}

// TestLiveRotateKilled: the rotate command killed while the daemon re-wraps stops the
// rotation (the client went away) with part of the records moved; a rerun finishes it.
func TestLiveRotateKilled(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote)
	const rows = 20000
	v.populateOffline(t, rows)
	f := v.P(uniqueName())
	data := markedData(4000)
	mustWrite(t, f, data, 0o644)

	cat := v.catalog(t)
	ctx := context.Background()
	cmd, _, _ := v.command("rotate", "--state", v.State)
	must(t, "start rotate", cmd.Start())
	closeFiles(cmd)
	var moved int64
	deadline := time.Now().Add(30 * time.Second)
	for moved == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		moved, _ = cat.CountKeysUsing(ctx, "", 2)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if moved == 0 {
		t.Fatal("the rotation never started re-wrapping")
	}
	// The daemon stops at its next batch: the count stops moving short of every row.
	var last int64 = -1
	for range 100 {
		n, err := cat.CountKeysUsing(ctx, "", 2)
		must(t, "count", err)
		if n == last {
			break
		}
		last = n
		time.Sleep(100 * time.Millisecond)
	}
	if last >= rows+1 {
		t.Fatalf("the rotation re-wrapped all %d records although its command was killed early (%d moved when killed)", last, moved)
	}
	ev, ok, err := cat.LastAuditEvent(ctx, "rotate.start", "rotate.end")
	must(t, "audit", err)
	if !ok || ev.Event != "rotate.start" {
		t.Fatalf("after the kill the last rotation event is %q, want an unfinished rotate.start", ev.Event)
	}
	sameBytes(t, "file during the interrupted rotation", mustRead(t, f), data)

	r := v.run(2*time.Minute, "rotate", "--state", v.State)
	if r.code != 0 || !strings.Contains(r.stdout, "finished an interrupted rotation: current KEK volume/v2") {
		t.Fatalf("rerun of the killed rotation: %s", r)
	}
	if n, _ := cat.CountKeysUsing(ctx, "", 1); n != 0 {
		t.Fatalf("%d records still under v1 after the rerun", n)
	}
	if n, _ := cat.CountKeysUsing(ctx, "", 2); n != rows+1 {
		t.Fatalf("%d records under v2 after the rerun, want %d", n, rows+1)
	}
	sameBytes(t, "file after the rerun", mustRead(t, f), data)
}
