package content

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
)

// Error is what the data path returns: the errno for the kernel and the
// cause, for logs. errors.As(err, &syscall.Errno) finds Errno first, so a
// remote failure that happens to wrap ECONNREFUSED still reaches the kernel
// as EIO.
type Error struct {
	Errno syscall.Errno
	Op    string // what was being done, e.g. "read inode 12"
	Err   error  // the cause; may be nil
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "content: " + e.Op + ": " + e.Errno.Error()
	}
	return "content: " + e.Op + ": " + e.Err.Error()
}

// Unwrap lists the errno before the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Errno}
	}
	return []error{e.Errno, e.Err}
}

// Errno maps an error from this package (or any error) to the errno the
// kernel should see: EKEYREVOKED for locked keys (keys.ErrLocked), else the
// errno it carries, EINTR for a cancelled context, EIO otherwise; 0 for nil.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if errors.Is(err, keys.ErrLocked) {
		return syscall.EKEYREVOKED
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return syscall.EINTR
	}
	return syscall.EIO
}

// errLocked is the error of anything that needs a file key while the
// volume is locked (coffer lock): EKEYREVOKED, matching keys.ErrLocked.
func errLocked(format string, a ...any) error {
	return &Error{Errno: syscall.EKEYREVOKED, Op: fmt.Sprintf(format, a...), Err: keys.ErrLocked}
}

// keyGone reports whether err says a key or cached plaintext is not there
// any more: locked, or wiped by WipeKeys (or by a commit replacing a
// chunk's object).
func keyGone(err error) bool {
	return errors.Is(err, keys.ErrLocked) || errors.Is(err, keys.ErrWiped) ||
		errors.Is(err, format.ErrWiped) || errors.Is(err, errPlainWiped)
}

// keyLocked reports whether err comes from coffer lock: keys.ErrLocked, or
// a key wiped by WipeKeys while the keyring is locked (so it cannot be
// opened again).
func (s *DataPath) keyLocked(err error) bool {
	if errors.Is(err, keys.ErrLocked) {
		return true
	}
	return keyGone(err) && s.keys.Locked()
}

// lockedDuring is keyLocked for an operation that started when WipeKeys
// had run w times: a key it was using wiped by a lock that has already
// been lifted counts too (the operation raced with lock and unlock).
func (s *DataPath) lockedDuring(err error, w uint64) bool {
	return s.keyLocked(err) || keyGone(err) && (w%2 == 1 || s.wipes.Load() != w)
}

func errnof(errno syscall.Errno, format string, a ...any) error {
	return &Error{Errno: errno, Op: fmt.Sprintf(format, a...)}
}

// ioErr wraps a failure of the remote or of the content itself: always EIO
// (or EINTR when the caller's context ended), never an errno that happens
// to sit inside a network error.
func ioErr(ctx context.Context, err error, format string, a ...any) error {
	errno := syscall.EIO
	if ctx != nil && ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		errno = syscall.EINTR
	}
	return &Error{Errno: errno, Op: fmt.Sprintf(format, a...), Err: err}
}

// metaErr wraps a catalog failure, keeping the errno the catalog chose.
func metaErr(err error, format string, a ...any) error {
	return &Error{Errno: meta.Errno(err), Op: fmt.Sprintf(format, a...), Err: err}
}

// localErr wraps a failure of the local staging area: a full disk is
// ENOSPC, anything else EIO.
func localErr(err error, format string, a ...any) error {
	errno := syscall.EIO
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		errno = syscall.ENOSPC
	}
	return &Error{Errno: errno, Op: fmt.Sprintf(format, a...), Err: err}
}
