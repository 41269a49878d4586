package remote

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/rclone/rclone/fs"
)

// errStopList carries fn's error through the walk untouched.
type errStopList struct{ err error }

func (e *errStopList) Error() string { return e.err.Error() }
func (e *errStopList) Unwrap() error { return e.err }

func (s *rcloneStore) List(ctx context.Context, prefix string, fn func(name string, size int64) error) error {
	if err := validPrefix(prefix); err != nil {
		return fmt.Errorf("remote: list %s: %w", prefix, err)
	}
	// Walk the deepest folder that holds every match, then filter.
	dir := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dir = prefix[:i]
	}
	// fn is called from one goroutine at a time, and never after List
	// returned (an abandoned walk may still be running).
	var (
		mu   sync.Mutex
		dead bool
	)
	err := s.run(ctx, func(ctx context.Context) error {
		return s.walk(ctx, dir, func(o fs.Object) error {
			name := o.Remote()
			if !strings.HasPrefix(name, prefix) {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			if dead {
				return errAbandoned
			}
			if err := fn(name, o.Size()); err != nil {
				return &errStopList{err}
			}
			return nil
		})
	}, func() { mu.Lock(); dead = true; mu.Unlock() })
	if err != nil {
		if stop, ok := errors.AsType[*errStopList](err); ok {
			return stop.err
		}
		return fmt.Errorf("remote: list %s: %w", prefix, err)
	}
	return nil
}

// listWorkers bounds concurrent folder listings on backends without a
// recursive listing (local, sftp: one round trip per folder).
const listWorkers = 8

// walk calls fn for every object under dir, recursively. A missing folder
// holds nothing. It uses the backend's recursive listing when it has one
// (S3: a flat, paged listing) and otherwise lists folders in parallel.
// rclone's walk package is not used because it logs every listing error,
// an expected missing folder included, at ERROR.
func (s *rcloneStore) walk(ctx context.Context, dir string, fn func(fs.Object) error) error {
	if listR := s.f.Features().ListR; listR != nil {
		err := listR(ctx, dir, func(entries fs.DirEntries) error {
			return entries.ForObjectError(fn)
		})
		if errors.Is(err, fs.ErrorDirNotFound) {
			return nil
		}
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, listWorkers)
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	var visit func(d string)
	visit = func(d string) {
		defer wg.Done()
		sem <- struct{}{}
		entries, err := s.f.List(ctx, d)
		<-sem
		if err != nil {
			if !errors.Is(err, fs.ErrorDirNotFound) {
				fail(err)
			}
			return
		}
		for _, e := range entries {
			switch e := e.(type) {
			case fs.Object:
				if err := fn(e); err != nil {
					fail(err)
					return
				}
			case fs.Directory:
				if ctx.Err() != nil {
					return
				}
				wg.Add(1)
				go visit(e.Remote())
			}
		}
	}
	wg.Add(1)
	visit(dir)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}
