package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPOSIX exercises every POSIX operation through the mount, with its error cases, on
// both backends. Where Linux semantics are subtle (fallocate, suid clearing) the same
// operations run on a plain ext4 directory and the results must match.
func TestPOSIX(t *testing.T) {
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		v := newVolume(t, b, withAllowOther())
		for _, c := range []struct {
			name string
			fn   func(t *testing.T, v *Volume, dir string)
		}{
			{"open-flags", testOpenFlags},
			{"directories", testDirectories},
			{"readdir", testReaddir},
			{"rename", testRename},
			{"hardlinks", testHardLinks},
			{"symlinks", testSymlinks},
			{"xattrs", testXattrs},
			{"fallocate", testFallocate},
			{"seek-data-hole", testSeekDataHole},
			{"truncate", testTruncate},
			{"unlinked-open", testUnlinkedOpen},
			{"names", testNames},
			{"times", testTimes},
			{"chmod-chown", testChmodChown},
			{"other-uid", testOtherUID},
			{"fifo", testFIFO},
			{"statfs", testStatfs},
			{"copy-file-range", testCopyFileRange},
			{"fsync", testFsync},
			{"exdev", testEXDEV},
		} {
			t.Run(c.name, func(t *testing.T) {
				dir := v.P(c.name)
				must(t, "mkdir", os.Mkdir(dir, 0o755))
				c.fn(t, v, dir)
			})
		}
	})
}

func testOpenFlags(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	data := markedData(10000)
	mustWrite(t, f, data, 0o644)
	sameBytes(t, "read back", mustRead(t, f), data)

	_, err := unix.Open(f, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	errIs(t, "O_CREAT|O_EXCL on an existing file", err, unix.EEXIST)
	_, err = unix.Open(filepath.Join(dir, "missing"), unix.O_RDONLY, 0)
	errIs(t, "open a missing file", err, unix.ENOENT)
	_, err = unix.Open(filepath.Join(dir, "nodir", "x"), unix.O_CREAT|unix.O_WRONLY, 0o644)
	errIs(t, "O_CREAT in a missing directory", err, unix.ENOENT)
	_, err = unix.Open(filepath.Join(f, "x"), unix.O_RDONLY, 0)
	errIs(t, "open through a file", err, unix.ENOTDIR)
	_, err = unix.Open(dir, unix.O_WRONLY, 0)
	errIs(t, "open a directory for writing", err, unix.EISDIR)
	_, err = unix.Open(f, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	errIs(t, "O_DIRECTORY on a file", err, unix.ENOTDIR)
	dangling := filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink("nowhere", dangling))
	_, err = unix.Open(dangling, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	errIs(t, "O_EXCL through a dangling symlink", err, unix.EEXIST)

	// O_APPEND: every write lands at the end, whatever the offset.
	fd, err := unix.Open(f, unix.O_WRONLY|unix.O_APPEND, 0)
	must(t, "open O_APPEND", err)
	fd2, err := unix.Open(f, unix.O_WRONLY|unix.O_APPEND, 0)
	must(t, "open O_APPEND", err)
	_, err = unix.Seek(fd, 0, 0)
	must(t, "lseek", err)
	a, b := []byte(markedText("append-1")), []byte(markedText("append-2"))
	_, err = unix.Write(fd, a)
	must(t, "append 1", err)
	_, err = unix.Write(fd2, b)
	must(t, "append 2", err)
	_, err = unix.Write(fd, a)
	must(t, "append 3", err)
	unix.Close(fd)
	unix.Close(fd2)
	want := append(append(append(append([]byte(nil), data...), a...), b...), a...)
	sameBytes(t, "after O_APPEND writes", mustRead(t, f), want)

	// O_TRUNC empties the file.
	st0 := lstat(t, f)
	time.Sleep(10 * time.Millisecond)
	fd, err = unix.Open(f, unix.O_WRONLY|unix.O_TRUNC, 0)
	must(t, "open O_TRUNC", err)
	var st unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &st))
	unix.Close(fd)
	if st.Size != 0 {
		t.Errorf("size after O_TRUNC: %d, want 0", st.Size)
	}
	if st.Mtim.Nano() <= st0.Mtim.Nano() {
		t.Errorf("O_TRUNC did not update mtime (%d -> %d)", st0.Mtim.Nano(), st.Mtim.Nano())
	}
	if got := mustRead(t, f); len(got) != 0 {
		t.Errorf("read after O_TRUNC: %d bytes, want 0", len(got))
	}
	// Writing after truncation must not resurrect old bytes.
	fd, err = unix.Open(f, unix.O_RDWR, 0)
	must(t, "open", err)
	_, err = unix.Pwrite(fd, []byte("xy"), 5000)
	must(t, "pwrite", err)
	got := preadN(t, fd, 0, 6000)
	unix.Close(fd)
	if len(got) != 5002 || !isZero(got[:5000]) || string(got[5000:]) != "xy" {
		t.Errorf("after truncate to 0 and a write at 5000: %d bytes, zero prefix %v", len(got), isZero(got[:min(5000, len(got))]))
	}
}

func testDirectories(t *testing.T, v *Volume, dir string) {
	d := filepath.Join(dir, uniqueName())
	errIs(t, "mkdir", unix.Mkdir(d, 0o755), 0)
	errIs(t, "mkdir existing", unix.Mkdir(d, 0o755), unix.EEXIST)
	f := filepath.Join(dir, uniqueName())
	mustWrite(t, f, []byte(markedText("file")), 0o644)
	errIs(t, "mkdir over a file", unix.Mkdir(f, 0o755), unix.EEXIST)
	errIs(t, "mkdir under a file", unix.Mkdir(filepath.Join(f, "x"), 0o755), unix.ENOTDIR)
	errIs(t, "mkdir in a missing dir", unix.Mkdir(filepath.Join(dir, "missing", "x"), 0o755), unix.ENOENT)

	st := lstat(t, d)
	if st.Nlink != 2 {
		t.Errorf("new directory nlink %d, want 2", st.Nlink)
	}
	if st.Mode&0o7777 != 0o755&^umask() {
		t.Errorf("new directory mode %#o, want %#o", st.Mode&0o7777, 0o755&^umask())
	}
	sub1, sub2 := filepath.Join(d, uniqueName()), filepath.Join(d, uniqueName())
	must(t, "mkdir sub1", unix.Mkdir(sub1, 0o700))
	must(t, "mkdir sub2", unix.Mkdir(sub2, 0o700))
	mustWrite(t, filepath.Join(d, uniqueName()), []byte(markedText("in dir")), 0o600)
	if st := lstat(t, d); st.Nlink != 4 {
		t.Errorf("directory with 2 subdirectories: nlink %d, want 4", st.Nlink)
	}
	errIs(t, "rmdir a non-empty directory", unix.Rmdir(d), unix.ENOTEMPTY)
	errIs(t, "rmdir a file", unix.Rmdir(f), unix.ENOTDIR)
	errIs(t, "rmdir a missing directory", unix.Rmdir(filepath.Join(dir, "missing")), unix.ENOENT)
	errIs(t, "rmdir dir/.", unix.Rmdir(sub1+"/."), unix.EINVAL)
	errIs(t, "unlink a directory", unix.Unlink(sub1), unix.EISDIR)
	errIs(t, "unlink a missing file", unix.Unlink(filepath.Join(dir, "missing")), unix.ENOENT)
	errIs(t, "rmdir sub1", unix.Rmdir(sub1), 0)
	if st := lstat(t, d); st.Nlink != 3 {
		t.Errorf("after rmdir of a subdirectory: nlink %d, want 3", st.Nlink)
	}
	errIs(t, "stat removed dir", unix.Lstat(sub1, &st), unix.ENOENT)
	// The mode given to mkdir is kept, including 0 and the sticky bit.
	for _, mode := range []uint32{0, 0o1777, 0o2755} {
		p := filepath.Join(dir, uniqueName())
		must(t, "mkdir", unix.Mkdir(p, mode))
		must(t, "chmod", unix.Chmod(p, mode)) // chmod: not subject to umask
		if st := lstat(t, p); st.Mode&0o7777 != mode {
			t.Errorf("directory chmod %#o: mode %#o", mode, st.Mode&0o7777)
		}
	}
}

func umask() uint32 {
	m := unix.Umask(0)
	unix.Umask(m)
	return uint32(m)
}

// testReaddir lists a directory of 600 entries through a small getdents buffer (many calls
// with offsets) and checks every entry appears exactly once with the right type.
func testReaddir(t *testing.T, v *Volume, dir string) {
	want := map[string]uint8{}
	for i := 0; i < 600; i++ {
		n := uniqueName() + fmt.Sprint(i)
		p := filepath.Join(dir, n)
		switch i % 10 {
		case 0:
			must(t, "mkdir", unix.Mkdir(p, 0o755))
			want[n] = unix.DT_DIR
		case 1:
			must(t, "symlink", unix.Symlink("target", p))
			want[n] = unix.DT_LNK
		default:
			fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL, 0o644)
			must(t, "create", err)
			unix.Close(fd)
			want[n] = unix.DT_REG
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, "open dir", err)
	defer unix.Close(fd)
	got := map[string]uint8{}
	buf := make([]byte, 512)
	calls := 0
	for {
		n, err := unix.Getdents(fd, buf)
		must(t, "getdents", err)
		if n == 0 {
			break
		}
		calls++
		for off := 0; off < n; {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			typ := buf[off+18]
			name := buf[off+19 : off+reclen]
			name = name[:bytes.IndexByte(name, 0)]
			s := string(name)
			if s != "." && s != ".." {
				if _, dup := got[s]; dup {
					t.Errorf("readdir returned %q twice", s)
				}
				got[s] = typ
			}
			off += reclen
		}
	}
	if calls < 10 {
		t.Errorf("only %d getdents calls for 600 entries with a 512-byte buffer", calls)
	}
	if len(got) != len(want) {
		t.Errorf("readdir: %d entries, want %d", len(got), len(want))
	}
	for n, typ := range want {
		if g, ok := got[n]; !ok {
			t.Errorf("readdir misses %s", n)
		} else if g != typ && g != unix.DT_UNKNOWN {
			t.Errorf("readdir %s: d_type %d, want %d", n, g, typ)
		}
	}
	// Rewinding gives the same listing again.
	_, err = unix.Seek(fd, 0, 0)
	must(t, "rewinddir", err)
	n, err := unix.Getdents(fd, buf)
	must(t, "getdents after rewind", err)
	if n == 0 {
		t.Error("getdents after rewinddir returned nothing")
	}
	ents, err := os.ReadDir(dir)
	must(t, "ReadDir", err)
	if len(ents) != len(want) {
		t.Errorf("os.ReadDir: %d entries, want %d", len(ents), len(want))
	}
}

func testRename(t *testing.T, v *Volume, dir string) {
	p := func() string { return filepath.Join(dir, uniqueName()) }
	write := func(path, what string) []byte {
		b := []byte(markedText(what))
		mustWrite(t, path, b, 0o644)
		return b
	}
	a, b := p(), p()
	da := write(a, "a")
	errIs(t, "rename to a new name", unix.Rename(a, b), 0)
	errIs(t, "stat old name", unix.Access(a, unix.F_OK), unix.ENOENT)
	sameBytes(t, "renamed file", mustRead(t, b), da)
	errIs(t, "rename a missing file", unix.Rename(a, b), unix.ENOENT)
	errIs(t, "rename onto itself", unix.Rename(b, b), 0)
	sameBytes(t, "after rename onto itself", mustRead(t, b), da)

	// Replace an existing file while it is open: the open file keeps its old content.
	c := p()
	dc := write(c, "c")
	fd, err := unix.Open(c, unix.O_RDONLY, 0)
	must(t, "open c", err)
	errIs(t, "rename over an existing file", unix.Rename(b, c), 0)
	sameBytes(t, "replaced name", mustRead(t, c), da)
	sameBytes(t, "open file replaced by rename", preadN(t, fd, 0, 4096), dc)
	var st unix.Stat_t
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Nlink != 0 {
		t.Errorf("file replaced by rename: nlink %d, want 0", st.Nlink)
	}
	unix.Close(fd)

	d1, d2, d3 := p(), p(), p()
	must(t, "mkdir", unix.Mkdir(d1, 0o755))
	must(t, "mkdir", unix.Mkdir(d2, 0o755))
	must(t, "mkdir", unix.Mkdir(d3, 0o755))
	write(filepath.Join(d3, uniqueName()), "in d3")
	errIs(t, "rename a directory over a file", unix.Rename(d1, c), unix.ENOTDIR)
	errIs(t, "rename a file over a directory", unix.Rename(c, d1), unix.EISDIR)
	errIs(t, "rename a directory over a non-empty directory", unix.Rename(d1, d3), unix.ENOTEMPTY)
	errIs(t, "rename a directory into itself", unix.Rename(d1, filepath.Join(d1, "sub")), unix.EINVAL)
	errIs(t, "rename through a file", unix.Rename(filepath.Join(c, "x"), p()), unix.ENOTDIR)
	errIs(t, "rename a directory over an empty directory", unix.Rename(d1, d2), 0)
	errIs(t, "old directory name", unix.Access(d1, unix.F_OK), unix.ENOENT)

	// Moving a directory to another parent fixes the link counts and "..".
	parentA, parentB := p(), p()
	must(t, "mkdir", unix.Mkdir(parentA, 0o755))
	must(t, "mkdir", unix.Mkdir(parentB, 0o755))
	child := filepath.Join(parentA, uniqueName())
	must(t, "mkdir", unix.Mkdir(child, 0o755))
	inner := filepath.Join(child, uniqueName())
	din := write(inner, "inner")
	moved := filepath.Join(parentB, filepath.Base(child))
	errIs(t, "move a directory to another parent", unix.Rename(child, moved), 0)
	if st := lstat(t, parentA); st.Nlink != 2 {
		t.Errorf("old parent nlink %d, want 2", st.Nlink)
	}
	if st := lstat(t, parentB); st.Nlink != 3 {
		t.Errorf("new parent nlink %d, want 3", st.Nlink)
	}
	if dd, pb := lstat(t, moved+"/.."), lstat(t, parentB); dd.Ino != pb.Ino {
		t.Errorf("moved directory's .. is inode %d, want the new parent %d", dd.Ino, pb.Ino)
	}
	sameBytes(t, "file inside a moved directory", mustRead(t, filepath.Join(moved, filepath.Base(inner))), din)

	// renameat2 flags.
	x, y, z := p(), p(), p()
	dx, dy := write(x, "x"), write(y, "y")
	errIs(t, "RENAME_NOREPLACE onto an existing name",
		unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, y, unix.RENAME_NOREPLACE), unix.EEXIST)
	sameBytes(t, "target of a refused RENAME_NOREPLACE", mustRead(t, y), dy)
	errIs(t, "RENAME_NOREPLACE to a new name",
		unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, z, unix.RENAME_NOREPLACE), 0)
	errIs(t, "RENAME_EXCHANGE of two files",
		unix.Renameat2(unix.AT_FDCWD, z, unix.AT_FDCWD, y, unix.RENAME_EXCHANGE), 0)
	sameBytes(t, "exchanged file 1", mustRead(t, z), dy)
	sameBytes(t, "exchanged file 2", mustRead(t, y), dx)
	errIs(t, "RENAME_EXCHANGE with a missing name",
		unix.Renameat2(unix.AT_FDCWD, z, unix.AT_FDCWD, p(), unix.RENAME_EXCHANGE), unix.ENOENT)
	errIs(t, "RENAME_EXCHANGE of a file and a directory",
		unix.Renameat2(unix.AT_FDCWD, z, unix.AT_FDCWD, d3, unix.RENAME_EXCHANGE), 0)
	if st := lstat(t, z); st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("after exchange, %s is not a directory", z)
	}
	sameBytes(t, "after exchange with a directory", mustRead(t, d3), dy)
	if ents, err := os.ReadDir(z); err != nil || len(ents) != 1 {
		t.Errorf("exchanged directory lists %d entries (%v), want 1", len(ents), err)
	}

	// Renaming one hard link onto another name of the same inode does nothing.
	l1, l2 := p(), p()
	dl := write(l1, "link")
	must(t, "link", unix.Link(l1, l2))
	errIs(t, "rename a hard link onto its sibling", unix.Rename(l1, l2), 0)
	for _, l := range []string{l1, l2} {
		sameBytes(t, "hard link after sibling rename "+l, mustRead(t, l), dl)
		if st := lstat(t, l); st.Nlink != 2 {
			t.Errorf("hard link after sibling rename: nlink %d, want 2", st.Nlink)
		}
	}
}

func testHardLinks(t *testing.T, v *Volume, dir string) {
	a := filepath.Join(dir, uniqueName())
	data := markedData(12345)
	mustWrite(t, a, data, 0o640)
	sub := filepath.Join(dir, uniqueName())
	must(t, "mkdir", unix.Mkdir(sub, 0o755))
	b := filepath.Join(sub, uniqueName())
	errIs(t, "link", unix.Link(a, b), 0)
	// The gocryptfs bug: a fresh hard link must report the plaintext size at once.
	for _, p := range []string{b, a} {
		st := lstat(t, p)
		if st.Size != int64(len(data)) || st.Nlink != 2 {
			t.Errorf("%s right after link: size %d nlink %d, want %d and 2", p, st.Size, st.Nlink, len(data))
		}
	}
	if lstat(t, a).Ino != lstat(t, b).Ino {
		t.Error("hard links have different inode numbers")
	}
	sameBytes(t, "read through the new link", mustRead(t, b), data)
	// A write through one name is seen through the other, size included.
	fd, err := unix.Open(b, unix.O_WRONLY|unix.O_APPEND, 0)
	must(t, "open link", err)
	more := []byte(markedText("more"))
	_, err = unix.Write(fd, more)
	must(t, "append via link", err)
	if st := lstat(t, a); st.Size != int64(len(data)+len(more)) {
		t.Errorf("size via the other name while the link is open for writing: %d, want %d", st.Size, len(data)+len(more))
	}
	unix.Close(fd)
	sameBytes(t, "other name after append", mustRead(t, a), append(append([]byte(nil), data...), more...))
	// chmod through one name shows on the other.
	must(t, "chmod", unix.Chmod(b, 0o600))
	if st := lstat(t, a); st.Mode&0o7777 != 0o600 {
		t.Errorf("mode through the other link: %#o, want 0600", st.Mode&0o7777)
	}

	errIs(t, "link onto an existing name", unix.Link(a, b), unix.EEXIST)
	errIs(t, "link a directory", unix.Link(sub, filepath.Join(dir, uniqueName())), unix.EPERM)
	errIs(t, "link a missing file", unix.Link(filepath.Join(dir, "missing"), filepath.Join(dir, uniqueName())), unix.ENOENT)
	errIs(t, "link into a missing directory", unix.Link(a, filepath.Join(dir, "missing", "x")), unix.ENOENT)
	c := filepath.Join(dir, uniqueName())
	must(t, "link 3", unix.Link(a, c))
	if st := lstat(t, b); st.Nlink != 3 {
		t.Errorf("after a third link: nlink %d, want 3", st.Nlink)
	}
	must(t, "unlink", unix.Unlink(a))
	if st := lstat(t, c); st.Nlink != 2 {
		t.Errorf("after unlinking one name: nlink %d, want 2", st.Nlink)
	}
	must(t, "unlink", unix.Unlink(b))
	if st := lstat(t, c); st.Nlink != 1 {
		t.Errorf("after unlinking two names: nlink %d, want 1", st.Nlink)
	}
	sameBytes(t, "last name", mustRead(t, c), append(append([]byte(nil), data...), more...))
	// A symlink can be hard-linked too.
	s := filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink("target-of-link", s))
	s2 := filepath.Join(dir, uniqueName())
	errIs(t, "link a symlink", unix.Linkat(unix.AT_FDCWD, s, unix.AT_FDCWD, s2, 0), 0)
	if st := lstat(t, s2); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Nlink != 2 {
		t.Errorf("hard link to a symlink: mode %#o nlink %d", st.Mode, st.Nlink)
	}
}

func testSymlinks(t *testing.T, v *Volume, dir string) {
	target := filepath.Join(dir, uniqueName())
	data := []byte(markedText("symlink target"))
	mustWrite(t, target, data, 0o644)
	l := filepath.Join(dir, uniqueName())
	rel := filepath.Base(target)
	errIs(t, "symlink", unix.Symlink(rel, l), 0)
	got, err := os.Readlink(l)
	must(t, "readlink", err)
	if got != rel {
		t.Errorf("readlink: %q, want %q", got, rel)
	}
	st := lstat(t, l)
	if st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(rel)) || st.Mode&0o777 != 0o777 {
		t.Errorf("lstat symlink: mode %#o size %d, want a 0777 link of size %d", st.Mode, st.Size, len(rel))
	}
	sameBytes(t, "read through the symlink", mustRead(t, l), data)
	var fst unix.Stat_t
	must(t, "stat through the symlink", unix.Stat(l, &fst))
	if fst.Mode&unix.S_IFMT != unix.S_IFREG || fst.Size != int64(len(data)) {
		t.Errorf("stat through symlink: mode %#o size %d", fst.Mode, fst.Size)
	}
	errIs(t, "symlink onto an existing name", unix.Symlink("x", l), unix.EEXIST)
	var buf [64]byte
	_, err = unix.Readlink(target, buf[:])
	errIs(t, "readlink of a regular file", err, unix.EINVAL)
	_, err = unix.Open(l, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	errIs(t, "O_NOFOLLOW on a symlink", err, unix.ELOOP)
	dangling := filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink("does-not-exist", dangling))
	errIs(t, "stat through a dangling symlink", unix.Stat(dangling, &fst), unix.ENOENT)
	loop1, loop2 := filepath.Join(dir, uniqueName()), filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink(filepath.Base(loop2), loop1))
	must(t, "symlink", unix.Symlink(filepath.Base(loop1), loop2))
	errIs(t, "stat a symlink loop", unix.Stat(loop1, &fst), unix.ELOOP)
	// Absolute targets, long targets, and a directory symlink used as a path component.
	for _, tgt := range []string{"/etc/hostname", strings.Repeat("a/", 2047) + "b", "../" + filepath.Base(dir) + "/x y\tz"} {
		p := filepath.Join(dir, uniqueName())
		errIs(t, fmt.Sprintf("symlink with a %d-byte target", len(tgt)), unix.Symlink(tgt, p), 0)
		if got, err := os.Readlink(p); err != nil || got != tgt {
			t.Errorf("readlink of a %d-byte target: %d bytes (%v)", len(tgt), len(got), err)
		}
	}
	errIs(t, "symlink with a 4096-byte target", unix.Symlink(strings.Repeat("c", 4096), filepath.Join(dir, uniqueName())), unix.ENAMETOOLONG)
	sd := filepath.Join(dir, uniqueName())
	must(t, "mkdir", unix.Mkdir(sd, 0o755))
	mustWrite(t, filepath.Join(sd, "inner"), data, 0o644)
	dl := filepath.Join(dir, uniqueName())
	must(t, "symlink to dir", unix.Symlink(filepath.Base(sd), dl))
	sameBytes(t, "read through a directory symlink", mustRead(t, filepath.Join(dl, "inner")), data)
	// unlink removes the link, not the target.
	must(t, "unlink symlink", unix.Unlink(l))
	sameBytes(t, "target after unlinking its symlink", mustRead(t, target), data)
	// lchown changes the link itself.
	must(t, "lchown", unix.Lchown(dl, 1234, 5678))
	if st := lstat(t, dl); st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("lchown symlink: owner %d:%d", st.Uid, st.Gid)
	}
	if st := lstat(t, sd); st.Uid != 0 {
		t.Errorf("lchown changed the target's owner to %d", st.Uid)
	}
}

func testXattrs(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	mustWrite(t, f, []byte(markedText("xattr file")), 0o644)
	errIs(t, "setxattr", unix.Setxattr(f, "user.alpha", []byte("one"), 0), 0)
	if got, err := lgetxattr(f, "user.alpha"); err != nil || string(got) != "one" {
		t.Errorf("getxattr: %q %v", got, err)
	}
	errIs(t, "XATTR_CREATE on an existing xattr", unix.Setxattr(f, "user.alpha", []byte("two"), unix.XATTR_CREATE), unix.EEXIST)
	errIs(t, "XATTR_REPLACE on a missing xattr", unix.Setxattr(f, "user.beta", []byte("two"), unix.XATTR_REPLACE), unix.ENODATA)
	errIs(t, "XATTR_REPLACE", unix.Setxattr(f, "user.alpha", []byte("three"), unix.XATTR_REPLACE), 0)
	errIs(t, "XATTR_CREATE", unix.Setxattr(f, "user.beta", nil, unix.XATTR_CREATE), 0)
	if got, err := lgetxattr(f, "user.beta"); err != nil || len(got) != 0 {
		t.Errorf("empty xattr value: %q %v", got, err)
	}
	_, err := unix.Getxattr(f, "user.missing", nil)
	errIs(t, "getxattr of a missing xattr", err, unix.ENODATA)
	errIs(t, "removexattr of a missing xattr", unix.Removexattr(f, "user.missing"), unix.ENODATA)
	n, err := unix.Getxattr(f, "user.alpha", nil)
	if err != nil || n != 5 {
		t.Errorf("getxattr size query: %d %v, want 5", n, err)
	}
	small := make([]byte, 2)
	_, err = unix.Getxattr(f, "user.alpha", small)
	errIs(t, "getxattr into a small buffer", err, unix.ERANGE)
	_, err = unix.Listxattr(f, make([]byte, 3))
	errIs(t, "listxattr into a small buffer", err, unix.ERANGE)
	fbig := filepath.Join(dir, uniqueName()) // ext4 keeps all of a file's xattrs in one 4 KiB block
	mustWrite(t, fbig, nil, 0o644)
	big := bytes.Repeat([]byte("v"), 4000)
	errIs(t, "setxattr of 4000 bytes", unix.Setxattr(fbig, "user.big", big, 0), 0)
	if got, err := lgetxattr(fbig, "user.big"); err != nil || !bytes.Equal(got, big) {
		t.Errorf("getxattr of 4000 bytes: %d bytes %v", len(got), err)
	}
	errIs(t, "setxattr with a 256-byte name", unix.Setxattr(f, "user."+strings.Repeat("n", 251), []byte("x"), 0), unix.ERANGE)
	errIs(t, "setxattr of 65537 bytes", unix.Setxattr(f, "user.huge", make([]byte, 65537), 0), unix.E2BIG)
	for i := 0; i < 20; i++ {
		must(t, "setxattr many", unix.Setxattr(f, fmt.Sprintf("user.many%02d", i), []byte(fmt.Sprint(i)), 0))
	}
	list, err := userXattrs(f)
	must(t, "list", err)
	if c := strings.Count(list, "user."); c != 22 {
		t.Errorf("listxattr: %d user xattrs, want 22: %s", c, list)
	}
	errIs(t, "removexattr", unix.Removexattr(f, "user.alpha"), 0)
	_, err = unix.Getxattr(f, "user.alpha", nil)
	errIs(t, "getxattr after removexattr", err, unix.ENODATA)
	if list, _ := userXattrs(f); strings.Contains(list, "user.alpha=") {
		t.Error("removed xattr still listed")
	}
	// Directories take user xattrs; symlinks refuse them (the kernel says EPERM).
	errIs(t, "setxattr on a directory", unix.Setxattr(dir, "user.dir", []byte("d"), 0), 0)
	if got, err := lgetxattr(dir, "user.dir"); err != nil || string(got) != "d" {
		t.Errorf("directory xattr: %q %v", got, err)
	}
	l := filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink(filepath.Base(f), l))
	errIs(t, "lsetxattr user.* on a symlink", unix.Lsetxattr(l, "user.x", []byte("x"), 0), unix.EPERM)
	errIs(t, "setxattr through a symlink", unix.Setxattr(l, "user.via", []byte("via"), 0), 0)
	if got, err := lgetxattr(f, "user.via"); err != nil || string(got) != "via" {
		t.Errorf("xattr set through a symlink: %q %v", got, err)
	}
	_, err = unix.Getxattr(filepath.Join(dir, "missing"), "user.x", nil)
	errIs(t, "getxattr of a missing file", err, unix.ENOENT)
	// Xattrs follow the inode across a hard link and a rename.
	g := filepath.Join(dir, uniqueName())
	must(t, "link", unix.Link(f, g))
	must(t, "rename", unix.Rename(f, f+"-renamed"))
	if got, err := lgetxattr(g, "user.many07"); err != nil || string(got) != "7" {
		t.Errorf("xattr via a hard link after rename: %q %v", got, err)
	}
}

// testFallocate runs the same fallocate calls on the mount and on ext4 and compares errors,
// sizes and bytes after each.
func testFallocate(t *testing.T, v *Volume, dir string) {
	plainDir := filepath.Join(v.Dir, "plain-fallocate")
	must(t, "mkdir", os.MkdirAll(plainDir, 0o755))
	data := markedData(3 << 14)
	open := func(d string) int {
		p := filepath.Join(d, "f")
		mustWrite(t, p, data, 0o644)
		fd, err := unix.Open(p, unix.O_RDWR, 0)
		must(t, "open", err)
		return fd
	}
	mfd, pfd := open(dir), open(plainDir)
	defer unix.Close(mfd)
	defer unix.Close(pfd)
	const (
		keep  = unix.FALLOC_FL_KEEP_SIZE
		punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
		zero  = unix.FALLOC_FL_ZERO_RANGE
	)
	for _, c := range []struct {
		mode      uint32
		off, size int64
	}{
		{0, 0, 1 << 16},                    // extend
		{keep, 0, 1 << 20},                 // preallocate past EOF, size kept
		{punch, 1000, 3000},                // hole inside a block
		{punch, 16384, 16384},              // a whole block
		{punch, 40000, 30000},              // across blocks up to past the data
		{zero, 5000, 20000},                // zero a range
		{zero, 60000, 20000},               // zero across EOF: extends
		{zero | keep, 90000, 10000},        // past EOF, size kept
		{0, 200000, 1000},                  // extend with a gap
		{unix.FALLOC_FL_PUNCH_HOLE, 0, 10}, // punch without KEEP_SIZE: EOPNOTSUPP
		{punch, 0, 0},                      // zero length: EINVAL
		{punch | unix.FALLOC_FL_ZERO_RANGE, 0, 10},
	} {
		what := fmt.Sprintf("fallocate mode=%#x off=%d len=%d", c.mode, c.off, c.size)
		merr := unix.Fallocate(mfd, c.mode, c.off, c.size)
		perr := unix.Fallocate(pfd, c.mode, c.off, c.size)
		if errnoName(merr) != errnoName(perr) {
			t.Errorf("%s: mount %s, ext4 %s", what, errnoName(merr), errnoName(perr))
			continue
		}
		var ms, ps unix.Stat_t
		must(t, "fstat", unix.Fstat(mfd, &ms))
		must(t, "fstat", unix.Fstat(pfd, &ps))
		if ms.Size != ps.Size {
			t.Errorf("%s: size %d, ext4 %d", what, ms.Size, ps.Size)
			continue
		}
		sameBytes(t, what, preadN(t, mfd, 0, int(ms.Size)+10), preadN(t, pfd, 0, int(ps.Size)+10))
	}
}

func testSeekDataHole(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	fd, err := unix.Open(f, unix.O_CREAT|unix.O_RDWR, 0o644)
	must(t, "create", err)
	defer unix.Close(fd)
	head, tail := markedData(4096), markedData(4096)
	const far = 8 << 20 // past the default 4 MiB chunk
	_, err = unix.Pwrite(fd, head, 0)
	must(t, "pwrite", err)
	_, err = unix.Pwrite(fd, tail, far)
	must(t, "pwrite", err)
	size := int64(far + len(tail))
	seek := func(off int64, whence int) (int64, error) { return unix.Seek(fd, off, whence) }
	if off, err := seek(0, unix.SEEK_DATA); err != nil || off != 0 {
		t.Errorf("SEEK_DATA 0: %d %v, want 0", off, err)
	}
	if off, err := seek(0, unix.SEEK_HOLE); err != nil || off < 4096 || off > size {
		t.Errorf("SEEK_HOLE 0: %d %v, want in [4096, %d]", off, err, size)
	}
	if off, err := seek(1<<20, unix.SEEK_DATA); err != nil || off < 1<<20 || off > far {
		t.Errorf("SEEK_DATA in the hole: %d %v, want in [1 MiB, %d]", off, err, far)
	}
	if off, err := seek(far+10, unix.SEEK_DATA); err != nil || off != far+10 {
		t.Errorf("SEEK_DATA inside data: %d %v, want %d", off, err, far+10)
	}
	if off, err := seek(size-1, unix.SEEK_HOLE); err != nil || off != size {
		t.Errorf("SEEK_HOLE at the last byte: %d %v, want %d (EOF)", off, err, size)
	}
	_, err = seek(size, unix.SEEK_DATA)
	errIs(t, "SEEK_DATA at EOF", err, unix.ENXIO)
	_, err = seek(size+100, unix.SEEK_HOLE)
	errIs(t, "SEEK_HOLE past EOF", err, unix.ENXIO)
	if off, err := seek(0, unix.SEEK_END); err != nil || off != size {
		t.Errorf("SEEK_END: %d %v, want %d", off, err, size)
	}
	if !isZero(preadN(t, fd, 1<<20, 65536)) {
		t.Error("the hole does not read as zeros")
	}
	sameBytes(t, "data after the hole", preadN(t, fd, far, 4096), tail)
	// A punched hole is a hole (or data) but reads as zeros either way.
	must(t, "punch", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096))
	if off, err := seek(0, unix.SEEK_DATA); err != nil || off > far {
		t.Errorf("SEEK_DATA after punching the head: %d %v", off, err)
	}
}

func testTruncate(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	data := markedData(5<<20 + 777) // past one default 4 MiB chunk
	mustWrite(t, f, data, 0o644)
	check := func(what string, want []byte) {
		t.Helper()
		if st := lstat(t, f); st.Size != int64(len(want)) {
			t.Errorf("%s: size %d, want %d", what, st.Size, len(want))
		}
		sameBytes(t, what, mustRead(t, f), want)
	}
	errIs(t, "truncate down into the second chunk", unix.Truncate(f, 4<<20+100), 0)
	check("after truncate down", data[:4<<20+100])
	errIs(t, "truncate up", unix.Truncate(f, 6<<20), 0)
	// The bytes cut off before must not come back: the extension reads as zeros.
	want := append(append([]byte(nil), data[:4<<20+100]...), make([]byte, 6<<20-(4<<20+100))...)
	check("after truncate up", want)
	errIs(t, "truncate inside a block", unix.Truncate(f, 12345), 0)
	errIs(t, "truncate up again", unix.Truncate(f, 70000), 0)
	want = append(append([]byte(nil), data[:12345]...), make([]byte, 70000-12345)...)
	check("after truncate down then up within a chunk", want)

	fd, err := unix.Open(f, unix.O_RDWR, 0)
	must(t, "open", err)
	errIs(t, "ftruncate", unix.Ftruncate(fd, 100), 0)
	_, err = unix.Pwrite(fd, []byte("Z"), 200)
	must(t, "pwrite past EOF", err)
	got := preadN(t, fd, 0, 300)
	unix.Close(fd)
	if len(got) != 201 || !bytes.Equal(got[:100], data[:100]) || !isZero(got[100:200]) || got[200] != 'Z' {
		t.Errorf("ftruncate then write past EOF: %d bytes", len(got))
	}
	errIs(t, "truncate to 0", unix.Truncate(f, 0), 0)
	check("after truncate to 0", nil)
	errIs(t, "truncate a missing file", unix.Truncate(filepath.Join(dir, "missing"), 0), unix.ENOENT)
	errIs(t, "truncate a directory", unix.Truncate(dir, 0), unix.EISDIR)
	errIs(t, "truncate to a negative size", unix.Truncate(f, -1), unix.EINVAL)
	fd, err = unix.Open(f, unix.O_RDONLY, 0)
	must(t, "open read-only", err)
	errIs(t, "ftruncate a read-only descriptor", unix.Ftruncate(fd, 0), unix.EINVAL)
	unix.Close(fd)
}

func testUnlinkedOpen(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	data := markedData(100000)
	mustWrite(t, f, data, 0o644)
	fd, err := unix.Open(f, unix.O_RDWR, 0)
	must(t, "open", err)
	fd2, err := unix.Open(f, unix.O_RDONLY, 0)
	must(t, "open 2", err)
	must(t, "unlink", unix.Unlink(f))
	var st unix.Stat_t
	errIs(t, "stat after unlink", unix.Lstat(f, &st), unix.ENOENT)
	must(t, "fstat", unix.Fstat(fd, &st))
	if st.Nlink != 0 || st.Size != int64(len(data)) {
		t.Errorf("fstat of an unlinked open file: nlink %d size %d", st.Nlink, st.Size)
	}
	sameBytes(t, "read an unlinked open file", preadN(t, fd, 0, len(data)+10), data)
	more := markedData(50000)
	_, err = unix.Pwrite(fd, more, 80000)
	must(t, "write to an unlinked open file", err)
	want := append(append([]byte(nil), data[:80000]...), more...)
	sameBytes(t, "read back through another descriptor", preadN(t, fd2, 0, len(want)+10), want)
	must(t, "ftruncate unlinked", unix.Ftruncate(fd, 1000))
	sameBytes(t, "after ftruncate of an unlinked file", preadN(t, fd2, 0, 2000), data[:1000])
	must(t, "fsync unlinked", unix.Fsync(fd))
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("directory still lists %d entries after unlink", len(ents))
	}
	// A new file with the same name is a different file.
	mustWrite(t, f, []byte(markedText("new file")), 0o644)
	sameBytes(t, "old descriptor after the name was reused", preadN(t, fd2, 0, 2000), data[:1000])
	unix.Close(fd)
	unix.Close(fd2)
	// An unlinked directory that is still open.
	d := filepath.Join(dir, uniqueName())
	must(t, "mkdir", unix.Mkdir(d, 0o755))
	dfd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, "open dir", err)
	must(t, "rmdir", unix.Rmdir(d))
	_, err = unix.Openat(dfd, "x", unix.O_CREAT|unix.O_WRONLY, 0o644)
	errIs(t, "create in a removed directory", err, unix.ENOENT)
	unix.Close(dfd)
}

func testNames(t *testing.T, v *Volume, dir string) {
	n255 := namePrefix + strings.Repeat("n", 255-len(namePrefix))
	n256 := n255 + "x"
	p255, p256 := filepath.Join(dir, n255), filepath.Join(dir, n256)
	data := []byte(markedText("long name"))
	_, err := os.Stat(p255)
	errIs(t, "stat a missing 255-byte name", err, unix.ENOENT)
	mustWrite(t, p255, data, 0o644)
	sameBytes(t, "255-byte name", mustRead(t, p255), data)
	fd, err := unix.Open(p256, unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err == nil {
		unix.Close(fd)
	}
	errIs(t, "create a 256-byte name", err, unix.ENAMETOOLONG)
	var st unix.Stat_t
	errIs(t, "stat a 256-byte name", unix.Lstat(p256, &st), unix.ENAMETOOLONG)
	errIs(t, "mkdir a 256-byte name", unix.Mkdir(p256, 0o755), unix.ENAMETOOLONG)
	errIs(t, "symlink at a 256-byte name", unix.Symlink("x", p256), unix.ENAMETOOLONG)
	errIs(t, "link to a 256-byte name", unix.Link(p255, p256), unix.ENAMETOOLONG)
	errIs(t, "rename to a 256-byte name", unix.Rename(p255, p256), unix.ENAMETOOLONG)
	errIs(t, "mknod a 256-byte name", unix.Mkfifo(p256, 0o644), unix.ENAMETOOLONG)
	// 255 bytes of multi-byte UTF-8, and bytes that are awkward elsewhere.
	utf := namePrefix + strings.Repeat("日", (255-len(namePrefix))/3)
	utf += strings.Repeat("é", (255-len(utf))/2)
	utf += strings.Repeat("u", 255-len(utf))
	odd := []string{utf, namePrefix + " space\ttab\nnewline", namePrefix + `back\slash`, namePrefix + "%2F:*?\"<>|", namePrefix + "\xff\xfe-not-utf8", "-" + namePrefix, ".." + namePrefix}
	for _, n := range odd {
		mustWrite(t, filepath.Join(dir, n), data, 0o644)
	}
	d2 := filepath.Join(dir, uniqueName())
	must(t, "mkdir", unix.Mkdir(d2, 0o755))
	n255b := namePrefix + strings.Repeat("m", 255-len(namePrefix))
	errIs(t, "rename to another 255-byte name in another directory", unix.Rename(p255, filepath.Join(d2, n255b)), 0)
	ents, err := os.ReadDir(dir)
	must(t, "readdir", err)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := append([]string{filepath.Base(d2)}, odd...)
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		t.Errorf("readdir names:\n got %q\nwant %q", got, want)
	}
	for _, n := range odd {
		sameBytes(t, fmt.Sprintf("file %q", n), mustRead(t, filepath.Join(dir, n)), data)
	}
	// A path of many components, each 255 bytes, up to PATH_MAX.
	deep := d2
	for i := 0; len(deep)+256 < 4000; i++ {
		deep = filepath.Join(deep, fmt.Sprintf("%s%03d%s", namePrefix, i, strings.Repeat("d", 255-len(namePrefix)-3)))
		must(t, "mkdir deep", unix.Mkdir(deep, 0o755))
	}
	mustWrite(t, filepath.Join(deep, "leaf"), data, 0o644)
	sameBytes(t, "deep path", mustRead(t, filepath.Join(deep, "leaf")), data)
}

func testTimes(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	mustWrite(t, f, []byte(markedText("times")), 0o644)
	ts := func(sec, nsec int64) unix.Timespec { return unix.Timespec{Sec: sec, Nsec: nsec} }
	checkTimes := func(what, p string, atime, mtime unix.Timespec) {
		t.Helper()
		st := lstat(t, p)
		if st.Atim != atime || st.Mtim != mtime {
			t.Errorf("%s: atime %d.%09d mtime %d.%09d, want %d.%09d and %d.%09d", what,
				st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec, atime.Sec, atime.Nsec, mtime.Sec, mtime.Nsec)
		}
	}
	a, m := ts(1000000000, 123456789), ts(1234567890, 987654321)
	errIs(t, "utimensat", unix.UtimesNanoAt(unix.AT_FDCWD, f, []unix.Timespec{a, m}, 0), 0)
	checkTimes("utimensat with nanoseconds", f, a, m)
	m2 := ts(4102444800, 1) // 2100-01-01, past 2038
	errIs(t, "utimensat UTIME_OMIT atime", unix.UtimesNanoAt(unix.AT_FDCWD, f, []unix.Timespec{ts(0, unix.UTIME_OMIT), m2}, 0), 0)
	checkTimes("UTIME_OMIT for atime", f, a, m2)
	old := ts(-86400*365, 5) // 1969
	errIs(t, "utimensat before 1970", unix.UtimesNanoAt(unix.AT_FDCWD, f, []unix.Timespec{old, old}, 0), 0)
	checkTimes("times before 1970", f, old, old)

	before := time.Now()
	errIs(t, "utimensat UTIME_NOW", unix.UtimesNanoAt(unix.AT_FDCWD, f, nil, 0), 0)
	after := time.Now()
	if st := lstat(t, f); time.Unix(0, st.Mtim.Nano()).Before(before.Add(-time.Second)) || time.Unix(0, st.Mtim.Nano()).After(after.Add(time.Second)) {
		t.Errorf("UTIME_NOW set mtime %d, want about %v", st.Mtim.Nano(), before)
	}

	// futimens, and times of a symlink itself.
	fd, err := unix.Open(f, unix.O_RDWR, 0)
	must(t, "open", err)
	errIs(t, "futimens", unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), []unix.Timespec{a, m}, 0), 0)
	checkTimes("futimens", f, a, m)
	// A write moves mtime and ctime forward.
	ctime0 := lstat(t, f).Ctim
	time.Sleep(20 * time.Millisecond)
	_, err = unix.Pwrite(fd, []byte("w"), 3)
	must(t, "pwrite", err)
	unix.Close(fd)
	st := lstat(t, f)
	if st.Mtim.Nano() <= m.Nano() || st.Ctim.Nano() <= ctime0.Nano() {
		t.Errorf("write did not advance mtime/ctime: mtime %d ctime %d -> %d", st.Mtim.Nano(), ctime0.Nano(), st.Ctim.Nano())
	}
	// chmod moves ctime, not mtime.
	mt, ct := st.Mtim, st.Ctim
	time.Sleep(20 * time.Millisecond)
	must(t, "chmod", unix.Chmod(f, 0o600))
	st = lstat(t, f)
	if st.Mtim != mt || st.Ctim.Nano() <= ct.Nano() {
		t.Errorf("chmod: mtime %d -> %d (want unchanged), ctime %d -> %d (want later)", mt.Nano(), st.Mtim.Nano(), ct.Nano(), st.Ctim.Nano())
	}

	l := filepath.Join(dir, uniqueName())
	must(t, "symlink", unix.Symlink(filepath.Base(f), l))
	ft := lstat(t, f)
	errIs(t, "utimensat AT_SYMLINK_NOFOLLOW", unix.UtimesNanoAt(unix.AT_FDCWD, l, []unix.Timespec{a, m2}, unix.AT_SYMLINK_NOFOLLOW), 0)
	checkTimes("symlink times", l, a, m2)
	checkTimes("symlink target untouched", f, ft.Atim, ft.Mtim)

	// Creating and removing entries moves the directory's mtime.
	must(t, "utimensat dir", unix.UtimesNanoAt(unix.AT_FDCWD, dir, []unix.Timespec{a, m}, 0))
	mustWrite(t, filepath.Join(dir, uniqueName()), []byte(markedText("new")), 0o644)
	if st := lstat(t, dir); st.Mtim.Nano() <= m.Nano() || st.Ctim.Nano() <= m.Nano() {
		t.Errorf("creating a file did not advance the directory's mtime/ctime (%d, %d)", st.Mtim.Nano(), st.Ctim.Nano())
	}
	must(t, "utimensat dir", unix.UtimesNanoAt(unix.AT_FDCWD, dir, []unix.Timespec{a, m}, 0))
	must(t, "unlink", unix.Unlink(l))
	if st := lstat(t, dir); st.Mtim.Nano() <= m.Nano() {
		t.Errorf("unlink did not advance the directory's mtime")
	}
	// Rename moves ctime of the renamed inode (Linux, ext4).
	c0 := lstat(t, f).Ctim
	time.Sleep(20 * time.Millisecond)
	must(t, "rename", unix.Rename(f, f+"2"))
	if st := lstat(t, f+"2"); st.Ctim.Nano() <= c0.Nano() {
		t.Errorf("rename did not advance the file's ctime")
	}
}

// testChmodChown checks mode and owner changes, and that the set-id bits are cleared
// exactly like ext4 clears them (on chown, and on a write by a non-owner).
func testChmodChown(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	mustWrite(t, f, []byte(markedText("chmod")), 0o644)
	for _, mode := range []uint32{0o640, 0o4755, 0o2755, 0o1644, 0o7777, 0} {
		errIs(t, fmt.Sprintf("chmod %#o", mode), unix.Chmod(f, mode), 0)
		if st := lstat(t, f); st.Mode&0o7777 != mode || st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf("after chmod %#o: mode %#o", mode, st.Mode)
		}
	}
	fd, err := unix.Open(f, unix.O_RDONLY, 0)
	must(t, "open", err)
	errIs(t, "fchmod", unix.Fchmod(fd, 0o751), 0)
	if st := lstat(t, f); st.Mode&0o7777 != 0o751 {
		t.Errorf("after fchmod: %#o", st.Mode&0o7777)
	}
	errIs(t, "fchown", unix.Fchown(fd, 42, 43), 0)
	unix.Close(fd)
	if st := lstat(t, f); st.Uid != 42 || st.Gid != 43 {
		t.Errorf("after fchown: %d:%d", st.Uid, st.Gid)
	}
	errIs(t, "chown", unix.Chown(f, 1000, 1001), 0)
	errIs(t, "chown gid only", unix.Chown(f, -1, 2000), 0)
	if st := lstat(t, f); st.Uid != 1000 || st.Gid != 2000 {
		t.Errorf("after chown -1:2000: %d:%d", st.Uid, st.Gid)
	}
	errIs(t, "chmod a missing file", unix.Chmod(filepath.Join(dir, "missing"), 0o644), unix.ENOENT)
	errIs(t, "chown a missing file", unix.Chown(filepath.Join(dir, "missing"), 1, 1), unix.ENOENT)

	// chown clears set-id bits of a regular file even for root; compare with ext4.
	plainDir := filepath.Join(v.Dir, "plain-chown")
	must(t, "mkdir", os.MkdirAll(plainDir, 0o755))
	for _, mode := range []uint32{0o6755, 0o6745, 0o4700} {
		var modes [2]uint32
		for i, d := range []string{dir, plainDir} {
			p := filepath.Join(d, fmt.Sprintf("suid-%o", mode))
			mustWrite(t, p, []byte(markedText("suid")), 0o600)
			must(t, "chmod", unix.Chmod(p, mode))
			must(t, "chown", unix.Chown(p, 7, 7))
			modes[i] = lstat(t, p).Mode & 0o7777
		}
		if modes[0] != modes[1] {
			t.Errorf("chown of a %#o file leaves %#o, ext4 leaves %#o", mode, modes[0], modes[1])
		}
	}
	// Directories keep their set-id bits on chown.
	d := filepath.Join(dir, uniqueName())
	must(t, "mkdir", unix.Mkdir(d, 0o755))
	must(t, "chmod", unix.Chmod(d, 0o2775))
	must(t, "chown", unix.Chown(d, 5, 5))
	if st := lstat(t, d); st.Mode&0o7777 != 0o2775 {
		t.Errorf("chown of a setgid directory: mode %#o, want 02775", st.Mode&0o7777)
	}
}

// testOtherUID runs operations as uid/gid 65534 through the --allow-other mount and on an
// ext4 directory built the same way; both must give the expected errnos.
func testOtherUID(t *testing.T, v *Volume, dir string) {
	plainDir := filepath.Join(v.Dir, "plain-other")
	must(t, "mkdir", os.MkdirAll(plainDir, 0o755))
	build := func(d string) {
		write := func(rel string, mode uint32) {
			p := filepath.Join(d, rel)
			mustWrite(t, p, []byte(markedText("other uid "+rel)), 0o600)
			must(t, "chmod", unix.Chmod(p, mode))
		}
		must(t, "chmod", unix.Chmod(d, 0o755))
		write("secret", 0o600)
		write("public", 0o644)
		write("suid", 0o4777)
		for _, sd := range []struct {
			name string
			mode uint32
		}{{"private", 0o700}, {"shared", 0o777}, {"sticky", 0o1777}} {
			must(t, "mkdir", unix.Mkdir(filepath.Join(d, sd.name), 0o755))
			must(t, "chmod", unix.Chmod(filepath.Join(d, sd.name), sd.mode))
		}
		write("private/f", 0o644)
		write("sticky/rootfile", 0o666)
	}
	build(dir)
	build(plainDir)
	cases := []struct {
		op, path, arg string
		want          string
	}{
		{"read", "secret", "", "EACCES"},
		{"read", "public", "", "OK"},
		{"write", "public", "", "EACCES"},
		{"create", "newfile", "x", "EACCES"},
		{"stat", "private/f", "", "EACCES"},
		{"readdir", "private", "", "EACCES"},
		{"create", "shared/nobodyfile", "nobody", "OK"},
		{"mkdir", "shared/nobodydir", "", "OK"},
		{"unlink", "sticky/rootfile", "", "EPERM"},
		{"rename", "sticky/rootfile", "sticky/moved", "EPERM"},
		{"write", "sticky/rootfile", "", "OK"},
		{"chmod", "public", "", "EPERM"},
		{"chown-root", "shared/nobodyfile", "", "EPERM"},
		{"truncate", "public", "", "EACCES"},
		{"setxattr", "public", "", "EACCES"},
		{"utimes-set", "public", "", "EPERM"},
		{"utimes-now", "public", "", "EACCES"},
		{"utimes-now", "sticky/rootfile", "", "OK"},
		{"append", "suid", "more", "OK"},
		{"unlink", "shared/nobodyfile", "", "OK"},
	}
	for _, d := range []string{dir, plainDir} {
		ops := make([]childOp, len(cases))
		for i, c := range cases {
			ops[i] = childOp{Op: c.op, Path: filepath.Join(d, c.path)}
			if c.arg != "" {
				ops[i].Arg = c.arg
				if c.op == "rename" {
					ops[i].Arg = filepath.Join(d, c.arg)
				}
			}
		}
		got := runAsUser(t, 65534, 65534, ops)
		where := "mount"
		if d == plainDir {
			where = "ext4 (expectation check)"
		}
		for i, c := range cases {
			if got[i] != c.want {
				t.Errorf("%s: uid 65534 %s %s: %s, want %s", where, c.op, c.path, got[i], c.want)
			}
		}
		if st := lstat(t, filepath.Join(d, "shared/nobodydir")); st.Uid != 65534 || st.Gid != 65534 {
			t.Errorf("%s: directory made by uid 65534 is owned by %d:%d", where, st.Uid, st.Gid)
		}
		// A write by a non-owner clears the set-uid bit.
		if st := lstat(t, filepath.Join(d, "suid")); st.Mode&0o7777 != 0o777 {
			t.Errorf("%s: set-uid file after another user appended: mode %#o, want 0777", where, st.Mode&0o7777)
		}
	}
}

func testFIFO(t *testing.T, v *Volume, dir string) {
	p := filepath.Join(dir, uniqueName())
	errIs(t, "mkfifo", unix.Mkfifo(p, 0o640), 0)
	errIs(t, "mkfifo over an existing name", unix.Mkfifo(p, 0o640), unix.EEXIST)
	st := lstat(t, p)
	if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o777 != 0o640&^umask() {
		t.Errorf("fifo mode %#o", st.Mode)
	}
	r, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	must(t, "open fifo for reading", err)
	defer unix.Close(r)
	w, err := unix.Open(p, unix.O_WRONLY, 0)
	must(t, "open fifo for writing", err)
	msg := []byte("through the pipe")
	_, err = unix.Write(w, msg)
	must(t, "write fifo", err)
	unix.Close(w)
	buf := make([]byte, 64)
	n, err := unix.Read(r, buf)
	must(t, "read fifo", err)
	if string(buf[:n]) != string(msg) {
		t.Errorf("fifo carried %q", buf[:n])
	}
	if st := lstat(t, p); st.Size != 0 {
		t.Errorf("fifo size %d after use, want 0", st.Size)
	}
	q := filepath.Join(dir, uniqueName())
	errIs(t, "mknod S_IFIFO", unix.Mknod(q, unix.S_IFIFO|0o600, 0), 0)
	reg := filepath.Join(dir, uniqueName())
	errIs(t, "mknod S_IFREG", unix.Mknod(reg, unix.S_IFREG|0o600, 0), 0)
	if st := lstat(t, reg); st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		t.Errorf("mknod S_IFREG made mode %#o size %d", st.Mode, st.Size)
	}
	must(t, "rename fifo", unix.Rename(q, q+"-moved"))
	if st := lstat(t, q+"-moved"); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("renamed fifo has mode %#o", st.Mode)
	}
}

func testStatfs(t *testing.T, v *Volume, dir string) {
	var s unix.Statfs_t
	must(t, "statfs", unix.Statfs(dir, &s))
	if !plainMode && s.Type != 0x65735546 {
		t.Errorf("f_type %#x, want FUSE_SUPER_MAGIC", s.Type)
	}
	if s.Namelen != 255 {
		t.Errorf("f_namelen %d, want 255", s.Namelen)
	}
	if s.Bsize <= 0 || s.Frsize <= 0 {
		t.Errorf("f_bsize %d f_frsize %d, want > 0", s.Bsize, s.Frsize)
	}
	if s.Blocks == 0 || s.Bfree > s.Blocks || s.Bavail > s.Bfree {
		t.Errorf("block counts: blocks %d free %d avail %d", s.Blocks, s.Bfree, s.Bavail)
	}
	var fs unix.Statfs_t
	fd, err := unix.Open(dir, unix.O_RDONLY, 0)
	must(t, "open", err)
	defer unix.Close(fd)
	must(t, "fstatfs", unix.Fstatfs(fd, &fs))
	if fs.Type != s.Type || fs.Namelen != s.Namelen {
		t.Errorf("fstatfs disagrees with statfs")
	}
}

func testCopyFileRange(t *testing.T, v *Volume, dir string) {
	src, dst := filepath.Join(dir, uniqueName()), filepath.Join(dir, uniqueName())
	data := markedData(1<<20 + 123)
	mustWrite(t, src, data, 0o644)
	head := markedData(5000)
	mustWrite(t, dst, head, 0o644)
	in, err := unix.Open(src, unix.O_RDONLY, 0)
	must(t, "open src", err)
	defer unix.Close(in)
	out, err := unix.Open(dst, unix.O_WRONLY, 0)
	must(t, "open dst", err)
	offIn, offOut := int64(100), int64(3000)
	for left := len(data) - 100; left > 0; {
		n, err := unix.CopyFileRange(in, &offIn, out, &offOut, left, 0)
		must(t, "copy_file_range", err)
		if n == 0 {
			t.Fatalf("copy_file_range stopped with %d bytes left", left)
		}
		left -= n
	}
	unix.Close(out)
	want := append(append([]byte(nil), head[:3000]...), data[100:]...)
	sameBytes(t, "after copy_file_range", mustRead(t, dst), want)
}

func testFsync(t *testing.T, v *Volume, dir string) {
	f := filepath.Join(dir, uniqueName())
	fd, err := unix.Open(f, unix.O_CREAT|unix.O_RDWR, 0o644)
	must(t, "create", err)
	data := markedData(300000)
	_, err = unix.Write(fd, data)
	must(t, "write", err)
	errIs(t, "fsync", unix.Fsync(fd), 0)
	errIs(t, "fdatasync", unix.Fdatasync(fd), 0)
	_, err = unix.Pwrite(fd, []byte(markedText("after fsync")), 1000)
	must(t, "write", err)
	errIs(t, "fsync again", unix.Fsync(fd), 0)
	unix.Close(fd)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, "open dir", err)
	errIs(t, "fsync a directory", unix.Fsync(dfd), 0)
	unix.Close(dfd)
	errIs(t, "sync_file_range", unix.SyncFileRange(fdOrFail(t, f), 0, 0, unix.SYNC_FILE_RANGE_WRITE), 0)
	unix.Sync()
}

func fdOrFail(t *testing.T, p string) int {
	fd, err := unix.Open(p, unix.O_RDWR, 0)
	must(t, "open", err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// testEXDEV: names cannot move between the mount and another filesystem.
func testEXDEV(t *testing.T, v *Volume, dir string) {
	if plainMode {
		return // the "mount" is on the same filesystem
	}
	f := filepath.Join(dir, uniqueName())
	mustWrite(t, f, []byte(markedText("exdev")), 0o644)
	outside := filepath.Join(v.Dir, "outside-"+uniqueName())
	errIs(t, "rename out of the mount", unix.Rename(f, outside), unix.EXDEV)
	errIs(t, "link out of the mount", unix.Link(f, outside), unix.EXDEV)
	mustWrite(t, outside, []byte("plain"), 0o644)
	errIs(t, "rename into the mount", unix.Rename(outside, filepath.Join(dir, uniqueName())), unix.EXDEV)
	os.Remove(outside)
}
