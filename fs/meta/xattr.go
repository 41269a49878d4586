package meta

import (
	"context"
	"database/sql"
	"errors"
	"syscall"
)

func validXattrName(name string) error {
	switch {
	case name == "":
		return errf(syscall.EINVAL, "xattr: empty name")
	case len(name) > MaxXattrName:
		return errf(syscall.ERANGE, "xattr: name of %d bytes", len(name))
	}
	return nil
}

// GetXattr returns the value of xattr name on ino; ENODATA if it has none.
func (c *Catalog) GetXattr(ctx context.Context, ino uint64, name string) ([]byte, error) {
	if err := validXattrName(name); err != nil {
		return nil, err
	}
	var v []byte
	err := c.r.QueryRowContext(ctx, `SELECT value FROM xattrs WHERE ino = ? AND name = ?`, int64(ino), []byte(name)).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		if _, err := c.GetInode(ctx, ino); err != nil {
			return nil, err
		}
		return nil, errf(ENODATA, "getxattr on inode %d", ino)
	}
	if err != nil {
		return nil, wrapSQL("getxattr", err)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// ListXattr returns the names of ino's xattrs in byte order.
func (c *Catalog) ListXattr(ctx context.Context, ino uint64) ([]string, error) {
	rows, err := c.r.QueryContext(ctx, `SELECT name FROM xattrs WHERE ino = ? ORDER BY name`, int64(ino))
	if err != nil {
		return nil, wrapSQL("listxattr", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n []byte
		if err := rows.Scan(&n); err != nil {
			return nil, wrapSQL("listxattr", err)
		}
		out = append(out, string(n))
	}
	if err := rows.Err(); err != nil {
		return nil, wrapSQL("listxattr", err)
	}
	if len(out) == 0 {
		if _, err := c.GetInode(ctx, ino); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SetXattr sets xattr name on ino. flags: XattrCreate fails with EEXIST if
// it exists, XattrReplace with ENODATA if it does not. ctime becomes now.
func (c *Catalog) SetXattr(ctx context.Context, ino uint64, name string, value []byte, flags uint32, now int64) error {
	return c.update(ctx, "setxattr", func(t *Tx) error { return t.SetXattr(ino, name, value, flags, now) })
}

// SetXattr is Catalog.SetXattr inside this transaction.
func (t *Tx) SetXattr(ino uint64, name string, value []byte, flags uint32, now int64) (err error) {
	defer t.track(&err)
	if err := validXattrName(name); err != nil {
		return err
	}
	if len(value) > MaxXattrValue {
		return errf(syscall.E2BIG, "setxattr: value of %d bytes", len(value))
	}
	if flags&^(XattrCreate|XattrReplace) != 0 || flags == XattrCreate|XattrReplace {
		return errf(syscall.EINVAL, "setxattr: flags %#x", flags)
	}
	if _, err := t.GetInode(ino); err != nil {
		return err
	}
	var one int
	err = t.tx.QueryRowContext(t.ctx, `SELECT 1 FROM xattrs WHERE ino = ? AND name = ?`, int64(ino), []byte(name)).Scan(&one)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return wrapSQL("setxattr", err)
	}
	switch {
	case flags&XattrCreate != 0 && exists:
		return errf(syscall.EEXIST, "setxattr on inode %d", ino)
	case flags&XattrReplace != 0 && !exists:
		return errf(ENODATA, "setxattr on inode %d", ino)
	}
	if value == nil {
		value = []byte{} // NOT NULL: an empty value is still a value
	}
	if _, err := t.exec("setxattr", `INSERT INTO xattrs (ino, name, value) VALUES (?, ?, ?)
		ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value`, int64(ino), []byte(name), value); err != nil {
		return err
	}
	if err := t.step("xattr"); err != nil {
		return err
	}
	if err := t.addLinks(ino, 0, now); err != nil {
		return err
	}
	return t.step("ctime")
}

// RemoveXattr removes xattr name from ino; ENODATA if it has none.
func (c *Catalog) RemoveXattr(ctx context.Context, ino uint64, name string, now int64) error {
	return c.update(ctx, "removexattr", func(t *Tx) error { return t.RemoveXattr(ino, name, now) })
}

// RemoveXattr is Catalog.RemoveXattr inside this transaction.
func (t *Tx) RemoveXattr(ino uint64, name string, now int64) (err error) {
	defer t.track(&err)
	if err := validXattrName(name); err != nil {
		return err
	}
	if _, err := t.GetInode(ino); err != nil {
		return err
	}
	res, err := t.exec("removexattr", `DELETE FROM xattrs WHERE ino = ? AND name = ?`, int64(ino), []byte(name))
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errf(ENODATA, "removexattr on inode %d", ino)
	}
	if err := t.step("xattr"); err != nil {
		return err
	}
	if err := t.addLinks(ino, 0, now); err != nil {
		return err
	}
	return t.step("ctime")
}
