package fusefront

import (
	"context"
	"crypto/rand"
	"errors"
	"math"
	"strconv"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// Node is one inode as go-fuse knows it. It holds no state of its own: the
// catalog row (StableAttr().Ino) is the truth, so two Nodes of one inode
// (before go-fuse merges them) never disagree.
type Node struct {
	gofs.Inode
	fsys *FS
}

var (
	_ gofs.NodeLookuper       = (*Node)(nil)
	_ gofs.NodeGetattrer      = (*Node)(nil)
	_ gofs.NodeSetattrer      = (*Node)(nil)
	_ gofs.NodeCreater        = (*Node)(nil)
	_ gofs.NodeMkdirer        = (*Node)(nil)
	_ gofs.NodeMknoder        = (*Node)(nil)
	_ gofs.NodeSymlinker      = (*Node)(nil)
	_ gofs.NodeReadlinker     = (*Node)(nil)
	_ gofs.NodeLinker         = (*Node)(nil)
	_ gofs.NodeUnlinker       = (*Node)(nil)
	_ gofs.NodeRmdirer        = (*Node)(nil)
	_ gofs.NodeRenamer        = (*Node)(nil)
	_ gofs.NodeStatfser       = (*Node)(nil)
	_ gofs.NodeGetxattrer     = (*Node)(nil)
	_ gofs.NodeSetxattrer     = (*Node)(nil)
	_ gofs.NodeListxattrer    = (*Node)(nil)
	_ gofs.NodeRemovexattrer  = (*Node)(nil)
	_ gofs.NodeOnForgetter    = (*Node)(nil)
	_ gofs.NodeOpendirHandler = (*Node)(nil)
)

func (n *Node) ino() uint64 { return n.StableAttr().Ino }

// bg detaches a request's context from its cancellation: go-fuse cancels it
// whenever the caller gets a signal (Go programs get SIGURG all the time), and
// a half-done catalog transaction or remote fetch must not turn into EINTR.
func bg(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

func nowNs() int64 { return time.Now().UnixNano() }

// caller is who made the request (root if unknown).
func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// errno turns an error into what the kernel gets, logging anything that is
// not an ordinary POSIX outcome (EIO: a damaged catalog, a remote failure).
// Names never go into logs; inode numbers do.
func (f *FS) errno(op string, ino uint64, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errors.Is(err, keys.ErrLocked) { // coffer lock: not a failure
		f.log.Debug("coffer: "+op+": the volume is locked", "ino", ino)
		return syscall.EKEYREVOKED
	}
	e := meta.Errno(err) // an errno carried by err, EINTR for a context, else EIO
	if e == syscall.EIO || e == syscall.ENOSPC || e == syscall.ENOMEM {
		f.log.Error("coffer: "+op+" failed", "ino", ino, "errno", e.Error(), "err", err)
	} else {
		f.log.Debug("coffer: "+op, "ino", ino, "errno", e.Error())
	}
	return e
}

func splitNs(ns int64) (uint64, uint32) {
	sec, nsec := ns/1e9, ns%1e9
	if nsec < 0 {
		sec, nsec = sec-1, nsec+1e9
	}
	return uint64(sec), uint32(nsec)
}

// fillAttr renders a catalog row for the kernel, with the data path's size
// and mtime for a file it holds open or dirty.
func (f *FS) fillAttr(in *meta.Inode, out *fuse.Attr) {
	size, mtime, ctime := in.Size, in.Mtime, in.Ctime
	var used uint64 // what st_blocks counts: for regular files, holes excluded
	if in.IsRegular() {
		stored := in.Stored
		if s, m, ok := f.data.Attr(in.Ino); ok {
			size = s
			if m != 0 {
				mtime = m
				ctime = max(ctime, m) // a write changes ctime too
			}
			stored += f.data.StagedBytes(in.Ino) // may overlap committed chunks: an upper bound
		}
		used = uint64(min(max(stored, 0), size))
	}
	if in.IsDir() && size == 0 {
		size = attrBlkSize // what ext4 shows; some tools treat 0 as "empty"
	}
	if !in.IsRegular() {
		used = uint64(size)
	}
	out.Ino = in.Ino
	out.Size = uint64(size)
	out.Blocks = (used + attrBlkSize - 1) / attrBlkSize * (attrBlkSize / 512)
	out.Blksize = attrBlkSize
	out.Atime, out.Atimensec = splitNs(in.Atime)
	out.Mtime, out.Mtimensec = splitNs(mtime)
	out.Ctime, out.Ctimensec = splitNs(ctime)
	out.Mode = in.Mode
	out.Nlink = in.Nlink
	out.Uid, out.Gid = in.UID, in.GID
	out.Rdev = in.Rdev
}

// child makes the go-fuse node for a catalog row returned by Lookup, Create,
// Mkdir, Mknod, Symlink or Link. go-fuse merges it with a node it already
// has for the same StableAttr (hard links, concurrent lookups).
func (f *FS) child(ctx context.Context, parent *gofs.Inode, in *meta.Inode, out *fuse.EntryOut) *gofs.Inode {
	f.fillAttr(in, &out.Attr)
	return parent.NewInode(ctx, &Node{fsys: f}, gofs.StableAttr{Mode: in.Mode & syscall.S_IFMT, Ino: in.Ino, Gen: in.Gen})
}

// ---- lookup and attributes ----

func (n *Node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.fsys
	f.nodeLookups.Add(1)
	in, err := f.cat.Lookup(bg(ctx), n.ino(), []byte(name))
	if err != nil {
		return nil, f.errno("lookup", n.ino(), err)
	}
	return f.child(ctx, &n.Inode, &in, out), 0
}

func (n *Node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f := n.fsys
	if h, ok := fh.(*handle); ok && h.st.revoked.Load() {
		return syscall.EKEYREVOKED // fstat of a shredded file: nothing is left of it
	}
	in, err := f.cat.GetInode(bg(ctx), n.ino())
	if err != nil {
		return f.errno("getattr", n.ino(), err)
	}
	f.fillAttr(&in, &out.Attr)
	return 0
}

// killPriv is what clearing suid/sgid does to a mode: suid goes; sgid goes
// only with group execute (without it, sgid means mandatory locking).
func killPriv(mode uint32) uint32 {
	mode &^= syscall.S_ISUID
	if mode&syscall.S_IXGRP != 0 {
		mode &^= syscall.S_ISGID
	}
	return mode
}

func (n *Node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f, ino, c := n.fsys, n.ino(), bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	var ch meta.AttrChange
	if m, ok := in.GetMode(); ok {
		ch.Mode = &m
	}
	if u, ok := in.GetUID(); ok {
		ch.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		ch.GID = &g
	}
	if t, ok := in.GetATime(); ok {
		v := t.UnixNano()
		ch.Atime = &v
	}
	if t, ok := in.GetMTime(); ok {
		v := t.UnixNano()
		ch.Mtime = &v
	}
	if t, ok := in.GetCTime(); ok {
		v := t.UnixNano()
		ch.Ctime = &v
	}
	kill := in.Valid&fuse.FATTR_KILL_SUIDGID != 0
	size, hasSize := in.GetSize()
	rekeys := ch.UID != nil && f.vol.PerUser && f.vol.KeyMode == keys.ModeWrap
	if (hasSize || rekeys) && f.vol.Locked() {
		// While locked, a truncate (it rewrites the block across the cut)
		// and a chown that moves a file's key to another user's KEK need
		// keys: refuse them before changing anything.
		cur, err := f.cat.GetInode(c, ino)
		if err != nil {
			return f.errno("setattr", ino, err)
		}
		if cur.IsRegular() && (hasSize || *ch.UID != cur.UID) {
			return syscall.EKEYREVOKED
		}
	}
	if hasSize {
		if size > math.MaxInt64 {
			return syscall.EFBIG
		}
		cur, err := f.cat.GetInode(c, ino)
		if err != nil {
			return f.errno("truncate", ino, err)
		}
		switch {
		case cur.IsDir():
			return syscall.EISDIR
		case !cur.IsRegular():
			return syscall.EINVAL
		}
		if err := f.data.Truncate(c, ino, int64(size)); err != nil {
			return f.errno("truncate", ino, err)
		}
		if ch.Mtime == nil {
			now := nowNs()
			ch.Mtime = &now
		}
	}
	if ch == (meta.AttrChange{}) && !kill {
		// Nothing to change (a SETATTR carrying only a handle or lock owner).
		return n.Getattr(ctx, fh, out)
	}
	if ch.Mtime != nil {
		// Before the catalog: a write racing with this then wins, as it
		// would on a local disk (it happened after).
		f.setDataMtime(ino, *ch.Mtime)
	}
	var res, old meta.Inode
	err := f.cat.Update(c, func(t *meta.Tx) error {
		var err error
		old, err = t.GetInode(ino)
		if err != nil {
			return err
		}
		if kill && ch.Mode == nil && !old.IsDir() {
			if m := killPriv(old.Mode); m != old.Mode {
				m &= 0o7777
				ch.Mode = &m
			}
		}
		res, err = t.SetAttr(ino, ch, nowNs())
		return err
	})
	if err != nil {
		return f.errno("setattr", ino, err)
	}
	if s := f.state(ino); s != nil {
		s.priv.Store(res.Mode & privMask) // open handles see a chmod at once
	}
	if ch.UID != nil && *ch.UID != old.UID && res.IsRegular() && f.vol.PerUser {
		if err := f.rekeyForOwner(c, &res); err != nil {
			// The file stays readable: its key is still wrapped by the old
			// owner's KEK, so shredding that user would take it along.
			f.log.Error("chown: could not re-wrap the file key under the new owner's KEK", "ino", ino, "uid", *ch.UID, "err", err)
		}
	}
	f.fillAttr(&res, &out.Attr)
	return 0
}

// setDataMtime tells the data path about an mtime set explicitly (utimens,
// truncate) on a file it may hold in memory, so that what it persists later
// does not undo it. The data path implements it if it keeps mtime.
func (f *FS) setDataMtime(ino uint64, mtime int64) {
	if ms, ok := f.data.(mtimeSetter); ok {
		ms.SetMtime(ino, mtime)
	}
}

type mtimeSetter interface {
	SetMtime(ino uint64, mtimeNs int64)
}

// ---- creating ----

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
		rec, dek, err := f.vol.Keys.NewFileKey(ctx, f.vol.KeyMode, kek, fid)
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
			f.vol.Keys.Forget(fid)
		}
		if errors.Is(err, errKEKMoved) && attempt < 3 {
			f.forgetKEK(uid)
			continue
		}
		return in, err
	}
}

// errKEKMoved: the KEK version a key was made under is no longer current.
var errKEKMoved = errors.New("the current KEK version changed (rotation or shred); retrying with the new one")

// checkCurrentKEK fails with errKEKMoved unless kek is its chain's current
// version in the transaction's view of the catalog.
func checkCurrentKEK(t *meta.Tx, kek keys.KEKRef) error {
	cur, err := t.CurrentKEK(kek.Chain)
	if errors.Is(err, syscall.ENOENT) || err == nil && cur.Version != kek.Version {
		return errKEKMoved
	}
	return err
}

// ReloadKeyRecords makes every open file take its re-wrapped key record
// (keyops.RotateMounted calls it before older KEK versions are retired).
func (f *FS) ReloadKeyRecords(ctx context.Context) error {
	_, err := f.data.ReloadKeyRecords(ctx)
	return err
}

// KEKsChanged drops every cached current KEK version: keyops calls it after
// a rotation, a retirement or a user shred on the live mount, so the next
// create reads the new ones from the catalog at once.
func (f *FS) KEKsChanged() {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	f.volKEK = keys.KEKRef{}
	clear(f.userKEKs)
}

// forgetKEK drops the cached current KEK version of uid's chain (the
// volume's on a volume without per-user KEKs): the next kekFor reads it
// from the catalog again.
func (f *FS) forgetKEK(uid uint32) {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	if f.vol.PerUser {
		delete(f.userKEKs, uid)
	} else {
		f.volKEK = keys.KEKRef{}
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

func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	f := n.fsys
	in, err := f.cat.GetInode(bg(ctx), n.ino())
	if err != nil {
		return nil, f.errno("readlink", n.ino(), err)
	}
	if !in.IsSymlink() {
		return nil, syscall.EINVAL
	}
	return in.Target, 0
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

// ---- removing ----

func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if ch := n.GetChild(name); ch != nil {
		if errno, done := f.unlinkIdle(c, n.ino(), name, ch.StableAttr().Ino); done {
			return errno
		}
	}
	in, err := f.cat.Unlink(c, n.ino(), []byte(name), nowNs(), false)
	if err != nil {
		return f.errno("unlink", n.ino(), err)
	}
	if in.Nlink == 0 {
		f.unlinked(c, in.Ino)
	}
	return 0
}

// unlinkIdle removes name and, when that was the last link of a file nothing
// holds (not open, nothing staged), deletes the file in the same catalog
// transaction: one commit per rm instead of two. ino is the kernel's idea of
// the child; done is false when the file is in use, so the caller takes the
// general path.
func (f *FS) unlinkIdle(ctx context.Context, parent uint64, name string, ino uint64) (syscall.Errno, bool) {
	var in meta.Inode
	var reaped bool
	s := f.pin(ino)
	inUse, err := func() (bool, error) {
		s.mu.Lock() // no open can start while we decide
		defer s.mu.Unlock()
		if s.opens > 0 || !f.data.Idle(ino) {
			return true, nil
		}
		return false, f.cat.Update(ctx, func(t *meta.Tx) error {
			var err error
			reaped = false
			now := nowNs()
			if in, err = t.Unlink(parent, []byte(name), now, false); err != nil || in.Nlink > 0 || in.Ino != ino {
				return err
			}
			if staged, err := t.HasUploads(ino); err != nil || staged {
				return err
			}
			reaped = true
			_, err = t.Reap(ino, now)
			return err
		})
	}()
	f.unpin(ino, s)
	switch {
	case inUse:
		return 0, false
	case err != nil:
		return f.errno("unlink", parent, err), true
	case reaped:
		if in.FileID != [16]byte{} {
			f.vol.Keys.Forget(in.FileID)
		}
	case in.Nlink == 0:
		f.unlinked(ctx, in.Ino) // staged uploads, or the kernel's child was stale
	}
	return 0, true
}

func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	known := n.GetChild(name) != nil
	in, err := f.cat.Rmdir(c, n.ino(), []byte(name), nowNs(), false)
	if err != nil {
		return f.errno("rmdir", n.ino(), err)
	}
	f.removedDir(c, in.Ino, known)
	return 0
}

// removedDir reaps a removed directory now if the kernel does not know it,
// else when the kernel forgets it (a process may still have it as its
// working directory: stat and readdir keep working there, as on ext4).
func (f *FS) removedDir(ctx context.Context, ino uint64, known bool) {
	f.orphanMu.Lock()
	f.orphans[ino] = struct{}{}
	f.orphanMu.Unlock()
	if !known {
		f.reapOrphan(ctx, ino)
	}
}

// reapOrphan reaps an inode on the orphan list (idempotent).
func (f *FS) reapOrphan(ctx context.Context, ino uint64) {
	if err := f.reapUnlessOpen(ctx, ino); err != nil {
		f.log.Error("could not delete a removed inode; the next mount retries", "ino", ino, "err", err)
		return
	}
	f.orphanMu.Lock()
	delete(f.orphans, ino)
	f.orphanMu.Unlock()
}

func (n *Node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if flags&^(meta.RenameNoReplace|meta.RenameExchange) != 0 {
		return syscall.EINVAL // RENAME_WHITEOUT is for overlay file systems
	}
	np := newParent.EmbeddedInode()
	known := np.GetChild(newName) != nil
	replaced, err := f.cat.Rename(c, n.ino(), []byte(name), np.StableAttr().Ino, []byte(newName), flags, nowNs(), false)
	if err != nil {
		return f.errno("rename", n.ino(), err)
	}
	if replaced != nil && replaced.Nlink == 0 {
		if replaced.IsDir() {
			f.removedDir(c, replaced.Ino, known)
		} else {
			f.unlinked(c, replaced.Ino)
		}
	}
	return 0
}

// OnForget runs when the kernel drops its last reference to the node: a
// removed directory can go now. (It also runs for live inodes, e.g. after
// drop_caches: those are not on the orphan list.)
func (n *Node) OnForget() {
	if n.IsRoot() {
		return
	}
	f, ino := n.fsys, n.ino()
	f.orphanMu.Lock()
	_, orphan := f.orphans[ino]
	f.orphanMu.Unlock()
	if orphan {
		// Inline (rare: removed directories only), so that nothing runs
		// after the server stops and the caller closes the volume.
		f.reapOrphan(context.Background(), ino)
	}
}

// ---- file system ----

func (n *Node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	f := n.fsys
	st, err := f.cat.Stats(bg(ctx))
	if err != nil {
		return f.errno("statfs", n.ino(), err)
	}
	const bsize = attrBlkSize
	// The remote has no fixed size: report 1 PiB free (tools refuse to copy
	// onto a file system that reports none) and 2^32 free inodes.
	free := uint64(1<<50) / bsize
	used := uint64(st.Bytes+bsize-1) / bsize
	out.Bsize, out.Frsize = bsize, bsize
	out.Blocks, out.Bfree, out.Bavail = used+free, free, free
	out.Files, out.Ffree = uint64(st.Inodes)+1<<32, 1<<32
	out.NameLen = meta.MaxNameLen
	return 0
}

// ---- extended attributes ----

// xattrAllowed says whether name is in a namespace this file system stores.
// system.* (ACLs) is the kernel's business; security.capability is refused
// because nothing here would drop it on write (KILLPRIV_V2) and the mount is
// nosuid anyway.
func xattrAllowed(name string) bool {
	for _, p := range []string{"user.", "trusted.", "security."} {
		if len(name) > len(p) && name[:len(p)] == p {
			return name != "security.capability"
		}
	}
	return false
}

func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	f := n.fsys
	if !xattrAllowed(attr) {
		return 0, syscall.ENODATA
	}
	v, err := f.cat.GetXattr(bg(ctx), n.ino(), attr)
	if err != nil {
		return 0, f.errno("getxattr", n.ino(), err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE // also the answer to a size query
	}
	return uint32(copy(dest, v)), 0
}

func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	f := n.fsys
	names, err := f.cat.ListXattr(bg(ctx), n.ino())
	if err != nil {
		return 0, f.errno("listxattr", n.ino(), err)
	}
	size := 0
	for _, nm := range names {
		size += len(nm) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	b := dest[:0]
	for _, nm := range names {
		b = append(append(b, nm...), 0)
	}
	return uint32(size), 0
}

func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	f := n.fsys
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if !xattrAllowed(attr) {
		return syscall.EOPNOTSUPP
	}
	if err := f.cat.SetXattr(bg(ctx), n.ino(), attr, data, flags, nowNs()); err != nil {
		return f.errno("setxattr", n.ino(), err)
	}
	return 0
}

func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	f := n.fsys
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if !xattrAllowed(attr) {
		return syscall.ENODATA
	}
	if err := f.cat.RemoveXattr(bg(ctx), n.ino(), attr, nowNs()); err != nil {
		return f.errno("removexattr", n.ino(), err)
	}
	return 0
}

// ---- keys ----

// kekFor is the KEK version new files of uid are keyed under: the volume's
// current one, or on a per-user volume the user's (made on their first file).
func (f *FS) kekFor(ctx context.Context, uid uint32) (keys.KEKRef, error) {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	if !f.vol.PerUser {
		if f.volKEK.Version == 0 {
			cur, err := f.cat.CurrentKEK(ctx, "")
			if err != nil {
				return keys.KEKRef{}, err
			}
			f.volKEK = keys.KEKRef{Chain: cur.Chain, Version: cur.Version}
		}
		return f.volKEK, nil
	}
	if ref, ok := f.userKEKs[uid]; ok {
		return ref, nil
	}
	chain := keys.UserChain(uid)
	cur, err := f.cat.CurrentKEK(ctx, chain)
	if err == nil {
		ref := keys.KEKRef{Chain: chain, Version: cur.Version}
		f.userKEKs[uid] = ref
		return ref, nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return keys.KEKRef{}, err
	}
	// The user's first file (or their first since a shred): a new version
	// above any destroyed one.
	all, err := f.cat.ListKEKs(ctx)
	if err != nil {
		return keys.KEKRef{}, err
	}
	ref := keys.KEKRef{Chain: chain, Version: 1}
	for _, k := range all {
		if k.Chain == chain && k.Version >= ref.Version {
			ref.Version = k.Version + 1
		}
	}
	if err := keyops.CreateKEKVersion(ctx, f.vol, ref, "uid:"+strconv.FormatUint(uint64(uid), 10), f.log); err != nil {
		return keys.KEKRef{}, err
	}
	f.log.Info("created a per-user KEK", "kek", ref.String())
	f.userKEKs[uid] = ref
	return ref, nil
}

// rekeyForOwner re-wraps a file's key under its new owner's KEK (per-user
// volumes, wrap mode). A derive-mode key cannot move: its DEK is a function
// of the creator's key, so it stays with that chain.
func (f *FS) rekeyForOwner(ctx context.Context, in *meta.Inode) error {
	if f.vol.KeyMode != keys.ModeWrap {
		return nil
	}
	old, err := f.cat.GetKey(ctx, in.Ino)
	if err != nil {
		return err
	}
	if old.Chain == keys.UserChain(in.UID) {
		return nil
	}
	for attempt := 0; ; attempt++ {
		to, err := f.kekFor(ctx, in.UID)
		if err != nil {
			return err
		}
		nrec, err := f.vol.Keys.Rewrap(ctx, volume.RecordOf(old), in.FileID, to)
		if err != nil {
			return err
		}
		err = f.cat.Update(ctx, func(t *meta.Tx) error {
			if err := checkCurrentKEK(t, to); err != nil {
				return err
			}
			_, err := t.SwapKey(in.Ino, old, volume.CatalogRecord(nrec))
			return err
		})
		if errors.Is(err, errKEKMoved) && attempt < 3 {
			f.forgetKEK(in.UID)
			continue
		}
		return err
	}
}
