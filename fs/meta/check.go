package meta

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Stats returns the counts statfs reports, from one consistent snapshot.
func (c *Catalog) Stats(ctx context.Context) (Stats, error) {
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Stats{}, wrapSQL("statfs", err)
	}
	defer tx.Rollback()
	var s Stats
	if err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(size), 0) FROM inodes`).Scan(&s.Inodes, &s.Bytes); err != nil {
		return Stats{}, wrapSQL("statfs", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(length), 0) FROM chunks`).Scan(&s.Chunks, &s.ChunkBytes); err != nil {
		return Stats{}, wrapSQL("statfs", err)
	}
	return s, nil
}

// Snapshot writes a consistent, compacted copy of the catalog to path (a new
// file, mode 0600) without stopping writers: the source of the encrypted
// catalog backups. Deleted rows are not carried over.
func (c *Catalog) Snapshot(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errf(syscall.EEXIST, "snapshot catalog: %s exists", path)
		}
		return fmt.Errorf("meta: snapshot catalog: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("meta: snapshot catalog: %w", err)
	}
	f.Close()
	// VACUUM INTO accepts an existing empty file and only reads the
	// catalog, so a read-only (mode=ro) connection does it without the write
	// lock; query_only would refuse to write the new file, so it is lifted
	// on this one connection meanwhile.
	conn, err := c.r.Conn(ctx)
	if err != nil {
		os.Remove(path)
		return wrapSQL("snapshot catalog", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `PRAGMA query_only = 0`); err != nil {
		os.Remove(path)
		return wrapSQL("snapshot catalog", err)
	}
	_, err = conn.ExecContext(ctx, `VACUUM INTO ?`, path)
	if _, rerr := conn.ExecContext(context.Background(), `PRAGMA query_only = 1`); rerr != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn }) // do not return it to the pool
	}
	if err != nil {
		os.Remove(path)
		return wrapSQL("snapshot catalog", err)
	}
	return nil
}

// Check looks for inconsistencies (the core of coffer fsck): SQLite's own
// integrity and foreign-key checks, link counts, directory shape, key records
// and chunks on the right kind of inode, objects both live and queued for
// deletion, and the audit chain. It changes nothing; an empty result means
// clean.
func (c *Catalog) Check(ctx context.Context) ([]Problem, error) {
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, wrapSQL("check catalog", err)
	}
	defer tx.Rollback()
	var out []Problem
	add := func(ino uint64, format string, args ...any) {
		out = append(out, Problem{Ino: ino, Detail: fmt.Sprintf(format, args...)})
	}
	query := func(q string, each func(rows *sql.Rows) error) error {
		rows, err := tx.QueryContext(ctx, q)
		if err != nil {
			return wrapSQL("check catalog", err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := each(rows); err != nil {
				return wrapSQL("check catalog", err)
			}
		}
		return wrapSQL("check catalog", rows.Err())
	}

	if err := query(`PRAGMA integrity_check`, func(r *sql.Rows) error {
		var s string
		if err := r.Scan(&s); err != nil {
			return err
		}
		if s != "ok" {
			add(0, "sqlite integrity: %s", s)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := query(`PRAGMA foreign_key_check`, func(r *sql.Rows) error {
		var table, parent string
		var rowid sql.NullInt64
		var fk int64
		if err := r.Scan(&table, &rowid, &parent, &fk); err != nil {
			return err
		}
		add(0, "table %s row %d refers to a missing %s row", table, rowid.Int64, parent)
		return nil
	}); err != nil {
		return nil, err
	}

	root, err := getInode(ctx, tx, RootIno)
	if err != nil {
		add(RootIno, "root directory missing: %v", err)
	} else if !root.IsDir() {
		add(RootIno, "root is not a directory (mode %#o)", root.Mode)
	}

	// Link counts: a file's nlink is its number of entries; a live
	// directory has exactly one entry (none for the root) and nlink 2 +
	// subdirectories; a removed one has neither.
	if err := query(`SELECT i.ino, i.mode, i.nlink, i.size, length(i.target),
			(SELECT count(*) FROM dentries d WHERE d.ino = i.ino),
			(SELECT count(*) FROM dentries d JOIN inodes s ON s.ino = d.ino WHERE d.parent = i.ino AND (s.mode & 61440) = 16384),
			(SELECT count(*) FROM dentries d WHERE d.parent = i.ino)
		FROM inodes i ORDER BY i.ino`, func(r *sql.Rows) error {
		var ino, mode, nlink, size, links, subdirs, entries int64
		var tlen sql.NullInt64
		if err := r.Scan(&ino, &mode, &nlink, &size, &tlen, &links, &subdirs, &entries); err != nil {
			return err
		}
		switch mode & modeTypeMask {
		case syscall.S_IFDIR:
			wantLinks := int64(1)
			if ino == RootIno {
				wantLinks = 0
			}
			switch {
			case nlink == 0 && (links != 0 || entries != 0):
				add(uint64(ino), "removed directory still has %d names and %d entries", links, entries)
			case nlink != 0 && links != wantLinks:
				add(uint64(ino), "directory has %d names, want %d", links, wantLinks)
			case nlink != 0 && nlink != 2+subdirs:
				add(uint64(ino), "directory nlink %d, want %d", nlink, 2+subdirs)
			}
		default:
			if nlink != links {
				add(uint64(ino), "nlink %d but %d names", nlink, links)
			}
			if entries != 0 {
				add(uint64(ino), "non-directory has %d entries", entries)
			}
			if mode&modeTypeMask == syscall.S_IFLNK && (!tlen.Valid || tlen.Int64 != size) {
				add(uint64(ino), "symlink size %d does not match its target", size)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}

	if err := query(`SELECT k.ino, i.mode FROM file_keys k JOIN inodes i ON i.ino = k.ino
		WHERE (i.mode & 61440) <> 32768`, func(r *sql.Rows) error {
		var ino, mode int64
		if err := r.Scan(&ino, &mode); err != nil {
			return err
		}
		add(uint64(ino), "key record on a non-regular inode (mode %#o)", mode)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := query(fmt.Sprintf(`SELECT c.ino, c.idx, c.length, i.mode, i.size,
			EXISTS (SELECT 1 FROM file_keys k WHERE k.ino = c.ino),
			EXISTS (SELECT 1 FROM deletes q WHERE q.name = object_name(c.object))
		FROM chunks c JOIN inodes i ON i.ino = c.ino
		WHERE (i.mode & 61440) <> 32768 OR c.length > %[1]d OR c.idx * %[1]d >= max(i.size, 1)
			OR NOT EXISTS (SELECT 1 FROM file_keys k WHERE k.ino = c.ino)
			OR EXISTS (SELECT 1 FROM deletes q WHERE q.name = object_name(c.object))`, c.chunkSize),
		func(r *sql.Rows) error {
			var ino, idx, length, mode, size int64
			var hasKey, queued bool
			if err := r.Scan(&ino, &idx, &length, &mode, &size, &hasKey, &queued); err != nil {
				return err
			}
			switch {
			case mode&modeTypeMask != syscall.S_IFREG:
				add(uint64(ino), "chunk %d on a non-regular inode", idx)
			case queued:
				add(uint64(ino), "chunk %d's object is live and queued for deletion", idx)
			case length > c.chunkSize:
				add(uint64(ino), "chunk %d length %d exceeds the chunk size", idx, length)
			case idx*c.chunkSize >= max(size, 1):
				add(uint64(ino), "chunk %d lies wholly past the end of the file (size %d)", idx, size)
			case !hasKey:
				add(uint64(ino), "chunk %d but the file has no key record", idx)
			}
			return nil
		}); err != nil {
		return nil, err
	}
	if _, err := c.VerifyAuditChain(ctx); err != nil {
		var ce *ChainError
		if !errors.As(err, &ce) {
			return nil, err
		}
		add(0, "%s", ce.Error())
	}
	return out, nil
}

// EachChunk calls fn for every chunk row, in inode and index order, from one consistent
// snapshot (fsck).
func (c *Catalog) EachChunk(ctx context.Context, fn func(ino uint64, ch Chunk) error) error {
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return wrapSQL("list chunks", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT ino, idx, object, length, key_version FROM chunks ORDER BY ino, idx`)
	if err != nil {
		return wrapSQL("list chunks", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ino int64
		var ch Chunk
		var obj []byte
		if err := rows.Scan(&ino, &ch.Index, &obj, &ch.Length, &ch.KeyVersion); err != nil {
			return wrapSQL("list chunks", err)
		}
		copy(ch.Object[:], obj)
		if err := fn(uint64(ino), ch); err != nil {
			return err
		}
	}
	return wrapSQL("list chunks", rows.Err())
}

// QueuedDeletes returns every name on the delete queue (fsck: those are not orphans).
func (c *Catalog) QueuedDeletes(ctx context.Context) (map[string]bool, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT name FROM deletes`)
	if err != nil {
		return nil, wrapSQL("read delete queue", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, wrapSQL("read delete queue", err)
		}
		out[n] = true
	}
	return out, wrapSQL("read delete queue", rows.Err())
}

// RegularFiles returns every regular file's inode number and size, and their total size
// (fsck --full reads them all).
func (c *Catalog) RegularFiles(ctx context.Context) ([]Inode, int64, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT ino, size FROM inodes WHERE (mode & ?) = ? ORDER BY ino`,
		syscall.S_IFMT, syscall.S_IFREG)
	if err != nil {
		return nil, 0, wrapSQL("list regular files", err)
	}
	defer rows.Close()
	var out []Inode
	var total int64
	for rows.Next() {
		var in Inode
		var ino int64
		if err := rows.Scan(&ino, &in.Size); err != nil {
			return nil, 0, wrapSQL("list regular files", err)
		}
		in.Ino = uint64(ino)
		total += in.Size
		out = append(out, in)
	}
	return out, total, wrapSQL("list regular files", rows.Err())
}
