package meta

import (
	"context"
	"database/sql"
	"errors"
	"syscall"
	"time"
)

const chunkCols = `idx, object, length, key_version`

func scanChunk(s scanner) (Chunk, error) {
	var ch Chunk
	var obj []byte
	var kv int64
	if err := s.Scan(&ch.Index, &obj, &ch.Length, &kv); err != nil {
		return Chunk{}, err
	}
	copy(ch.Object[:], obj)
	ch.KeyVersion = uint32(kv)
	return ch, nil
}

// Chunks returns ino's chunks with from <= Index < to (to < 0: no upper
// bound), in index order. Missing indexes are holes (read as zeros).
func (c *Catalog) Chunks(ctx context.Context, ino uint64, from, to int64) ([]Chunk, error) {
	return chunks(ctx, c.r, ino, from, to)
}

// Chunks is Catalog.Chunks inside this transaction.
func (t *Tx) Chunks(ino uint64, from, to int64) ([]Chunk, error) {
	return chunks(t.ctx, t.tx, ino, from, to)
}

func chunks(ctx context.Context, q querier, ino uint64, from, to int64) ([]Chunk, error) {
	if to < 0 {
		to = 1<<63 - 1
	}
	rows, err := q.QueryContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE ino = ? AND idx >= ? AND idx < ? ORDER BY idx`,
		int64(ino), from, to)
	if err != nil {
		return nil, wrapSQL("read chunk list", err)
	}
	defer rows.Close()
	var out []Chunk
	for rows.Next() {
		ch, err := scanChunk(rows)
		if err != nil {
			return nil, wrapSQL("read chunk list", err)
		}
		out = append(out, ch)
	}
	return out, wrapSQL("read chunk list", rows.Err())
}

// SetChunk records ch as chunk ch.Index of regular file ino, replacing the
// chunk there, whose object is queued for deletion in the same transaction
// (and returned). newSize >= 0 sets the file size, mtime != 0 sets mtime and
// ctime, both in the same transaction. An object id already in use, or
// already queued for deletion, is refused (EEXIST): ids are sealed once.
func (c *Catalog) SetChunk(ctx context.Context, ino uint64, ch Chunk, newSize, mtime int64) (*Chunk, error) {
	old, err := do(c, ctx, "set chunk", func(t *Tx) ([]Chunk, error) {
		return t.SetChunks(ino, []Chunk{ch}, newSize, mtime)
	})
	if err != nil || len(old) == 0 {
		return nil, err
	}
	return &old[0], nil
}

// SetChunks is SetChunk for several chunks of one file in one transaction;
// it returns the chunks replaced.
func (c *Catalog) SetChunks(ctx context.Context, ino uint64, chs []Chunk, newSize, mtime int64) ([]Chunk, error) {
	return do(c, ctx, "set chunks", func(t *Tx) ([]Chunk, error) { return t.SetChunks(ino, chs, newSize, mtime) })
}

// SetChunks is Catalog.SetChunks inside this transaction.
func (t *Tx) SetChunks(ino uint64, chs []Chunk, newSize, mtime int64) (_ []Chunk, err error) {
	defer t.track(&err)
	in, err := t.GetInode(ino)
	if err != nil {
		return nil, err
	}
	if !in.IsRegular() {
		if in.IsDir() {
			return nil, errf(syscall.EISDIR, "set chunk: inode %d is a directory", ino)
		}
		return nil, errf(syscall.EINVAL, "set chunk: inode %d is not a regular file", ino)
	}
	var replaced []Chunk
	for _, ch := range chs {
		switch {
		case ch.Index < 0:
			return nil, errf(syscall.EINVAL, "set chunk: negative index %d", ch.Index)
		case ch.Length < 0 || ch.Length > t.c.chunkSize:
			return nil, errf(syscall.EINVAL, "set chunk: length %d outside 0..%d", ch.Length, t.c.chunkSize)
		case ch.Object == [16]byte{}:
			return nil, errf(syscall.EINVAL, "set chunk: zero object id")
		}
		old, err := scanChunk(t.tx.QueryRowContext(t.ctx, `SELECT `+chunkCols+` FROM chunks WHERE ino = ? AND idx = ?`,
			int64(ino), ch.Index))
		hadOld := err == nil
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, wrapSQL("set chunk", err)
		}
		if hadOld && old.Object == ch.Object {
			if old != ch {
				return nil, errf(syscall.EEXIST, "set chunk: object %s re-recorded with different fields", ObjectName(ch.Object))
			}
			continue // the same commit again
		}
		var one int
		err = t.tx.QueryRowContext(t.ctx, `SELECT 1 FROM deletes WHERE name = ?`, ObjectName(ch.Object)).Scan(&one)
		if err == nil {
			return nil, errf(syscall.EEXIST, "set chunk: object %s is queued for deletion", ObjectName(ch.Object))
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, wrapSQL("set chunk", err)
		}
		if hadOld {
			if err := t.queueDelete(ObjectName(old.Object), mtimeOr(mtime)); err != nil {
				return nil, err
			}
			if err := t.step("queue-old"); err != nil {
				return nil, err
			}
			replaced = append(replaced, old)
		}
		if _, err := t.exec("set chunk", `INSERT INTO chunks (ino, idx, object, length, key_version) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (ino, idx) DO UPDATE SET object = excluded.object, length = excluded.length, key_version = excluded.key_version`,
			int64(ino), ch.Index, ch.Object[:], ch.Length, int64(ch.KeyVersion)); err != nil {
			return nil, err
		}
		if err := t.step("chunk"); err != nil {
			return nil, err
		}
	}
	if newSize >= 0 || mtime != 0 {
		size, mt, ct := in.Size, in.Mtime, in.Ctime
		if newSize >= 0 {
			size = newSize
		}
		if mtime != 0 {
			// ctime never goes back: the mtime may be an old one set by utimens
			// (tar x, cp -p) on a file whose upload commits later.
			mt, ct = mtime, max(in.Ctime, mtime)
		}
		if _, err := t.exec("set chunk: update size", `UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?`,
			size, mt, ct, int64(ino)); err != nil {
			return nil, err
		}
		if err := t.step("size"); err != nil {
			return nil, err
		}
	}
	return replaced, nil
}

// mtimeOr is the enqueue time of a replaced object: the write's time, or
// the clock when the caller gave none.
func mtimeOr(mtime int64) int64 {
	if mtime != 0 {
		return mtime
	}
	return time.Now().UnixNano()
}

// DropChunks removes ino's chunks with from <= Index < to (to < 0: no upper
// bound) and queues their objects for deletion, in one transaction (punching
// a hole). It returns how many went.
func (c *Catalog) DropChunks(ctx context.Context, ino uint64, from, to, now int64) (int64, error) {
	return do(c, ctx, "drop chunks", func(t *Tx) (int64, error) { return t.DropChunks(ino, from, to, now) })
}

// DropChunks is Catalog.DropChunks inside this transaction.
func (t *Tx) DropChunks(ino uint64, from, to, now int64) (_ int64, err error) {
	defer t.track(&err)
	if to < 0 {
		to = 1<<63 - 1
	}
	if _, err := t.exec("drop chunks: queue objects", `INSERT INTO deletes (name, enqueued_ns, attempts, not_before_ns)
		SELECT object_name(object), ?1, 0, ?5 FROM chunks WHERE ino = ?2 AND idx >= ?3 AND idx < ?4 ORDER BY idx
		ON CONFLICT (name) DO NOTHING`, now, int64(ino), from, to, t.c.deleteDue(now)); err != nil {
		return 0, err
	}
	if err := t.step("drop-queue"); err != nil {
		return 0, err
	}
	res, err := t.exec("drop chunks", `DELETE FROM chunks WHERE ino = ? AND idx >= ? AND idx < ?`, int64(ino), from, to)
	if err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return n, t.step("drop")
}

func (t *Tx) dropChunks(ino uint64, from, now int64) error {
	_, err := t.DropChunks(ino, from, -1, now)
	return err
}

// ---- delete queue ----

func (t *Tx) queueDelete(name string, now int64) error {
	_, err := t.exec("queue object for deletion", `INSERT INTO deletes (name, enqueued_ns, attempts, not_before_ns)
		VALUES (?1, ?2, 0, ?3) ON CONFLICT (name) DO NOTHING`, name, now, t.c.deleteDue(now))
	return err
}

// SetDeleteDelay makes objects dropped from now on (rewritten chunks, truncated or removed
// files) wait d on the delete queue: the point-in-time window, so that a catalog restored
// from an older replica still finds its objects. ExpediteDeletes lifts it (shred).
func (c *Catalog) SetDeleteDelay(d time.Duration) { c.deleteDelay.Store(int64(max(d, 0))) }

// deleteDue is when an object dropped at now may be deleted.
func (c *Catalog) deleteDue(now int64) int64 { return now + c.deleteDelay.Load() }

// ExpediteDeletes makes every deletion queued at or after since, and not yet tried, due at
// once (a shred's objects skip the point-in-time window). It returns how many.
func (c *Catalog) ExpediteDeletes(ctx context.Context, since int64) (int64, error) {
	return do(c, ctx, "expedite deletes", func(t *Tx) (int64, error) {
		res, err := t.exec("expedite deletes", `UPDATE deletes SET not_before_ns = enqueued_ns
			WHERE enqueued_ns >= ? AND not_before_ns > enqueued_ns AND attempts = 0`, since)
		if err != nil {
			return 0, err
		}
		n, _ := res.RowsAffected()
		return n, nil
	})
}

// EnqueueDelete puts a remote object name on the durable delete queue, due
// at notBefore (e.g. after the catalog snapshots that still name it expire).
func (c *Catalog) EnqueueDelete(ctx context.Context, name string, now, notBefore int64) error {
	return c.update(ctx, "queue object for deletion", func(t *Tx) error { return t.EnqueueDelete(name, now, notBefore) })
}

// EnqueueDelete is Catalog.EnqueueDelete inside this transaction.
func (t *Tx) EnqueueDelete(name string, now, notBefore int64) (err error) {
	defer t.track(&err)
	if name == "" {
		return errf(syscall.EINVAL, "queue object for deletion: empty name")
	}
	_, err = t.exec("queue object for deletion", `INSERT INTO deletes (name, enqueued_ns, attempts, not_before_ns)
		VALUES (?, ?, 0, ?) ON CONFLICT (name) DO NOTHING`, name, now, notBefore)
	return err
}

// NextDeletes returns up to n queued deletions due at now, oldest due first.
// They stay queued until DeleteDone.
func (c *Catalog) NextDeletes(ctx context.Context, now int64, n int) ([]PendingDelete, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT name, enqueued_ns, attempts, not_before_ns, last_error FROM deletes
		WHERE not_before_ns <= ? ORDER BY not_before_ns, name LIMIT ?`, now, n)
	if err != nil {
		return nil, wrapSQL("read delete queue", err)
	}
	defer rows.Close()
	var out []PendingDelete
	for rows.Next() {
		var d PendingDelete
		if err := rows.Scan(&d.Name, &d.Enqueued, &d.Attempts, &d.NotBefore, &d.LastError); err != nil {
			return nil, wrapSQL("read delete queue", err)
		}
		out = append(out, d)
	}
	return out, wrapSQL("read delete queue", rows.Err())
}

// DeleteDone takes names off the delete queue (their objects are gone), in
// one transaction.
func (c *Catalog) DeleteDone(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	return c.update(ctx, "finish deletion", func(t *Tx) error {
		for _, name := range names {
			if _, err := t.exec("finish deletion", `DELETE FROM deletes WHERE name = ?`, name); err != nil {
				return err
			}
		}
		return nil
	})
}

// DeleteFailed records a failed attempt and postpones name to notBefore.
// lastErr must not contain secrets.
func (c *Catalog) DeleteFailed(ctx context.Context, name string, notBefore int64, lastErr string) error {
	return c.update(ctx, "record failed deletion", func(t *Tx) error {
		res, err := t.exec("record failed deletion", `UPDATE deletes SET attempts = attempts + 1, not_before_ns = ?, last_error = ?
			WHERE name = ?`, notBefore, lastErr, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errf(syscall.ENOENT, "record failed deletion: object not queued")
		}
		return nil
	})
}

// PendingDeletes counts the delete queue.
func (c *Catalog) PendingDeletes(ctx context.Context) (int64, error) {
	var n int64
	err := c.r.QueryRowContext(ctx, `SELECT count(*) FROM deletes`).Scan(&n)
	return n, wrapSQL("count delete queue", err)
}
