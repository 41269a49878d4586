package fusefront

import (
	"bytes"
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"coffer/fs/content"
	"coffer/fs/meta"
)

func TestCreateWriteRead(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("a", "hello")
	if got := m.read("a"); got != "hello" {
		t.Fatalf("read %q", got)
	}
	st := m.lstat("a")
	if st.Size != 5 || st.Mode != syscall.S_IFREG|0o644 || st.Nlink != 1 || st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("stat %+v", st)
	}
	if st.Ino <= meta.RootIno {
		t.Fatalf("ino %d", st.Ino)
	}
	root := m.lstat("")
	if root.Ino != meta.RootIno || root.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatalf("root stat %+v", root)
	}

	// O_EXCL on an existing name.
	_, err := os.OpenFile(m.path("a"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	wantErrno(t, "O_EXCL", err, syscall.EEXIST)

	// O_APPEND writes at the end, whatever the offset.
	fh, err := os.OpenFile(m.path("a"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString(" world"); err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString("!"); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	if got := m.read("a"); got != "hello world!" {
		t.Fatalf("after append: %q", got)
	}

	// O_TRUNC empties it (it reaches us as SETATTR size 0).
	fh, err = os.OpenFile(m.path("a"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("a"); st.Size != 0 {
		t.Fatalf("size after O_TRUNC: %d", st.Size)
	}
	fh.WriteString("xy")
	fh.Close()
	if got := m.read("a"); got != "xy" {
		t.Fatalf("after O_TRUNC and write: %q", got)
	}

	// Overwrite in the middle, read at offsets, across block boundaries.
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320000 bytes: several chunks
	if err := os.WriteFile(m.path("big"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	fh, err = os.OpenFile(m.path("big"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	patch := []byte("PATCHED")
	if _, err := fh.WriteAt(patch, 70000); err != nil {
		t.Fatal(err)
	}
	copy(big[70000:], patch)
	buf := make([]byte, 9000)
	if _, err := fh.ReadAt(buf, 66000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, big[66000:75000]) {
		t.Fatal("read-back after a partial overwrite differs")
	}
	if err := fh.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if err := unix.Fdatasync(int(fh.Fd())); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	var fst syscall.Stat_t
	if err := syscall.Fstat(int(fh.Fd()), &fst); err != nil || fst.Size != int64(len(big)) {
		t.Fatalf("fstat size %d, err %v", fst.Size, err)
	}
}

func TestErrnos(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "x")
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.write("d/inner", "y")

	_, err := os.Stat(m.path("missing"))
	wantErrno(t, "stat missing", err, syscall.ENOENT)
	wantErrno(t, "open missing", func() error { _, err := os.Open(m.path("missing")); return err }(), syscall.ENOENT)
	wantErrno(t, "mkdir existing", os.Mkdir(m.path("d"), 0o755), syscall.EEXIST)
	wantErrno(t, "mkdir over file", os.Mkdir(m.path("f"), 0o755), syscall.EEXIST)
	wantErrno(t, "rmdir non-empty", syscall.Rmdir(m.path("d")), syscall.ENOTEMPTY)
	wantErrno(t, "unlink dir", syscall.Unlink(m.path("d")), syscall.EISDIR)
	wantErrno(t, "rmdir file", syscall.Rmdir(m.path("f")), syscall.ENOTDIR)
	_, err = os.Stat(m.path("f/x"))
	wantErrno(t, "path through a file", err, syscall.ENOTDIR)
	wantErrno(t, "create under a file", os.WriteFile(m.path("f/x"), nil, 0o644), syscall.ENOTDIR)
	wantErrno(t, "link to dir", os.Link(m.path("d"), m.path("dl")), syscall.EPERM)
	if err := os.Mkdir(m.path("d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "dir into own subtree", os.Rename(m.path("d"), m.path("d/sub/d")), syscall.EINVAL)
	wantErrno(t, "unlink missing", syscall.Unlink(m.path("missing")), syscall.ENOENT)
	wantErrno(t, "rmdir missing", syscall.Rmdir(m.path("missing")), syscall.ENOENT)
	wantErrno(t, "rename missing", os.Rename(m.path("missing"), m.path("x")), syscall.ENOENT)
	wantErrno(t, "readlink of a file", func() error { _, err := os.Readlink(m.path("f")); return err }(), syscall.EINVAL)
	wantErrno(t, "open dir for writing", func() error { _, err := os.OpenFile(m.path("d"), os.O_WRONLY, 0); return err }(), syscall.EISDIR)

	// Across mounts: EXDEV (the kernel's answer; within the mount it never is).
	wantErrno(t, "rename to another file system", os.Rename(m.path("f"), filepath.Join(t.TempDir(), "f")), syscall.EXDEV)
	wantErrno(t, "link to another file system", os.Link(m.path("f"), filepath.Join(t.TempDir(), "f")), syscall.EXDEV)

	// Names: 255 bytes work, 256 do not.
	long := strings.Repeat("n", 255)
	m.write(long, "long")
	if got := m.read(long); got != "long" {
		t.Fatalf("255-byte name read %q", got)
	}
	if err := os.Mkdir(m.path(strings.Repeat("d", 255)), 0o755); err != nil {
		t.Fatal(err)
	}
	tooLong := strings.Repeat("n", 256)
	wantErrno(t, "create 256-byte name", os.WriteFile(m.path(tooLong), nil, 0o644), syscall.ENAMETOOLONG)
	wantErrno(t, "mkdir 256-byte name", os.Mkdir(m.path(tooLong), 0o755), syscall.ENAMETOOLONG)
	_, err = os.Stat(m.path(tooLong))
	wantErrno(t, "stat 256-byte name", err, syscall.ENAMETOOLONG)
	wantErrno(t, "rename to 256-byte name", os.Rename(m.path("f"), m.path(tooLong)), syscall.ENAMETOOLONG)
	wantErrno(t, "symlink 256-byte name", os.Symlink("t", m.path(tooLong)), syscall.ENAMETOOLONG)
	wantErrno(t, "link 256-byte name", os.Link(m.path("f"), m.path(tooLong)), syscall.ENAMETOOLONG)
}

func TestMkdirRmdirNlink(t *testing.T) {
	m := mountFS(t, mountConfig{})
	root0 := m.lstat("").Nlink
	if err := os.MkdirAll(m.path("a/b/c"), 0o750); err != nil {
		t.Fatal(err)
	}
	if n := m.lstat("").Nlink; n != root0+1 {
		t.Errorf("root nlink %d, want %d", n, root0+1)
	}
	if st := m.lstat("a"); st.Nlink != 3 || st.Mode != syscall.S_IFDIR|0o750 {
		t.Errorf("a: nlink %d mode %o", st.Nlink, st.Mode)
	}
	if err := os.Remove(m.path("a/b/c")); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("a/b"); st.Nlink != 2 {
		t.Errorf("a/b nlink %d after rmdir", st.Nlink)
	}
	// A removed directory held as a working directory (an open fd here)
	// still answers stat and readdir, empty, as on ext4.
	dfd, err := syscall.Open(m.path("a/b"), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(m.path("a/b")); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(dfd, &st); err != nil {
		t.Errorf("fstat of a removed dir: %v", err)
	}
	// (getdents there is ENOENT: the VFS refuses to list a dead directory.)
	ino := st.Ino
	fd2, err := syscall.Openat(dfd, "new", syscall.O_CREAT|syscall.O_WRONLY, 0o644)
	if err == nil {
		syscall.Close(fd2)
	}
	wantErrno(t, "create in a removed dir", err, syscall.ENOENT)
	syscall.Close(dfd)
	// Once the kernel forgets it, its row goes.
	eventually(t, "removed dir reaped", func() bool {
		dropCaches()
		_, err := m.vol.Catalog().GetInode(context.Background(), ino)
		return errors.Is(err, syscall.ENOENT)
	})
}

// dropCaches makes the kernel forget unused inodes (so FORGETs arrive).
func dropCaches() { os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0) }

func TestHardLinks(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("a", "shared")
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(m.path("a"), m.path("d/b")); err != nil {
		t.Fatal(err)
	}
	a, b := m.lstat("a"), m.lstat("d/b")
	if a.Ino != b.Ino || a.Nlink != 2 || b.Nlink != 2 {
		t.Fatalf("after link: a ino %d nlink %d, b ino %d nlink %d", a.Ino, a.Nlink, b.Ino, b.Nlink)
	}
	// Writes through one name show through the other (one kernel inode).
	fh, err := os.OpenFile(m.path("d/b"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString(" content")
	fh.Close()
	if got := m.read("a"); got != "shared content" {
		t.Fatalf("through the other link: %q", got)
	}
	if a := m.lstat("a"); a.Size != int64(len("shared content")) {
		t.Fatalf("size through the other link: %d", a.Size)
	}
	if err := os.Link(m.path("a"), m.path("c")); err != nil {
		t.Fatal(err)
	}
	if n := m.lstat("d/b").Nlink; n != 3 {
		t.Fatalf("nlink %d after a second link", n)
	}
	wantErrno(t, "link onto existing", os.Link(m.path("a"), m.path("c")), syscall.EEXIST)
	if err := os.Remove(m.path("a")); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("c"); st.Nlink != 2 {
		t.Fatalf("nlink %d after unlinking one name", st.Nlink)
	}
	if got := m.read("d/b"); got != "shared content" {
		t.Fatalf("after unlinking one name: %q", got)
	}
	// Rename onto another link of the same file does nothing.
	if err := os.Rename(m.path("c"), m.path("d/b")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("c")); err != nil {
		t.Errorf("rename onto a link of the same inode removed the source: %v", err)
	}
	// The row survives until the last name goes.
	ino := b.Ino
	os.Remove(m.path("c"))
	os.Remove(m.path("d/b"))
	eventually(t, "inode reaped after its last name", func() bool {
		_, err := m.vol.Catalog().GetInode(context.Background(), ino)
		return errors.Is(err, syscall.ENOENT)
	})
}

func TestUnlinkedOpenFile(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("tmp", "before")
	fh, err := os.OpenFile(m.path("tmp"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ino := m.lstat("tmp").Ino
	if err := os.Remove(m.path("tmp")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("tmp")); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("stat after unlink: %v", err)
	}
	// Still readable and writable through the handle.
	if _, err := fh.WriteAt([]byte(" and after, a longer tail"), 6); err != nil {
		t.Fatalf("write after unlink: %v", err)
	}
	buf := make([]byte, 64)
	n, err := fh.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "before and after, a longer tail" {
		t.Fatalf("read after unlink: %q (%v)", got, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(fh.Fd()), &st); err != nil || st.Nlink != 0 || st.Size != int64(n) {
		t.Fatalf("fstat after unlink: %+v %v", st, err)
	}
	if err := fh.Sync(); err != nil {
		t.Fatalf("fsync after unlink: %v", err)
	}
	// A second handle through /proc keeps it alive past the first close.
	fh2, err := os.Open("/proc/self/fd/" + fmtInt(int(fh.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	fh.Close()
	if _, err := m.vol.Catalog().GetInode(context.Background(), ino); err != nil {
		t.Fatalf("row gone while a handle is open: %v", err)
	}
	n, _ = fh2.ReadAt(buf, 0)
	if string(buf[:n]) != "before and after, a longer tail" {
		t.Fatalf("second handle reads %q", buf[:n])
	}
	fh2.Close()
	eventually(t, "unlinked file reaped after its last close", func() bool {
		_, err := m.vol.Catalog().GetInode(context.Background(), ino)
		return errors.Is(err, syscall.ENOENT)
	})
	if orphans, err := m.vol.Catalog().Orphans(context.Background()); err != nil || len(orphans) != 0 {
		t.Fatalf("orphans left: %v %v", orphans, err)
	}

	// Renaming over an open file: the replaced file lives on through its
	// handle until closed.
	m.write("victim", "old content")
	m.write("new", "new content")
	vh, err := os.Open(m.path("victim"))
	if err != nil {
		t.Fatal(err)
	}
	vIno := m.lstat("victim").Ino
	if err := os.Rename(m.path("new"), m.path("victim")); err != nil {
		t.Fatal(err)
	}
	if got := m.read("victim"); got != "new content" {
		t.Fatalf("after rename over: %q", got)
	}
	n, _ = vh.ReadAt(buf, 0)
	if string(buf[:n]) != "old content" {
		t.Fatalf("replaced file through its handle: %q", buf[:n])
	}
	if _, err := m.vol.Catalog().GetInode(context.Background(), vIno); err != nil {
		t.Fatalf("replaced file's row gone while open: %v", err)
	}
	vh.Close()
	eventually(t, "replaced file reaped after close", func() bool {
		_, err := m.vol.Catalog().GetInode(context.Background(), vIno)
		return errors.Is(err, syscall.ENOENT)
	})
}

// Unlinking the last name of a closed file deletes it at once, whether its
// data is on the remote (the file is gone from the catalog in the unlink's own
// transaction) or may still be staged or uploading (the last close starts the
// upload; the data path drops what it holds first).
func TestUnlinkClosedFiles(t *testing.T) {
	m := mountFS(t, mountConfig{dirtyDelay: time.Hour})
	ctx := context.Background()
	remoteFiles := func() int {
		n := 0
		_ = filepath.WalkDir(filepath.Join(filepath.Dir(m.dir), "remote", "c"), func(_ string, d iofs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	m.write("synced", "on the remote")
	m.fsync("synced")
	m.write("staged", "only in staging")
	synced, staged := m.lstat("synced").Ino, m.lstat("staged").Ino
	if n := remoteFiles(); n < 1 {
		t.Fatalf("%d objects on the remote after an fsync", n)
	}
	for _, name := range []string{"synced", "staged"} {
		if err := os.Remove(m.path(name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, ino := range []uint64{synced, staged} {
		if _, err := m.vol.Catalog().GetInode(ctx, ino); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("inode %d after unlink: %v, want ENOENT", ino, err)
		}
		if _, err := m.vol.Catalog().GetKey(ctx, ino); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("key record of inode %d after unlink: %v, want ENOENT", ino, err)
		}
		if cs, err := m.vol.Catalog().Chunks(ctx, ino, 0, 1<<40); err != nil || len(cs) != 0 {
			t.Errorf("chunk rows of inode %d after unlink: %v %v", ino, cs, err)
		}
		if ups, err := m.vol.Catalog().UploadsOf(ctx, ino); err != nil || len(ups) != 0 {
			t.Errorf("upload queue of inode %d after unlink: %v %v", ino, ups, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(filepath.Dir(m.dir), "staging")); err != nil || len(ents) != 1 || ents[0].Name() != content.StagingMarker {
		t.Errorf("staging after the unlinks: %v %v", ents, err)
	}
	eventually(t, "the unlinked file's object deleted from the remote", func() bool { return remoteFiles() == 0 })
}

func fmtInt(i int) string { return strconv.Itoa(i) }

func TestRenameMatrix(t *testing.T) {
	m := mountFS(t, mountConfig{})
	mk := func(rel string) {
		if err := os.Mkdir(m.path(rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("d1")
	mk("d2")
	m.write("d1/f", "f")
	m.write("d2/g", "g")

	// Across directories: the file moves, both parents' times change.
	if err := os.Rename(m.path("d1/f"), m.path("d2/f")); err != nil {
		t.Fatal(err)
	}
	if got := m.read("d2/f"); got != "f" {
		t.Fatalf("moved file reads %q", got)
	}
	_, err := os.Stat(m.path("d1/f"))
	wantErrno(t, "old name after rename", err, syscall.ENOENT)

	// Over an existing file: the target's content is replaced, the old
	// inode goes.
	gIno := m.lstat("d2/g").Ino
	if err := os.Rename(m.path("d2/f"), m.path("d2/g")); err != nil {
		t.Fatal(err)
	}
	if got := m.read("d2/g"); got != "f" {
		t.Fatalf("rename over a file: %q", got)
	}
	eventually(t, "replaced file reaped", func() bool {
		_, err := m.vol.Catalog().GetInode(context.Background(), gIno)
		return errors.Is(err, syscall.ENOENT)
	})

	// A directory moves across parents: link counts follow.
	mk("d1/sub")
	n1, n2 := m.lstat("d1").Nlink, m.lstat("d2").Nlink
	if err := os.Rename(m.path("d1/sub"), m.path("d2/sub")); err != nil {
		t.Fatal(err)
	}
	if m.lstat("d1").Nlink != n1-1 || m.lstat("d2").Nlink != n2+1 {
		t.Errorf("parent nlinks after moving a dir: %d->%d, %d->%d", n1, m.lstat("d1").Nlink, n2, m.lstat("d2").Nlink)
	}

	// Directory over an empty directory works; over a non-empty one not.
	mk("empty")
	// syscall.Rename: os.Rename refuses an existing directory as target itself.
	if err := syscall.Rename(m.path("d2/sub"), m.path("empty")); err != nil {
		t.Fatalf("dir over empty dir: %v", err)
	}
	mk("full")
	m.write("full/x", "x")
	mk("src")
	wantErrno(t, "dir over non-empty dir", syscall.Rename(m.path("src"), m.path("full")), syscall.ENOTEMPTY)
	wantErrno(t, "file over dir", syscall.Rename(m.path("d2/g"), m.path("full")), syscall.EISDIR)
	wantErrno(t, "dir over file", os.Rename(m.path("src"), m.path("d2/g")), syscall.ENOTDIR)

	// renameat2 flags.
	m.write("p", "P")
	m.write("q", "Q")
	wantErrno(t, "RENAME_NOREPLACE onto existing", unix.Renameat2(unix.AT_FDCWD, m.path("p"), unix.AT_FDCWD, m.path("q"), unix.RENAME_NOREPLACE), syscall.EEXIST)
	if err := unix.Renameat2(unix.AT_FDCWD, m.path("p"), unix.AT_FDCWD, m.path("r"), unix.RENAME_NOREPLACE); err != nil {
		t.Fatalf("RENAME_NOREPLACE onto a free name: %v", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, m.path("r"), unix.AT_FDCWD, m.path("q"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("RENAME_EXCHANGE: %v", err)
	}
	if m.read("r") != "Q" || m.read("q") != "P" {
		t.Fatalf("after exchange r=%q q=%q", m.read("r"), m.read("q"))
	}
	// Exchange a file and a directory.
	if err := unix.Renameat2(unix.AT_FDCWD, m.path("r"), unix.AT_FDCWD, m.path("full"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("RENAME_EXCHANGE file/dir: %v", err)
	}
	if m.read("full") != "Q" || m.read("r/x") != "x" {
		t.Fatal("file/dir exchange did not swap")
	}
	wantErrno(t, "RENAME_EXCHANGE with a missing name", unix.Renameat2(unix.AT_FDCWD, m.path("q"), unix.AT_FDCWD, m.path("nothere"), unix.RENAME_EXCHANGE), syscall.ENOENT)
	wantErrno(t, "RENAME_WHITEOUT", unix.Renameat2(unix.AT_FDCWD, m.path("q"), unix.AT_FDCWD, m.path("w"), unix.RENAME_WHITEOUT), syscall.EINVAL)

	// Renaming onto itself is a no-op.
	if err := os.Rename(m.path("q"), m.path("q")); err != nil || m.read("q") != "P" {
		t.Fatalf("rename onto itself: %v", err)
	}
	// Renaming an open file keeps the handle working.
	fh, err := os.OpenFile(m.path("q"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path("q"), m.path("d1/q2")); err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("Z"), 1)
	fh.Close()
	if got := m.read("d1/q2"); got != "PZ" {
		t.Fatalf("write through a renamed open file: %q", got)
	}
}

func TestSymlinkMknod(t *testing.T) {
	m := mountFS(t, mountConfig{opt: Options{AllowOther: true}})
	m.write("target", "data")
	if err := os.Symlink("target", m.path("link")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(m.path("link")); err != nil || got != "target" {
		t.Fatalf("readlink %q %v", got, err)
	}
	if got := m.read("link"); got != "data" {
		t.Fatalf("read through symlink %q", got)
	}
	if st := m.lstat("link"); st.Mode != syscall.S_IFLNK|0o777 || st.Size != int64(len("target")) {
		t.Fatalf("symlink lstat %+v", st)
	}
	long := strings.Repeat("x/", 2000) + "end" // 4003 bytes
	if err := os.Symlink(long, m.path("longlink")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(m.path("longlink")); got != long {
		t.Fatal("long symlink target changed")
	}
	wantErrno(t, "symlink over existing", os.Symlink("x", m.path("link")), syscall.EEXIST)

	if err := syscall.Mkfifo(m.path("fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("fifo"); st.Mode != syscall.S_IFIFO|0o640 {
		t.Fatalf("fifo mode %o", st.Mode)
	}
	// A FIFO works (the kernel runs it; the file system only names it).
	done := make(chan string)
	go func() {
		b, _ := os.ReadFile(m.path("fifo"))
		done <- string(b)
	}()
	if err := os.WriteFile(m.path("fifo"), []byte("through the pipe"), 0); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != "through the pipe" {
		t.Fatalf("fifo carried %q", got)
	}
	if err := syscall.Mknod(m.path("sock"), syscall.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("sock"); st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		t.Fatalf("socket mode %o", st.Mode)
	}
	dev := int(unix.Mkdev(1, 3))
	if err := syscall.Mknod(m.path("null"), syscall.S_IFCHR|0o666, dev); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("null"); st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != uint64(dev) {
		t.Fatalf("char device %+v", st)
	}
	if err := syscall.Mknod(m.path("reg"), syscall.S_IFREG|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if st := m.lstat("reg"); st.Mode != syscall.S_IFREG|0o600 || st.Size != 0 {
		t.Fatalf("mknod regular %+v", st)
	}
	m.write("reg", "now with data")
	if m.read("reg") != "now with data" {
		t.Fatal("mknod'ed regular file does not hold data")
	}
	// Device nodes only for root; nobody gets EPERM (from the kernel or us).
	m.allowOthers()
	out, err := m.asNobody("mknod " + m.path("pub/dev") + " c 1 3")
	if err == nil || !strings.Contains(out, "not permitted") {
		t.Errorf("mknod by nobody: %v %s", err, out)
	}
}

// allowOthers makes a world-writable, sticky directory "pub" for the
// tests that run commands as nobody.
func (m *mounted) allowOthers() {
	m.t.Helper()
	if err := os.Mkdir(m.path("pub"), 0o777); err != nil {
		m.t.Fatal(err)
	}
	if err := syscall.Chmod(m.path("pub"), 0o1777); err != nil {
		m.t.Fatal(err)
	}
}

func TestReaddir(t *testing.T) {
	m := mountFS(t, mountConfig{})
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 1300 // several catalog batches
	var want []string
	for i := 0; i < n; i++ {
		name := "file-" + fmtInt(100000+i)
		want = append(want, name)
		fd, err := syscall.Open(m.path("d/"+name), syscall.O_CREAT|syscall.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			syscall.Write(fd, []byte(name))
		}
		syscall.Close(fd)
	}
	ents, err := os.ReadDir(m.path("d"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
		if e.Type() != 0 {
			t.Fatalf("%s type %v", e.Name(), e.Type())
		}
	}
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("readdir returned %d names, want %d", len(got), len(want))
	}
	// readdirplus answers the kernel's lookups from the listing: after the
	// kernel forgot the names, listing and stat'ing every entry costs a
	// handful of catalog lookups, not one per entry.
	dropCaches()
	before := m.fs.nodeLookups.Load()
	ents, err = os.ReadDir(m.path("d"))
	if err != nil || len(ents) != n {
		t.Fatalf("second listing: %d entries, %v", len(ents), err)
	}
	for _, e := range ents {
		m.lstat("d/" + e.Name())
	}
	if got := m.fs.nodeLookups.Load() - before; got > n/10 {
		t.Errorf("listing and stat'ing %d entries took %d catalog lookups", n, got)
	}
	// Attributes through readdirplus are right (sizes of written files).
	for i := 0; i < n; i += 100 {
		name := "file-" + fmtInt(100000+i)
		if st := m.lstat("d/" + name); st.Size != int64(len(name)) {
			t.Fatalf("%s size %d", name, st.Size)
		}
	}

	// Seek: remember the offset after some entries, read on, seek back.
	fd, err := syscall.Open(m.path("d"), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	all := direntsWithOffsets(t, fd)
	if len(all) != n+2 || all[0].name != "." || all[1].name != ".." {
		t.Fatalf("getdents: %d entries, first %v", len(all), all[:2])
	}
	if all[1].ino != meta.RootIno || all[0].ino != m.lstat("d").Ino {
		t.Errorf(". and .. inos %d %d", all[0].ino, all[1].ino)
	}
	for _, k := range []int{700, 3, 1000, 0, n + 1} {
		if _, err := unix.Seek(fd, all[k].off, 0); err != nil {
			t.Fatalf("seekdir: %v", err)
		}
		rest := direntsWithOffsets(t, fd)
		if len(rest) != n+2-(k+1) {
			t.Fatalf("after seeking to entry %d: %d entries, want %d", k, len(rest), n+2-(k+1))
		}
		if len(rest) > 0 && rest[0].name != all[k+1].name {
			t.Fatalf("after seeking to entry %d: first %q, want %q", k, rest[0].name, all[k+1].name)
		}
	}
	// Rewind and see a change.
	m.write("d/zzz-new", "")
	unix.Seek(fd, 0, 0)
	again := direntsWithOffsets(t, fd)
	if len(again) != n+3 || again[len(again)-1].name != "zzz-new" {
		t.Fatalf("after rewind: %d entries", len(again))
	}
}

type dirent struct {
	name string
	ino  uint64
	off  int64
}

func direntsWithOffsets(t *testing.T, fd int) []dirent {
	t.Helper()
	var out []dirent
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents: %v", err)
		}
		if n == 0 {
			return out
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := int(b[16]) | int(b[17])<<8
			ino := leUint64(b[0:8])
			off := int64(leUint64(b[8:16]))
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			out = append(out, dirent{string(name), ino, off})
			b = b[reclen:]
		}
	}
}

func leUint64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestXattrs(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "x")
	p := m.path("f")
	if err := unix.Setxattr(p, "user.color", []byte("blue"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(p, "user.color", buf)
	if err != nil || string(buf[:n]) != "blue" {
		t.Fatalf("getxattr %q %v", buf[:n], err)
	}
	if n, err := unix.Getxattr(p, "user.color", nil); err != nil || n != 4 {
		t.Fatalf("size query: %d %v", n, err)
	}
	_, err = unix.Getxattr(p, "user.color", make([]byte, 2))
	wantErrno(t, "getxattr into a small buffer", err, syscall.ERANGE)
	_, err = unix.Getxattr(p, "user.none", buf)
	wantErrno(t, "getxattr missing", err, syscall.ENODATA)
	wantErrno(t, "XATTR_CREATE on existing", unix.Setxattr(p, "user.color", []byte("red"), unix.XATTR_CREATE), syscall.EEXIST)
	wantErrno(t, "XATTR_REPLACE on missing", unix.Setxattr(p, "user.none", []byte("x"), unix.XATTR_REPLACE), syscall.ENODATA)
	if err := unix.Setxattr(p, "user.color", []byte("red"), unix.XATTR_REPLACE); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.empty", nil, unix.XATTR_CREATE); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Getxattr(p, "user.empty", buf); err != nil || n != 0 {
		t.Fatalf("empty value: %d %v", n, err)
	}
	big := bytes.Repeat([]byte{0xab}, 60000)
	if err := unix.Setxattr(p, "user.big", big, 0); err != nil {
		t.Fatal(err)
	}
	bigBuf := make([]byte, 65536)
	if n, err := unix.Getxattr(p, "user.big", bigBuf); err != nil || !bytes.Equal(bigBuf[:n], big) {
		t.Fatalf("big value: %d %v", n, err)
	}
	// List: NUL-separated, ERANGE for a small buffer.
	n, err = unix.Listxattr(p, nil)
	if err != nil || n != len("user.big\x00user.color\x00user.empty\x00") {
		t.Fatalf("listxattr size %d %v", n, err)
	}
	lb := make([]byte, n)
	if _, err := unix.Listxattr(p, lb); err != nil || string(lb) != "user.big\x00user.color\x00user.empty\x00" {
		t.Fatalf("listxattr %q %v", lb, err)
	}
	_, err = unix.Listxattr(p, make([]byte, 3))
	wantErrno(t, "listxattr into a small buffer", err, syscall.ERANGE)
	if err := unix.Removexattr(p, "user.color"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "removexattr missing", unix.Removexattr(p, "user.color"), syscall.ENODATA)
	wantErrno(t, "unknown namespace", unix.Setxattr(p, "bogus.x", []byte("1"), 0), syscall.EOPNOTSUPP)
	wantErrno(t, "security.capability", unix.Setxattr(p, "security.capability", capV2, 0), syscall.EOPNOTSUPP)
	if err := unix.Setxattr(p, "security.label", []byte("x"), 0); err != nil {
		t.Errorf("security.* other than capability: %v", err)
	}
	unix.Removexattr(p, "security.label")
	// Directories carry xattrs too; trusted.* works for root.
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(m.path("d"), "trusted.t", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Getxattr(m.path("d"), "trusted.t", buf); err != nil || string(buf[:n]) != "1" {
		t.Fatalf("trusted xattr on dir: %v", err)
	}
	// xattrs are removed with the file.
	ino := m.lstat("f").Ino
	os.Remove(p)
	eventually(t, "file reaped", func() bool {
		_, err := m.vol.Catalog().ListXattr(context.Background(), ino)
		return errors.Is(err, syscall.ENOENT)
	})
}

// capV2 is a valid security.capability value (VFS_CAP_REVISION_2,
// permitted CAP_NET_BIND_SERVICE): the kernel checks the format first.
var capV2 = []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func TestStatfs(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", strings.Repeat("x", 100000))
	var st unix.Statfs_t
	if err := unix.Statfs(m.dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bsize != attrBlkSize || st.Namelen != 255 || st.Bavail < 1<<30 || st.Blocks <= st.Bfree || st.Files <= st.Ffree || st.Ffree == 0 {
		t.Fatalf("statfs %+v", st)
	}
	if used := (st.Blocks - st.Bfree) * uint64(st.Bsize); used < 100000 {
		t.Fatalf("used %d bytes, want >= 100000", used)
	}
}

func TestReadOnlyMount(t *testing.T) {
	v, dir := newVolume(t, false)
	// Put something in first through a writable mount of the catalog.
	ctx := context.Background()
	if _, err := v.Catalog().Mkdir(ctx, meta.RootIno, []byte("d"), meta.Inode{Mode: 0o755, Ctime: 1}); err != nil {
		t.Fatal(err)
	}
	m := mountVolume(t, v, dir, mountConfig{opt: Options{ReadOnly: true}})
	if st := m.lstat("d"); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		t.Fatal("read-only mount does not show the tree")
	}
	wantErrno(t, "create", os.WriteFile(m.path("f"), nil, 0o644), syscall.EROFS)
	wantErrno(t, "mkdir", os.Mkdir(m.path("e"), 0o755), syscall.EROFS)
	wantErrno(t, "rmdir", syscall.Rmdir(m.path("d")), syscall.EROFS)
	wantErrno(t, "chmod", os.Chmod(m.path("d"), 0o700), syscall.EROFS)
	wantErrno(t, "setxattr", unix.Setxattr(m.path("d"), "user.x", []byte("1"), 0), syscall.EROFS)
	wantErrno(t, "symlink", os.Symlink("x", m.path("l")), syscall.EROFS)
	wantErrno(t, "rename", os.Rename(m.path("d"), m.path("e")), syscall.EROFS)
	// Our own checks too, under the kernel's ro flag.
	if _, errno := m.fs.Root().Mkdir(context.Background(), "x", 0o755, nil); errno != syscall.EROFS {
		t.Errorf("Mkdir on a read-only FS: %v", errno)
	}
}

// TestCreateRace calls Create directly for a name that exists, as happens
// when another process creates it between the kernel's lookup and CREATE.
func TestCreateRace(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("exists", "old data")
	os.Chmod(m.path("exists"), 0o600)
	root := m.fs.Root()
	as := func(uid uint32) context.Context {
		return fuse.NewContext(context.Background(), &fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: uid}})
	}
	var out fuse.EntryOut
	_, _, _, errno := root.Create(as(0), "exists", syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o644, &out)
	if errno != syscall.EEXIST {
		t.Fatalf("O_EXCL on an existing name: %v", errno)
	}
	_, _, _, errno = root.Create(as(65534), "exists", syscall.O_CREAT|syscall.O_WRONLY, 0o644, &out)
	if errno != syscall.EACCES {
		t.Fatalf("another user opening root's 0600 file through the race: %v", errno)
	}
	child, fh, _, errno := root.Create(as(0), "exists", syscall.O_CREAT|syscall.O_RDWR|syscall.O_TRUNC, 0o644, &out)
	if errno != 0 {
		t.Fatalf("O_CREAT without O_EXCL on an existing file: %v", errno)
	}
	if out.Attr.Ino != m.lstat("exists").Ino {
		t.Errorf("opened ino %d, want the existing file's", out.Attr.Ino)
	}
	node := child.Operations().(*Node)
	if got, errno := node.Write(as(0), fh, []byte("new"), 0); errno != 0 || got != 3 {
		t.Fatalf("write: %d %v", got, errno)
	}
	node.Flush(as(0), fh)
	node.Release(as(0), fh)
	time.Sleep(1100 * time.Millisecond) // the kernel's cached attributes expire
	if got := m.read("exists"); got != "new" {
		t.Fatalf("after O_TRUNC and write through the race path: %q", got)
	}
}
