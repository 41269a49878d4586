package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
	"time"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/fserrors"
)

// permanentError marks an error that a retry cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() error   { return e.err }
func (e *permanentError) permanent() bool { return true }

// Permanent marks err as not worth retrying (for decorators that make
// their own errors). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsTransient reports whether an operation that failed with err may
// succeed if tried again: network failures, timeouts, 5xx, throttling,
// an unreachable server. Not: a missing object, a bad name or range, a
// short object, refused permissions, a full or read-only disk, HTTP 4xx,
// a closed store, or the caller's context ending.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if p, ok := errors.AsType[interface {
		error
		permanent() bool
	}](err); ok && p.permanent() {
		return false
	}
	for _, e := range []error{
		ErrNotFound, ErrInvalidName, ErrClosed, ErrCredentials,
		fs.ErrorObjectNotFound, fs.ErrorDirNotFound, fs.ErrorIsFile, fs.ErrorIsDir, fs.ErrorNotAFile,
		fs.ErrorPermissionDenied, fs.ErrorFileNameTooLong, fs.ErrorRangeIgnored, fs.ErrorNotFoundInConfigFile,
		os.ErrPermission, syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.ENAMETOOLONG,
	} {
		if errors.Is(err, e) {
			return false
		}
	}
	if fserrors.IsFatalError(err) || fserrors.IsNoRetryError(err) {
		return false
	}
	if hs, ok := errors.AsType[interface {
		error
		HTTPStatusCode() int
	}](err); ok {
		c := hs.HTTPStatusCode()
		if c >= 400 && c < 500 && c != 408 && c != 409 && c != 429 {
			return false
		}
	}
	return true
}

// WithRetries wraps s so that each call failing with a transient error
// (IsTransient) is tried again, up to opt.Retries more times, waiting an
// exponentially growing, jittered delay between opt.MinBackoff and
// opt.MaxBackoff. A cancelled context ends the wait at once. Open already
// applies it; it is exported to compose with decorators in tests.
//
// A Put is retried from its buffer. A List is retried only if it failed
// before delivering any name, so fn never sees a name twice.
func WithRetries(s Store, opt Options) Store {
	return &retryStore{s: s, opt: opt.withDefaults()}
}

type retryStore struct {
	s   Store
	opt Options
}

func (r *retryStore) String() string                  { return r.s.String() }
func (r *retryStore) Close(ctx context.Context) error { return r.s.Close(ctx) }

func (r *retryStore) backoff(attempt int) time.Duration {
	d := r.opt.MinBackoff << min(attempt, 30)
	if d <= 0 || d > r.opt.MaxBackoff {
		d = r.opt.MaxBackoff
	}
	// "Equal jitter": at least half the delay, so attempts stay spread
	// out, plus a random part so many clients do not retry in step.
	return d/2 + rand.N(d/2+1)
}

func (r *retryStore) do(ctx context.Context, op, name string, try func() error) error {
	for attempt := 0; ; attempt++ {
		err := try()
		if err == nil {
			return nil
		}
		if !IsTransient(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= r.opt.Retries {
			if attempt == 0 {
				return err
			}
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt+1)
		}
		wait := r.backoff(attempt)
		r.opt.Logger.Warn("remote: retrying after a transient error",
			"op", op, "name", name, "attempt", attempt+1, "of", r.opt.Retries+1, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w; retry abandoned: %w", err, ctx.Err())
		}
	}
}

func (r *retryStore) Put(ctx context.Context, name string, data []byte) error {
	return r.do(ctx, "put", name, func() error { return r.s.Put(ctx, name, data) })
}

func (r *retryStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	var out []byte
	err := r.do(ctx, "get", name, func() (err error) {
		out, err = r.s.GetRange(ctx, name, off, n)
		return err
	})
	return out, err
}

func (r *retryStore) Stat(ctx context.Context, name string) (int64, error) {
	var size int64
	err := r.do(ctx, "stat", name, func() (err error) {
		size, err = r.s.Stat(ctx, name)
		return err
	})
	return size, err
}

func (r *retryStore) Delete(ctx context.Context, name string) error {
	return r.do(ctx, "delete", name, func() error { return r.s.Delete(ctx, name) })
}

func (r *retryStore) List(ctx context.Context, prefix string, fn func(name string, size int64) error) error {
	delivered := false
	var fnErr error
	return r.do(ctx, "list", prefix, func() error {
		err := r.s.List(ctx, prefix, func(name string, size int64) error {
			delivered = true
			if err := fn(name, size); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
		if err != nil && (delivered || (fnErr != nil && errors.Is(err, fnErr))) {
			return Permanent(err)
		}
		return err
	})
}

// ModTime forwards to the store below if it knows write times (ModTimer).
func (r *retryStore) ModTime(ctx context.Context, name string) (time.Time, error) {
	mt, ok := r.s.(ModTimer)
	if !ok {
		return time.Time{}, fmt.Errorf("remote: %s does not report write times", r.s)
	}
	var t time.Time
	err := r.do(ctx, "modtime", name, func() error {
		var err error
		t, err = mt.ModTime(ctx, name)
		return err
	})
	return t, err
}
