package meta

import (
	"strings"
	"syscall"
	"testing"
)

// resolve walks a slash-separated path from the root.
func resolve(t testing.TB, c *Catalog, path string) (Inode, error) {
	t.Helper()
	in := Inode{Ino: RootIno}
	for _, part := range strings.Split(path, "/") {
		var err error
		if in, err = c.Lookup(ctx, in.Ino, []byte(part)); err != nil {
			return Inode{}, err
		}
	}
	return in, nil
}

func mustResolve(t testing.TB, c *Catalog, path string) Inode {
	t.Helper()
	in, err := resolve(t, c, path)
	if err != nil {
		t.Fatalf("resolve %s: %v", path, err)
	}
	return in
}

func split(path string) (string, string) {
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return "", path
	}
	return path[:i], path[i+1:]
}

// renameFixture builds:
//
//	d1/ f1  sub/ deep/
//	d2/ f2  e/  e2/  ne/ x
//	h1 -> d1/f1 (hard link)   h2 -> d2/f2 (hard link, only in some cases)
type renameFixture struct {
	c     *Catalog
	inos  map[string]Inode
	links bool
}

func newRenameFixture(t *testing.T, withH2 bool) *renameFixture {
	c := newCatalog(t)
	fx := &renameFixture{c: c, inos: map[string]Inode{}}
	for _, p := range []string{"d1/", "d1/f1", "d1/sub/", "d1/sub/deep/", "d2/", "d2/f2", "d2/e/", "d2/e2/", "d2/ne/", "d2/ne/x"} {
		isDir := strings.HasSuffix(p, "/")
		p = strings.TrimSuffix(p, "/")
		dir, name := split(p)
		parent := uint64(RootIno)
		if dir != "" {
			parent = fx.inos[dir].Ino
		}
		if isDir {
			fx.inos[p] = mkdir(t, c, parent, name)
		} else {
			fx.inos[p] = mkfile(t, c, parent, name)
		}
	}
	if _, err := c.Link(ctx, fx.inos["d1/f1"].Ino, RootIno, []byte("h1"), now()); err != nil {
		t.Fatal(err)
	}
	if withH2 {
		if _, err := c.Link(ctx, fx.inos["d2/f2"].Ino, RootIno, []byte("h2"), now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.SetChunk(ctx, fx.inos["d2/f2"].Ino, Chunk{Index: 0, Object: obj(2), Length: 3}, 3, now()); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, c)
	return fx
}

func (fx *renameFixture) rename(t *testing.T, from, to string, flags uint32, reap bool) (*Inode, error) {
	fd, fn := split(from)
	td, tn := split(to)
	dirIno := func(d string) uint64 {
		if d == "" {
			return RootIno
		}
		if in, ok := fx.inos[d]; ok {
			return in.Ino
		}
		return mustResolve(t, fx.c, d).Ino
	}
	return fx.c.Rename(ctx, dirIno(fd), []byte(fn), dirIno(td), []byte(tn), flags, now(), reap)
}

func (fx *renameFixture) is(t *testing.T, path, was string) {
	t.Helper()
	got, err := resolve(t, fx.c, path)
	if err != nil {
		t.Fatalf("%s: %v (want the inode that was %s)", path, err, was)
	}
	if got.Ino != fx.inos[was].Ino {
		t.Fatalf("%s is inode %d, want %d (was %s)", path, got.Ino, fx.inos[was].Ino, was)
	}
}

func (fx *renameFixture) gone(t *testing.T, path string) {
	t.Helper()
	if _, err := resolve(t, fx.c, path); Errno(err) != syscall.ENOENT {
		t.Fatalf("%s still resolves (%v)", path, err)
	}
}

func (fx *renameFixture) nlink(t *testing.T, path string, want uint32) {
	t.Helper()
	if got := stat(t, fx.c, fx.inos[path].Ino); got.Nlink != want {
		t.Fatalf("%s nlink %d, want %d", path, got.Nlink, want)
	}
}

func TestRenameMatrix(t *testing.T) {
	type tc struct {
		name     string
		from, to string
		flags    uint32
		noReap   bool
		withH2   bool
		err      syscall.Errno
		check    func(t *testing.T, fx *renameFixture, replaced *Inode)
	}
	noReplaced := func(t *testing.T, r *Inode) {
		t.Helper()
		if r != nil {
			t.Fatalf("replaced %+v, want none", r)
		}
	}
	cases := []tc{
		{name: "file same dir", from: "d1/f1", to: "d1/g", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d1/g", "d1/f1")
			fx.gone(t, "d1/f1")
			fx.nlink(t, "d1", 3)
			fx.nlink(t, "d1/f1", 2)
		}},
		{name: "file across dirs", from: "d1/f1", to: "d2/g", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d2/g", "d1/f1")
			fx.gone(t, "d1/f1")
			fx.nlink(t, "d1", 3)
			fx.nlink(t, "d2", 5)
		}},
		{name: "file over file reaped", from: "d1/f1", to: "d2/f2", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			if r == nil || r.Ino != fx.inos["d2/f2"].Ino || r.Nlink != 0 {
				t.Fatalf("replaced %+v", r)
			}
			fx.is(t, "d2/f2", "d1/f1")
			fx.gone(t, "d1/f1")
			if _, err := fx.c.GetInode(ctx, r.Ino); Errno(err) != syscall.ENOENT {
				t.Fatalf("replaced inode not reaped: %v", err)
			}
			if d, _ := fx.c.NextDeletes(ctx, allDue, 10); len(d) != 1 || d[0].Name != ObjectName(obj(2)) {
				t.Fatalf("replaced file's object not queued: %+v", d)
			}
		}},
		{name: "file over file kept open", from: "d1/f1", to: "d2/f2", noReap: true, check: func(t *testing.T, fx *renameFixture, r *Inode) {
			if r == nil || r.Nlink != 0 {
				t.Fatalf("replaced %+v", r)
			}
			if o, _ := fx.c.Orphans(ctx); len(o) != 1 || o[0] != r.Ino {
				t.Fatalf("orphans %v", o)
			}
			if k, err := fx.c.GetKey(ctx, r.Ino); err != nil || k.Mode == "" {
				t.Fatal("orphan lost its key record before Reap")
			}
		}},
		{name: "file over hard-linked file", from: "d1/f1", to: "d2/f2", withH2: true, check: func(t *testing.T, fx *renameFixture, r *Inode) {
			if r == nil || r.Nlink != 1 {
				t.Fatalf("replaced %+v", r)
			}
			fx.is(t, "h2", "d2/f2")
			fx.nlink(t, "d2/f2", 1)
		}},
		{name: "file over dir", from: "d1/f1", to: "d2/e", err: syscall.EISDIR},
		{name: "dir over file", from: "d1/sub", to: "d2/f2", err: syscall.ENOTDIR},
		{name: "dir over empty dir", from: "d1/sub", to: "d2/e", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			if r == nil || r.Ino != fx.inos["d2/e"].Ino || r.Nlink != 0 {
				t.Fatalf("replaced %+v", r)
			}
			fx.is(t, "d2/e", "d1/sub")
			fx.is(t, "d2/e/deep", "d1/sub/deep")
			fx.nlink(t, "d1", 2)
			fx.nlink(t, "d2", 5) // lost e, gained sub
		}},
		{name: "dir over empty dir same parent", from: "d2/e", to: "d2/e2", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			if r == nil || r.Ino != fx.inos["d2/e2"].Ino {
				t.Fatalf("replaced %+v", r)
			}
			fx.nlink(t, "d2", 4)
		}},
		{name: "dir over non-empty dir", from: "d1/sub", to: "d2/ne", err: syscall.ENOTEMPTY},
		{name: "dir into itself", from: "d1/sub", to: "d1/sub/z", err: syscall.EINVAL},
		{name: "dir into its subtree", from: "d1", to: "d1/sub/deep/z", err: syscall.EINVAL},
		{name: "dir onto its ancestor", from: "d1/sub/deep", to: "d1/sub", err: syscall.ENOTEMPTY},
		{name: "file onto its parent", from: "d2/ne/x", to: "d2/ne", err: syscall.ENOTEMPTY},
		{name: "dir across parents", from: "d1/sub", to: "d2/sub2", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d2/sub2/deep", "d1/sub/deep")
			fx.nlink(t, "d1", 2)
			fx.nlink(t, "d2", 6)
			fx.nlink(t, "d1/sub", 3)
		}},
		{name: "noreplace existing", from: "d1/f1", to: "d2/f2", flags: RenameNoReplace, err: syscall.EEXIST},
		{name: "noreplace new", from: "d1/f1", to: "d2/new", flags: RenameNoReplace, check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d2/new", "d1/f1")
		}},
		{name: "noreplace onto itself", from: "d1/f1", to: "d1/f1", flags: RenameNoReplace, err: syscall.EEXIST},
		{name: "exchange file and dir across parents", from: "d1/f1", to: "d2/e", flags: RenameExchange, check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d1/f1", "d2/e")
			fx.is(t, "d2/e", "d1/f1")
			fx.nlink(t, "d1", 4)
			fx.nlink(t, "d2", 4)
			fx.nlink(t, "d1/f1", 2) // the file keeps its links
		}},
		{name: "exchange two files", from: "d1/f1", to: "d2/f2", flags: RenameExchange, check: func(t *testing.T, fx *renameFixture, r *Inode) {
			fx.is(t, "d1/f1", "d2/f2")
			fx.is(t, "d2/f2", "d1/f1")
			fx.nlink(t, "d1", 3)
			fx.nlink(t, "d2", 5)
		}},
		{name: "exchange missing", from: "d1/f1", to: "d2/none", flags: RenameExchange, err: syscall.ENOENT},
		{name: "exchange with own subtree", from: "d1", to: "d1/sub/deep", flags: RenameExchange, err: syscall.EINVAL},
		{name: "exchange with own ancestor", from: "d1/sub/deep", to: "d1", flags: RenameExchange, err: syscall.EINVAL},
		{name: "onto itself", from: "d1/f1", to: "d1/f1", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "d1/f1", "d1/f1")
		}},
		{name: "dir onto itself", from: "d1/sub", to: "d1/sub", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			fx.is(t, "d1/sub", "d1/sub")
		}},
		{name: "onto another link of itself", from: "h1", to: "d1/f1", check: func(t *testing.T, fx *renameFixture, r *Inode) {
			noReplaced(t, r)
			fx.is(t, "h1", "d1/f1")
			fx.is(t, "d1/f1", "d1/f1")
			fx.nlink(t, "d1/f1", 2)
		}},
		{name: "both flags", from: "d1/f1", to: "d2/g", flags: RenameNoReplace | RenameExchange, err: syscall.EINVAL},
		{name: "whiteout", from: "d1/f1", to: "d2/g", flags: 4, err: syscall.EINVAL},
		{name: "missing source", from: "d1/none", to: "d2/g", err: syscall.ENOENT},
		{name: "source parent not a dir", from: "d1/f1/x", to: "d2/g", err: syscall.ENOTDIR},
		{name: "target parent not a dir", from: "d2/f2", to: "d1/f1/x", err: syscall.ENOTDIR},
		{name: "target name too long", from: "d1/f1", to: "d2/" + strings.Repeat("l", 256), err: syscall.ENAMETOOLONG},
		{name: "target name dot", from: "d1/f1", to: "d2/..", err: syscall.EINVAL},
	}
	for _, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			fx := newRenameFixture(t, k.withH2)
			before := dump(t, fx.c)
			r, err := fx.rename(t, k.from, k.to, k.flags, !k.noReap)
			if k.err != 0 {
				wantErrno(t, err, k.err)
				if after := dump(t, fx.c); after != before {
					t.Fatal("a refused rename changed the catalog")
				}
				return
			}
			if err != nil {
				t.Fatalf("rename %s -> %s: %v", k.from, k.to, err)
			}
			k.check(t, fx, r)
			mustCheck(t, fx.c)
		})
	}
}

// TestRenameTimes checks ctime on the moved inode and mtime/ctime on both
// parents.
func TestRenameTimes(t *testing.T) {
	fx := newRenameFixture(t, false)
	ts := now()
	if _, err := fx.c.Rename(ctx, fx.inos["d1"].Ino, []byte("f1"), fx.inos["d2"].Ino, []byte("g"), 0, ts, true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d1", "d2"} {
		if in := stat(t, fx.c, fx.inos[p].Ino); in.Mtime != ts || in.Ctime != ts {
			t.Errorf("%s times %d/%d, want %d", p, in.Mtime, in.Ctime, ts)
		}
	}
	if in := stat(t, fx.c, fx.inos["d1/f1"].Ino); in.Ctime != ts || in.Mtime == ts {
		t.Errorf("moved file ctime %d mtime %d (want ctime %d, mtime unchanged)", in.Ctime, in.Mtime, ts)
	}
}
