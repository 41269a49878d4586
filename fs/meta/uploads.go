package meta

import (
	"context"
	"database/sql"
	"errors"
	"syscall"
)

// EnqueueUpload adds u to the upload queue and returns its id.
func (c *Catalog) EnqueueUpload(ctx context.Context, u Upload) (int64, error) {
	return do(c, ctx, "queue upload", func(t *Tx) (int64, error) { return t.EnqueueUpload(u) })
}

// EnqueueUpload is Catalog.EnqueueUpload inside this transaction.
func (t *Tx) EnqueueUpload(u Upload) (_ int64, err error) {
	defer t.track(&err)
	if u.Staging == "" || u.State == "" {
		return 0, errf(syscall.EINVAL, "queue upload: staging name and state are required")
	}
	res, err := t.exec("queue upload", `INSERT INTO uploads (ino, idx, staging, bytes, state, attempts, last_error, created_ns)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, int64(u.Ino), u.Index, u.Staging, u.Bytes, u.State, u.Attempts, u.LastError, u.Created)
	if err != nil {
		return 0, err
	}
	id, err := res.LastInsertId()
	return id, wrapSQL("queue upload", err)
}

// ListUploads returns up to limit (<= 0: all) queued uploads in state state
// ("" = any state) with id above afterID, in id (queue) order.
func (c *Catalog) ListUploads(ctx context.Context, state string, afterID int64, limit int) ([]Upload, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := c.r.QueryContext(ctx, `SELECT id, ino, idx, staging, bytes, state, attempts, last_error, created_ns
		FROM uploads WHERE (?1 = '' OR state = ?1) AND id > ?2 ORDER BY id LIMIT ?3`, state, afterID, limit)
	if err != nil {
		return nil, wrapSQL("read upload queue", err)
	}
	return scanUploads(rows)
}

func scanUploads(rows *sql.Rows) ([]Upload, error) {
	defer rows.Close()
	var out []Upload
	for rows.Next() {
		var u Upload
		var ino int64
		if err := rows.Scan(&u.ID, &ino, &u.Index, &u.Staging, &u.Bytes, &u.State, &u.Attempts, &u.LastError, &u.Created); err != nil {
			return nil, wrapSQL("read upload queue", err)
		}
		u.Ino = uint64(ino)
		out = append(out, u)
	}
	return out, wrapSQL("read upload queue", rows.Err())
}

// UploadsOf returns the queued uploads of inode ino, in id order (an index
// lookup: unlink asks for every file it removes).
func (c *Catalog) UploadsOf(ctx context.Context, ino uint64) ([]Upload, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT id, ino, idx, staging, bytes, state, attempts, last_error, created_ns
		FROM uploads WHERE ino = ? ORDER BY id`, int64(ino))
	if err != nil {
		return nil, wrapSQL("read upload queue", err)
	}
	return scanUploads(rows)
}

// HasUploads says whether inode ino has queued uploads (unlink reaps a file
// in its own transaction only when nothing of it is staged).
func (t *Tx) HasUploads(ino uint64) (_ bool, err error) {
	defer t.track(&err)
	var one int
	err = t.tx.QueryRowContext(t.ctx, `SELECT 1 FROM uploads WHERE ino = ? LIMIT 1`, int64(ino)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, wrapSQL("read upload queue", err)
	}
	return true, nil
}

// SetUploadState moves upload id to state; a non-empty lastErr counts a
// failed attempt (it must not contain secrets). ENOENT if id is not queued.
func (c *Catalog) SetUploadState(ctx context.Context, id int64, state, lastErr string) error {
	return c.update(ctx, "update upload", func(t *Tx) error { return t.SetUploadState(id, state, lastErr) })
}

// SetUploadState is Catalog.SetUploadState inside this transaction.
func (t *Tx) SetUploadState(id int64, state, lastErr string) (err error) {
	defer t.track(&err)
	if state == "" {
		return errf(syscall.EINVAL, "update upload %d: empty state", id)
	}
	failed := 0
	if lastErr != "" {
		failed = 1
	}
	res, err := t.exec("update upload", `UPDATE uploads SET state = ?, attempts = attempts + ?,
		last_error = CASE WHEN ? THEN ? ELSE last_error END WHERE id = ?`, state, failed, failed, lastErr, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errf(syscall.ENOENT, "update upload %d", id)
	}
	return nil
}

// CompleteUpload takes upload id off the queue (use the Tx form to do it in
// the same transaction as the SetChunks that records the object). ENOENT if
// it is not queued.
func (c *Catalog) CompleteUpload(ctx context.Context, id int64) error {
	return c.update(ctx, "complete upload", func(t *Tx) error { return t.CompleteUpload(id) })
}

// CompleteUpload is Catalog.CompleteUpload inside this transaction.
func (t *Tx) CompleteUpload(id int64) (err error) {
	defer t.track(&err)
	res, err := t.exec("complete upload", `DELETE FROM uploads WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errf(syscall.ENOENT, "complete upload %d", id)
	}
	return t.step("upload-done")
}

// UploadLost is the state of an upload whose staging file stayed on a lost host (a
// restore marks every queued upload so): the chunk's newest data is gone, and reads of it
// fail with EIO until fsck --repair truncates the file to its uploaded content.
const UploadLost = "lost"

// MarkUploadsLost marks every queued upload lost (restore, on the rebuilt catalog).
func (c *Catalog) MarkUploadsLost(ctx context.Context) (int64, error) {
	return do(c, ctx, "mark uploads lost", func(t *Tx) (int64, error) {
		res, err := t.exec("mark uploads lost", `UPDATE uploads SET state = ?`, UploadLost)
		if err != nil {
			return 0, err
		}
		n, _ := res.RowsAffected()
		return n, nil
	})
}

// IsLost reports whether chunk idx of ino has an upload marked lost.
func (c *Catalog) IsLost(ctx context.Context, ino uint64, idx int64) (bool, error) {
	var one int
	err := c.r.QueryRowContext(ctx, `SELECT 1 FROM uploads WHERE ino = ? AND idx = ? AND state = ? LIMIT 1`,
		int64(ino), idx, UploadLost).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, wrapSQL("read upload queue", err)
	}
	return true, nil
}
