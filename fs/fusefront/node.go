package fusefront

// The go-fuse node, what every operation shares (request context, errno, attributes for the
// kernel), and lookup, getattr, readlink and statfs. The other operations: setattr.go,
// create.go, remove.go, xattr.go; kek.go picks the KEK version a new file's key is made under.

import (
	"context"
	"errors"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
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
