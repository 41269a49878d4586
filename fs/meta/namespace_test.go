package meta

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

var ctx = context.Background()

func TestCreateFileLookup(t *testing.T) {
	c := newCatalog(t)
	rootBefore := stat(t, c, RootIno)
	attr := fileAttr()
	attr.Mode = 0o640
	key := testKey(7)
	f, err := c.CreateFile(ctx, RootIno, []byte("hello"), attr, key)
	if err != nil {
		t.Fatal(err)
	}
	if f.Ino <= RootIno || f.Gen != 1 || f.Mode != syscall.S_IFREG|0o640 || f.Nlink != 1 || f.Size != 0 ||
		f.UID != 1000 || f.Atime != attr.Ctime || f.Mtime != attr.Ctime || f.FileID == [16]byte{} {
		t.Fatalf("created inode %+v", f)
	}
	got, err := c.Lookup(ctx, RootIno, []byte("hello"))
	if err != nil || fmt.Sprint(got) != fmt.Sprint(f) {
		t.Fatalf("lookup %+v %v, want %+v", got, err, f)
	}
	if g := stat(t, c, f.Ino); fmt.Sprint(g) != fmt.Sprint(f) {
		t.Fatalf("getinode %+v", g)
	}
	k, err := c.GetKey(ctx, f.Ino)
	if err != nil || !k.equal(key) {
		t.Fatalf("key record %+v %v", k, err)
	}
	root := stat(t, c, RootIno)
	if root.Nlink != rootBefore.Nlink || root.Mtime != attr.Ctime || root.Ctime != attr.Ctime {
		t.Fatalf("parent after create: %+v", root)
	}

	// A caller-chosen file id is kept (the key was wrapped with it as AAD).
	a := fileAttr()
	a.FileID = [16]byte{9, 9, 9}
	g, err := c.CreateFile(ctx, RootIno, []byte("chosen"), a, nil)
	if err != nil || g.FileID != a.FileID {
		t.Fatalf("chosen file id: %x %v", g.FileID, err)
	}
	_, err = c.CreateFile(ctx, RootIno, []byte("dupid"), a, nil)
	wantErrno(t, err, syscall.EEXIST) // file ids are unique
	if _, err := c.GetKey(ctx, g.Ino); !errorsIs(err, syscall.ENOENT) {
		t.Fatalf("file created without key has a key record: %v", err)
	}

	_, err = c.CreateFile(ctx, RootIno, []byte("hello"), fileAttr(), testKey(1))
	wantErrno(t, err, syscall.EEXIST)
	_, err = c.Lookup(ctx, RootIno, []byte("nothere"))
	wantErrno(t, err, syscall.ENOENT)
	_, err = c.GetInode(ctx, 999)
	wantErrno(t, err, syscall.ENOENT)

	// Names: bytes, up to 255 of them.
	long := bytes.Repeat([]byte("n"), MaxNameLen)
	if _, err := c.CreateFile(ctx, RootIno, long, fileAttr(), nil); err != nil {
		t.Fatalf("255-byte name: %v", err)
	}
	_, err = c.CreateFile(ctx, RootIno, append(long, 'x'), fileAttr(), nil)
	wantErrno(t, err, syscall.ENAMETOOLONG)
	_, err = c.Lookup(ctx, RootIno, append(long, 'x'))
	wantErrno(t, err, syscall.ENAMETOOLONG)
	for _, bad := range []string{"", ".", "..", "a/b", "a\x00b"} {
		_, err = c.CreateFile(ctx, RootIno, []byte(bad), fileAttr(), nil)
		wantErrno(t, err, syscall.EINVAL)
	}
	latin1 := []byte{'c', 0xe9, 0xff} // not UTF-8
	if _, err := c.CreateFile(ctx, RootIno, latin1, fileAttr(), nil); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Lookup(ctx, RootIno, latin1); err != nil || got.Ino == 0 {
		t.Fatalf("lookup of a non-UTF-8 name: %v", err)
	}

	// Wrong kinds of parent and mode.
	_, err = c.CreateFile(ctx, f.Ino, []byte("x"), fileAttr(), nil)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = c.CreateFile(ctx, 12345, []byte("x"), fileAttr(), nil)
	wantErrno(t, err, syscall.ENOENT)
	d := dirAttr()
	d.Mode = syscall.S_IFDIR | 0o755
	_, err = c.CreateFile(ctx, RootIno, []byte("x"), d, nil)
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.CreateFile(ctx, RootIno, []byte("x"), fileAttr(), &KeyRecord{Mode: "rot13"})
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.CreateFile(ctx, RootIno, []byte("x"), Inode{Mode: 0o644}, nil) // no time
	wantErrno(t, err, syscall.EINVAL)
	mustCheck(t, c)
}

func errorsIs(err error, errno syscall.Errno) bool { return err != nil && Errno(err) == errno }

func TestMkdirRmdir(t *testing.T) {
	c := newCatalog(t)
	a := mkdir(t, c, RootIno, "a")
	if a.Mode != syscall.S_IFDIR|0o755 || a.Nlink != 2 {
		t.Fatalf("mkdir: %+v", a)
	}
	if r := stat(t, c, RootIno); r.Nlink != 3 {
		t.Fatalf("root nlink %d after mkdir, want 3", r.Nlink)
	}
	b := mkdir(t, c, a.Ino, "b")
	mkfile(t, c, a.Ino, "f")
	if got := stat(t, c, a.Ino); got.Nlink != 3 {
		t.Fatalf("a nlink %d, want 3 (one subdir; files do not count)", got.Nlink)
	}
	_, err := c.Mkdir(ctx, a.Ino, []byte("b"), dirAttr())
	wantErrno(t, err, syscall.EEXIST)

	_, err = c.Rmdir(ctx, RootIno, []byte("a"), now(), true)
	wantErrno(t, err, syscall.ENOTEMPTY)
	_, err = c.Rmdir(ctx, a.Ino, []byte("f"), now(), true)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = c.Rmdir(ctx, a.Ino, []byte("zz"), now(), true)
	wantErrno(t, err, syscall.ENOENT)
	_, err = c.Unlink(ctx, a.Ino, []byte("b"), now(), true)
	wantErrno(t, err, syscall.EISDIR)

	// Removed while open (reap false): an orphan with nlink 0; nothing can
	// be created in it.
	if err := c.SetXattr(ctx, b.Ino, "user.x", []byte("v"), 0, now()); err != nil {
		t.Fatal(err)
	}
	rm, err := c.Rmdir(ctx, a.Ino, []byte("b"), now(), false)
	if err != nil || rm.Nlink != 0 || rm.Ino != b.Ino {
		t.Fatalf("rmdir: %+v %v", rm, err)
	}
	if got := stat(t, c, a.Ino); got.Nlink != 2 {
		t.Fatalf("a nlink %d after rmdir, want 2", got.Nlink)
	}
	if got := stat(t, c, b.Ino); got.Nlink != 0 {
		t.Fatalf("removed dir nlink %d", got.Nlink)
	}
	_, err = c.Mkdir(ctx, b.Ino, []byte("c"), dirAttr())
	wantErrno(t, err, syscall.ENOENT)
	orphans, err := c.Orphans(ctx)
	if err != nil || len(orphans) != 1 || orphans[0] != b.Ino {
		t.Fatalf("orphans %v %v", orphans, err)
	}
	mustCheck(t, c)
	if ok, err := c.Reap(ctx, b.Ino, now()); err != nil || !ok {
		t.Fatalf("reap: %v %v", ok, err)
	}
	_, err = c.GetInode(ctx, b.Ino)
	wantErrno(t, err, syscall.ENOENT)
	if ok, err := c.Reap(ctx, b.Ino, now()); err != nil || ok {
		t.Fatalf("second reap: %v %v", ok, err)
	}
	if ok, err := c.Reap(ctx, RootIno, now()); err != nil || ok {
		t.Fatalf("reap of the root: %v %v", ok, err)
	}
	if ok, err := c.Reap(ctx, a.Ino, now()); err != nil || ok {
		t.Fatalf("reap of a live directory: %v %v", ok, err)
	}

	// rmdir with reap: gone at once.
	e := mkdir(t, c, a.Ino, "e")
	if _, err := c.Rmdir(ctx, a.Ino, []byte("e"), now(), true); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetInode(ctx, e.Ino)
	wantErrno(t, err, syscall.ENOENT)
	mustCheck(t, c)
}

func TestMknodSymlink(t *testing.T) {
	c := newCatalog(t)
	fifo := fileAttr()
	fifo.Mode = syscall.S_IFIFO | 0o600
	p, err := c.Mknod(ctx, RootIno, []byte("fifo"), fifo)
	if err != nil || p.Mode != syscall.S_IFIFO|0o600 {
		t.Fatalf("mknod fifo %+v %v", p, err)
	}
	chr := fileAttr()
	chr.Mode, chr.Rdev = syscall.S_IFCHR|0o600, 0x0103
	d, err := c.Mknod(ctx, RootIno, []byte("null"), chr)
	if err != nil || stat(t, c, d.Ino).Rdev != 0x0103 {
		t.Fatalf("mknod chr %+v %v", d, err)
	}
	for _, m := range []uint32{syscall.S_IFREG, syscall.S_IFDIR, syscall.S_IFLNK, 0} {
		bad := fileAttr()
		bad.Mode = m | 0o644
		_, err = c.Mknod(ctx, RootIno, []byte("bad"), bad)
		wantErrno(t, err, syscall.EINVAL)
	}

	target := bytes.Repeat([]byte("t/"), MaxSymlinkLen/2)
	target = append(target, 'x')
	s, err := c.Symlink(ctx, RootIno, []byte("link"), target, fileAttr())
	if err != nil || s.Mode != syscall.S_IFLNK|0o777 || s.Size != int64(len(target)) {
		t.Fatalf("symlink %+v %v", s, err)
	}
	if got := stat(t, c, s.Ino); !bytes.Equal(got.Target, target) {
		t.Fatal("symlink target changed on the way")
	}
	_, err = c.Symlink(ctx, RootIno, []byte("long"), append(target, 'y'), fileAttr())
	wantErrno(t, err, syscall.ENAMETOOLONG)
	_, err = c.Symlink(ctx, RootIno, []byte("empty"), nil, fileAttr())
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.Symlink(ctx, RootIno, []byte("link"), []byte("x"), fileAttr())
	wantErrno(t, err, syscall.EEXIST)
	mustCheck(t, c)
}

func TestLinkUnlinkReap(t *testing.T) {
	c := newCatalog(t)
	d := mkdir(t, c, RootIno, "d")
	f := mkfile(t, c, RootIno, "f")
	if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(1), Length: 100}, 100, now()); err != nil {
		t.Fatal(err)
	}
	if err := c.SetXattr(ctx, f.Ino, "user.a", []byte("1"), 0, now()); err != nil {
		t.Fatal(err)
	}
	ts := now()
	l, err := c.Link(ctx, f.Ino, d.Ino, []byte("g"), ts)
	if err != nil || l.Nlink != 2 || l.Ctime != ts {
		t.Fatalf("link %+v %v", l, err)
	}
	if got, err := c.Lookup(ctx, d.Ino, []byte("g")); err != nil || got.Ino != f.Ino || got.Nlink != 2 {
		t.Fatalf("lookup via the new link %+v %v", got, err)
	}
	if got := stat(t, c, d.Ino); got.Mtime != ts || got.Nlink != 2 {
		t.Fatalf("link target dir %+v", got)
	}
	_, err = c.Link(ctx, d.Ino, RootIno, []byte("dd"), now())
	wantErrno(t, err, syscall.EPERM)
	_, err = c.Link(ctx, f.Ino, d.Ino, []byte("g"), now())
	wantErrno(t, err, syscall.EEXIST)
	_, err = c.Link(ctx, f.Ino, f.Ino, []byte("h"), now())
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = c.Link(ctx, 4242, d.Ino, []byte("h"), now())
	wantErrno(t, err, syscall.ENOENT)
	mustCheck(t, c)

	u, err := c.Unlink(ctx, RootIno, []byte("f"), now(), true)
	if err != nil || u.Nlink != 1 {
		t.Fatalf("unlink one of two links: %+v %v", u, err)
	}
	_, err = c.Unlink(ctx, RootIno, []byte("f"), now(), true)
	wantErrno(t, err, syscall.ENOENT)

	// Last link, still open: kept as an orphan with everything attached.
	u, err = c.Unlink(ctx, d.Ino, []byte("g"), now(), false)
	if err != nil || u.Nlink != 0 {
		t.Fatalf("unlink last link: %+v %v", u, err)
	}
	if chs, _ := c.Chunks(ctx, f.Ino, 0, -1); len(chs) != 1 {
		t.Fatal("orphan lost its chunks before Reap")
	}
	_, err = c.Link(ctx, f.Ino, RootIno, []byte("back"), now())
	wantErrno(t, err, syscall.ENOENT)
	mustCheck(t, c)
	if n, _ := c.PendingDeletes(ctx); n != 0 {
		t.Fatalf("%d deletions queued before Reap", n)
	}
	if ok, err := c.Reap(ctx, f.Ino, now()); err != nil || !ok {
		t.Fatalf("reap: %v %v", ok, err)
	}
	for what, err := range map[string]error{
		"inode": func() error { _, err := c.GetInode(ctx, f.Ino); return err }(),
		"key":   func() error { _, err := c.GetKey(ctx, f.Ino); return err }(),
	} {
		if Errno(err) != syscall.ENOENT {
			t.Errorf("%s after reap: %v", what, err)
		}
	}
	if xs, err := c.ListXattr(ctx, f.Ino); Errno(err) != syscall.ENOENT || len(xs) != 0 {
		t.Errorf("xattrs after reap: %v %v", xs, err)
	}
	due, err := c.NextDeletes(ctx, allDue, 10)
	if err != nil || len(due) != 1 || due[0].Name != ObjectName(obj(1)) {
		t.Fatalf("queued deletions after reap: %+v %v", due, err)
	}

	// Unlink with reap true does it all at once.
	g := mkfile(t, c, RootIno, "g")
	if _, err := c.SetChunk(ctx, g.Ino, Chunk{Index: 0, Object: obj(2), Length: 1}, 1, now()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Unlink(ctx, RootIno, []byte("g"), now(), true); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetInode(ctx, g.Ino)
	wantErrno(t, err, syscall.ENOENT)
	if n, _ := c.PendingDeletes(ctx); n != 2 {
		t.Fatalf("%d deletions queued, want 2", n)
	}
	mustCheck(t, c)
}

func TestLinkMax(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	if _, err := rawDB(t, c).Exec(`UPDATE inodes SET nlink = ? WHERE ino = ?`, MaxLinks, f.Ino); err != nil {
		t.Fatal(err)
	}
	_, err := c.Link(ctx, f.Ino, RootIno, []byte("one-too-many"), now())
	wantErrno(t, err, syscall.EMLINK)
}

func TestReadDir(t *testing.T) {
	c := newCatalog(t)
	d := mkdir(t, c, RootIno, "d")
	names := []string{"b", "a", "c\xff", "C", "aa", "z"}
	inos := map[string]uint64{}
	for i, n := range names {
		if i%2 == 0 {
			inos[n] = mkfile(t, c, d.Ino, n).Ino
		} else {
			inos[n] = mkdir(t, c, d.Ino, n).Ino
		}
	}
	want := []string{"C", "a", "aa", "b", "c\xff", "z"} // bytewise
	all, err := c.ReadDir(ctx, d.Ino, nil, 0)
	if err != nil || len(all) != len(want) {
		t.Fatalf("readdir %v %v", all, err)
	}
	for i, e := range all {
		if string(e.Name) != want[i] || e.Ino != inos[want[i]] {
			t.Fatalf("entry %d = %q/%d, want %q/%d", i, e.Name, e.Ino, want[i], inos[want[i]])
		}
		isDir := e.Mode&modeTypeMask == syscall.S_IFDIR
		if isDir != (string(e.Name) == "a" || string(e.Name) == "C" || string(e.Name) == "z") {
			t.Fatalf("entry %q mode %#o", e.Name, e.Mode)
		}
	}
	// Paged, resuming after the last name seen.
	var got []string
	var after []byte
	for {
		page, err := c.ReadDir(ctx, d.Ino, after, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 4 {
			t.Fatalf("page of %d entries, limit 4", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			got = append(got, string(e.Name))
		}
		after = page[len(page)-1].Name
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("paged listing %q", got)
	}
	plus, err := c.ReadDirPlus(ctx, d.Ino, []byte("aa"), 2)
	if err != nil || len(plus) != 2 || string(plus[0].Name) != "b" || plus[0].Inode.Ino != inos["b"] ||
		plus[0].Inode.FileID == [16]byte{} || plus[1].Inode.Nlink != 1 {
		t.Fatalf("readdirplus %+v %v", plus, err)
	}
	if fmt.Sprint(plus[0].Inode) != fmt.Sprint(stat(t, c, inos["b"])) {
		t.Fatal("readdirplus inode differs from getinode")
	}
	empty, err := c.ReadDir(ctx, inos["a"], nil, 0)
	if err != nil || len(empty) != 0 {
		t.Fatalf("empty dir: %v %v", empty, err)
	}
	_, err = c.ReadDir(ctx, inos["b"], nil, 0)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = c.ReadDirPlus(ctx, 9999, nil, 0)
	wantErrno(t, err, syscall.ENOENT)
}

func TestSetAttr(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	cs := c.ChunkSize()
	chs := []Chunk{{Index: 0, Object: obj(10), Length: cs}, {Index: 1, Object: obj(11), Length: cs},
		{Index: 2, Object: obj(12), Length: cs}, {Index: 3, Object: obj(13), Length: 5}}
	if _, err := c.SetChunks(ctx, f.Ino, chs, 3*cs+5, now()); err != nil {
		t.Fatal(err)
	}
	mode, uid, gid := uint32(syscall.S_IFDIR|0o4711), uint32(7), uint32(8) // type bits must be ignored
	at, mt := int64(111), int64(222)
	ts := now()
	got, err := c.SetAttr(ctx, f.Ino, AttrChange{Mode: &mode, UID: &uid, GID: &gid, Atime: &at, Mtime: &mt}, ts)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mode != syscall.S_IFREG|0o4711 || got.UID != 7 || got.GID != 8 || got.Atime != 111 || got.Mtime != 222 || got.Ctime != ts {
		t.Fatalf("setattr %+v", got)
	}
	if fmt.Sprint(stat(t, c, f.Ino)) != fmt.Sprint(got) {
		t.Fatal("setattr result differs from what was stored")
	}

	// Truncate into chunk 1: chunks 2 and 3 go, 0 and 1 stay (the FUSE
	// layer rewrites the partial chunk 1).
	size := cs + 10
	ts = now()
	got, err = c.SetAttr(ctx, f.Ino, AttrChange{Size: &size}, ts)
	if err != nil || got.Size != size || got.Mtime != ts || got.Ctime != ts {
		t.Fatalf("truncate %+v %v", got, err)
	}
	left, _ := c.Chunks(ctx, f.Ino, 0, -1)
	if len(left) != 2 || left[1].Index != 1 {
		t.Fatalf("chunks after truncate %+v", left)
	}
	due, _ := c.NextDeletes(ctx, allDue, 10)
	if len(due) != 2 || due[0].Name != ObjectName(obj(12)) || due[1].Name != ObjectName(obj(13)) {
		t.Fatalf("queued after truncate %+v", due)
	}
	// Exactly on a chunk boundary: chunk 1 goes too.
	size = cs
	if _, err := c.SetAttr(ctx, f.Ino, AttrChange{Size: &size}, now()); err != nil {
		t.Fatal(err)
	}
	if left, _ := c.Chunks(ctx, f.Ino, 0, -1); len(left) != 1 {
		t.Fatalf("chunks after truncate to the boundary %+v", left)
	}
	// Extend: sparse, no chunks added. Then to zero.
	size = 100 * cs
	if got, err := c.SetAttr(ctx, f.Ino, AttrChange{Size: &size}, now()); err != nil || got.Size != size {
		t.Fatalf("extend %+v %v", got, err)
	}
	size = 0
	if _, err := c.SetAttr(ctx, f.Ino, AttrChange{Size: &size}, now()); err != nil {
		t.Fatal(err)
	}
	if left, _ := c.Chunks(ctx, f.Ino, 0, -1); len(left) != 0 {
		t.Fatalf("chunks after truncate to 0 %+v", left)
	}
	if n, _ := c.PendingDeletes(ctx); n != 4 {
		t.Fatalf("%d objects queued, want 4", n)
	}
	mustCheck(t, c)

	d := mkdir(t, c, RootIno, "d")
	_, err = c.SetAttr(ctx, d.Ino, AttrChange{Size: &size}, now())
	wantErrno(t, err, syscall.EISDIR)
	s, _ := c.Symlink(ctx, RootIno, []byte("s"), []byte("x"), fileAttr())
	_, err = c.SetAttr(ctx, s.Ino, AttrChange{Size: &size}, now())
	wantErrno(t, err, syscall.EINVAL)
	neg := int64(-1)
	_, err = c.SetAttr(ctx, f.Ino, AttrChange{Size: &neg}, now())
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.SetAttr(ctx, 9999, AttrChange{}, now())
	wantErrno(t, err, syscall.ENOENT)
	// chmod on a directory keeps it a directory.
	m := uint32(0o700)
	if got, err := c.SetAttr(ctx, d.Ino, AttrChange{Mode: &m}, now()); err != nil || got.Mode != syscall.S_IFDIR|0o700 {
		t.Fatalf("chmod dir %+v %v", got, err)
	}
	// Explicit ctime (writeback cache sends it).
	ct := int64(5)
	if got, err := c.SetAttr(ctx, d.Ino, AttrChange{Ctime: &ct}, now()); err != nil || got.Ctime != 5 {
		t.Fatalf("explicit ctime %+v %v", got, err)
	}
}

func TestXattrs(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	_, err := c.GetXattr(ctx, f.Ino, "user.a")
	wantErrno(t, err, ENODATA)
	ts := now()
	if err := c.SetXattr(ctx, f.Ino, "user.a", []byte("one"), 0, ts); err != nil {
		t.Fatal(err)
	}
	if got := stat(t, c, f.Ino); got.Ctime != ts {
		t.Fatal("setxattr did not change ctime")
	}
	v, err := c.GetXattr(ctx, f.Ino, "user.a")
	if err != nil || string(v) != "one" {
		t.Fatalf("getxattr %q %v", v, err)
	}
	wantErrno(t, c.SetXattr(ctx, f.Ino, "user.a", []byte("x"), XattrCreate, now()), syscall.EEXIST)
	wantErrno(t, c.SetXattr(ctx, f.Ino, "user.b", []byte("x"), XattrReplace, now()), ENODATA)
	wantErrno(t, c.SetXattr(ctx, f.Ino, "user.b", []byte("x"), XattrCreate|XattrReplace, now()), syscall.EINVAL)
	if err := c.SetXattr(ctx, f.Ino, "user.a", []byte("two"), XattrReplace, now()); err != nil {
		t.Fatal(err)
	}
	if err := c.SetXattr(ctx, f.Ino, "user.b", nil, XattrCreate, now()); err != nil {
		t.Fatal(err)
	}
	if v, err := c.GetXattr(ctx, f.Ino, "user.b"); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value: %v %v", v, err)
	}
	if v, _ := c.GetXattr(ctx, f.Ino, "user.a"); string(v) != "two" {
		t.Fatalf("replaced value %q", v)
	}
	names, err := c.ListXattr(ctx, f.Ino)
	if err != nil || strings.Join(names, ",") != "user.a,user.b" {
		t.Fatalf("listxattr %v %v", names, err)
	}
	big := make([]byte, MaxXattrValue)
	if err := c.SetXattr(ctx, f.Ino, "user.big", big, 0, now()); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.SetXattr(ctx, f.Ino, "user.big", append(big, 0), 0, now()), syscall.E2BIG)
	wantErrno(t, c.SetXattr(ctx, f.Ino, strings.Repeat("n", MaxXattrName+1), nil, 0, now()), syscall.ERANGE)
	_, err = c.GetXattr(ctx, f.Ino, strings.Repeat("n", MaxXattrName+1))
	wantErrno(t, err, syscall.ERANGE)
	wantErrno(t, c.SetXattr(ctx, 9999, "user.a", nil, 0, now()), syscall.ENOENT)
	_, err = c.GetXattr(ctx, 9999, "user.a")
	wantErrno(t, err, syscall.ENOENT)

	if err := c.RemoveXattr(ctx, f.Ino, "user.a", now()); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.RemoveXattr(ctx, f.Ino, "user.a", now()), ENODATA)
	wantErrno(t, c.RemoveXattr(ctx, 9999, "user.a", now()), syscall.ENOENT)
	names, _ = c.ListXattr(ctx, f.Ino)
	if strings.Join(names, ",") != "user.b,user.big" {
		t.Fatalf("after remove: %v", names)
	}
	d := mkdir(t, c, RootIno, "d")
	if names, err := c.ListXattr(ctx, d.Ino); err != nil || len(names) != 0 {
		t.Fatalf("listxattr of a bare dir: %v %v", names, err)
	}
}
