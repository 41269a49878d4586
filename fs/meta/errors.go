package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"syscall"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// ENODATA is what Linux returns for a missing extended attribute (ENOATTR).
const ENODATA = syscall.ENODATA

// Errno returns the POSIX error number carried by err: the errno the
// operation failed with (ENOENT, EEXIST, ...), ENOSPC for a full disk, EINTR
// for a cancelled context, EIO for anything else, and 0 for nil. The FUSE
// layer can hand the result straight to the kernel.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return syscall.EINTR
	}
	return syscall.EIO
}

// errf builds a POSIX-level error: "meta: <what>: <errno text>", matching
// errors.Is(err, errno). Names never go into messages (they may be
// confidential later); inode numbers do.
func errf(errno syscall.Errno, format string, args ...any) error {
	return fmt.Errorf("meta: "+format+": %w", append(args, errno)...)
}

// wrapSQL wraps an error from the database with what was being done, and
// adds the errno it stands for when there is one (a full disk is ENOSPC).
func wrapSQL(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("meta: %s: %w", what, err)
	}
	var se sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code {
		case sqlite3.ErrFull:
			return fmt.Errorf("meta: %s: catalog disk full: %w", what, syscall.ENOSPC)
		case sqlite3.ErrReadonly:
			return fmt.Errorf("meta: %s: %v: %w", what, err, syscall.EROFS)
		case sqlite3.ErrNomem:
			return fmt.Errorf("meta: %s: %v: %w", what, err, syscall.ENOMEM)
		case sqlite3.ErrConstraint:
			if se.ExtendedCode == sqlite3.ErrConstraintUnique || se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey {
				return fmt.Errorf("meta: %s: %v: %w", what, err, syscall.EEXIST)
			}
			return fmt.Errorf("meta: %s: %v: %w", what, err, syscall.EINVAL)
		case sqlite3.ErrIoErr:
			if se.SystemErrno == syscall.ENOSPC || se.SystemErrno == syscall.EDQUOT {
				return fmt.Errorf("meta: %s: catalog disk full: %w", what, se.SystemErrno)
			}
			return fmt.Errorf("meta: %s: catalog I/O error: %v: %w", what, err, syscall.EIO)
		case sqlite3.ErrCorrupt, sqlite3.ErrNotADB:
			return fmt.Errorf("meta: %s: catalog database is damaged (%v); run coffer fsck: %w", what, err, syscall.EIO)
		}
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("meta: %s: %w", what, syscall.ENOENT)
	}
	return fmt.Errorf("meta: %s: %w", what, err)
}

// ChainError reports where the audit hash chain first breaks.
type ChainError struct {
	Seq    int64  // first sequence number that does not verify
	Reason string // what is wrong with it
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("meta: audit chain broken at seq %d: %s", e.Seq, e.Reason)
}
