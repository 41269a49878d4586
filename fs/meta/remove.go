package meta

import (
	"context"
	"errors"
	"syscall"
)

// Removing names (unlink, rmdir) and reaping inodes that have no links left.

// Unlink removes name from parent and returns the inode with its link count
// lowered. At zero links the inode stays (for open handles) until Reap, or,
// if reap is true, goes in this same transaction with its chunks (queued for
// deletion), key record and xattrs. EISDIR for a directory.
func (c *Catalog) Unlink(ctx context.Context, parent uint64, name []byte, now int64, reap bool) (Inode, error) {
	return do(c, ctx, "unlink", func(t *Tx) (Inode, error) { return t.Unlink(parent, name, now, reap) })
}

// Unlink is Catalog.Unlink inside this transaction.
func (t *Tx) Unlink(parent uint64, name []byte, now int64, reap bool) (_ Inode, err error) {
	defer t.track(&err)
	if err := validName(name); err != nil {
		return Inode{}, err
	}
	if _, err := t.dirForChange(parent, "unlink"); err != nil {
		return Inode{}, err
	}
	in, ok, err := t.child(parent, name)
	if err != nil {
		return Inode{}, err
	}
	if !ok {
		return Inode{}, errf(syscall.ENOENT, "unlink in directory %d", parent)
	}
	if in.IsDir() {
		return Inode{}, errf(syscall.EISDIR, "unlink: inode %d is a directory", in.Ino)
	}
	if err := t.removeEntry(parent, name, &in, now, reap); err != nil {
		return Inode{}, err
	}
	return in, nil
}

// Rmdir removes the empty directory name from parent. ENOTDIR if it is not a
// directory, ENOTEMPTY if it has entries. The directory's link count drops to
// 0; reap as for Unlink.
func (c *Catalog) Rmdir(ctx context.Context, parent uint64, name []byte, now int64, reap bool) (Inode, error) {
	return do(c, ctx, "rmdir", func(t *Tx) (Inode, error) { return t.Rmdir(parent, name, now, reap) })
}

// Rmdir is Catalog.Rmdir inside this transaction.
func (t *Tx) Rmdir(parent uint64, name []byte, now int64, reap bool) (_ Inode, err error) {
	defer t.track(&err)
	if err := validName(name); err != nil {
		return Inode{}, err
	}
	if _, err := t.dirForChange(parent, "rmdir"); err != nil {
		return Inode{}, err
	}
	in, ok, err := t.child(parent, name)
	if err != nil {
		return Inode{}, err
	}
	if !ok {
		return Inode{}, errf(syscall.ENOENT, "rmdir in directory %d", parent)
	}
	if !in.IsDir() {
		return Inode{}, errf(syscall.ENOTDIR, "rmdir: inode %d is not a directory", in.Ino)
	}
	if full, err := t.hasChildren(in.Ino); err != nil {
		return Inode{}, err
	} else if full {
		return Inode{}, errf(syscall.ENOTEMPTY, "rmdir: directory %d", in.Ino)
	}
	if err := t.removeEntry(parent, name, &in, now, reap); err != nil {
		return Inode{}, err
	}
	return in, nil
}

// removeEntry deletes dentry parent/name pointing at *in and drops one link
// (all of a directory's), updating *in.
func (t *Tx) removeEntry(parent uint64, name []byte, in *Inode, now int64, reap bool) error {
	if _, err := t.exec("remove directory entry", `DELETE FROM dentries WHERE parent = ? AND name = ?`, int64(parent), name); err != nil {
		return err
	}
	if err := t.step("dentry"); err != nil {
		return err
	}
	dirDelta := 0
	if in.IsDir() {
		dirDelta = -1
		if err := t.addLinks(in.Ino, -int(in.Nlink), now); err != nil {
			return err
		}
		in.Nlink = 0
	} else {
		if err := t.addLinks(in.Ino, -1, now); err != nil {
			return err
		}
		in.Nlink--
	}
	in.Ctime = now
	if err := t.step("nlink"); err != nil {
		return err
	}
	if err := t.touchDir(parent, now, dirDelta); err != nil {
		return err
	}
	if err := t.step("parent"); err != nil {
		return err
	}
	if in.Nlink == 0 && reap {
		return t.reap(in.Ino, now)
	}
	return nil
}

// Reap deletes inode ino once it has no links: its chunks (objects queued for
// deletion), key record and xattrs, in one transaction. It returns false and
// changes nothing if the inode still has links or is already gone, so the
// FUSE layer may call it on every forget.
func (c *Catalog) Reap(ctx context.Context, ino uint64, now int64) (bool, error) {
	return do(c, ctx, "reap", func(t *Tx) (bool, error) { return t.Reap(ino, now) })
}

// Reap is Catalog.Reap inside this transaction.
func (t *Tx) Reap(ino uint64, now int64) (_ bool, err error) {
	defer t.track(&err)
	in, err := t.GetInode(ino)
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if in.Nlink > 0 || ino == RootIno {
		return false, nil
	}
	return true, t.reap(ino, now)
}

func (t *Tx) reap(ino uint64, now int64) error {
	if _, err := t.exec("reap: queue objects", `INSERT INTO deletes (name, enqueued_ns, attempts, not_before_ns)
		SELECT object_name(object), ?1, 0, ?3 FROM chunks WHERE ino = ?2 ORDER BY idx
		ON CONFLICT (name) DO NOTHING`, now, int64(ino), t.c.deleteDue(now)); err != nil {
		return err
	}
	if err := t.step("reap-queue"); err != nil {
		return err
	}
	for _, q := range []string{
		`DELETE FROM chunks WHERE ino = ?`,
		`DELETE FROM file_keys WHERE ino = ?`,
		`DELETE FROM xattrs WHERE ino = ?`,
		`DELETE FROM inodes WHERE ino = ?`,
	} {
		if _, err := t.exec("reap", q, int64(ino)); err != nil {
			return err
		}
		if err := t.step("reap"); err != nil {
			return err
		}
	}
	return nil
}
