package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/fspath"
)

func (s *rcloneStore) newObject(ctx context.Context, name string) (fs.Object, error) {
	o, err := s.f.NewObject(ctx, name)
	if err != nil {
		// local and sftp say ErrorIsDir for a name that is a folder; S3
		// says not found. Either way there is no object.
		if errors.Is(err, fs.ErrorObjectNotFound) || errors.Is(err, fs.ErrorIsDir) || errors.Is(err, fs.ErrorNotAFile) {
			return nil, ErrNotFound
		}
		return nil, ctxErr(ctx, err)
	}
	return o, nil
}

func (s *rcloneStore) Stat(ctx context.Context, name string) (int64, error) {
	if err := ValidName(name); err != nil {
		return 0, fmt.Errorf("remote: stat %s: %w", name, err)
	}
	var size int64
	err := s.run(ctx, func(ctx context.Context) error {
		o, err := s.newObject(ctx, name)
		if err == nil {
			size = o.Size()
		}
		return err
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("remote: stat %s: %w", name, err)
	}
	return size, nil
}

// shortError marks a read past the end of an object: permanent, and
// distinct from a connection dropping mid-body (also io.ErrUnexpectedEOF,
// but worth a retry).
type shortError struct{ msg string }

func (e *shortError) Error() string   { return e.msg }
func (e *shortError) Unwrap() error   { return io.ErrUnexpectedEOF }
func (e *shortError) permanent() bool { return true }

func newShort(format string, a ...any) error { return &shortError{fmt.Sprintf(format, a...)} }

// GetRange reads a local folder through runLocal (no per-call context needed), any
// other backend through run.
func (s *rcloneStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("remote: get %s: %w", name, err)
	}
	if off < 0 || n < -1 {
		return nil, fmt.Errorf("remote: get %s: %w", name, Permanent(fmt.Errorf("bad range off=%d n=%d", off, n)))
	}
	var data []byte
	var err error
	if s.localDir != "" {
		data, err = s.runLocal(ctx, func() ([]byte, error) { return s.getRangeLocal(name, off, n) })
	} else {
		err = s.run(ctx, func(ctx context.Context) (err error) {
			data, err = s.getRange(ctx, name, off, n)
			return err
		}, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("remote: get %s [%d+%d]: %w", name, off, n, err)
	}
	return data, nil
}

// getRange picks the backend's read path: S3 with a known range is one GET with no
// lookup; a local folder is a pread; anything else (sftp, S3 reading to the end) looks
// the object up, then opens a range of it.
func (s *rcloneStore) getRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	switch {
	case s.headless != nil && off >= 0 && n > 0:
		return s.getRangeHeadless(ctx, name, off, n)
	case s.localDir != "":
		return s.getRangeLocal(name, off, n)
	default:
		return s.getRangeLookup(ctx, name, off, n)
	}
}

// getRangeLookup reads [off, off+n) (n = -1: to the end) after a NewObject lookup,
// which gives the size.
func (s *rcloneStore) getRangeLookup(ctx context.Context, name string, off, n int64) ([]byte, error) {
	o, err := s.newObject(ctx, name)
	if err != nil {
		return nil, err
	}
	// The size is known from the lookup (a HEAD on S3), so a range past
	// the end is refused here: S3 would answer 416, local and sftp 0 bytes.
	size := o.Size()
	if size >= 0 {
		if off > size || (n >= 0 && off+n > size) {
			return nil, newShort("range past the end of the %d-byte object", size)
		}
		if n < 0 {
			n = size - off
		}
	}
	if n == 0 {
		return []byte{}, nil
	}
	// A fresh option each time: rclone rewrites it in place. End is inclusive.
	var opt fs.OpenOption = &fs.RangeOption{Start: off, End: off + n - 1}
	if n < 0 {
		opt = &fs.RangeOption{Start: off, End: -1}
	}
	rc, err := o.Open(ctx, opt)
	if err != nil {
		// 416: the object shrank since the lookup.
		return nil, openErr(ctx, err)
	}
	defer func() { _ = rc.Close() }()
	if n < 0 { // size unknown: read to the end
		data, err := io.ReadAll(rc)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		return data, nil
	}
	return readRange(ctx, rc, n, func() error { return nil }) // the lookup checked the size
}

// openHeadless makes the same S3 bucket without the HEAD that rclone's NewObject
// sends: a ranged GET (the caller knows the range) needs no lookup first, which halves
// the requests of a cold read. Made without network, like the first Fs; nil if it
// cannot be made (reads then look objects up first).
func openHeadless(base context.Context, remote string, p fspath.Parsed, desc string, hidden []string) fs.Fs {
	tuned := tuneRemote(remote, p, "no_head_object=true")
	h, err := fs.NewFs(base, tuned)
	if err != nil {
		slog.Debug("remote: no HEAD-less S3 reader; reads look objects up first", "remote", desc,
			"err", redactError(err, hidden, tuned))
		return nil
	}
	return h
}

// getRangeHeadless reads [off, off+n) with one GET and no HEAD (S3): the size a HEAD
// would have given comes back in the answer's Content-Range, and says whether a short
// body is a range past the end (permanent) or a cut connection (retried).
func (s *rcloneStore) getRangeHeadless(ctx context.Context, name string, off, n int64) ([]byte, error) {
	o, err := s.headless.NewObject(ctx, name)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	// An HTTP option, not a RangeOption: rclone would drop a range on an object
	// whose size it believes to be 0 (it has not looked).
	rc, err := o.Open(ctx, &fs.HTTPOption{Key: "Range", Value: fmt.Sprintf("bytes=%d-%d", off, off+n-1)})
	if err != nil {
		return nil, openErr(ctx, err)
	}
	defer func() { _ = rc.Close() }()
	return readRange(ctx, rc, n, func() error {
		if size := o.Size(); size > 0 && off+n > size {
			return newShort("range past the end of the %d-byte object", size)
		}
		return nil
	})
}

// readRange reads the n bytes of a ranged body. A short body is a cut connection or an
// object that shrank since the lookup (retried: the next attempt sees the new size),
// unless past says the range lies past the object's end (permanent). A body longer than n
// comes from a server that ignored the Range: bytes from the wrong offset, never returned.
func readRange(ctx context.Context, rc io.Reader, n int64, past func() error) ([]byte, error) {
	buf := make([]byte, n)
	got, err := io.ReadFull(rc, buf)
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err := past(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("got %d of %d bytes: %w", got, n, io.ErrUnexpectedEOF)
		}
		return nil, ctxErr(ctx, err)
	}
	var one [1]byte
	if m, _ := rc.Read(one[:]); m > 0 {
		return nil, Permanent(fmt.Errorf("%w: got more than the %d bytes asked for", fs.ErrorRangeIgnored, n))
	}
	return buf, nil
}

// openErr maps the errors of an Open: a missing object, and S3's answer to a range past
// the end (416).
func openErr(ctx context.Context, err error) error {
	if errors.Is(err, fs.ErrorObjectNotFound) {
		return ErrNotFound
	}
	if hs, ok := errors.AsType[interface {
		error
		HTTPStatusCode() int
	}](err); ok && hs.HTTPStatusCode() == 416 {
		return newShort("range past the end of the object (HTTP 416)")
	}
	return ctxErr(ctx, err)
}

// ModTimer is implemented by stores that know when an object was written (fsck uses it
// to tell an orphan from an upload whose catalog commit is still to come).
type ModTimer interface {
	ModTime(ctx context.Context, name string) (time.Time, error)
}

// ModTime is when the object name was last written, as the backend reports it.
func (s *rcloneStore) ModTime(ctx context.Context, name string) (time.Time, error) {
	if err := ValidName(name); err != nil {
		return time.Time{}, fmt.Errorf("remote: modtime %s: %w", name, err)
	}
	var t time.Time
	err := s.run(ctx, func(ctx context.Context) error {
		o, err := s.newObject(ctx, name)
		if err == nil {
			t = o.ModTime(ctx)
		}
		return err
	}, nil)
	if err != nil {
		return time.Time{}, fmt.Errorf("remote: modtime %s: %w", name, err)
	}
	return t, nil
}
