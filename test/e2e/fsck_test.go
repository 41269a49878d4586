package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFsck: a clean volume is clean; a flipped bit in an object is found by --full only,
// naming the file; a deleted object is reported by the file's path and --repair drops it;
// an old unreferenced object is an orphan, which --repair deletes, while a young one is
// not; the exit status is 0 only when clean.
func TestFsck(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote, withLogErrorsAllowed()) // --full logs the failed authentication
	a, b, c := v.P(uniqueName()), v.P(uniqueName()), v.P(uniqueName())
	for _, p := range []string{a, b, c} {
		writeFile(t, p, markedData(50000), true)
	}
	inode := func(p string) uint64 {
		st, err := os.Stat(p)
		must(t, "stat "+p, err)
		return st.Sys().(*syscall.Stat_t).Ino
	}
	ib, ic := inode(b), inode(c)
	if !v.Unmount() {
		t.FailNow()
	}
	fsck := func(args ...string) result {
		return v.run(2*time.Minute, append(append([]string{"fsck", "--state", v.State}, v.secretArgs()...), args...)...)
	}
	if r := fsck("--full"); r.code != 0 || !strings.Contains(r.stdout, "\nclean\n") {
		t.Fatalf("fsck --full of a clean volume: %s", r)
	}

	// A flipped bit: same size, so only --full sees it.
	objB := v.objectPath(v.objectsOf(t, ib)[0])
	data, err := os.ReadFile(objB)
	must(t, "read object", err)
	data[len(data)/2] ^= 0x10
	must(t, "flip a bit", os.WriteFile(objB, data, 0o600))
	if r := fsck(); r.code != 0 {
		t.Errorf("fsck without --full saw a flipped bit (it reads no content): %s", r)
	}
	r := fsck("--full")
	if r.code != 1 || !strings.Contains(r.stdout, "corrupt: /"+filepath.Base(b)) {
		t.Errorf("fsck --full with a flipped bit in %s's object: %s", filepath.Base(b), r)
	}
	data[len(data)/2] ^= 0x10
	must(t, "unflip", os.WriteFile(objB, data, 0o600))

	// A deleted object, reported by path, then repaired.
	objC := v.objectsOf(t, ic)[0]
	must(t, "delete object", os.Remove(v.objectPath(objC)))
	r = fsck()
	if r.code != 1 || !strings.Contains(r.stdout, "missing: /"+filepath.Base(c)) || !strings.Contains(r.stdout, objC) {
		t.Errorf("fsck with %s's object deleted: %s", filepath.Base(c), r)
	}

	// Orphans: an old copy nothing names is one; a fresh one is not (yet).
	old := filepath.Join(v.RemoteDir, "c", "zz", "zzorphanold2222222222222222")
	young := filepath.Join(v.RemoteDir, "c", "zz", "zzorphanyoung22222222222222")
	must(t, "mkdir", os.MkdirAll(filepath.Dir(old), 0o700))
	must(t, "orphan", os.WriteFile(old, data, 0o600))
	must(t, "orphan", os.WriteFile(young, data, 0o600))
	long := time.Now().Add(-8 * 24 * time.Hour)
	must(t, "age the orphan", os.Chtimes(old, long, long))
	r = fsck()
	if r.code != 1 || !strings.Contains(r.stdout, "orphan: c/zz/zzorphanold") || strings.Contains(r.stdout, "zzorphanyoung") ||
		!strings.Contains(r.stdout, "1 unreferenced objects are younger") {
		t.Errorf("fsck with an old and a young unreferenced object: %s", r)
	}
	r = fsck("--repair")
	if r.code != 0 || !strings.Contains(r.stdout, "queued for deletion") || !strings.Contains(r.stdout, "dropped 1 chunks") {
		t.Errorf("fsck --repair: %s", r)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the repaired orphan is still on the remote: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("fsck --repair deleted an object too young to be an orphan: %v", err)
	}
	must(t, "remove the young one", os.Remove(young))
	if r := fsck("--full"); r.code != 0 || !strings.Contains(r.stdout, "\nclean\n") {
		t.Errorf("fsck --full after the repair: %s", r)
	}
	v.Mount()
	if got, err := os.ReadFile(c); err != nil || len(got) != 50000 || !isZero(got) {
		t.Errorf("the repaired file (its only object was lost) reads %d bytes, zero %v, err %v; want 50000 zero bytes", len(got), isZero(got), err)
	}

	// On the mounted volume the daemon runs it, reading through its own data path.
	if r := fsck("--full"); r.code != 0 || !strings.Contains(r.stdout, "\nclean\n") || !strings.Contains(r.stdout, "read and authenticated 150000 bytes") {
		t.Errorf("fsck --full of the mounted volume: %s", r)
	}
	must(t, "delete object", os.Remove(v.objectPath(v.objectsOf(t, inode(a))[0])))
	if r := fsck(); r.code != 1 || !strings.Contains(r.stdout, "missing: /"+filepath.Base(a)) {
		t.Errorf("fsck of the mounted volume with %s's object deleted: %s", filepath.Base(a), r)
	}
}
