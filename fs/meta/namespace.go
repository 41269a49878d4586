package meta

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// The namespace (inodes and directory entries) is split by operation:
// lookup.go (reads), create.go (create, mkdir, mknod, symlink, link),
// remove.go (unlink, rmdir, reap), rename.go and setattr.go. This file
// holds what they share: row decoding, name checks and the write helpers.

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
