package meta

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"syscall"
)

// Reads and writes for the key-lifecycle commands (coffer rotate, shred,
// passwd) and the audit MAC, kept apart from the namespace code.

// Link is one directory entry naming an inode.
type Link struct {
	Parent uint64
	Name   []byte
}

// Links returns every directory entry that names ino (all its hard links).
func (c *Catalog) Links(ctx context.Context, ino uint64) ([]Link, error) {
	return links(ctx, c.r, ino)
}

// Links is Catalog.Links inside this transaction.
func (t *Tx) Links(ino uint64) ([]Link, error) { return links(t.ctx, t.tx, ino) }

func links(ctx context.Context, q querier, ino uint64) ([]Link, error) {
	rows, err := q.QueryContext(ctx, `SELECT parent, name FROM dentries WHERE ino = ? ORDER BY parent, name`, int64(ino))
	if err != nil {
		return nil, wrapSQL("list links", err)
	}
	defer rows.Close()
	var out []Link
	for rows.Next() {
		var l Link
		var p int64
		if err := rows.Scan(&p, &l.Name); err != nil {
			return nil, wrapSQL("list links", err)
		}
		l.Parent = uint64(p)
		out = append(out, l)
	}
	return out, wrapSQL("list links", rows.Err())
}

// RegularFilesOwnedBy returns the inode numbers of the regular files owned by
// uid, in order, up to limit (<= 0: all) above afterIno.
func (c *Catalog) RegularFilesOwnedBy(ctx context.Context, uid uint32, afterIno uint64, limit int) ([]uint64, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := c.r.QueryContext(ctx, `SELECT ino FROM inodes WHERE uid = ? AND (mode & ?) = ? AND ino > ? ORDER BY ino LIMIT ?`,
		int64(uid), modeTypeMask, syscall.S_IFREG, int64(afterIno), limit)
	if err != nil {
		return nil, wrapSQL("list files of a user", err)
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var ino int64
		if err := rows.Scan(&ino); err != nil {
			return nil, wrapSQL("list files of a user", err)
		}
		out = append(out, uint64(ino))
	}
	return out, wrapSQL("list files of a user", rows.Err())
}

// LastAuditEvent returns the newest audit event whose name is one of names
// (false if there is none).
func (c *Catalog) LastAuditEvent(ctx context.Context, names ...string) (AuditEvent, bool, error) {
	if len(names) == 0 {
		return AuditEvent{}, false, nil
	}
	args := make([]any, len(names))
	for i, n := range names {
		args[i] = n
	}
	q := `SELECT ` + auditCols + ` FROM audit WHERE event IN (?` + strings.Repeat(", ?", len(names)-1) + `) ORDER BY seq DESC LIMIT 1`
	e, err := scanAudit(c.r.QueryRowContext(ctx, q, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return AuditEvent{}, false, nil
	}
	if err != nil {
		return AuditEvent{}, false, wrapSQL("read audit log", err)
	}
	return e, true, nil
}

// SetAuditMAC stores the MAC of audit row seq (the MAC covers the row's hash,
// so the chain itself is unchanged). ENOENT if there is no such row.
func (t *Tx) SetAuditMAC(seq int64, mac []byte) (err error) {
	defer t.track(&err)
	res, err := t.exec("store audit MAC", `UPDATE audit SET mac = ? WHERE seq = ?`, blob(mac), seq)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errf(syscall.ENOENT, "store audit MAC of entry %d", seq)
	}
	return t.step("audit-mac")
}

// KeySwap is one compare-and-swap of a key record (see SwapKeys).
type KeySwap struct {
	Ino      uint64
	Old, New KeyRecord
}

// SwapKeys is SwapKey for a batch of records (rotation), one UPDATE per record that matches
// only if the record still equals Old. It returns, per swap, whether it happened.
func (t *Tx) SwapKeys(swaps []KeySwap) (_ []bool, err error) {
	defer t.track(&err)
	out := make([]bool, len(swaps))
	for i, s := range swaps {
		if err := s.New.validate(); err != nil {
			return nil, err
		}
		res, err := t.exec("swap key record", `UPDATE file_keys SET mode = ?, chain = ?, version = ?, iv = ?, wrapped = ?, salt = ?
			WHERE ino = ? AND mode = ? AND chain = ? AND version = ? AND iv IS ? AND wrapped IS ? AND salt IS ?`,
			s.New.Mode, s.New.Chain, int64(s.New.Version), blob(s.New.IV), blob(s.New.Wrapped), blob(s.New.Salt),
			int64(s.Ino), s.Old.Mode, s.Old.Chain, int64(s.Old.Version), blob(s.Old.IV), blob(s.Old.Wrapped), blob(s.Old.Salt))
		if err != nil {
			return nil, err
		}
		n, _ := res.RowsAffected()
		out[i] = n == 1
	}
	return out, t.step("swap")
}
