package meta

import (
	"bytes"
	"context"
	"crypto/rand"
	"syscall"
)

// Creating names: new nodes (file, directory, device, symlink) and hard links.

// CreateFile creates a regular file name in parent, with its key record in
// the same transaction. attr gives Mode (type bits S_IFREG or 0), UID, GID
// and the times (Ctime is "now"; a zero Atime or Mtime takes it); a zero
// FileID gets a random one. The new inode is returned. EEXIST if the name
// exists.
func (c *Catalog) CreateFile(ctx context.Context, parent uint64, name []byte, attr Inode, key *KeyRecord) (Inode, error) {
	return do(c, ctx, "create file", func(t *Tx) (Inode, error) { return t.CreateFile(parent, name, attr, key) })
}

// CreateFile is Catalog.CreateFile inside this transaction.
func (t *Tx) CreateFile(parent uint64, name []byte, attr Inode, key *KeyRecord) (_ Inode, err error) {
	defer t.track(&err)
	if attr.Mode&modeTypeMask == 0 {
		attr.Mode |= syscall.S_IFREG
	}
	if attr.Mode&modeTypeMask != syscall.S_IFREG {
		return Inode{}, errf(syscall.EINVAL, "create file: mode %#o is not a regular file", attr.Mode)
	}
	if attr.FileID == [16]byte{} {
		rand.Read(attr.FileID[:])
	}
	if key != nil {
		if err := key.validate(); err != nil {
			return Inode{}, err
		}
	}
	attr.Rdev, attr.Target, attr.Size = 0, nil, 0
	return t.newNode(parent, name, attr, key, "create file")
}

// Mkdir creates directory name in parent (attr as for CreateFile).
func (c *Catalog) Mkdir(ctx context.Context, parent uint64, name []byte, attr Inode) (Inode, error) {
	return do(c, ctx, "mkdir", func(t *Tx) (Inode, error) { return t.Mkdir(parent, name, attr) })
}

// Mkdir is Catalog.Mkdir inside this transaction.
func (t *Tx) Mkdir(parent uint64, name []byte, attr Inode) (_ Inode, err error) {
	defer t.track(&err)
	attr.Mode = syscall.S_IFDIR | attr.Mode&modePermMask
	attr.Rdev, attr.Target, attr.Size, attr.FileID = 0, nil, 0, [16]byte{}
	return t.newNode(parent, name, attr, nil, "mkdir")
}

// Mknod creates a FIFO, socket or device node (attr.Mode carries the type,
// attr.Rdev the device number). Regular files go through CreateFile.
func (c *Catalog) Mknod(ctx context.Context, parent uint64, name []byte, attr Inode) (Inode, error) {
	return do(c, ctx, "mknod", func(t *Tx) (Inode, error) { return t.Mknod(parent, name, attr) })
}

// Mknod is Catalog.Mknod inside this transaction.
func (t *Tx) Mknod(parent uint64, name []byte, attr Inode) (_ Inode, err error) {
	defer t.track(&err)
	switch attr.Mode & modeTypeMask {
	case syscall.S_IFIFO, syscall.S_IFSOCK:
		attr.Rdev = 0
	case syscall.S_IFCHR, syscall.S_IFBLK:
	default:
		return Inode{}, errf(syscall.EINVAL, "mknod: mode %#o is not a FIFO, socket or device", attr.Mode)
	}
	attr.Target, attr.Size, attr.FileID = nil, 0, [16]byte{}
	return t.newNode(parent, name, attr, nil, "mknod")
}

// Symlink creates symbolic link name in parent pointing at target (attr
// gives UID, GID and times; the mode is always 0777).
func (c *Catalog) Symlink(ctx context.Context, parent uint64, name, target []byte, attr Inode) (Inode, error) {
	return do(c, ctx, "symlink", func(t *Tx) (Inode, error) { return t.Symlink(parent, name, target, attr) })
}

// Symlink is Catalog.Symlink inside this transaction.
func (t *Tx) Symlink(parent uint64, name, target []byte, attr Inode) (_ Inode, err error) {
	defer t.track(&err)
	switch {
	case len(target) == 0 || bytes.IndexByte(target, 0) >= 0:
		return Inode{}, errf(syscall.EINVAL, "symlink: invalid target")
	case len(target) > MaxSymlinkLen:
		return Inode{}, errf(syscall.ENAMETOOLONG, "symlink: target of %d bytes", len(target))
	}
	attr.Mode = syscall.S_IFLNK | 0o777
	attr.Target = bytes.Clone(target)
	attr.Size = int64(len(target))
	attr.Rdev, attr.FileID = 0, [16]byte{}
	return t.newNode(parent, name, attr, nil, "symlink")
}

func (t *Tx) newNode(parent uint64, name []byte, in Inode, key *KeyRecord, what string) (Inode, error) {
	if err := validName(name); err != nil {
		return Inode{}, err
	}
	now := in.Ctime
	if now == 0 {
		return Inode{}, errf(syscall.EINVAL, "%s: no ctime given", what)
	}
	if in.Atime == 0 {
		in.Atime = now
	}
	if in.Mtime == 0 {
		in.Mtime = now
	}
	if _, err := t.dirForChange(parent, what); err != nil {
		return Inode{}, err
	}
	if _, ok, err := t.child(parent, name); err != nil {
		return Inode{}, err
	} else if ok {
		return Inode{}, errf(syscall.EEXIST, "%s in directory %d", what, parent)
	}
	dirDelta := 0
	in.Ino, in.Gen, in.Nlink = 0, 1, 1
	if in.IsDir() {
		in.Nlink, dirDelta = 2, 1
	}
	ino, err := t.insertInode(in)
	if err != nil {
		return Inode{}, err
	}
	in.Ino = ino
	if err := t.step("inode"); err != nil {
		return Inode{}, err
	}
	if err := t.insertDentry(parent, name, ino); err != nil {
		return Inode{}, err
	}
	if err := t.step("dentry"); err != nil {
		return Inode{}, err
	}
	if err := t.touchDir(parent, now, dirDelta); err != nil {
		return Inode{}, err
	}
	if err := t.step("parent"); err != nil {
		return Inode{}, err
	}
	if key != nil {
		if err := t.insertKey(ino, *key); err != nil {
			return Inode{}, err
		}
		if err := t.step("key"); err != nil {
			return Inode{}, err
		}
	}
	return in, nil
}

// Link adds name newName in newParent for inode ino (a hard link) and
// returns the inode with its new link count. EPERM for a directory, EMLINK
// past MaxLinks, ENOENT if the inode has no links left.
func (c *Catalog) Link(ctx context.Context, ino, newParent uint64, newName []byte, now int64) (Inode, error) {
	return do(c, ctx, "link", func(t *Tx) (Inode, error) { return t.Link(ino, newParent, newName, now) })
}

// Link is Catalog.Link inside this transaction.
func (t *Tx) Link(ino, newParent uint64, newName []byte, now int64) (_ Inode, err error) {
	defer t.track(&err)
	if err := validName(newName); err != nil {
		return Inode{}, err
	}
	in, err := t.GetInode(ino)
	if err != nil {
		return Inode{}, err
	}
	switch {
	case in.IsDir():
		return Inode{}, errf(syscall.EPERM, "link: inode %d is a directory", ino)
	case in.Nlink == 0:
		return Inode{}, errf(syscall.ENOENT, "link: inode %d was unlinked", ino)
	case in.Nlink >= MaxLinks:
		return Inode{}, errf(syscall.EMLINK, "link: inode %d has %d links", ino, in.Nlink)
	}
	if _, err := t.dirForChange(newParent, "link"); err != nil {
		return Inode{}, err
	}
	if _, ok, err := t.child(newParent, newName); err != nil {
		return Inode{}, err
	} else if ok {
		return Inode{}, errf(syscall.EEXIST, "link in directory %d", newParent)
	}
	if err := t.insertDentry(newParent, newName, ino); err != nil {
		return Inode{}, err
	}
	if err := t.step("dentry"); err != nil {
		return Inode{}, err
	}
	if err := t.addLinks(ino, 1, now); err != nil {
		return Inode{}, err
	}
	if err := t.step("nlink"); err != nil {
		return Inode{}, err
	}
	if err := t.touchDir(newParent, now, 0); err != nil {
		return Inode{}, err
	}
	if err := t.step("parent"); err != nil {
		return Inode{}, err
	}
	in.Nlink++
	in.Ctime = now
	return in, nil
}
