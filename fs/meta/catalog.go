// Package meta is coffer's catalog: the SQLite database in the state
// directory that holds the namespace (inodes, directory entries, xattrs), each
// file's chunk list and key record, the KEK versions, the upload and delete
// queues and the audit log.
//
// One *Catalog owns the database file (an flock keeps a second daemon out).
// Writes go through one connection, one transaction per operation, so a
// multi-step change (create a file with its key record, replace a chunk and
// queue the old object for deletion, rename over a file) is all or nothing.
// Reads go through a separate read-only pool and never wait for a writer
// (WAL). Errors carry a POSIX errno (see Errno) so the FUSE layer can return
// them as they are.
package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// FileName is the catalog's file name inside the state directory.
const FileName = "catalog.db"

const (
	driverRW = "coffer-meta-rw"
	driverRO = "coffer-meta-ro"
)

var registerOnce sync.Once

func registerDrivers() {
	registerOnce.Do(func() {
		// temp_store=MEMORY: sorts and temporary tables never spill plaintext
		// names into /var/tmp. journal_size_limit: truncate the WAL back after
		// a checkpoint instead of leaving it at its high-water mark.
		sql.Register(driverRW, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			if err := registerFuncs(c); err != nil {
				return err
			}
			// wal_autocheckpoint=0: only Checkpoint and PurgeDeleted move WAL
			// frames into the main file, so a replicator sees every frame
			// before it goes (see Replication).
			_, err := c.Exec("PRAGMA temp_store = MEMORY; PRAGMA journal_size_limit = 67108864; PRAGMA wal_autocheckpoint = 0", nil)
			return err
		}})
		sql.Register(driverRO, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			if err := registerFuncs(c); err != nil {
				return err
			}
			_, err := c.Exec("PRAGMA temp_store = MEMORY", nil)
			return err
		}})
	})
}

// registerFuncs adds object_name(blob), the remote name of a chunk object id,
// so queries can queue deletions under the names the remote uses.
func registerFuncs(c *sqlite3.SQLiteConn) error {
	return c.RegisterFunc("object_name", func(b []byte) (string, error) {
		if len(b) != 16 {
			return "", fmt.Errorf("object id of %d bytes", len(b))
		}
		return ObjectName([16]byte(b)), nil
	}, true)
}

// Catalog is an open catalog. Its methods are safe for concurrent use.
type Catalog struct {
	path string
	w    *sql.DB  // the one writer connection; nil when opened read-only
	r    *sql.DB  // read-only pool
	lock *os.File // holds the flock; closed last (see Close)

	chunkSize int64 // immutable after Create

	// synchronous mode of the writer: "NORMAL" (commits reach the WAL
	// without fsync; Sync makes them durable) or "FULL".
	syncMode string
	syncMu   sync.Mutex
	commits  atomic.Uint64 // write transactions committed
	synced   atomic.Uint64 // commits known durable

	repl        atomic.Pointer[replicationHolder] // nil: the catalog checkpoints itself
	deleteDelay atomic.Int64                      // ns a dropped object waits on the delete queue

	// testHook, when set (internal tests only), runs at every step of a
	// write transaction; an error aborts the transaction there.
	testHook func(step string) error
}

// options are knobs for internal tests and benchmarks.
type options struct {
	syncMode string // "" = NORMAL
}

// Create makes a new catalog in dir (created 0700 if missing) for volume v,
// with the root directory as inode 1. It fails if dir already holds a
// catalog. The returned Catalog is open for writing.
func Create(ctx context.Context, dir string, v Volume) (*Catalog, error) {
	return create(ctx, dir, v, options{})
}

func create(ctx context.Context, dir string, v Volume, o options) (_ *Catalog, err error) {
	if err := v.validate(); err != nil {
		return nil, err
	}
	if v.Created == 0 {
		return nil, errf(syscall.EINVAL, "create catalog: volume creation time is zero")
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("meta: create catalog: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("meta: create catalog: %w", err)
	}
	path := filepath.Join(dir, FileName)
	for _, p := range []string{path + "-wal", path + "-shm", path + "-journal"} {
		if _, err := os.Lstat(p); err == nil {
			return nil, errf(syscall.EEXIST, "create catalog: stale %s left in %s; remove it if no catalog should be there", filepath.Base(p), dir)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, errf(syscall.EEXIST, "create catalog: %s already exists (this state directory already holds a volume)", path)
		}
		return nil, fmt.Errorf("meta: create catalog: %w", err)
	}
	// Whatever the umask: SQLite gives -wal and -shm the main file's mode.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("meta: create catalog: %w", err)
	}
	if err := flock(f, path); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	c := &Catalog{path: path, lock: f, chunkSize: v.ChunkSize}
	defer func() {
		if err != nil {
			c.Close()
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				os.Remove(p)
			}
		}
	}()
	if err := c.openWriter(ctx, o, true); err != nil {
		return nil, err
	}
	err = c.update(ctx, "create volume", func(t *Tx) error {
		if err := t.insertVolume(v); err != nil {
			return err
		}
		if err := t.step("volume"); err != nil {
			return err
		}
		perm := v.RootMode & modePermMask
		if perm == 0 {
			perm = 0o755
		}
		root := Inode{Ino: RootIno, Gen: 1, Mode: syscall.S_IFDIR | perm, UID: v.RootUID, GID: v.RootGID,
			Nlink: 2, Atime: v.Created, Mtime: v.Created, Ctime: v.Created}
		if _, err := t.insertInode(root); err != nil {
			return err
		}
		if err := t.step("root"); err != nil {
			return err
		}
		_, err := t.AppendAudit(AuditEvent{Time: v.Created, Event: "volume.create", Actor: "init",
			Detail: jsonObject("volume_id", hexID(v.ID), "key_mode", v.KeyMode, "provider", v.Provider,
				"format_version", v.FormatVersion, "per_user_keks", v.PerUserKEKs)})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := c.openReaders(ctx); err != nil {
		return nil, err
	}
	if err := c.Sync(ctx); err != nil {
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return c, nil
}

// Open opens the catalog in dir for reading and writing, applying any
// pending schema migrations in one transaction. It refuses a catalog that a
// newer coffer wrote, and a catalog another process has open (EBUSY).
func Open(ctx context.Context, dir string) (*Catalog, error) {
	return open(ctx, dir, options{})
}

func open(ctx context.Context, dir string, o options) (_ *Catalog, err error) {
	path, err := catalogPath(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("meta: open catalog: %w", err)
	}
	if err := flock(f, path); err != nil {
		f.Close()
		return nil, err
	}
	c := &Catalog{path: path, lock: f}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := tighten(path); err != nil {
		return nil, err
	}
	if err := c.openWriter(ctx, o, false); err != nil {
		return nil, err
	}
	if err := c.openReaders(ctx); err != nil {
		return nil, err
	}
	v, err := c.Volume(ctx)
	if err != nil {
		return nil, err
	}
	c.chunkSize = v.ChunkSize
	return c, nil
}

// OpenReadOnly opens the catalog for reading only, alongside a daemon that
// may have it open for writing (status, audit, fsck without --repair). Write
// methods fail with EROFS. It does not migrate: an older schema is refused.
func OpenReadOnly(ctx context.Context, dir string) (_ *Catalog, err error) {
	path, err := catalogPath(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("meta: open catalog: %w", err)
	}
	c := &Catalog{path: path}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := c.openReaders(ctx); err != nil {
		return nil, err
	}
	var have, appID int
	if err := c.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&have); err != nil {
		return nil, wrapSQL("open catalog: read schema version", err)
	}
	if err := c.r.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return nil, wrapSQL("open catalog: read application id", err)
	}
	if err := checkVersion(have, appID, false); err != nil {
		return nil, err
	}
	if have < latestVersion() {
		return nil, fmt.Errorf("meta: open catalog: schema version %d needs an upgrade to %d; open it read-write once (mount it)", have, latestVersion())
	}
	v, err := c.Volume(ctx)
	if err != nil {
		return nil, err
	}
	c.chunkSize = v.ChunkSize
	return c, nil
}

func catalogPath(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("meta: open catalog: %w", err)
	}
	path := filepath.Join(dir, FileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("meta: open catalog: no %s in %s (run coffer init first): %w", FileName, dir, syscall.ENOENT)
	}
	return path, nil
}

// flock takes the exclusive lock that keeps a second daemon off the catalog.
// It is an flock, independent of SQLite's fcntl locks, held until Close.
func flock(f *os.File, path string) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errf(syscall.EBUSY, "open catalog %s: in use by another coffer process (is the volume already mounted?)", path)
	}
	if err != nil {
		return fmt.Errorf("meta: lock catalog %s: %w", path, err)
	}
	return nil
}

// tighten resets the catalog files to 0600 if something loosened them.
func tighten(path string) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("meta: open catalog: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			slog.Warn("catalog file was readable by others; setting mode 0600", "file", p, "mode", st.Mode().Perm().String())
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("meta: open catalog: %w", err)
			}
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("meta: sync state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("meta: sync state directory: %w", err)
	}
	return nil
}

// uriPath escapes what would end the path part of an SQLite file: URI.
func uriPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
}

func (c *Catalog) openWriter(ctx context.Context, o options, fresh bool) error {
	registerDrivers()
	c.syncMode = "NORMAL"
	if o.syncMode != "" {
		c.syncMode = o.syncMode
	}
	// _txlock=immediate: a write transaction takes the write lock at BEGIN,
	// so it never fails half-way to upgrade a read lock. _stmt_cache_size:
	// the driver keeps prepared statements per connection, keyed by SQL text,
	// so every hot statement (lookup, getattr, create) is prepared once.
	dsn := "file:" + uriPath(c.path) + "?mode=rw&_journal_mode=WAL&_foreign_keys=1&_busy_timeout=5000" +
		"&_secure_delete=1&_synchronous=" + c.syncMode + "&_txlock=immediate&_stmt_cache_size=128"
	w, err := sql.Open(driverRW, dsn)
	if err != nil {
		return wrapSQL("open catalog", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	c.w = w
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return wrapSQL("open catalog "+c.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("meta: open catalog %s: journal mode is %q, want wal", c.path, mode)
	}
	return migrate(ctx, w, fresh)
}

func (c *Catalog) openReaders(ctx context.Context) error {
	registerDrivers()
	dsn := "file:" + uriPath(c.path) + "?mode=ro&_query_only=1&_foreign_keys=1&_busy_timeout=5000&_stmt_cache_size=64"
	r, err := sql.Open(driverRO, dsn)
	if err != nil {
		return wrapSQL("open catalog", err)
	}
	n := max(4, 2*runtime.NumCPU())
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	c.r = r
	if err := r.PingContext(ctx); err != nil {
		return wrapSQL("open catalog "+c.path+" for reading", err)
	}
	return nil
}

// Close closes the catalog. Committed changes are kept; the last connection
// to close checkpoints the WAL into the main file.
func (c *Catalog) Close() error {
	var errs []error
	// Readers first so that the writer is the last connection and
	// checkpoints. The flock file goes last: closing any descriptor of the
	// database file drops this process's fcntl locks on it, SQLite's included.
	if c.r != nil {
		errs = append(errs, c.r.Close())
		c.r = nil
	}
	if c.w != nil {
		errs = append(errs, c.w.Close())
		c.w = nil
	}
	if c.lock != nil {
		errs = append(errs, c.lock.Close())
		c.lock = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("meta: close catalog: %w", err)
	}
	return nil
}

// Path is the catalog file's path.
func (c *Catalog) Path() string { return c.path }

// ChunkSize is the volume's chunk size in bytes.
func (c *Catalog) ChunkSize() int64 { return c.chunkSize }

// Sync makes every transaction committed before the call durable, and, with a
// replicator set (SetReplication), replicated. Commits
// reach the WAL without an fsync (synchronous=NORMAL: a power cut may lose
// the last ones, never consistency); Sync commits one tiny change with
// synchronous=FULL, which fsyncs the WAL and so every frame before it. It is
// free when nothing was committed since the last Sync.
func (c *Catalog) Sync(ctx context.Context) error {
	if c.w == nil {
		return nil
	}
	if err := c.syncWAL(ctx); err != nil {
		return err
	}
	return c.flushReplica(ctx)
}

func (c *Catalog) syncWAL(ctx context.Context) error {
	if c.syncMode == "FULL" || c.syncMode == "EXTRA" {
		return nil
	}
	target := c.commits.Load()
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.synced.Load() >= target && target > 0 {
		return nil
	}
	conn, err := c.w.Conn(ctx)
	if err != nil {
		return wrapSQL("sync", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous = FULL"); err != nil {
		return wrapSQL("sync", err)
	}
	_, err = conn.ExecContext(ctx, "UPDATE volume SET sync_count = sync_count + 1")
	// Back to the normal mode even if ctx is done.
	if _, rerr := conn.ExecContext(context.Background(), "PRAGMA synchronous = "+c.syncMode); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return wrapSQL("sync", err)
	}
	if c.synced.Load() < target {
		c.synced.Store(target)
	}
	return nil
}

// PurgeDeleted makes rows deleted so far (key records, KEK material) leave
// no copy in the catalog files: secure_delete already overwrites them in the
// page, and this checkpoints every WAL frame into the main file and truncates
// the WAL, where older images of those pages still sit. It waits up to the
// busy timeout for readers on older snapshots, then fails with EBUSY. (Copies
// on the disk below the file system, or in backups, are out of its reach.)
func (c *Catalog) PurgeDeleted(ctx context.Context) error {
	if c.w == nil {
		return errf(syscall.EROFS, "purge deleted rows: catalog opened read-only")
	}
	done, err := c.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("meta: purge deleted rows: %w", err)
	}
	if !done {
		return errf(syscall.EBUSY, "purge deleted rows: readers still hold older snapshots")
	}
	return nil
}

// Update runs fn in one write transaction: everything fn does through tx
// commits together, or nothing does. If fn returns an error, or any tx method
// failed (even if fn ignored it), the transaction rolls back. fn must not call
// the Catalog's own write methods (they would wait for this transaction).
func (c *Catalog) Update(ctx context.Context, fn func(tx *Tx) error) error {
	return c.update(ctx, "update", fn)
}

func (c *Catalog) update(ctx context.Context, what string, fn func(*Tx) error) error {
	if c.w == nil {
		return errf(syscall.EROFS, "%s: catalog opened read-only", what)
	}
	if r := c.replication(); r != nil {
		if err := r.Admit(); err != nil {
			return fmt.Errorf("meta: %s: %w", what, err)
		}
	}
	stx, err := c.w.BeginTx(ctx, nil)
	if err != nil {
		return wrapSQL(what+": begin", err)
	}
	t := &Tx{c: c, ctx: ctx, tx: stx}
	defer func() {
		if p := recover(); p != nil {
			stx.Rollback() // free the writer before passing the panic on
			panic(p)
		}
	}()
	err = fn(t)
	if err == nil {
		err = t.err
	}
	if err != nil {
		stx.Rollback()
		return err
	}
	if err := stx.Commit(); err != nil {
		return wrapSQL(what+": commit", err)
	}
	if n := c.commits.Add(1); n%selfCheckpointEvery == 0 && c.replication() == nil {
		c.selfCheckpoint(ctx)
	}
	return nil
}

// Tx is one write transaction (see Update). Its methods are the Catalog's
// write operations; reads through it see the transaction's own changes.
type Tx struct {
	c   *Catalog
	ctx context.Context
	tx  *sql.Tx
	err error // first error any method returned: the transaction must not commit
}

// track records a method's error so that Update never commits half an
// operation whose error the caller dropped.
func (t *Tx) track(err *error) {
	if *err != nil && t.err == nil {
		t.err = *err
	}
}

// step is a point inside a multi-step change where the test hook may fail
// the transaction.
func (t *Tx) step(name string) error {
	if h := t.c.testHook; h != nil {
		return h(name)
	}
	return nil
}

func (t *Tx) exec(what, q string, args ...any) (sql.Result, error) {
	res, err := t.tx.ExecContext(t.ctx, q, args...)
	if err != nil {
		return nil, wrapSQL(what, err)
	}
	return res, nil
}

// querier is what read helpers need: the read pool or a write transaction.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// do runs one write operation as its own transaction and returns its result.
func do[T any](c *Catalog, ctx context.Context, what string, fn func(*Tx) (T, error)) (T, error) {
	var out T
	err := c.update(ctx, what, func(t *Tx) error {
		var err error
		out, err = fn(t)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}
