package meta

import (
	"context"
	"syscall"
)

// Changing attributes (chmod, chown, utimes, truncate).

// SetAttr changes inode ino's attributes (see AttrChange) and returns the
// result. ctime becomes now (or *ch.Ctime). A size change on a regular file
// drops the chunks wholly past the new end and queues their objects for
// deletion in the same transaction; the FUSE layer rewrites a partial last
// chunk itself (SetChunk). EISDIR/EINVAL for a size change on anything else.
func (c *Catalog) SetAttr(ctx context.Context, ino uint64, ch AttrChange, now int64) (Inode, error) {
	return do(c, ctx, "setattr", func(t *Tx) (Inode, error) { return t.SetAttr(ino, ch, now) })
}

// SetAttr is Catalog.SetAttr inside this transaction.
func (t *Tx) SetAttr(ino uint64, ch AttrChange, now int64) (_ Inode, err error) {
	defer t.track(&err)
	in, err := t.GetInode(ino)
	if err != nil {
		return Inode{}, err
	}
	if ch.Size != nil {
		size := *ch.Size
		switch {
		case in.IsDir():
			return Inode{}, errf(syscall.EISDIR, "truncate: inode %d is a directory", ino)
		case !in.IsRegular():
			return Inode{}, errf(syscall.EINVAL, "truncate: inode %d is not a regular file", ino)
		case size < 0:
			return Inode{}, errf(syscall.EINVAL, "truncate: negative size %d", size)
		}
		if size < in.Size {
			first := (size + t.c.chunkSize - 1) / t.c.chunkSize // first chunk wholly past the end
			if err := t.dropChunks(ino, first, now); err != nil {
				return Inode{}, err
			}
			if err := t.step("truncate-chunks"); err != nil {
				return Inode{}, err
			}
		}
		in.Size = size
		if ch.Mtime == nil {
			in.Mtime = now
		}
	}
	if ch.Mode != nil {
		in.Mode = in.Mode&modeTypeMask | *ch.Mode&modePermMask
	}
	if ch.UID != nil {
		in.UID = *ch.UID
	}
	if ch.GID != nil {
		in.GID = *ch.GID
	}
	if ch.Atime != nil {
		in.Atime = *ch.Atime
	}
	if ch.Mtime != nil {
		in.Mtime = *ch.Mtime
	}
	in.Ctime = now
	if ch.Ctime != nil {
		in.Ctime = *ch.Ctime
	}
	if _, err := t.exec("setattr", `UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, mtime_ns = ?, ctime_ns = ?
		WHERE ino = ?`, int64(in.Mode), int64(in.UID), int64(in.GID), in.Size, in.Atime, in.Mtime, in.Ctime, int64(ino)); err != nil {
		return Inode{}, err
	}
	if err := t.step("setattr"); err != nil {
		return Inode{}, err
	}
	return in, nil
}
