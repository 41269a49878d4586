package remote

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	// The only backends linked in: see NOTES-rclone.md for the build cost.
	_ "github.com/rclone/rclone/backend/local"
	_ "github.com/rclone/rclone/backend/s3"
	_ "github.com/rclone/rclone/backend/sftp"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/config"
	"github.com/rclone/rclone/fs/config/configfile"
	"github.com/rclone/rclone/fs/fspath"
	"github.com/rclone/rclone/fs/hash"
	"github.com/rclone/rclone/fs/object"
	"github.com/rclone/rclone/lib/atexit"
	"golang.org/x/sys/unix"
)

// roStorage is the user's rclone.conf, read but never written back: backends
// (sftp) save discovered settings, which must stay in memory.
type roStorage struct{ *configfile.Storage }

func (roStorage) Save() error { return nil }

var (
	setupOnce sync.Once
	setupErr  error
)

// setupRclone prepares rclone's process-wide state once: no signal
// handler of its own (it would os.Exit during our shutdown), logs at ERROR
// into our slog, no terminal prompts, and the user's config read-only. The
// config is loaded here so that a broken or encrypted file gives an error
// instead of rclone's os.Exit(1) at first use.
func setupRclone() error {
	setupOnce.Do(func() {
		atexit.IgnoreSignals()
		fs.SetLogger(rcloneLogHandler{})
		// Written only if needed: rclone goroutines already running (a
		// test's S3 server) read these fields without a lock.
		ci := fs.GetConfig(context.Background())
		if ci.LogLevel != fs.LogLevelError {
			ci.LogLevel = fs.LogLevelError
		}
		if ci.AskPassword {
			ci.AskPassword = false // a daemon must never prompt; use RCLONE_CONFIG_PASS
		}
		if p := os.Getenv("RCLONE_CONFIG"); p != "" {
			if err := config.SetConfigPath(p); err != nil {
				setupErr = fmt.Errorf("remote: RCLONE_CONFIG: %w", err)
				return
			}
		}
		st := &configfile.Storage{}
		if config.GetConfigPath() != "" {
			if err := st.Load(); err != nil && !errors.Is(err, config.ErrorConfigFileNotFound) {
				setupErr = fmt.Errorf("remote: load rclone config %s: %w", config.GetConfigPath(), err)
				return
			}
		}
		config.SetData(roStorage{st})
	})
	return setupErr
}

// backendDefaults are options coffer sets on a backend unless the user set
// them (in the string, the environment or rclone.conf). Reasoned from what
// a Store does: mostly ranged reads of blocks.
var backendDefaults = map[string]map[string]string{
	// sftp's concurrent reads pump the object to its end and Close waits
	// for them: a 4 KiB range at the start of a 4 MiB object took 5-13 ms
	// on loopback, 0.5-0.8 ms without (whole 4 MiB reads: 9-16 ms with,
	// 20-27 ms without).
	"sftp": {"disable_concurrent_reads": "true"},
	// After a single-part PUT rclone HEADs the object to read back its metadata, which
	// coffer never uses; the PUT carries Content-MD5, so its 200 already says the bytes
	// arrived intact. Without the HEAD a Put is one request instead of two (rclone serve
	// s3 answers a HEAD by hashing the whole object: 18% of the CPU of 4 MiB Puts).
	"s3": {"no_head": "true"},
}

// tuneRemote returns the string given to rclone: backendDefaults added,
// and the root marked as a folder with a trailing '/', so S3 skips the
// HEAD that checks whether the root is a file (Open then needs no network,
// and an unreachable or refusing server is not mistaken for "root is a
// file", which rclone reports when that HEAD fails).
// Options in extra ("key=value") are added as they are.
func tuneRemote(remote string, p fspath.Parsed, extra ...string) string {
	cfg := p.ConfigString
	for _, e := range extra {
		cfg += "," + e
	}
	if ri, name, _, conn, err := fs.ParseRemote(remote); err == nil {
		keys := make([]string, 0, len(backendDefaults[ri.Name]))
		for k := range backendDefaults[ri.Name] {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !userSet(ri, name, conn, k) {
				cfg += "," + k + "=" + backendDefaults[ri.Name][k]
			}
		}
	}
	root := p.Path
	if root != "" && !strings.HasSuffix(root, "/") {
		root += "/"
	}
	return cfg + ":" + root
}

// userSet reports whether the user gave option key of a remote: in the
// connection string, rclone's environment variables or rclone.conf.
// (fs.ConfigMap cannot tell: it reports registry defaults as set.)
func userSet(ri *fs.RegInfo, name string, conn map[string]string, key string) bool {
	if _, ok := conn[key]; ok {
		return true
	}
	if _, ok := os.LookupEnv(fs.OptionToEnv(ri.Prefix + "-" + key)); ok {
		return true
	}
	if strings.HasPrefix(name, ":") {
		return false
	}
	if _, ok := os.LookupEnv(fs.ConfigToEnv(name, key)); ok {
		return true
	}
	v, ok := config.LoadedData().GetValue(name, key)
	return ok && v != ""
}

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
	// caller's goroutine (see GetRange).
	inline bool

	mu       sync.RWMutex
	closed   bool
	wg       sync.WaitGroup
	stop     context.Context // cancelled by Close
	stopFunc context.CancelFunc
}

func openRclone(ctx context.Context, remote string, opt Options) (*rcloneStore, error) {
	if err := CheckRemote(remote); err != nil {
		return nil, err
	}
	if err := setupRclone(); err != nil {
		return nil, err
	}
	desc := Redact(remote)
	p, err := fspath.Parse(remote)
	if err != nil {
		return nil, fmt.Errorf("remote: open %s: %w", desc, err)
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
	type result struct {
		f   fs.Fs
		err error
	}
	// A caller that has already given up gets its error, whatever NewFs would do: with
	// both ready, the select below would pick at random.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("remote: open %s: %w", desc, err)
	}
	ch := make(chan result, 1)
	fsRemote := remote
	if p.Name != "" {
		fsRemote = tuneRemote(remote, p)
	}
	go func() {
		f, err := fs.NewFs(base, fsRemote)
		ch <- result{f, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() { // shut down the Fs when it finally arrives
			if r := <-ch; r.f != nil {
				if sd := r.f.Features().Shutdown; sd != nil {
					_ = sd(context.Background())
				}
			}
		}()
		return nil, fmt.Errorf("remote: open %s: %w", desc, ctx.Err())
	}
	if r.err != nil {
		if errors.Is(r.err, fs.ErrorIsFile) {
			return nil, fmt.Errorf("remote: open %s: the root is an existing object, not a folder", desc)
		}
		return nil, fmt.Errorf("remote: open %s: %w", desc, r.err)
	}
	s := &rcloneStore{f: r.f, desc: desc, cfgCtx: base, noSync: opt.NoSync}
	if fs.Type(r.f) == "local" {
		s.localDir = filepath.FromSlash(r.f.Root())
		s.fds = newFDCache(fdCacheSize)
		s.inline = onLocalDisk(s.localDir)
	}
	if fs.Type(r.f) == "s3" && p.Name != "" {
		// The same bucket without the HEAD that rclone's NewObject sends: a ranged GET
		// (the caller knows the range) needs no lookup first, which halves the requests
		// of a cold read. Made without network, like the first.
		if h, err := fs.NewFs(base, tuneRemote(remote, p, "no_head_object=true")); err == nil {
			s.headless = h
		} else {
			slog.Debug("remote: no HEAD-less S3 reader; reads look objects up first", "remote", desc, "err", err)
		}
	}
	s.md5 = r.f.Features().BucketBased && r.f.Hashes().Contains(hash.MD5)
	s.stop, s.stopFunc = context.WithCancel(context.Background())
	return s, nil
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

// runLocal is run for a read of a local folder, which needs no context and returns a
// buffer of its own. On a local disk file system (s.inline) the read runs on the
// caller's goroutine: cold random 4 KiB reads through FUSE, 4 paired rounds, 7683 IOPS
// against 6193 with a goroutine per read (+24%); nothing could abandon such a read, but
// a disk that hangs also hangs the catalog and the staging area, which are read the
// same way. Any other folder (NFS, FUSE, ...) is read on a goroutine of its own, so
// that a hung read is abandoned at the caller's deadline or at Close (without run's
// per-call context and cancel hook: 6193 IOPS against run's 5807).
func (s *rcloneStore) runLocal(ctx context.Context, fn func() ([]byte, error)) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		s.wg.Done()
		return nil, err
	}
	if s.inline {
		defer s.wg.Done()
		return fn()
	}
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer s.wg.Done()
		data, err := fn()
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-ctx.Done():
	case <-s.stop.Done():
	}
	select {
	case r := <-done: // finished anyway: report what happened
		return r.data, r.err
	default:
	}
	if ctx.Err() == nil {
		return nil, ErrClosed // Close cancelled it
	}
	return nil, ctx.Err()
}

// onLocalDisk says whether dir is on a file system of a local disk (or memory), as
// opposed to a network or FUSE one whose reads may hang.
func onLocalDisk(dir string) bool {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return false
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC,
		unix.F2FS_SUPER_MAGIC:
		return true
	}
	return false
}

func (s *rcloneStore) String() string { return s.desc }

// guardedReader feeds a Put from the caller's buffer until the Put is
// abandoned; from then on it never touches the buffer again.
type guardedReader struct {
	mu   sync.Mutex
	data []byte
	off  int
	dead bool
}

var errAbandoned = errors.New("call abandoned")

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		return 0, errAbandoned
	}
	if g.off >= len(g.data) {
		return 0, io.EOF
	}
	n := copy(p, g.data[g.off:])
	g.off += n
	return n, nil
}

func (g *guardedReader) kill() {
	g.mu.Lock()
	g.dead, g.data = true, nil
	g.mu.Unlock()
}

func (s *rcloneStore) Put(ctx context.Context, name string, data []byte) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("remote: put %s: %w", name, err)
	}
	var hashes map[hash.Type]string
	if s.md5 {
		sum := md5.Sum(data)
		hashes = map[hash.Type]string{hash.MD5: hex.EncodeToString(sum[:])}
	}
	in := &guardedReader{data: data}
	err := s.run(ctx, func(ctx context.Context) error {
		info := object.NewStaticObjectInfo(name, time.Now(), int64(len(data)), true, hashes, nil)
		if s.fds != nil {
			// Whatever happened, the name may now hold other bytes (even in an abandoned
			// call finishing late).
			defer s.fds.invalidate(name)
		}
		if _, err := s.f.Put(ctx, in, info); err != nil {
			return ctxErr(ctx, err)
		}
		if s.localDir != "" && !s.noSync {
			return s.syncLocal(name)
		}
		return nil
	}, in.kill)
	if err != nil {
		return fmt.Errorf("remote: put %s: %w", name, err)
	}
	return nil
}

// syncLocal makes a local Put durable: the file, its folder (which holds the new entry),
// then each folder up to the root, since rclone's local backend writes without fsync and may
// have just created the parent folders. A folder whose own entry is already known durable
// ends the walk: 2 fsyncs per object instead of 4 once c/xx/ exists.
func (s *rcloneStore) syncLocal(name string) error {
	file := filepath.Join(s.localDir, filepath.FromSlash(name))
	var synced []string // folders fsynced by this call, deepest first
	for p := file; ; p = filepath.Dir(p) {
		if err := fsyncPath(p); err != nil {
			return err
		}
		if len(p) <= len(s.localDir) {
			break
		}
		if p != file {
			if _, ok := s.durableDirs.Load(p); ok {
				break
			}
			synced = append(synced, p)
		}
	}
	// Each of these had its parent fsynced after it: its entry is on disk now.
	for _, d := range synced {
		s.durableDirs.Store(d, true)
	}
	return nil
}

func fsyncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	err = f.Sync()
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

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

// getRangeLocal reads [off, off+n) of an object of a local remote with one pread, on a
// descriptor marked random-access and kept open between reads (fdCache). Through
// rclone's local backend each read was a fresh open, and the kernel starts every fresh
// descriptor with readahead: a cold 16 KiB block read pulled a whole readahead window
// from disk. Object names need no encoding (base32 and '/'): the path is the one rclone
// uses.
func (s *rcloneStore) getRangeLocal(name string, off, n int64) ([]byte, error) {
	e, st, err := s.fds.acquire(name, filepath.Join(s.localDir, filepath.FromSlash(name)))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	defer s.fds.release(e)
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG { // a folder of that name: no object, as rclone says
		return nil, ErrNotFound
	}
	size := st.Size
	if off > size || (n >= 0 && off+n > size) {
		return nil, newShort("range past the end of the %d-byte object", size)
	}
	if n < 0 {
		n = size - off
	}
	buf := make([]byte, n)
	if got, err := e.f.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
		// Objects are written once; a short read means it changed under us: retry.
		return nil, fmt.Errorf("got %d of %d bytes: %w", got, n, io.ErrUnexpectedEOF)
	}
	return buf, nil
}

func fadviseRandom(f *os.File) error {
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
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

func (s *rcloneStore) getRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	if s.headless != nil && off >= 0 && n > 0 {
		return s.getRangeHeadless(ctx, name, off, n)
	}
	if s.localDir != "" {
		return s.getRangeLocal(name, off, n)
	}
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
	// A fresh option each time: rclone rewrites it in place.
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

func (s *rcloneStore) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("remote: delete %s: %w", name, err)
	}
	err := s.run(ctx, func(ctx context.Context) error {
		if s.fds != nil {
			defer s.fds.invalidate(name)
		}
		// The lookup stays (a HEAD on S3): deletes run in the background, and an S3
		// server over a file system (rclone serve s3) fails a DELETE of a name that is
		// a folder, which must read as "no such object".
		o, err := s.newObject(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := o.Remove(ctx); err != nil {
			// local and sftp: gone since the lookup (a concurrent delete).
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, fs.ErrorObjectNotFound) {
				return nil
			}
			return ctxErr(ctx, err)
		}
		return nil
	}, nil)
	if err != nil {
		return fmt.Errorf("remote: delete %s: %w", name, err)
	}
	return nil
}

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

// rcloneLogHandler forwards rclone's records (ERROR and worse) to the
// logger of the latest Open that gave one.
type rcloneLogHandler struct {
	ops []func(slog.Handler) slog.Handler
}

var rcloneLogger struct {
	mu sync.RWMutex
	l  *slog.Logger
}

func setRcloneLogger(l *slog.Logger) {
	rcloneLogger.mu.Lock()
	rcloneLogger.l = l
	rcloneLogger.mu.Unlock()
}

func (h rcloneLogHandler) target() slog.Handler {
	rcloneLogger.mu.RLock()
	l := rcloneLogger.l
	rcloneLogger.mu.RUnlock()
	if l == nil {
		l = slog.Default()
	}
	t := l.Handler()
	for _, op := range h.ops {
		t = op(t)
	}
	return t
}

func (h rcloneLogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && h.target().Enabled(ctx, l)
}

func (h rcloneLogHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(slog.String("component", "rclone"))
	return h.target().Handle(ctx, r)
}

func (h rcloneLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return rcloneLogHandler{ops: append(h.ops[:len(h.ops):len(h.ops)], func(t slog.Handler) slog.Handler { return t.WithAttrs(as) })}
}

func (h rcloneLogHandler) WithGroup(g string) slog.Handler {
	return rcloneLogHandler{ops: append(h.ops[:len(h.ops):len(h.ops)], func(t slog.Handler) slog.Handler { return t.WithGroup(g) })}
}
