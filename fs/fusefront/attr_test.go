package fusefront

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

func TestChmodChownUtimens(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "x")
	chmod(t, m.path("f"), 0o4751)
	if st := m.lstat("f"); st.Mode != syscall.S_IFREG|0o4751 {
		t.Fatalf("mode %o", st.Mode)
	}
	if err := os.Chmod(m.path("f"), 0); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("f"); st.Mode != syscall.S_IFREG {
		t.Fatalf("mode 0 became %o", st.Mode) // NullPermissions: 0000 stays
	}
	os.Chmod(m.path("f"), 0o644)
	ctime0 := m.lstat("f").Ctim
	time.Sleep(2 * time.Millisecond)
	if err := os.Lchown(m.path("f"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	st := m.lstat("f")
	if st.Uid != 1234 || st.Gid != 5678 {
		t.Fatalf("owner %d:%d", st.Uid, st.Gid)
	}
	if !after(st.Ctim, ctime0) {
		t.Errorf("chown did not move ctime")
	}
	// chown clears suid, and sgid with group execute.
	chmod(t, m.path("f"), 0o6755)
	os.Lchown(m.path("f"), 1, 1)
	if st := m.lstat("f"); st.Mode&0o7777 != 0o755 {
		t.Errorf("after chown of a suid/sgid file: %o", st.Mode&0o7777)
	}
	// Directories keep sgid on chown.
	os.Mkdir(m.path("d"), 0o2775)
	chmod(t, m.path("d"), 0o2775)
	os.Lchown(m.path("d"), 1, 1)
	if st := m.lstat("d"); st.Mode&0o7777 != 0o2775 {
		t.Errorf("dir after chown: %o", st.Mode&0o7777)
	}
	// Symlinks: lchown works on the link.
	os.Symlink("f", m.path("l"))
	if err := os.Lchown(m.path("l"), 7, 8); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("l"); st.Uid != 7 || st.Gid != 8 {
		t.Errorf("lchown on a symlink: %d:%d", st.Uid, st.Gid)
	}

	// Nanosecond timestamps, UTIME_OMIT and UTIME_NOW.
	at := unix.Timespec{Sec: 1_000_000_000, Nsec: 123456789}
	mt := unix.Timespec{Sec: 1_500_000_000, Nsec: 987654321}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{at, mt}, 0); err != nil {
		t.Fatal(err)
	}
	st = m.lstat("f")
	if st.Atim != syscall.Timespec(at) || st.Mtim != syscall.Timespec(mt) {
		t.Fatalf("times %v %v", st.Atim, st.Mtim)
	}
	omit := unix.Timespec{Nsec: unix.UTIME_OMIT}
	now := unix.Timespec{Nsec: unix.UTIME_NOW}
	before := time.Now()
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{omit, now}, 0); err != nil {
		t.Fatal(err)
	}
	st = m.lstat("f")
	if st.Atim != syscall.Timespec(at) {
		t.Errorf("UTIME_OMIT changed atime to %v", st.Atim)
	}
	if time.Unix(st.Mtim.Unix()).Before(before.Add(-time.Second)) {
		t.Errorf("UTIME_NOW left mtime at %v", st.Mtim)
	}
	// Times survive a remount-free cache drop (they are in the catalog).
	in, err := m.vol.Catalog().GetInode(context.Background(), st.Ino)
	if err != nil || in.Atime != at.Nano() {
		t.Fatalf("catalog atime %d, want %d (%v)", in.Atime, at.Nano(), err)
	}
	// Negative (pre-1970) times.
	old := unix.Timespec{Sec: -86400, Nsec: 5}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{old, old}, 0); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("f"); st.Mtim != syscall.Timespec(old) {
		t.Errorf("pre-1970 mtime came back as %v", st.Mtim)
	}
	// futimens on an open file that was written: the set time sticks,
	// through close (cp -p, tar, rsync -t do this).
	fh, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString("more data")
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{at, mt}, 0); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("f"); st.Mtim != syscall.Timespec(mt) {
		t.Errorf("mtime of an open written file after utimens: %v", st.Mtim)
	}
	fh.Close()
	time.Sleep(50 * time.Millisecond)
	if st := m.lstat("f"); st.Mtim != syscall.Timespec(mt) {
		t.Errorf("mtime after close: %v, want %v", st.Mtim, mt)
	}
}

func after(a, b syscall.Timespec) bool {
	return a.Sec > b.Sec || a.Sec == b.Sec && a.Nsec > b.Nsec
}

func TestMtimeCtimeOnChanges(t *testing.T) {
	m := mountFS(t, mountConfig{})
	os.Mkdir(m.path("d"), 0o755)
	d0 := m.lstat("d")
	time.Sleep(2 * time.Millisecond)
	m.write("d/f", "1")
	d1 := m.lstat("d")
	if !after(d1.Mtim, d0.Mtim) || !after(d1.Ctim, d0.Ctim) {
		t.Errorf("creating an entry did not move the dir's mtime/ctime")
	}
	f0 := m.lstat("d/f")
	time.Sleep(2 * time.Millisecond)
	fh, _ := os.OpenFile(m.path("d/f"), os.O_WRONLY, 0)
	fh.WriteString("2")
	f1 := m.lstat("d/f")
	fh.Close()
	if !after(f1.Mtim, f0.Mtim) || !after(f1.Ctim, f0.Ctim) {
		t.Errorf("a write did not move mtime/ctime: %v -> %v", f0.Mtim, f1.Mtim)
	}
	time.Sleep(2 * time.Millisecond)
	if err := os.Truncate(m.path("d/f"), 0); err != nil {
		t.Fatal(err)
	}
	f2 := m.lstat("d/f")
	if !after(f2.Mtim, f1.Mtim) {
		t.Errorf("truncate did not move mtime")
	}
	time.Sleep(2 * time.Millisecond)
	unix.Setxattr(m.path("d/f"), "user.a", []byte("b"), 0)
	if f3 := m.lstat("d/f"); !after(f3.Ctim, f2.Ctim) || f3.Mtim != f2.Mtim {
		t.Errorf("setxattr: ctime %v->%v, mtime %v->%v", f2.Ctim, f3.Ctim, f2.Mtim, f3.Mtim)
	}
}

func TestRelatime(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "data")
	m.fsync("f") // the upload's commit must not land in the middle (it sets ctime)
	old := unix.Timespec{Sec: 1000, Nsec: 1}
	new := unix.Timespec{Sec: 2000, Nsec: 2}
	// atime older than mtime: a read refreshes it.
	unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{old, new}, 0)
	ctime := m.lstat("f").Ctim
	m.read("f")
	st := m.lstat("f")
	if st.Atim.Sec < time.Now().Unix()-60 {
		t.Errorf("read did not refresh an atime older than mtime: %v", st.Atim)
	}
	if st.Ctim != ctime {
		t.Errorf("an atime update moved ctime")
	}
	// Now atime is after mtime and ctime: further reads leave it alone.
	time.Sleep(2 * time.Millisecond)
	m.read("f")
	if st2 := m.lstat("f"); st2.Atim != st.Atim {
		t.Errorf("a second read changed atime: %v -> %v", st.Atim, st2.Atim)
	}
	// A day old: refreshed.
	dayOld := unix.NsecToTimespec(time.Now().Add(-25 * time.Hour).UnixNano())
	unix.UtimesNanoAt(unix.AT_FDCWD, m.path("f"), []unix.Timespec{dayOld, new}, 0)
	m.read("f")
	if st := m.lstat("f"); st.Atim == syscall.Timespec(dayOld) {
		t.Errorf("a read left a day-old atime")
	}
}

func TestTruncate(t *testing.T) {
	m := mountFS(t, mountConfig{})
	data := bytes.Repeat([]byte("abcdefgh"), 30000) // 240000 bytes, 4 chunks
	os.WriteFile(m.path("f"), data, 0o644)
	// Down, mid-chunk.
	if err := os.Truncate(m.path("f"), 70001); err != nil {
		t.Fatal(err)
	}
	if got := m.read("f"); got != string(data[:70001]) {
		t.Fatalf("after truncate down: %d bytes", len(got))
	}
	// Up: a hole of zeros.
	if err := os.Truncate(m.path("f"), 200000); err != nil {
		t.Fatal(err)
	}
	got := []byte(m.read("f"))
	if len(got) != 200000 || !bytes.Equal(got[:70001], data[:70001]) || !bytes.Equal(got[70001:], make([]byte, 200000-70001)) {
		t.Fatal("after truncate up: not old data then zeros")
	}
	// ftruncate on an open handle, then write past it.
	fh, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(10); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Fstat(int(fh.Fd()), &st)
	if st.Size != 10 {
		t.Fatalf("fstat after ftruncate: %d", st.Size)
	}
	fh.WriteAt([]byte("END"), 20)
	fh.Close()
	want := append(append(append([]byte{}, data[:10]...), make([]byte, 10)...), "END"...)
	if got := m.read("f"); got != string(want) {
		t.Fatalf("after ftruncate and write: %q", got)
	}
	wantErrno(t, "truncate a dir", syscall.Truncate(m.path(""), 0), syscall.EISDIR)
	wantErrno(t, "truncate negative", syscall.Truncate(m.path("f"), -1), syscall.EINVAL)
}

func TestSparseOver4GiB(t *testing.T) {
	m := mountFS(t, mountConfig{})
	fh, err := os.OpenFile(m.path("sparse"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	const far = 5<<30 + 12345 // past 2^32
	if _, err := fh.WriteAt([]byte("far away"), far); err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte("near"), 100); err != nil {
		t.Fatal(err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Fstat(int(fh.Fd()), &st)
	if st.Size != far+8 {
		t.Fatalf("size %d, want %d", st.Size, int64(far+8))
	}
	buf := make([]byte, 8)
	if _, err := fh.ReadAt(buf, far); err != nil || string(buf) != "far away" {
		t.Fatalf("read at 5 GiB: %q %v", buf, err)
	}
	hole := make([]byte, 100000)
	if _, err := fh.ReadAt(hole, 3<<30); err != nil || !bytes.Equal(hole, make([]byte, len(hole))) {
		t.Fatalf("hole at 3 GiB is not zeros (%v)", err)
	}
	// SEEK_DATA / SEEK_HOLE across the hole.
	off, err := unix.Seek(int(fh.Fd()), 1<<20, unix.SEEK_DATA)
	if err != nil || off < 1<<20 || off > far {
		t.Fatalf("SEEK_DATA from 1 MiB: %d %v", off, err)
	}
	off, err = unix.Seek(int(fh.Fd()), 0, unix.SEEK_HOLE)
	if err != nil || off <= 100 || off > 1<<30 {
		t.Fatalf("SEEK_HOLE from 0: %d %v", off, err)
	}
	_, err = unix.Seek(int(fh.Fd()), far+100, unix.SEEK_DATA)
	wantErrno(t, "SEEK_DATA past EOF", err, syscall.ENXIO)
	// It persists: after close, the catalog has the size.
	fh.Close()
	eventually(t, "size in the catalog", func() bool {
		in, err := m.vol.Catalog().GetInode(context.Background(), st.Ino)
		return err == nil && in.Size == far+8
	})
}

func TestFallocate(t *testing.T) {
	m := mountFS(t, mountConfig{})
	data := bytes.Repeat([]byte{0x5a}, 200000)
	os.WriteFile(m.path("f"), data, 0o644)
	fh, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	fd := int(fh.Fd())
	size := func() int64 {
		var st syscall.Stat_t
		syscall.Fstat(fd, &st)
		return st.Size
	}
	// Plain: extends the size.
	if err := unix.Fallocate(fd, 0, 190000, 20000); err != nil {
		t.Fatal(err)
	}
	if size() != 210000 {
		t.Fatalf("size after fallocate: %d", size())
	}
	// KEEP_SIZE: size stays.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, 500000); err != nil {
		t.Fatal(err)
	}
	if size() != 210000 {
		t.Fatalf("size after KEEP_SIZE: %d", size())
	}
	// PUNCH_HOLE: zeros in the middle, size stays.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1000, 80000); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 210000)
	if _, err := fh.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{}, data...)
	want = append(want, make([]byte, 10000)...)
	clear(want[1000:81000])
	if !bytes.Equal(buf, want) {
		t.Fatal("content after PUNCH_HOLE")
	}
	// ZERO_RANGE past the end extends.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 150000, 100000); err != nil {
		t.Fatal(err)
	}
	if size() != 250000 {
		t.Fatalf("size after ZERO_RANGE: %d", size())
	}
	buf = make([]byte, 250000)
	fh.ReadAt(buf, 0)
	want = append(want[:150000], make([]byte, 100000)...)
	if !bytes.Equal(buf, want) {
		t.Fatal("content after ZERO_RANGE")
	}
	wantErrno(t, "PUNCH_HOLE without KEEP_SIZE", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE, 0, 10), syscall.EOPNOTSUPP)
}

func TestSetgidDirAndOwners(t *testing.T) {
	m := mountFS(t, mountConfig{opt: Options{AllowOther: true}})
	if err := os.Mkdir(m.path("g"), 0o777); err != nil {
		t.Fatal(err)
	}
	os.Lchown(m.path("g"), 0, 4321)
	chmod(t, m.path("g"), 0o2777)
	m.write("g/f", "x")
	if st := m.lstat("g/f"); st.Gid != 4321 {
		t.Errorf("file in a setgid dir: gid %d", st.Gid)
	}
	os.Mkdir(m.path("g/sub"), 0o755)
	if st := m.lstat("g/sub"); st.Gid != 4321 || st.Mode&syscall.S_ISGID == 0 {
		t.Errorf("dir in a setgid dir: gid %d mode %o", st.Gid, st.Mode)
	}
	os.Symlink("x", m.path("g/l"))
	if st := m.lstat("g/l"); st.Gid != 4321 {
		t.Errorf("symlink in a setgid dir: gid %d", st.Gid)
	}
	// New files belong to the caller.
	if out, err := m.asNobody("echo hi > " + m.path("g/mine") + " && mkdir " + m.path("g/mydir")); err != nil {
		t.Fatalf("nobody creating files: %v %s", err, out)
	}
	if st := m.lstat("g/mine"); st.Uid != 65534 || st.Gid != 4321 {
		t.Errorf("nobody's file: %d:%d", st.Uid, st.Gid)
	}
	if st := m.lstat("g/mydir"); st.Uid != 65534 {
		t.Errorf("nobody's dir: uid %d", st.Uid)
	}
}

func TestPermissionsAsOtherUser(t *testing.T) {
	m := mountFS(t, mountConfig{opt: Options{AllowOther: true}})
	m.write("secret", "root only")
	os.Chmod(m.path("secret"), 0o600)
	m.write("public", "everyone")
	os.Chmod(m.path("public"), 0o644)
	// The positive control first: nobody reaches the mount and reads a
	// world-readable file.
	out, err := m.asNobody("cat " + m.path("public"))
	if err != nil || out != "everyone" {
		t.Fatalf("nobody reading a 0644 file: %v %q", err, out)
	}
	out, err = m.asNobody("cat " + m.path("secret"))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody reading a 0600 root file: %v %q", err, out)
	}
	out, err = m.asNobody("echo x >> " + m.path("public"))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody writing a 0644 root file: %v %q", err, out)
	}
	out, err = m.asNobody("chmod 777 " + m.path("public"))
	if err == nil || !strings.Contains(out, "not permitted") {
		t.Fatalf("nobody chmod on root's file: %v %q", err, out)
	}
	out, err = m.asNobody("touch " + m.path("newfile"))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody creating in a 0755 root dir: %v %q", err, out)
	}
	// suid/sgid are cleared when someone other than root writes.
	m.write("suid", "#!/bin/sh\n")
	chmod(t, m.path("suid"), 0o6777)
	if out, err := m.asNobody("echo more >> " + m.path("suid")); err != nil {
		t.Fatalf("nobody appending to a 0777 file: %v %s", err, out)
	}
	if st := m.lstat("suid"); st.Mode&0o7777 != 0o777 {
		t.Errorf("after a write by nobody: mode %o, want 0777", st.Mode&0o7777)
	}
	// ... but not when root writes.
	chmod(t, m.path("suid"), 0o4755)
	fh, _ := os.OpenFile(m.path("suid"), os.O_WRONLY|os.O_APPEND, 0)
	fh.WriteString("root\n")
	fh.Close()
	if st := m.lstat("suid"); st.Mode&0o7777 != 0o4755 {
		t.Errorf("after a write by root: mode %o, want 04755", st.Mode&0o7777)
	}
	// A chmod while the writer has the file open counts too.
	chmod(t, m.path("suid"), 0o777)
	done := make(chan error, 1)
	go func() {
		out, err := m.asNobody("exec 3>>" + m.path("suid") + "; sleep 0.5; echo late >&3")
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	chmod(t, m.path("suid"), 0o4777)
	if err := <-done; err != nil {
		t.Fatalf("nobody writing late: %v", err)
	}
	if st := m.lstat("suid"); st.Mode&0o7777 != 0o777 {
		t.Errorf("suid set while nobody held the file open survived the write: %o", st.Mode&0o7777)
	}
	// Truncation by nobody clears them too.
	chmod(t, m.path("suid"), 0o4777)
	if out, err := m.asNobody(": > " + m.path("suid")); err != nil {
		t.Fatalf("nobody truncating: %v %s", err, out)
	}
	if st := m.lstat("suid"); st.Mode&0o7777 != 0o777 || st.Size != 0 {
		t.Errorf("after truncate by nobody: mode %o size %d", st.Mode&0o7777, st.Size)
	}
}

func TestOrphansReapedAtMount(t *testing.T) {
	ctx := context.Background()
	var orphan uint64
	m := mountFS(t, mountConfig{before: func(v *volume.Volume) {
		in, err := v.Catalog().CreateFile(ctx, meta.RootIno, []byte("gone"), meta.Inode{Mode: 0o644, Ctime: 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Catalog().Unlink(ctx, meta.RootIno, []byte("gone"), 2, false); err != nil {
			t.Fatal(err)
		}
		orphan = in.Ino
	}})
	if _, err := m.vol.Catalog().GetInode(ctx, orphan); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("orphan %d still there after mount: %v", orphan, err)
	}
	if !strings.Contains(m.log.String(), "reaped inodes") {
		t.Errorf("no log line about the reaped orphans")
	}
}

func TestPerUserKEKs(t *testing.T) {
	m := mountFS(t, mountConfig{perUser: true, opt: Options{AllowOther: true}})
	ctx := context.Background()
	m.allowOthers()
	if out, err := m.asNobody("echo nobody > " + m.path("pub/n")); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	m.write("pub/r", "root")
	rec := func(rel string) meta.KeyRecord {
		k, err := m.vol.Catalog().GetKey(ctx, m.lstat(rel).Ino)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if k := rec("pub/n"); k.Chain != keys.UserChain(65534) || k.Version != 1 {
		t.Errorf("nobody's file keyed under %q v%d", k.Chain, k.Version)
	}
	if k := rec("pub/r"); k.Chain != keys.UserChain(0) {
		t.Errorf("root's file keyed under %q", k.Chain)
	}
	if cur, err := m.vol.Catalog().CurrentKEK(ctx, keys.UserChain(65534)); err != nil || cur.Version != 1 {
		t.Errorf("user KEK not recorded: %+v %v", cur, err)
	}
	// chown moves the key to the new owner's chain; the file stays readable.
	if err := os.Lchown(m.path("pub/r"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if k := rec("pub/r"); k.Chain != keys.UserChain(65534) {
		t.Errorf("after chown the key is under %q", k.Chain)
	}
	// The move is audited: older catalog copies keep the key under u0, and a later shred
	// says so (fs/keyops).
	evs, err := m.vol.Catalog().ListAudit(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, e := range evs {
		if e.Event == "key.moved" && strings.Contains(e.Detail, `"from_chain":"u0","from_version":1,"to_chain":"u65534","to_version":1`) {
			moved++
		}
	}
	if moved != 1 {
		t.Errorf("%d key.moved audit events for the chown, want 1", moved)
	}
	m.vol.Keys().WipeCache()
	if got := m.read("pub/r"); got != "root" {
		t.Errorf("after chown and a key cache wipe: %q", got)
	}
}

func TestDeriveModePerUser(t *testing.T) {
	m := mountFS(t, mountConfig{perUser: true, derive: true})
	ctx := context.Background()
	data := bytes.Repeat([]byte("derived "), 20000)
	if err := os.WriteFile(m.path("f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := m.vol.Catalog().GetKey(ctx, m.lstat("f").Ino)
	if err != nil || k.Mode != meta.KeyModeDerive || k.Chain != keys.UserChain(0) || len(k.Salt) != keys.SaltSize {
		t.Fatalf("key record %+v %v", k, err)
	}
	// chown cannot move a derived key: it stays, and the file stays readable.
	if err := os.Lchown(m.path("f"), 42, 42); err != nil {
		t.Fatal(err)
	}
	if k2, _ := m.vol.Catalog().GetKey(ctx, m.lstat("f").Ino); k2.Chain != k.Chain {
		t.Errorf("derive-mode key moved to %q", k2.Chain)
	}
	m.vol.Keys().WipeCache()
	if got := m.read("f"); got != string(data) {
		t.Fatal("read back differs")
	}
}

func TestMmapSharedWrite(t *testing.T) {
	m := mountFS(t, mountConfig{})
	// A child process: the serving process must never mmap its own mount.
	script := `
import mmap
p = "` + m.path("f") + `"
with open(p, "wb") as f: f.write(b"\0" * 100000)
with open(p, "r+b") as f:
    mm = mmap.mmap(f.fileno(), 0)
    mm[70000:70005] = b"hello"
    assert mm[70000:70005] == b"hello"
    mm.flush()
    mm.close()
`
	if out, err := exec.Command("/usr/bin/python3", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("python3 mmap: %v %s", err, out)
	}
	if got := m.read("f"); len(got) != 100000 || got[70000:70005] != "hello" {
		t.Fatal("a shared mmap write was lost")
	}
}
