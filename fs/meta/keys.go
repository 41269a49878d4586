package meta

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"syscall"
)

// ---- file key records ----

func (k *KeyRecord) validate() error {
	if k.Mode != KeyModeWrap && k.Mode != KeyModeDerive {
		return errf(syscall.EINVAL, "key record: mode %q is not %q or %q", k.Mode, KeyModeWrap, KeyModeDerive)
	}
	return nil
}

func (k *KeyRecord) equal(o *KeyRecord) bool {
	return k.Mode == o.Mode && k.Chain == o.Chain && k.Version == o.Version &&
		bytes.Equal(k.IV, o.IV) && bytes.Equal(k.Wrapped, o.Wrapped) && bytes.Equal(k.Salt, o.Salt)
}

const keyCols = `mode, chain, version, iv, wrapped, salt`

// scanKey decodes keyCols, then any extra columns into extra.
func scanKey(s scanner, extra ...any) (KeyRecord, error) {
	var k KeyRecord
	var v int64
	if err := s.Scan(append([]any{&k.Mode, &k.Chain, &v, &k.IV, &k.Wrapped, &k.Salt}, extra...)...); err != nil {
		return KeyRecord{}, err
	}
	k.Version = uint32(v)
	return k, nil
}

func (t *Tx) insertKey(ino uint64, k KeyRecord) error {
	_, err := t.exec("store key record", `INSERT INTO file_keys (ino, `+keyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		int64(ino), k.Mode, k.Chain, int64(k.Version), blob(k.IV), blob(k.Wrapped), blob(k.Salt))
	return err
}

// GetKey returns ino's key record (ENOENT if it has none).
func (c *Catalog) GetKey(ctx context.Context, ino uint64) (KeyRecord, error) {
	return getKey(ctx, c.r, ino)
}

// GetKey is Catalog.GetKey inside this transaction.
func (t *Tx) GetKey(ino uint64) (KeyRecord, error) { return getKey(t.ctx, t.tx, ino) }

func getKey(ctx context.Context, q querier, ino uint64) (KeyRecord, error) {
	k, err := scanKey(q.QueryRowContext(ctx, `SELECT `+keyCols+` FROM file_keys WHERE ino = ?`, int64(ino)))
	if errors.Is(err, sql.ErrNoRows) {
		return KeyRecord{}, errf(syscall.ENOENT, "key record of inode %d", ino)
	}
	if err != nil {
		return KeyRecord{}, wrapSQL("read key record", err)
	}
	return k, nil
}

// PutKey gives regular file ino a key record; EEXIST if it has one.
func (c *Catalog) PutKey(ctx context.Context, ino uint64, k KeyRecord) error {
	return c.update(ctx, "store key record", func(t *Tx) error { return t.PutKey(ino, k) })
}

// PutKey is Catalog.PutKey inside this transaction.
func (t *Tx) PutKey(ino uint64, k KeyRecord) (err error) {
	defer t.track(&err)
	if err := k.validate(); err != nil {
		return err
	}
	in, err := t.GetInode(ino)
	if err != nil {
		return err
	}
	if !in.IsRegular() {
		return errf(syscall.EINVAL, "store key record: inode %d is not a regular file", ino)
	}
	if _, err := t.GetKey(ino); err == nil {
		return errf(syscall.EEXIST, "store key record: inode %d has one", ino)
	} else if !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return t.insertKey(ino, k)
}

// SwapKey replaces ino's key record with new if it still equals old
// (compare-and-swap for rotation, which re-wraps outside the transaction).
// It returns false, changing nothing, if the record changed meanwhile or is
// gone.
func (c *Catalog) SwapKey(ctx context.Context, ino uint64, old, new KeyRecord) (bool, error) {
	return do(c, ctx, "swap key record", func(t *Tx) (bool, error) { return t.SwapKey(ino, old, new) })
}

// SwapKey is Catalog.SwapKey inside this transaction (a rotation batch).
func (t *Tx) SwapKey(ino uint64, old, new KeyRecord) (_ bool, err error) {
	defer t.track(&err)
	if err := new.validate(); err != nil {
		return false, err
	}
	cur, err := t.GetKey(ino)
	if errors.Is(err, syscall.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !cur.equal(&old) {
		return false, nil
	}
	if _, err := t.exec("swap key record", `UPDATE file_keys SET mode = ?, chain = ?, version = ?, iv = ?, wrapped = ?, salt = ?
		WHERE ino = ?`, new.Mode, new.Chain, int64(new.Version), blob(new.IV), blob(new.Wrapped), blob(new.Salt), int64(ino)); err != nil {
		return false, err
	}
	return true, t.step("swap")
}

// ShredKey deletes ino's key record (secure_delete overwrites it in the
// file) and audits it in the same transaction: the file's content is
// unrecoverable once the KEK version that wrapped older copies is destroyed.
func (c *Catalog) ShredKey(ctx context.Context, ino uint64, now int64, actor string) error {
	return c.update(ctx, "shred key record", func(t *Tx) error { return t.ShredKey(ino, now, actor) })
}

// ShredKey is Catalog.ShredKey inside this transaction.
func (t *Tx) ShredKey(ino uint64, now int64, actor string) (err error) {
	defer t.track(&err)
	in, err := t.GetInode(ino)
	if err != nil {
		return err
	}
	k, err := t.GetKey(ino)
	if err != nil {
		return err
	}
	if _, err := t.exec("shred key record", `DELETE FROM file_keys WHERE ino = ?`, int64(ino)); err != nil {
		return err
	}
	if err := t.step("shred"); err != nil {
		return err
	}
	_, err = t.AppendAudit(AuditEvent{Time: now, Event: "key.shred", Actor: actor,
		Detail: jsonObject("ino", ino, "file_id", hexID(in.FileID), "chain", k.Chain, "version", k.Version)})
	return err
}

// KeysUsing returns up to limit key records of chain/version with inode
// numbers above afterIno, in inode order: rotation walks them in batches.
func (c *Catalog) KeysUsing(ctx context.Context, chain string, version uint32, afterIno uint64, limit int) ([]InoKey, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := c.r.QueryContext(ctx, `SELECT k.mode, k.chain, k.version, k.iv, k.wrapped, k.salt, k.ino, i.file_id
		FROM file_keys k JOIN inodes i ON i.ino = k.ino
		WHERE k.chain = ? AND k.version = ? AND k.ino > ? ORDER BY k.ino LIMIT ?`,
		chain, int64(version), int64(afterIno), limit)
	if err != nil {
		return nil, wrapSQL("list key records", err)
	}
	defer rows.Close()
	var out []InoKey
	for rows.Next() {
		var ik InoKey
		var ino int64
		var fid []byte
		if ik.Key, err = scanKey(rows, &ino, &fid); err != nil {
			return nil, wrapSQL("list key records", err)
		}
		ik.Ino = uint64(ino)
		copy(ik.FileID[:], fid)
		out = append(out, ik)
	}
	return out, wrapSQL("list key records", rows.Err())
}

// CountKeysUsing counts the key records wrapped by chain/version.
func (c *Catalog) CountKeysUsing(ctx context.Context, chain string, version uint32) (int64, error) {
	var n int64
	err := c.r.QueryRowContext(ctx, `SELECT count(*) FROM file_keys WHERE chain = ? AND version = ?`, chain, int64(version)).Scan(&n)
	return n, wrapSQL("count key records", err)
}

// CountChunksUsing counts the chunks sealed under key version version of
// files whose key record is in chain (derive mode: re-encryption progress).
func (c *Catalog) CountChunksUsing(ctx context.Context, chain string, version uint32) (int64, error) {
	var n int64
	err := c.r.QueryRowContext(ctx, `SELECT count(*) FROM chunks c JOIN file_keys k ON k.ino = c.ino
		WHERE k.chain = ? AND c.key_version = ?`, chain, int64(version)).Scan(&n)
	return n, wrapSQL("count chunks", err)
}

// ---- KEK versions ----

const kekCols = `chain, version, state, material, created_ns, coalesce(destroyed_ns, 0)`

func scanKEK(s scanner) (KEK, error) {
	var k KEK
	var v int64
	if err := s.Scan(&k.Chain, &v, &k.State, &k.Material, &k.Created, &k.Destroyed); err != nil {
		return KEK{}, err
	}
	k.Version = uint32(v)
	return k, nil
}

// AddKEKVersion records a new KEK version of k.Chain and makes it the active
// one; the previous active version becomes "old". k.Version 0 means the next
// number; otherwise it must be above every version in the chain (EEXIST if
// not). The event is audited (actor) in the same transaction.
func (c *Catalog) AddKEKVersion(ctx context.Context, k KEK, actor string) (KEK, error) {
	return do(c, ctx, "add KEK version", func(t *Tx) (KEK, error) { return t.AddKEKVersion(k, actor) })
}

// AddKEKVersion is Catalog.AddKEKVersion inside this transaction.
func (t *Tx) AddKEKVersion(k KEK, actor string) (_ KEK, err error) {
	defer t.track(&err)
	if k.Created == 0 {
		return KEK{}, errf(syscall.EINVAL, "add KEK version: no creation time")
	}
	var top int64
	if err := t.tx.QueryRowContext(t.ctx, `SELECT coalesce(max(version), 0) FROM kek_versions WHERE chain = ?`, k.Chain).Scan(&top); err != nil {
		return KEK{}, wrapSQL("add KEK version", err)
	}
	if k.Version == 0 {
		k.Version = uint32(top + 1)
	} else if int64(k.Version) <= top {
		return KEK{}, errf(syscall.EEXIST, "add KEK version %d to chain %q: chain is at version %d", k.Version, k.Chain, top)
	}
	if _, err := t.exec("add KEK version", `UPDATE kek_versions SET state = 'old' WHERE chain = ? AND state = 'active'`, k.Chain); err != nil {
		return KEK{}, err
	}
	if err := t.step("kek-old"); err != nil {
		return KEK{}, err
	}
	k.State, k.Destroyed = KEKActive, 0
	if _, err := t.exec("add KEK version", `INSERT INTO kek_versions (chain, version, state, material, created_ns)
		VALUES (?, ?, 'active', ?, ?)`, k.Chain, int64(k.Version), blob(k.Material), k.Created); err != nil {
		return KEK{}, err
	}
	if err := t.step("kek-new"); err != nil {
		return KEK{}, err
	}
	if _, err := t.AppendAudit(AuditEvent{Time: k.Created, Event: "kek.add", Actor: actor,
		Detail: jsonObject("chain", k.Chain, "version", k.Version)}); err != nil {
		return KEK{}, err
	}
	return k, nil
}

// CurrentKEK returns the active version of chain (ENOENT if none).
func (c *Catalog) CurrentKEK(ctx context.Context, chain string) (KEK, error) {
	return currentKEK(ctx, c.r, chain)
}

// CurrentKEK is Catalog.CurrentKEK inside this transaction.
func (t *Tx) CurrentKEK(chain string) (KEK, error) { return currentKEK(t.ctx, t.tx, chain) }

func currentKEK(ctx context.Context, q querier, chain string) (KEK, error) {
	k, err := scanKEK(q.QueryRowContext(ctx, `SELECT `+kekCols+` FROM kek_versions WHERE chain = ? AND state = 'active'`, chain))
	if errors.Is(err, sql.ErrNoRows) {
		return KEK{}, errf(syscall.ENOENT, "no active KEK in chain %q", chain)
	}
	return k, wrapSQL("read KEK", err)
}

// GetKEK returns one KEK version (ENOENT if unknown).
func (c *Catalog) GetKEK(ctx context.Context, chain string, version uint32) (KEK, error) {
	k, err := scanKEK(c.r.QueryRowContext(ctx, `SELECT `+kekCols+` FROM kek_versions WHERE chain = ? AND version = ?`, chain, int64(version)))
	if errors.Is(err, sql.ErrNoRows) {
		return KEK{}, errf(syscall.ENOENT, "KEK version %d of chain %q", version, chain)
	}
	return k, wrapSQL("read KEK", err)
}

// ListKEKs returns every KEK version of every chain, by chain then version.
func (c *Catalog) ListKEKs(ctx context.Context) ([]KEK, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT `+kekCols+` FROM kek_versions ORDER BY chain, version`)
	if err != nil {
		return nil, wrapSQL("list KEKs", err)
	}
	defer rows.Close()
	var out []KEK
	for rows.Next() {
		k, err := scanKEK(rows)
		if err != nil {
			return nil, wrapSQL("list KEKs", err)
		}
		out = append(out, k)
	}
	return out, wrapSQL("list KEKs", rows.Err())
}

// MarkDestroyed records that KEK chain/version was destroyed (in the HSM, or
// its sealed material here): state "destroyed", material erased (the file
// overwrites deleted content), audited in the same transaction. Destroying a
// destroyed version changes nothing.
func (c *Catalog) MarkDestroyed(ctx context.Context, chain string, version uint32, now int64, actor string) error {
	return c.update(ctx, "destroy KEK version", func(t *Tx) error { return t.MarkDestroyed(chain, version, now, actor) })
}

// MarkDestroyed is Catalog.MarkDestroyed inside this transaction.
func (t *Tx) MarkDestroyed(chain string, version uint32, now int64, actor string) (err error) {
	defer t.track(&err)
	var state string
	err = t.tx.QueryRowContext(t.ctx, `SELECT state FROM kek_versions WHERE chain = ? AND version = ?`, chain, int64(version)).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return errf(syscall.ENOENT, "destroy KEK version %d of chain %q", version, chain)
	}
	if err != nil {
		return wrapSQL("destroy KEK version", err)
	}
	if state == KEKDestroyed {
		return nil
	}
	if _, err := t.exec("destroy KEK version", `UPDATE kek_versions SET state = 'destroyed', material = NULL, destroyed_ns = ?
		WHERE chain = ? AND version = ?`, now, chain, int64(version)); err != nil {
		return err
	}
	if err := t.step("kek-destroy"); err != nil {
		return err
	}
	_, err = t.AppendAudit(AuditEvent{Time: now, Event: "kek.destroy", Actor: actor,
		Detail: jsonObject("chain", chain, "version", version, "was", state)})
	return err
}

// SetKEKMaterial replaces the sealed material of a live KEK version
// (coffer passwd re-seals under a new passphrase).
func (t *Tx) SetKEKMaterial(chain string, version uint32, material []byte) (err error) {
	defer t.track(&err)
	res, err := t.exec("re-seal KEK", `UPDATE kek_versions SET material = ? WHERE chain = ? AND version = ? AND state <> 'destroyed'`,
		blob(material), chain, int64(version))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errf(syscall.ENOENT, "re-seal KEK version %d of chain %q", version, chain)
	}
	return t.step("kek-material")
}
