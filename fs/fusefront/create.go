package fusefront

// Creating names: regular files (each with a fresh key), directories, device nodes,
// FIFOs, sockets, symlinks and hard links.

import (
	"context"
	"crypto/rand"
	"errors"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// checkName refuses a name the catalog would refuse, before any key work.
func checkName(name string) syscall.Errno {
	if len(name) > meta.MaxNameLen {
		return syscall.ENAMETOOLONG
	}
	return 0
}

// newAttr is the owner and mode of a new inode in directory parent: the
// caller's uid and gid, or the directory's gid if it is setgid (and then a
// new directory is setgid too), as Linux's inode_init_owner does.
func newAttr(t *meta.Tx, parent uint64, mode, uid, gid uint32) (meta.Inode, error) {
	p, err := t.GetInode(parent)
	if err != nil {
		return meta.Inode{}, err
	}
	if p.Mode&syscall.S_ISGID != 0 {
		gid = p.GID
		if mode&syscall.S_IFMT == syscall.S_IFDIR {
			mode |= syscall.S_ISGID
		}
	}
	return meta.Inode{Mode: mode, UID: uid, GID: gid, Ctime: nowNs()}, nil
}

// createFile makes a regular file with a fresh key: the key is made (and
// wrapped in the HSM) before the catalog transaction, so the write lock is
// never held across an HSM call. The transaction checks that the KEK
// version is still current: a rotation on the live mount that made a new
// one meanwhile makes it start over with that one, so no file is keyed
// under a version the rotation has already drained.
func (f *FS) createFile(ctx context.Context, parent uint64, name string, mode uint32) (meta.Inode, error) {
	uid, gid := caller(ctx)
	for attempt := 0; ; attempt++ {
		var fid [16]byte
		rand.Read(fid[:])
		kek, err := f.kekFor(ctx, uid)
		if err != nil {
			return meta.Inode{}, err
		}
		rec, dek, err := f.vol.Keys().NewFileKey(ctx, f.vol.KeyMode, kek, fid)
		if errors.Is(err, keys.ErrKEKMissing) && attempt == 0 {
			f.forgetKEK(uid) // retired by a rotation since it was cached
			continue
		}
		if err != nil {
			return meta.Inode{}, err
		}
		dek.Wipe() // the keyring caches its own copy for the first open
		kr := volume.CatalogRecord(rec)
		var in meta.Inode
		err = f.cat.Update(ctx, func(t *meta.Tx) error {
			if err := checkCurrentKEK(t, kek); err != nil {
				return err
			}
			attr, err := newAttr(t, parent, syscall.S_IFREG|mode&0o7777, uid, gid)
			if err != nil {
				return err
			}
			attr.FileID = fid
			in, err = t.CreateFile(parent, []byte(name), attr, &kr)
			return err
		})
		if err != nil {
			f.vol.Keys().Forget(fid)
		}
		if errors.Is(err, errKEKMoved) && attempt < 3 {
			f.forgetKEK(uid)
			continue
		}
		return in, err
	}
}

func (n *Node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if f.vol.Locked() {
		return nil, nil, 0, syscall.EKEYREVOKED // a new file needs a new key
	}
	if e := checkName(name); e != 0 {
		return nil, nil, 0, e
	}
	in, err := f.createFile(c, n.ino(), name, mode)
	if errors.Is(err, syscall.EEXIST) && flags&syscall.O_EXCL == 0 {
		// The name appeared since the kernel's lookup: open(O_CREAT)
		// without O_EXCL opens the existing file, as on a local disk.
		return n.openExisting(ctx, name, flags, out)
	}
	if err != nil {
		return nil, nil, 0, f.errno("create", n.ino(), err)
	}
	child := f.child(ctx, &n.Inode, &in, out)
	h, fuseFlags, errno := f.openFile(c, child.Operations().(*Node), in.Ino, flags, true)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return child, h, fuseFlags, 0
}

func (n *Node) openExisting(ctx context.Context, name string, flags uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	in, err := f.cat.Lookup(c, n.ino(), []byte(name))
	if err != nil {
		return nil, nil, 0, f.errno("create", n.ino(), err)
	}
	switch {
	case in.IsDir():
		return nil, nil, 0, syscall.EISDIR
	case !in.IsRegular():
		return nil, nil, 0, syscall.EEXIST
	}
	// The kernel checked the right to create in the directory, not to open
	// this file: check that here (owner, then group, then others; root
	// passes). Supplementary groups are not known here, so a caller who
	// has access only through one is refused: it fails closed.
	want := uint32(0)
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		want = 4
	case syscall.O_WRONLY:
		want = 2
	default:
		want = 6
	}
	if flags&syscall.O_TRUNC != 0 {
		want |= 2
	}
	if uid, gid := caller(ctx); !mayAccess(uid, gid, &in, want) {
		return nil, nil, 0, syscall.EACCES
	}
	var child *gofs.Inode
	if known := n.GetChild(name); known != nil && known.StableAttr().Ino == in.Ino {
		child = known // reuse it: Create registers its node exclusively
		f.fillAttr(&in, &out.Attr)
	} else {
		child = f.child(ctx, &n.Inode, &in, out)
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := f.data.Truncate(c, in.Ino, 0); err != nil {
			return nil, nil, 0, f.errno("create", in.Ino, err)
		}
	}
	h, fuseFlags, errno := f.openFile(c, child.Operations().(*Node), in.Ino, flags, false)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return child, h, fuseFlags, 0
}

// mayAccess is the classic permission check for want (r=4, w=2, x=1 bits).
func mayAccess(uid, gid uint32, in *meta.Inode, want uint32) bool {
	if uid == 0 {
		return true
	}
	perm := in.Mode & 0o7
	switch {
	case uid == in.UID:
		perm = in.Mode >> 6 & 0o7
	case gid == in.GID:
		perm = in.Mode >> 3 & 0o7
	}
	return perm&want == want
}

func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return nil, syscall.EROFS
	}
	uid, gid := caller(ctx)
	var in meta.Inode
	err := f.cat.Update(c, func(t *meta.Tx) error {
		attr, err := newAttr(t, n.ino(), syscall.S_IFDIR|mode&0o7777, uid, gid)
		if err != nil {
			return err
		}
		in, err = t.Mkdir(n.ino(), []byte(name), attr)
		return err
	})
	if err != nil {
		return nil, f.errno("mkdir", n.ino(), err)
	}
	return f.child(ctx, &n.Inode, &in, out), 0
}

func (n *Node) Mknod(ctx context.Context, name string, mode, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return nil, syscall.EROFS
	}
	uid, gid := caller(ctx)
	var in meta.Inode
	var err error
	switch mode & syscall.S_IFMT {
	case 0, syscall.S_IFREG: // mknod(S_IFREG) makes an empty regular file
		if e := checkName(name); e != 0 {
			return nil, e
		}
		in, err = f.createFile(c, n.ino(), name, mode)
	case syscall.S_IFCHR, syscall.S_IFBLK:
		if uid != 0 { // the kernel checks CAP_MKNOD too; be sure
			return nil, syscall.EPERM
		}
		fallthrough
	case syscall.S_IFIFO, syscall.S_IFSOCK:
		err = f.cat.Update(c, func(t *meta.Tx) error {
			attr, err := newAttr(t, n.ino(), mode&(syscall.S_IFMT|0o7777), uid, gid)
			if err != nil {
				return err
			}
			attr.Rdev = dev
			in, err = t.Mknod(n.ino(), []byte(name), attr)
			return err
		})
	default:
		return nil, syscall.EINVAL
	}
	if err != nil {
		return nil, f.errno("mknod", n.ino(), err)
	}
	return f.child(ctx, &n.Inode, &in, out), 0
}

func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return nil, syscall.EROFS
	}
	uid, gid := caller(ctx)
	var in meta.Inode
	err := f.cat.Update(c, func(t *meta.Tx) error {
		attr, err := newAttr(t, n.ino(), syscall.S_IFLNK|0o777, uid, gid)
		if err != nil {
			return err
		}
		in, err = t.Symlink(n.ino(), []byte(name), []byte(target), attr)
		return err
	})
	if err != nil {
		return nil, f.errno("symlink", n.ino(), err)
	}
	return f.child(ctx, &n.Inode, &in, out), 0
}

func (n *Node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return nil, syscall.EROFS
	}
	ino := target.EmbeddedInode().StableAttr().Ino
	in, err := f.cat.Link(c, ino, n.ino(), []byte(name), nowNs())
	if err != nil {
		return nil, f.errno("link", ino, err)
	}
	// Same StableAttr as the target: go-fuse hands the kernel the node it
	// already has, so both names share one inode and one page cache.
	return f.child(ctx, &n.Inode, &in, out), 0
}
