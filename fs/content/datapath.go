package content

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/remote"
)

// Options tune a DataPath. Zero values take the defaults.
type Options struct {
	StagingDir  string        // ciphertext only; made 0700 with a marker (see prepareStagingDir)
	CacheBytes  int64         // plaintext block cache cap (default 256 MiB)
	StagingCap  int64         // staged bytes before writes fail with ENOSPC (default 8 GiB)
	Uploaders   int           // concurrent uploads (default 4)
	DirtyDelay  time.Duration // idle time before a dirty chunk uploads (default 2 s)
	SyncTimeout time.Duration // fsync gives up with EIO after this (default 60 s)
	Readahead   int64         // sequential prefetch window (default 4 MiB); < 0 disables it
	Logger      *slog.Logger

	// ReadTimeout bounds one remote read (a ranged GET with the remote's
	// retries), so a hanging remote makes reads fail with EIO instead of
	// blocking them forever (default 60 s).
	ReadTimeout time.Duration

	// sealHook, for tests, sees every object id sealed ("object", id) and
	// every staging box nonce ("box", staging id + " " + nonce hex).
	sealHook func(kind, value string)
}

func (o Options) withDefaults() Options {
	if o.CacheBytes <= 0 {
		o.CacheBytes = 256 << 20
	}
	if o.StagingCap <= 0 {
		o.StagingCap = 8 << 30
	}
	if o.Uploaders <= 0 {
		o.Uploaders = 4
	}
	if o.DirtyDelay <= 0 {
		o.DirtyDelay = 2 * time.Second
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 60 * time.Second
	}
	if o.Readahead == 0 {
		o.Readahead = 4 << 20
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// MaxFileSize is the largest file size the data path accepts (EFBIG beyond).
const MaxFileSize = 1 << 60

// DataPath is the data path of one mounted volume: it reads and writes file
// content through a block cache and a ciphertext staging area, uploads
// dirty chunks in the background and drains the delete queue. Its methods
// are safe for concurrent use; there is no global lock on the data path
// (per-file and per-chunk locks only).
//
// DataPath holds what its parts share; the upload scheduler (uploader,
// uploader.go) and the delete-queue worker (deleter.go) have their own
// state. Reads are read.go and fetch.go (block cache: cache.go), writes
// write.go, staging.go and upload.go.
//
// Locking: a File's mu, then one of its chunks' mu, then the File's
// commitMu (see File). mu (the open-file table: files, each File's
// handles, pins and gone; stgNames; closed) and uploader.schedMu are taken
// under those or alone, never around them, and nothing is locked while
// either is held. wipeMu serializes WipeKeys.
type DataPath struct {
	cat    *meta.Catalog
	keys   keyring
	remote remote.Store
	layout format.Layout
	volID  format.ID
	opt    Options
	log    *slog.Logger
	dir    string // the staging directory
	slot   int64  // bytes of one staged block slot

	bg   context.Context // the workers' and prefetches' context; cancelled by shutdown
	stop context.CancelFunc
	wg   sync.WaitGroup // workers and prefetches

	mu       sync.Mutex
	files    map[uint64]*File
	stgNames map[string]bool // staging files attached to a chunk
	closed   bool

	cache  *blockCache
	staged atomic.Int64 // bytes of sealed block slots in staging files
	// hasLost: the catalog holds uploads marked lost (a restore): chunk loads check for them.
	hasLost atomic.Bool
	wipes   atomic.Uint64 // bumped at the start and at the end of WipeKeys: odd while one runs
	wipeMu  sync.Mutex    // serializes WipeKeys

	up          *uploader     // the upload scheduler and workers (uploader.go)
	del         *deleter      // the delete-queue worker (deleter.go)
	prefetchSem chan struct{} // bounds the prefetches running at once
	seal        *sealLog
}

// New starts the data path of an open volume: it creates the staging
// directory and starts the upload workers and the deleter. Call Recover
// next to pick up what a previous run left staged, and Close at the end.
func New(v *volume.Volume, opt Options) (*DataPath, error) {
	opt = opt.withDefaults()
	if v == nil || v.Catalog() == nil || v.Store() == nil || v.Keys() == nil {
		return nil, errors.New("content: new data path: the volume is not open")
	}
	if err := v.Layout.Validate(); err != nil {
		return nil, fmt.Errorf("content: new data path: %w", err)
	}
	if opt.StagingDir == "" {
		return nil, errors.New("content: new data path: no staging directory given")
	}
	if err := prepareStagingDir(opt.StagingDir, v); err != nil {
		return nil, err
	}
	seal, err := openSealLog(os.Getenv(SealLogEnv), opt.sealHook)
	if err != nil {
		return nil, err
	}
	s := &DataPath{
		cat:         v.Catalog(),
		keys:        v.Keys(),
		remote:      v.Store(),
		layout:      v.Layout,
		volID:       format.ID(v.ID),
		opt:         opt,
		log:         opt.Logger,
		dir:         opt.StagingDir,
		slot:        int64(v.Layout.BlockSize) + format.BoxOverhead,
		files:       make(map[uint64]*File),
		stgNames:    make(map[string]bool),
		cache:       newBlockCache(opt.CacheBytes),
		prefetchSem: make(chan struct{}, 8),
		seal:        seal,
	}
	s.up = newUploader(s)
	s.del = newDeleter(v.Catalog(), v.Store(), opt.Logger, opt.Uploaders)
	s.bg, s.stop = context.WithCancel(context.Background())
	s.wg.Add(2 + opt.Uploaders)
	s.up.start(opt.Uploaders)
	go func() {
		defer s.wg.Done()
		s.del.run(s.bg)
	}()
	return s, nil
}

// Stats is a snapshot of the data path for status and tests.
type Stats struct {
	StagedBytes     int64  // sealed block slots in staging files
	DirtyChunks     int64  // chunks with staged changes not yet uploaded
	UploadsInFlight int64  // uploads running now
	UploadsFailing  int64  // dirty chunks whose last upload attempt failed
	LastUploadError string // the last upload failure, "" if none yet
	CacheBytes      int64  // plaintext block cache
	OpenFiles       int64  // files with at least one open handle
	CachedKeys      int64  // file keys (DEKs) held in memory by the data path
	Locked          bool   // coffer lock: contents unreadable, uploads paused until unlock
}

// Stats returns the current counters.
func (s *DataPath) Stats() Stats {
	st := Stats{
		StagedBytes: s.staged.Load(),
		CacheBytes:  s.cache.bytes.Load(),
		Locked:      s.keys.Locked(),
	}
	s.up.stats(&st)
	s.mu.Lock()
	files := make([]*File, 0, len(s.files))
	for _, f := range s.files {
		if f.handles > 0 {
			st.OpenFiles++
		}
		files = append(files, f)
	}
	s.mu.Unlock()
	for _, f := range files {
		st.CachedKeys += f.keyCount()
	}
	return st
}

// Attr returns the size and mtime of a file the data path holds (open, or
// with staged changes): they override the catalog's, which lag behind.
func (s *DataPath) Attr(ino uint64) (size, mtimeNs int64, ok bool) {
	s.mu.Lock()
	f := s.files[ino]
	s.mu.Unlock()
	if f == nil {
		return 0, 0, false
	}
	select {
	case <-f.ready:
	default:
		return 0, 0, false // still loading: the catalog is current
	}
	if f.loadErr != nil {
		return 0, 0, false
	}
	return f.size.Load(), f.mtime.Load(), true
}

// SetMtime tells the data path that the node layer changed a file's mtime
// (utimens), so that Attr and later commits carry it instead of the last
// write's time. It does nothing for a file the data path does not hold.
func (s *DataPath) SetMtime(ino uint64, mtimeNs int64) {
	s.mu.Lock()
	f := s.files[ino]
	s.mu.Unlock()
	if f == nil {
		return
	}
	select {
	case <-f.ready:
		if f.loadErr == nil {
			f.mtime.Store(mtimeNs)
			f.committedMtime.Store(mtimeNs)
		}
	default:
	}
}

// WipeKeys zeroes every file key the data path holds, drops every object
// cipher and staging key built from them, and zeroes and empties the
// plaintext block cache, without stopping anything (coffer lock: lock the
// volume's keyring first, so that no key can be opened again meanwhile).
// While the keyring is locked, reads and writes of contents fail with
// EKEYREVOKED, including through files opened before; fsync too if
// anything is staged. Staged data stays staged (ciphertext) and uploads
// pause, without counting as failures, until Resume after unlock. Each key
// is re-opened through the keyring on next use.
func (s *DataPath) WipeKeys() {
	s.wipeMu.Lock()
	defer s.wipeMu.Unlock()
	s.wipes.Add(1)
	defer s.wipes.Add(1)
	for _, f := range s.liveFiles() {
		// Files still loading too: a load racing with this drops its key.
		f.wipeKeys()
	}
	s.cache.wipe()
	s.up.notify() // fsync waiters see the lock
}

// Resume restarts uploads paused by a lock, at once (call it after the
// keyring is unlocked; without it they resume within a second).
func (s *DataPath) Resume() {
	s.up.kick()
}

// Open returns the File of regular file ino, shared by all its handles;
// each Open must be paired with one Release.
func (s *DataPath) Open(ctx context.Context, ino uint64) (*File, error) {
	return s.acquire(ctx, ino, true)
}

// acquire finds or loads the File of ino and takes a handle (handle) or a
// pin (internal users: truncate of a closed file, recovery, prefetch).
func (s *DataPath) acquire(ctx context.Context, ino uint64, handle bool) (*File, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errnof(syscall.EIO, "open inode %d: the data path is closed", ino)
	}
	f := s.files[ino]
	loader := f == nil
	if loader {
		f = newFile(s, ino)
		s.files[ino] = f
	}
	if handle {
		f.handles++
	} else {
		f.pins++
	}
	s.mu.Unlock()
	if loader {
		f.loadErr = f.load(ctx)
		if f.loadErr != nil {
			s.mu.Lock()
			f.gone = true
			delete(s.files, ino)
			s.mu.Unlock()
		}
		close(f.ready)
	} else {
		select {
		case <-f.ready:
		case <-ctx.Done():
			s.drop(f, handle)
			return nil, ioErr(ctx, ctx.Err(), "open inode %d", ino)
		}
	}
	if f.loadErr != nil {
		if !loader && s.keyLocked(f.loadErr) {
			return nil, errLocked("open inode %d", ino)
		}
		return nil, f.loadErr
	}
	return f, nil
}

// drop gives back a handle or a pin, and frees the File if it was the last
// user and nothing is staged.
func (s *DataPath) drop(f *File, handle bool) {
	s.mu.Lock()
	if handle {
		f.handles--
	} else {
		f.pins--
	}
	s.mu.Unlock()
	s.maybeFree(f)
}

// maybeFree forgets a File nobody uses and that has nothing staged: its
// size and mtime are committed first, then its keys are wiped.
func (s *DataPath) maybeFree(f *File) {
	for range 3 {
		s.mu.Lock()
		if f.gone || f.handles > 0 || f.pins > 0 || f.dirtyChunks.Load() > 0 {
			s.mu.Unlock()
			return
		}
		select {
		case <-f.ready:
		default:
			s.mu.Unlock()
			return
		}
		if f.loadErr == nil && !f.discarded.Load() && f.needsFlush() {
			s.mu.Unlock()
			if err := f.flush(s.bg); err != nil {
				s.log.Warn("content: could not record a closed file's size and mtime", "ino", f.ino, "err", err)
				break
			}
			continue
		}
		f.gone = true
		delete(s.files, f.ino)
		s.mu.Unlock()
		f.wipe()
		return
	}
	// Flushing kept failing (catalog trouble): free anyway; the next open
	// reads what the catalog has.
	s.mu.Lock()
	if !f.gone && f.handles == 0 && f.pins == 0 && f.dirtyChunks.Load() == 0 {
		f.gone = true
		delete(s.files, f.ino)
		s.mu.Unlock()
		f.wipe()
		return
	}
	s.mu.Unlock()
}

// liveFiles is a snapshot of the files the data path holds.
func (s *DataPath) liveFiles() []*File {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.files))
}

// SyncAll uploads everything staged and makes the catalog durable. It waits
// until ctx ends (or SyncTimeout if ctx has no deadline) and then fails
// with EIO, leaving what could not be uploaded staged.
func (s *DataPath) SyncAll(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opt.SyncTimeout)
		defer cancel()
	}
	var targets []syncTarget
	for _, f := range s.liveFiles() {
		targets = append(targets, f.dirtyTargets()...)
	}
	if err := s.up.waitUploaded(ctx, targets, "sync all"); err != nil {
		return err
	}
	for _, f := range s.liveFiles() {
		select {
		case <-f.ready:
		default:
			continue
		}
		if f.loadErr != nil || f.discarded.Load() {
			continue
		}
		if err := f.flush(ctx); err != nil {
			return err
		}
	}
	if err := s.cat.Sync(ctx); err != nil {
		return metaErr(err, "sync all: make the catalog durable")
	}
	return nil
}

// Close stops the data path: it tries SyncAll within ctx, stops the
// workers (aborting uploads still running), wipes every key it holds and
// reports how many bytes stay staged for the next mount. It does not close
// the volume.
func (s *DataPath) Close(ctx context.Context) (stagedLeft int64, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return s.staged.Load(), nil
	}
	s.mu.Unlock()
	err = s.SyncAll(ctx)
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.shutdown()
	left := s.staged.Load()
	if left > 0 {
		s.log.Warn("content: data left staged for the next mount", "bytes", left, "dir", s.dir)
	}
	return left, err
}

// shutdown stops the workers, closes staging files and wipes keys, without
// uploading anything (Close after SyncAll; tests simulate a crash with it).
func (s *DataPath) shutdown() {
	s.stop()
	s.wg.Wait()
	s.mu.Lock()
	files := make([]*File, 0, len(s.files))
	for _, f := range s.files {
		files = append(files, f)
		f.gone = true
	}
	s.files = map[uint64]*File{}
	s.mu.Unlock()
	for _, f := range files {
		<-f.ready
		f.mu.Lock()
		for _, c := range f.allChunks() {
			c.mu.Lock()
			if c.stg != nil {
				c.stg.close()
			}
			c.mu.Unlock()
		}
		f.mu.Unlock()
		f.wipe()
	}
	s.cache.reset(true)
	s.seal.close()
}

// Idle says whether the data path holds nothing of inode ino: no handle, no
// pin, nothing staged (a File stays in memory until its uploads commit).
func (s *DataPath) Idle(ino uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[ino] == nil
}

// StagedBytes is how much of ino's content is staged locally and not yet in a committed
// object (whole blocks), for st_blocks; 0 for a file the data path does not hold.
func (s *DataPath) StagedBytes(ino uint64) int64 {
	s.mu.Lock()
	f := s.files[ino]
	s.mu.Unlock()
	if f == nil {
		return 0
	}
	var blocks int64
	for _, c := range f.allChunks() {
		c.mu.RLock()
		if c.stg != nil {
			blocks += c.stg.n
		}
		c.mu.RUnlock()
	}
	return blocks * int64(s.layout.BlockSize)
}
