package meta

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Row decoding lives here and nowhere else.
const (
	inodeBase   = `ino, gen, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, file_id, target`
	storedQuery = `(SELECT coalesce(sum(c.length), 0) FROM chunks c WHERE c.ino = %s.ino)` // Inode.Stored
)

// inodeCols are the columns scanInode reads, from the inodes table; inodeColsI
// the same for a query that names it "i".
var (
	inodeCols  = inodeBase + ", " + fmt.Sprintf(storedQuery, "inodes")
	inodeColsI = "i." + strings.ReplaceAll(inodeBase, ", ", ", i.") + ", " + fmt.Sprintf(storedQuery, "i")
)

var lookupSQL = `SELECT ` + inodeCols + ` FROM inodes WHERE ino = (SELECT ino FROM dentries WHERE parent = ? AND name = ?)`

type scanner interface{ Scan(dest ...any) error }

// scanInode decodes inodeCols, then any extra columns into extra.
func scanInode(s scanner, extra ...any) (Inode, error) {
	var ino, gen, mode, uid, gid, nlink, size, rdev int64
	var in Inode
	var fid []byte
	dest := append([]any{&ino, &gen, &mode, &uid, &gid, &nlink, &size, &rdev,
		&in.Atime, &in.Mtime, &in.Ctime, &fid, &in.Target, &in.Stored}, extra...)
	if err := s.Scan(dest...); err != nil {
		return Inode{}, err
	}
	in.Ino, in.Gen, in.Mode = uint64(ino), uint64(gen), uint32(mode)
	in.UID, in.GID, in.Nlink = uint32(uid), uint32(gid), uint32(nlink)
	in.Size, in.Rdev = size, uint32(rdev)
	copy(in.FileID[:], fid)
	return in, nil
}

func fileIDArg(id [16]byte) any {
	if id == [16]byte{} {
		return nil
	}
	return id[:]
}

// validName checks one path component.
func validName(name []byte) error {
	switch {
	case len(name) > MaxNameLen:
		return errf(syscall.ENAMETOOLONG, "name of %d bytes", len(name))
	case len(name) == 0, string(name) == ".", string(name) == "..",
		bytes.IndexByte(name, '/') >= 0, bytes.IndexByte(name, 0) >= 0:
		return errf(syscall.EINVAL, "invalid name")
	}
	return nil
}

// ---- reads ----

// GetInode returns inode ino (ENOENT if it does not exist).
func (c *Catalog) GetInode(ctx context.Context, ino uint64) (Inode, error) {
	return getInode(ctx, c.r, ino)
}

// GetInode returns inode ino as this transaction sees it.
func (t *Tx) GetInode(ino uint64) (Inode, error) { return getInode(t.ctx, t.tx, ino) }

func getInode(ctx context.Context, q querier, ino uint64) (Inode, error) {
	in, err := scanInode(q.QueryRowContext(ctx, `SELECT `+inodeCols+` FROM inodes WHERE ino = ?`, int64(ino)))
	if errors.Is(err, sql.ErrNoRows) {
		return Inode{}, errf(syscall.ENOENT, "inode %d", ino)
	}
	if err != nil {
		return Inode{}, wrapSQL("read inode", err)
	}
	return in, nil
}

// Lookup returns the inode that name in directory parent points to, or
// ENOENT.
func (c *Catalog) Lookup(ctx context.Context, parent uint64, name []byte) (Inode, error) {
	return lookup(ctx, c.r, parent, name)
}

// Lookup is Catalog.Lookup inside this transaction.
func (t *Tx) Lookup(parent uint64, name []byte) (Inode, error) {
	return lookup(t.ctx, t.tx, parent, name)
}

func lookup(ctx context.Context, q querier, parent uint64, name []byte) (Inode, error) {
	if err := validName(name); err != nil {
		return Inode{}, err
	}
	in, err := scanInode(q.QueryRowContext(ctx, lookupSQL, int64(parent), name))
	if errors.Is(err, sql.ErrNoRows) {
		return Inode{}, errf(syscall.ENOENT, "lookup in directory %d", parent)
	}
	if err != nil {
		return Inode{}, wrapSQL("lookup", err)
	}
	return in, nil
}

// ReadDir lists directory parent in name order (bytewise), starting after
// name after (nil: from the start), at most limit entries (<= 0: all). The
// order is stable, so a caller can resume from the last name it returned.
// "." and ".." are not included.
func (c *Catalog) ReadDir(ctx context.Context, parent uint64, after []byte, limit int) ([]DirEntry, error) {
	rows, err := c.readDir(ctx, parent, after, limit, `d.name, d.ino, i.mode`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DirEntry
	for rows.Next() {
		var e DirEntry
		var ino, mode int64
		if err := rows.Scan(&e.Name, &ino, &mode); err != nil {
			return nil, wrapSQL("read directory", err)
		}
		e.Ino, e.Mode = uint64(ino), uint32(mode)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapSQL("read directory", err)
	}
	if len(out) == 0 {
		return nil, c.checkDir(ctx, parent)
	}
	return out, nil
}

// ReadDirPlus is ReadDir returning whole inodes (for readdirplus).
func (c *Catalog) ReadDirPlus(ctx context.Context, parent uint64, after []byte, limit int) ([]DirEntryPlus, error) {
	rows, err := c.readDir(ctx, parent, after, limit, inodeColsI+`, d.name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DirEntryPlus
	for rows.Next() {
		var e DirEntryPlus
		if e.Inode, err = scanInode(rows, &e.Name); err != nil {
			return nil, wrapSQL("read directory", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapSQL("read directory", err)
	}
	if len(out) == 0 {
		return nil, c.checkDir(ctx, parent)
	}
	return out, nil
}

func (c *Catalog) readDir(ctx context.Context, parent uint64, after []byte, limit int, cols string) (*sql.Rows, error) {
	if limit <= 0 {
		limit = -1
	}
	if after == nil {
		after = []byte{} // sorts before every name
	}
	rows, err := c.r.QueryContext(ctx, `SELECT `+cols+` FROM dentries d JOIN inodes i ON i.ino = d.ino
		WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?`, int64(parent), after, limit)
	if err != nil {
		return nil, wrapSQL("read directory", err)
	}
	return rows, nil
}

// checkDir explains an empty listing: ENOENT or ENOTDIR, or nil if parent
// is a directory.
func (c *Catalog) checkDir(ctx context.Context, ino uint64) error {
	in, err := c.GetInode(ctx, ino)
	if err != nil {
		return err
	}
	if !in.IsDir() {
		return errf(syscall.ENOTDIR, "read directory %d", ino)
	}
	return nil
}

// Orphans lists inodes with no links left (unlinked while open, or a crash
// before Reap). The FUSE layer reaps them at mount.
func (c *Catalog) Orphans(ctx context.Context) ([]uint64, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino`)
	if err != nil {
		return nil, wrapSQL("list orphans", err)
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var ino int64
		if err := rows.Scan(&ino); err != nil {
			return nil, wrapSQL("list orphans", err)
		}
		out = append(out, uint64(ino))
	}
	return out, wrapSQL("list orphans", rows.Err())
}

// ---- write helpers ----

func (t *Tx) insertInode(in Inode) (uint64, error) {
	var ino any // NULL: the next AUTOINCREMENT number
	if in.Ino != 0 {
		ino = int64(in.Ino)
	}
	if in.Gen == 0 {
		in.Gen = 1
	}
	res, err := t.exec("create inode", `INSERT INTO inodes (ino, gen, mode, uid, gid, nlink, size, rdev,
		atime_ns, mtime_ns, ctime_ns, file_id, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		ino, int64(in.Gen), int64(in.Mode), int64(in.UID), int64(in.GID), int64(in.Nlink), in.Size,
		int64(in.Rdev), in.Atime, in.Mtime, in.Ctime, fileIDArg(in.FileID), blob(in.Target))
	if err != nil {
		return 0, err
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, wrapSQL("create inode", err)
	}
	return uint64(id), nil
}

func (t *Tx) insertDentry(parent uint64, name []byte, ino uint64) error {
	_, err := t.exec("create directory entry", `INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)`,
		int64(parent), name, int64(ino))
	return err
}

// dirForChange loads a directory about to get or lose an entry: ENOENT if
// it is gone (or removed but still open), ENOTDIR if it is not a directory.
func (t *Tx) dirForChange(ino uint64, what string) (Inode, error) {
	in, err := t.GetInode(ino)
	if err != nil {
		return Inode{}, err
	}
	if !in.IsDir() {
		return Inode{}, errf(syscall.ENOTDIR, "%s: inode %d is not a directory", what, ino)
	}
	if in.Nlink == 0 {
		return Inode{}, errf(syscall.ENOENT, "%s: directory %d was removed", what, ino)
	}
	return in, nil
}

// child looks up name in parent inside the transaction; ok is false if
// there is no such entry.
func (t *Tx) child(parent uint64, name []byte) (Inode, bool, error) {
	in, err := scanInode(t.tx.QueryRowContext(t.ctx, lookupSQL, int64(parent), name))
	if errors.Is(err, sql.ErrNoRows) {
		return Inode{}, false, nil
	}
	if err != nil {
		return Inode{}, false, wrapSQL("lookup", err)
	}
	return in, true, nil
}

// touchDir sets a directory's mtime and ctime and adds delta to its link
// count (subdirectories gained or lost).
func (t *Tx) touchDir(ino uint64, now int64, delta int) error {
	_, err := t.exec("update directory", `UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE ino = ?`,
		now, now, delta, int64(ino))
	return err
}

// addLinks adds delta to an inode's link count and sets its ctime.
func (t *Tx) addLinks(ino uint64, delta int, now int64) error {
	_, err := t.exec("update link count", `UPDATE inodes SET nlink = max(nlink + ?, 0), ctime_ns = ? WHERE ino = ?`,
		delta, now, int64(ino))
	return err
}

func (t *Tx) hasChildren(dir uint64) (bool, error) {
	var one int
	err := t.tx.QueryRowContext(t.ctx, `SELECT 1 FROM dentries WHERE parent = ? LIMIT 1`, int64(dir)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, wrapSQL("read directory", err)
	}
	return true, nil
}

// isAncestorOrSelf reports whether directory anc is dir or one of its
// ancestors, walking up the directory entries (a directory has one).
func (t *Tx) isAncestorOrSelf(anc, dir uint64) (bool, error) {
	if anc == dir {
		return true, nil
	}
	var one int
	err := t.tx.QueryRowContext(t.ctx, `WITH RECURSIVE up(ino) AS (
			SELECT ?1
			UNION
			SELECT d.parent FROM dentries d JOIN up ON d.ino = up.ino WHERE up.ino <> ?3
		) SELECT 1 FROM up WHERE ino = ?2 LIMIT 1`, int64(dir), int64(anc), int64(RootIno)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, wrapSQL("walk up the tree", err)
	}
	return true, nil
}

// ---- creating ----

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

// ---- removing ----

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
		SELECT object_name(object), ?1, 0, ?1 FROM chunks WHERE ino = ?2 ORDER BY idx
		ON CONFLICT (name) DO NOTHING`, now, int64(ino)); err != nil {
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

// ---- rename ----

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

// ---- attributes ----

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
