package remote

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	// Only these backends are linked in: each registers itself in init(), and
	// backend/all would cost ~4x the cold build (272 s against 61-70 s on 2
	// cores) and a 107 MB binary against 39 MB. A remote of another type
	// fails at Open with "didn't find backend called ..." (its options not
	// shown: which of them are secret is not known).
	_ "github.com/rclone/rclone/backend/local"
	_ "github.com/rclone/rclone/backend/s3"
	_ "github.com/rclone/rclone/backend/sftp"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/fspath"
	"github.com/rclone/rclone/fs/hash"
)

// rcloneStore is a Store over one rclone fs.Fs, without retries.
type rcloneStore struct {
	f        fs.Fs
	desc     string
	cfgCtx   context.Context // carries our rclone ConfigInfo into every call
	localDir string          // root folder when the backend is local, for fsync
	noSync   bool
	// durableDirs are local folders whose own entry in their parent is known to be on
	// disk, so a Put into them needs only the file and the folder itself fsynced.
	durableDirs sync.Map
	md5         bool // send Content-MD5 on upload (S3)
	// headless is the same S3 bucket with no_head_object: its NewObject sends nothing, so
	// a ranged read is one GET (nil for other backends).
	headless fs.Fs
	// fds keeps descriptors of a local remote's objects open between reads (nil for
	// other backends).
	fds *fdCache
	// inline: the local folder is on a local disk file system, where reads run on the
	// caller's goroutine (see runLocal).
	inline bool

	mu       sync.RWMutex
	closed   bool
	wg       sync.WaitGroup
	stop     context.Context // cancelled by Close
	stopFunc context.CancelFunc
}

// openRclone makes the Fs for remote and the per-backend extras: the local fast path
// (rclone_local.go) or S3's HEAD-less reader (rclone_read.go).
func openRclone(ctx context.Context, remote string, opt Options) (*rcloneStore, error) {
	// Every message shows desc, never remote (Redact hides every option of a
	// backend this build lacks), and every error from rclone has the values
	// desc hides taken out (rclone may quote values back).
	desc := Redact(remote)
	hidden := hiddenValues(remote)
	if p, err := fspath.Parse(remote); err == nil && strings.HasPrefix(p.Name, ":") && backendOf(p.Name) == nil {
		return nil, fmt.Errorf("remote: open %s: didn't find backend called %q (this build of coffer has %s)",
			desc, p.Name[1:], strings.Join(linkedBackends(), ", "))
	}
	if err := CheckRemote(remote); err != nil {
		return nil, err
	}
	if err := setupRclone(); err != nil {
		return nil, err
	}
	p, err := fspath.Parse(remote)
	if err != nil {
		return nil, fmt.Errorf("remote: open %s: %w", desc, redactError(err, hidden))
	}
	if p.Name == "" {
		if !filepath.IsAbs(remote) {
			return nil, fmt.Errorf("remote: open %s: a local remote must be an absolute path", desc)
		}
		if err := os.MkdirAll(remote, 0o700); err != nil {
			return nil, fmt.Errorf("remote: open %s: %w", desc, err)
		}
	}

	// The Fs keeps the context it was made with (sftp's pool drainer, S3
	// reconnects), so it must outlive the caller's ctx: keep the values,
	// drop the cancellation, and stop waiting if the caller gives up.
	base, ci := fs.AddConfig(context.WithoutCancel(ctx))
	ci.LowLevelRetries = opt.LowLevelRetries
	ci.ConnectTimeout = fs.Duration(opt.ConnectTimeout)
	ci.Timeout = fs.Duration(opt.IdleTimeout)
	ci.AskPassword = false
	fsRemote := remote
	if p.Name != "" {
		fsRemote = tuneRemote(remote, p)
	}
	f, err := newFs(ctx, base, fsRemote)
	if err != nil {
		if errors.Is(err, fs.ErrorIsFile) {
			return nil, fmt.Errorf("remote: open %s: the root is an existing object, not a folder", desc)
		}
		return nil, fmt.Errorf("remote: open %s: %w", desc, redactError(err, hidden, fsRemote))
	}
	s := &rcloneStore{f: f, desc: desc, cfgCtx: base, noSync: opt.NoSync}
	switch fs.Type(f) {
	case "local":
		s.initLocal()
	case "s3":
		if p.Name != "" {
			s.headless = openHeadless(base, remote, p, desc, hidden)
		}
	}
	s.md5 = f.Features().BucketBased && f.Hashes().Contains(hash.MD5)
	s.stop, s.stopFunc = context.WithCancel(context.Background())
	return s, nil
}

// linkedBackends lists the backends rclone can make in this build.
func linkedBackends() []string {
	var names []string
	for _, ri := range fs.Registry {
		names = append(names, ri.Name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// newFs makes the Fs from base, but returns when ctx ends: NewFs may wait on
// the network. An Fs that arrives after that is shut down.
func newFs(ctx, base context.Context, remote string) (fs.Fs, error) {
	type result struct {
		f   fs.Fs
		err error
	}
	// A caller that has already given up gets its error, whatever NewFs would do: with
	// both ready, the select below would pick at random.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan result, 1)
	go func() {
		f, err := fs.NewFs(base, remote)
		ch <- result{f, err}
	}()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-ctx.Done():
		go func() { // shut down the Fs when it finally arrives
			if r := <-ch; r.f != nil {
				if sd := r.f.Features().Shutdown; sd != nil {
					_ = sd(context.Background())
				}
			}
		}()
		return nil, ctx.Err()
	}
}

// run performs one operation. It fails after Close; otherwise fn runs in
// its own goroutine with a context cancelled by the caller's or by Close,
// carrying our rclone config. If that context ends first, run returns at
// once and calls abandon, which must cut fn off from the caller's memory
// (its buffer, its callback): rclone's pacer sleeps between low-level
// retries without watching the context, for up to seconds, and a
// cancelled call must not wait for it. Close waits for abandoned calls.
func (s *rcloneStore) run(ctx context.Context, fn func(ctx context.Context) error, abandon func()) error {
	if err := s.enter(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		s.wg.Done()
		return err
	}
	opCtx, cancel := context.WithCancel(fs.CopyConfig(ctx, s.cfgCtx))
	stop := context.AfterFunc(s.stop, cancel)
	done := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer stop()
		done <- fn(opCtx)
	}()
	select {
	case err := <-done:
		return err
	case <-opCtx.Done():
	}
	select {
	case err := <-done: // finished anyway: report what happened
		return err
	default:
	}
	if abandon != nil {
		abandon()
	}
	if ctx.Err() == nil {
		return ErrClosed // Close cancelled it
	}
	return ctx.Err()
}

// enter registers a call that Close waits for; ErrClosed once Close has begun.
func (s *rcloneStore) enter() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	s.wg.Add(1)
	return nil
}

func (s *rcloneStore) String() string { return s.desc }

// Close cancels calls in flight, waits for them and closes connections.
// A cancelled multipart upload aborts itself (rclone's OnError hook), so
// rclone's process-wide atexit.Run is not needed here, and must not be
// called: it runs every handler of the process, including those of
// rclone servers in the same process (a test's S3 server) and of other
// Stores' uploads.
func (s *rcloneStore) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopFunc()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	finish := func(ctx context.Context) error {
		if s.fds != nil {
			s.fds.close() // no call is running any more: nothing holds a descriptor
		}
		var err error
		for _, f := range []fs.Fs{s.f, s.headless} {
			if f == nil {
				continue
			}
			if sd := f.Features().Shutdown; sd != nil {
				if e := sd(ctx); e != nil && err == nil {
					err = fmt.Errorf("remote: close %s: %w", s.desc, e)
				}
			}
		}
		return err
	}
	select {
	case <-done:
		return finish(ctx)
	case <-ctx.Done():
		// Finish in the background once the cancelled calls return.
		go func() { <-done; _ = finish(context.Background()) }()
		return fmt.Errorf("remote: close %s: calls still running: %w", s.desc, ctx.Err())
	}
}

// ctxErr prefers the context's error when it caused the failure, so
// callers see context.Canceled rather than a transport error.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
