package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// entry is everything the tests compare about one path of a tree.
type entry struct {
	Path   string // relative to the root, "/"-separated
	Type   string // file, dir, symlink, fifo, char, block, socket
	Perm   uint32 // mode & 07777
	UID    uint32
	GID    uint32
	Size   int64 // files and symlinks
	Nlink  uint64
	Hash   string // sha256 of a file's content
	Target string // symlink target
	Xattrs string // sorted "name=hex(value)" of user.* xattrs
	Ino    uint64
	Mtime  int64  // ns
	Ctime  int64  // ns
	Group  string // smallest path sharing this inode (hard links)
}

// snapshot reads the whole tree under root (root itself is recorded as ".").
func snapshot(t testing.TB, root string) map[string]*entry {
	t.Helper()
	out := map[string]*entry{}
	byIno := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		e, err := readEntry(p)
		if err != nil {
			return err
		}
		e.Path = filepath.ToSlash(rel)
		out[e.Path] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	// Hard-link groups: name each group by its smallest path.
	paths := make([]string, 0, len(out))
	for p := range out {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		e := out[p]
		if e.Type == "dir" {
			continue
		}
		if g, ok := byIno[e.Ino]; ok {
			e.Group = g
		} else {
			byIno[e.Ino] = p
			e.Group = p
		}
	}
	return out
}

func readEntry(p string) (*entry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, err
	}
	e := &entry{
		Perm: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Nlink: uint64(st.Nlink), Ino: st.Ino,
		Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type, e.Size = "file", st.Size
		h, n, err := hashFile(p)
		if err != nil {
			return nil, err
		}
		if n != st.Size {
			return nil, fmt.Errorf("%s: stat size %d but %d bytes read", p, st.Size, n)
		}
		e.Hash = h
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFLNK:
		e.Type, e.Size = "symlink", st.Size
		tgt, err := os.Readlink(p)
		if err != nil {
			return nil, err
		}
		e.Target = tgt
	case unix.S_IFIFO:
		e.Type = "fifo"
	case unix.S_IFCHR:
		e.Type = "char"
	case unix.S_IFBLK:
		e.Type = "block"
	case unix.S_IFSOCK:
		e.Type = "socket"
	}
	x, err := userXattrs(p)
	if err != nil {
		return nil, err
	}
	e.Xattrs = x
	return e, nil
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// userXattrs lists the user.* xattrs of p (not following symlinks) as sorted name=hex pairs.
func userXattrs(p string) (string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if err == unix.ENOTSUP {
			return "", nil
		}
		return "", fmt.Errorf("llistxattr %s: %w", p, err)
	}
	if sz == 0 {
		return "", nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return "", fmt.Errorf("llistxattr %s: %w", p, err)
	}
	var pairs []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		val, err := lgetxattr(p, name)
		if err != nil {
			return "", fmt.Errorf("lgetxattr %s %s: %w", p, name, err)
		}
		pairs = append(pairs, name+"="+hex.EncodeToString(val))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ","), nil
}

func lgetxattr(p, name string) ([]byte, error) {
	sz, err := unix.Lgetxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:sz], nil
}

// compareOpts says which fields compareTrees looks at. Sizes of directories and st_blocks
// are never compared (they differ legitimately between filesystems).
type compareOpts struct {
	mtime    bool // modification times (ns)
	ctime    bool // change times (ns)
	ino      bool // inode numbers (same filesystem, e.g. before and after a remount)
	dirNlink bool // directory link counts (ext4: 2 + subdirectories)
	owner    bool // uid and gid
	skipRoot bool // ignore the root entry
}

// identical compares everything: the same tree before unmount and after remount.
var identical = compareOpts{owner: true, mtime: true, ctime: true, ino: true, dirNlink: true}

// compareTrees returns one line per difference between two snapshots.
func compareTrees(a, b map[string]*entry, o compareOpts) []string {
	var diffs []string
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		if k == "." && o.skipRoot {
			continue
		}
		x, y := a[k], b[k]
		switch {
		case x == nil:
			diffs = append(diffs, fmt.Sprintf("%s: only in the second tree (%s)", k, y.Type))
			continue
		case y == nil:
			diffs = append(diffs, fmt.Sprintf("%s: only in the first tree (%s)", k, x.Type))
			continue
		}
		d := func(field string, p, q any) {
			diffs = append(diffs, fmt.Sprintf("%s: %s %v != %v", k, field, p, q))
		}
		if x.Type != y.Type {
			d("type", x.Type, y.Type)
			continue
		}
		if x.Perm != y.Perm {
			d("mode", fmt.Sprintf("%#o", x.Perm), fmt.Sprintf("%#o", y.Perm))
		}
		if o.owner && (x.UID != y.UID || x.GID != y.GID) {
			d("owner", fmt.Sprintf("%d:%d", x.UID, x.GID), fmt.Sprintf("%d:%d", y.UID, y.GID))
		}
		if x.Type != "dir" && x.Size != y.Size {
			d("size", x.Size, y.Size)
		}
		if x.Hash != y.Hash {
			d("content sha256", x.Hash, y.Hash)
		}
		if x.Target != y.Target {
			d("symlink target", x.Target, y.Target)
		}
		if x.Xattrs != y.Xattrs {
			d("xattrs", x.Xattrs, y.Xattrs)
		}
		if (x.Type != "dir" || o.dirNlink) && x.Nlink != y.Nlink {
			d("nlink", x.Nlink, y.Nlink)
		}
		if x.Group != y.Group {
			d("hard-link group", x.Group, y.Group)
		}
		if o.ino && x.Ino != y.Ino {
			d("inode number", x.Ino, y.Ino)
		}
		if o.mtime && x.Mtime != y.Mtime {
			d("mtime (ns)", x.Mtime, y.Mtime)
		}
		if o.ctime && x.Ctime != y.Ctime {
			d("ctime (ns)", x.Ctime, y.Ctime)
		}
	}
	return diffs
}

// treeDigest is one checksum over every compared field of every entry (all of them: the
// remount identity check wants the tree to come back exactly).
func treeDigest(s map[string]*entry) string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		e := s[k]
		size := e.Size
		if e.Type == "dir" {
			size = 0
		}
		fmt.Fprintf(h, "%q %s %o %d:%d %d %d %s %q %s %d %d %d %q\n", e.Path, e.Type, e.Perm, e.UID, e.GID,
			size, e.Nlink, e.Hash, e.Target, e.Xattrs, e.Ino, e.Mtime, e.Ctime, e.Group)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// requireSameTree fails the test with the differences (at most 30 shown).
func requireSameTree(t testing.TB, what string, a, b map[string]*entry, o compareOpts) {
	t.Helper()
	diffs := compareTrees(a, b, o)
	if len(diffs) == 0 {
		return
	}
	n := len(diffs)
	if n > 30 {
		diffs = append(diffs[:30], "...")
	}
	t.Fatalf("%s: %d difference(s):\n  %s", what, n, strings.Join(diffs, "\n  "))
}
