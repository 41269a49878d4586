package fusefront

// Attributes: setattr (chmod, chown, truncate, utimens) and the mtime it hands the data path.

import (
	"context"
	"math"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
	"coffer/keys"
)

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
