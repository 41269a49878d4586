package meta

import (
	"context"
	"database/sql"
	"errors"
	"syscall"
)

// Reads of the namespace: inodes, lookups, directory listings, orphans.

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
