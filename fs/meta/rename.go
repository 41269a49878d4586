package meta

import (
	"context"
	"syscall"
)

// Rename, including RENAME_NOREPLACE and RENAME_EXCHANGE.

// Rename moves oldParent/oldName to newParent/newName with Linux semantics:
// flags RenameNoReplace (EEXIST if the target exists) or RenameExchange
// (swap two existing entries); a file replaces a file, a directory replaces an
// empty directory (EISDIR, ENOTDIR, ENOTEMPTY otherwise); moving a directory
// into its own subtree is EINVAL. Renaming a name onto itself, or onto
// another link of the same inode, does nothing. The replaced inode, if any, is
// returned with its link count lowered (reap as for Unlink).
func (c *Catalog) Rename(ctx context.Context, oldParent uint64, oldName []byte, newParent uint64, newName []byte, flags uint32, now int64, reap bool) (*Inode, error) {
	return do(c, ctx, "rename", func(t *Tx) (*Inode, error) {
		return t.Rename(oldParent, oldName, newParent, newName, flags, now, reap)
	})
}

// Rename is Catalog.Rename inside this transaction.
func (t *Tx) Rename(oldParent uint64, oldName []byte, newParent uint64, newName []byte, flags uint32, now int64, reap bool) (_ *Inode, err error) {
	defer t.track(&err)
	if flags&^(RenameNoReplace|RenameExchange) != 0 || flags == RenameNoReplace|RenameExchange {
		return nil, errf(syscall.EINVAL, "rename: flags %#x", flags)
	}
	exchange := flags&RenameExchange != 0
	if err := validName(oldName); err != nil {
		return nil, err
	}
	if err := validName(newName); err != nil {
		return nil, err
	}
	if _, err := t.dirForChange(oldParent, "rename"); err != nil {
		return nil, err
	}
	if newParent != oldParent {
		if _, err := t.dirForChange(newParent, "rename"); err != nil {
			return nil, err
		}
	}
	src, ok, err := t.child(oldParent, oldName)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errf(syscall.ENOENT, "rename from directory %d", oldParent)
	}
	dst, dstOK, err := t.child(newParent, newName)
	if err != nil {
		return nil, err
	}
	// The checks in the order Linux makes them (do_renameat2, vfs_rename).
	if flags&RenameNoReplace != 0 && dstOK {
		return nil, errf(syscall.EEXIST, "rename to directory %d", newParent)
	}
	if exchange && !dstOK {
		return nil, errf(syscall.ENOENT, "rename exchange with directory %d", newParent)
	}
	if src.IsDir() {
		if in, err := t.isAncestorOrSelf(src.Ino, newParent); err != nil {
			return nil, err
		} else if in {
			return nil, errf(syscall.EINVAL, "rename: directory %d into its own subtree", src.Ino)
		}
	}
	if dstOK && dst.IsDir() {
		if in, err := t.isAncestorOrSelf(dst.Ino, oldParent); err != nil {
			return nil, err
		} else if in {
			if exchange {
				return nil, errf(syscall.EINVAL, "rename exchange: directory %d with its own subtree", dst.Ino)
			}
			return nil, errf(syscall.ENOTEMPTY, "rename onto directory %d", dst.Ino)
		}
	}
	if dstOK && dst.Ino == src.Ino {
		return nil, nil // same name, or two links of one file: nothing to do
	}
	if exchange {
		return nil, t.exchange(oldParent, oldName, src, newParent, newName, dst, now)
	}
	if dstOK {
		switch {
		case src.IsDir() && !dst.IsDir():
			return nil, errf(syscall.ENOTDIR, "rename directory %d onto non-directory %d", src.Ino, dst.Ino)
		case !src.IsDir() && dst.IsDir():
			return nil, errf(syscall.EISDIR, "rename onto directory %d", dst.Ino)
		case dst.IsDir():
			if full, err := t.hasChildren(dst.Ino); err != nil {
				return nil, err
			} else if full {
				return nil, errf(syscall.ENOTEMPTY, "rename onto directory %d", dst.Ino)
			}
		}
	}

	// Point the target name at src (replacing dst), drop the old name.
	if dstOK {
		_, err = t.exec("rename", `UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?`, int64(src.Ino), int64(newParent), newName)
	} else {
		err = t.insertDentry(newParent, newName, src.Ino)
	}
	if err != nil {
		return nil, err
	}
	if err := t.step("new-entry"); err != nil {
		return nil, err
	}
	if _, err := t.exec("rename", `DELETE FROM dentries WHERE parent = ? AND name = ?`, int64(oldParent), oldName); err != nil {
		return nil, err
	}
	if err := t.step("old-entry"); err != nil {
		return nil, err
	}
	if err := t.addLinks(src.Ino, 0, now); err != nil { // ctime only
		return nil, err
	}
	// Parent link counts: a moved directory moves its ".."; a replaced
	// directory leaves newParent.
	oldDelta, newDelta := 0, 0
	if src.IsDir() && oldParent != newParent {
		oldDelta--
		newDelta++
	}
	var replaced *Inode
	if dstOK {
		drop := 1
		if dst.IsDir() {
			drop = int(dst.Nlink)
			newDelta--
		}
		if err := t.addLinks(dst.Ino, -drop, now); err != nil {
			return nil, err
		}
		dst.Nlink = uint32(max(int(dst.Nlink)-drop, 0))
		dst.Ctime = now
		replaced = &dst
		if err := t.step("replaced"); err != nil {
			return nil, err
		}
	}
	if newParent == oldParent {
		if err := t.touchDir(oldParent, now, oldDelta+newDelta); err != nil {
			return nil, err
		}
	} else {
		if err := t.touchDir(oldParent, now, oldDelta); err != nil {
			return nil, err
		}
		if err := t.touchDir(newParent, now, newDelta); err != nil {
			return nil, err
		}
	}
	if err := t.step("parents"); err != nil {
		return nil, err
	}
	if replaced != nil && replaced.Nlink == 0 && reap {
		if err := t.reap(replaced.Ino, now); err != nil {
			return nil, err
		}
	}
	return replaced, nil
}

func (t *Tx) exchange(oldParent uint64, oldName []byte, src Inode, newParent uint64, newName []byte, dst Inode, now int64) error {
	if _, err := t.exec("rename exchange", `UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?`, int64(dst.Ino), int64(oldParent), oldName); err != nil {
		return err
	}
	if err := t.step("exchange-old"); err != nil {
		return err
	}
	if _, err := t.exec("rename exchange", `UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?`, int64(src.Ino), int64(newParent), newName); err != nil {
		return err
	}
	if err := t.step("exchange-new"); err != nil {
		return err
	}
	if err := t.addLinks(src.Ino, 0, now); err != nil {
		return err
	}
	if err := t.addLinks(dst.Ino, 0, now); err != nil {
		return err
	}
	delta := 0 // subdirectories newParent gains (and oldParent loses)
	if oldParent != newParent {
		if src.IsDir() {
			delta++
		}
		if dst.IsDir() {
			delta--
		}
	}
	if err := t.touchDir(oldParent, now, -delta); err != nil {
		return err
	}
	if oldParent != newParent {
		if err := t.touchDir(newParent, now, delta); err != nil {
			return err
		}
	}
	return t.step("exchange-parents")
}
