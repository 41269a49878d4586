// Package fusefront is coffer's FUSE node layer: it answers every POSIX operation
// the kernel sends from the SQLite catalog (coffer/fs/meta) and the data path
// (coffer/fs/content), through go-fuse v2's fs package.
//
// The catalog row is the truth about an inode; go-fuse's Inode is only a
// cache the kernel's lookups keep alive. Identity is fs.StableAttr{Ino, Gen}
// taken from the catalog (inode numbers are never reused, the root is 1), so
// hard links found by two names share one kernel inode.
//
// Choices a program could notice, and why:
//   - atime is relatime, applied at open for reading (reads may be served
//     from the page cache and never reach us): atime becomes now only when it
//     is older than mtime or ctime, or a day old, so reading costs a catalog
//     write once after each change, never one per read(2).
//   - Size and mtime of a file with open handles or staged writes come from
//     the data path (content.DataPath.Attr), which owns them until they are
//     flushed.
//   - An unlinked file stays readable and writable through open handles; its
//     rows, key record and objects go when the last handle is released (or at
//     the next mount after a crash). A removed directory the kernel still
//     knows goes when the kernel forgets it.
//   - suid/sgid are cleared by this layer (CAP_HANDLE_KILLPRIV_V2): on write,
//     truncate and fallocate by a caller other than root, and on chown.
//   - Permission checks are the kernel's (default_permissions, always on).
//   - Extended attributes: user.*, trusted.* and security.* are stored (the
//     kernel decides who may set which); security.capability and system.*
//     (ACLs) are refused with EOPNOTSUPP.
//   - Listings include "." and ".." and can be sought back to any offset
//     returned; readdirplus answers the kernel's per-entry lookups from the
//     listing's rows, not one catalog query each.
//   - statfs reports 4 KiB blocks, the bytes used, and 1 PiB and 2^32 inodes
//     free: a remote has no fixed size, and tools refuse a file system that
//     reports none.
//   - While the volume is locked (coffer lock, FS.Lock), opening a regular
//     file, reading, writing, fallocate, truncate, fsync of a file and
//     creating one fail with EKEYREVOKED ("Key has been revoked"), also
//     through descriptors opened before, whose cached pages are dropped;
//     names and attributes keep working. close(2) still succeeds.
//   - A file crypto-shredded while mounted (coffer shred, see shred.go) is
//     revoked first: every descriptor still open on it fails its next read,
//     write, fsync, fallocate, lseek and fstat with EKEYREVOKED, for good;
//     close(2) succeeds. Its names vanish at once (the kernel's cache too).
//   - Not supported: O_TMPFILE (EOPNOTSUPP; programs fall back to a named
//     temporary file), and byte-range locks are the kernel's local ones.
package fusefront

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// Options tune a mount.
type Options struct {
	AllowOther   bool          // let other users in (the kernel checks permissions: default_permissions)
	ReadOnly     bool          // mount read-only: every write operation fails with EROFS
	Debug        bool          // log every FUSE request (go-fuse's debug output)
	Logger       *slog.Logger  // nil: slog.Default()
	EntryTimeout time.Duration // kernel cache of names (and of misses); 0: 1 s
	AttrTimeout  time.Duration // kernel cache of attributes; 0: 1 s
	FsName       string        // first field of /proc/mounts; "" means "coffer"
	// Scrub, if set, is called by Lock once every key is dropped, while the kernel drops
	// its page cache: the daemon makes the runtime overwrite the memory that held keys.
	Scrub func()
}

// Kernel-facing constants.
const (
	maxWrite      = 1 << 20 // MaxWrite: 1 MiB WRITEs (and READs), the kernel's cap here
	maxBackground = 64      // background requests (readahead, async reads) in flight
	readAheadKB   = 1024    // bdi read_ahead_kb raised after mounting
	attrBlkSize   = 4096    // st_blksize reported (stdio buffers are this big)
)

// ErrDetached is returned by Unmount when the mount was busy and was
// detached lazily instead: the kernel removed it from the namespace, but the
// server keeps serving open files until the last one closes (fuse.Server.Wait
// returns then).
var ErrDetached = errors.New("mount point busy: detached lazily; the daemon serves open files until they are closed")

// FS is one mounted (or mountable) coffer volume.
type FS struct {
	vol  *volume.Volume
	cat  *meta.Catalog
	data dataPath
	opt  Options
	log  *slog.Logger

	root *Node

	mu         sync.Mutex
	srv        *fuse.Server // nil once unmounted
	served     *fuse.Server // what Wait waits for
	mountpoint string

	// open is the open-file table: per inode, the handles open on it. An
	// entry lives while anything pins it (see pin).
	openMu sync.Mutex
	open   map[uint64]*openState

	// orphans are inodes with no links left that the kernel may still use
	// (a removed directory it holds); they are reaped on forget.
	orphanMu sync.Mutex
	orphans  map[uint64]struct{}

	// nodeLookups counts LOOKUPs answered by a catalog query (readdirplus
	// answers from its listing instead); tests read it.
	nodeLookups atomic.Int64

	// volKEK is the volume's current KEK version and userKEKs the current
	// per-user ones (per-user volumes), as last read from the catalog; a
	// create checks them inside its transaction (a live rotation moves them).
	kekMu    sync.Mutex
	volKEK   keys.KEKRef
	userKEKs map[uint32]keys.KEKRef

	// revoked are the inodes being shredded on the live mount (under
	// openMu): opening them fails with EKEYREVOKED.
	revoked map[uint64]struct{}
}

func newFS(v *volume.Volume, data dataPath, opt Options) *FS {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.EntryTimeout <= 0 {
		opt.EntryTimeout = time.Second
	}
	if opt.AttrTimeout <= 0 {
		opt.AttrTimeout = time.Second
	}
	if opt.FsName == "" {
		opt.FsName = "coffer"
	}
	f := &FS{vol: v, cat: v.Catalog(), data: data, opt: opt, log: opt.Logger,
		open: map[uint64]*openState{}, orphans: map[uint64]struct{}{}, userKEKs: map[uint32]keys.KEKRef{},
		volKEK: v.KEK(), revoked: map[uint64]struct{}{}}
	f.root = &Node{fsys: f}
	return f
}

// Root is the root directory's node (for tests and for NewNodeFS users).
func (f *FS) Root() *Node { return f.root }

// Mount reaps the inodes a previous run left with no links (unlinked while
// open, then a crash), mounts the file system on mountpoint and returns once
// the kernel has finished INIT, so the mount is usable when it returns. The
// caller runs the data path's Recover before Mount, then Wait, and Unmount
// to stop.
func (f *FS) Mount(mountpoint string) error {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	if !f.opt.ReadOnly {
		if err := f.ReapOrphans(context.Background()); err != nil {
			return err
		}
	}
	sec := f.opt.EntryTimeout
	attr := f.opt.AttrTimeout
	mopts := []string{"default_permissions"}
	if f.opt.ReadOnly {
		mopts = append(mopts, "ro")
	}
	// go-fuse's own messages are warnings; its request trace (Debug) is
	// logged at info so that asking for it is enough to see it.
	logger := slog.NewLogLogger(f.log.Handler(), slog.LevelWarn)
	trace := logger
	if f.opt.Debug {
		trace = slog.NewLogLogger(f.log.Handler(), slog.LevelInfo)
	}
	opts := &gofs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &attr,
		NegativeTimeout: &sec,
		NullPermissions: true, // a stored mode 0000 stays 0000
		RootStableAttr:  &gofs.StableAttr{Ino: meta.RootIno, Gen: 1},
		Logger:          logger,
		MountOptions: fuse.MountOptions{
			AllowOther:    f.opt.AllowOther,
			FsName:        f.opt.FsName,
			Name:          "coffer",
			MaxWrite:      maxWrite,
			MaxBackground: maxBackground,
			Options:       mopts,
			// The kernel stops asking for security.capability before every
			// write; this layer clears suid/sgid itself.
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
			// Passthrough would let the kernel read a backing file itself:
			// no decryption, no authentication. Never.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			EnableLocks:          false, // one host: the kernel's local locks suffice
			DisableSplice:        true,  // replies are decrypted bytes in memory, never an fd
			EnableSymlinkCaching: true,  // a symlink's target never changes
			DirectMount:          os.Geteuid() == 0,
			Debug:                f.opt.Debug,
			Logger:               trace,
		},
	}
	if f.opt.ReadOnly {
		// mount(2) flags (direct mount); "ro" above covers fusermount3.
		opts.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
	}
	srv, err := gofs.Mount(abs, f.root, opts)
	if err != nil {
		return fmt.Errorf("fuse mount: %w", err)
	}
	f.mu.Lock()
	f.srv, f.served, f.mountpoint = srv, srv, abs
	f.mu.Unlock()
	if err := raiseReadAhead(abs); err != nil {
		f.log.Debug("could not raise read_ahead_kb", "mountpoint", abs, "err", err)
	}
	return nil
}

// Wait returns once the mount is gone (Unmount, fusermount3 -u, or the last
// file of a detached mount closed) and every request has been answered.
func (f *FS) Wait() {
	f.mu.Lock()
	srv := f.served
	f.mu.Unlock()
	if srv != nil {
		srv.Wait()
	}
}

// Unmount unmounts the file system. If it is busy (an open file or a working
// directory inside), it detaches it lazily and returns ErrDetached.
func (f *FS) Unmount() error {
	f.mu.Lock()
	srv, mp := f.srv, f.mountpoint
	f.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Unmount()
	if err == nil {
		f.forgetServer()
		return nil
	}
	if !errors.Is(err, syscall.EBUSY) && !strings.Contains(err.Error(), "busy") {
		return fmt.Errorf("unmount %s: %w", mp, err)
	}
	if derr := Detach(mp); derr != nil {
		return fmt.Errorf("unmount %s: busy, and lazy unmount failed: %w", mp, derr)
	}
	f.forgetServer()
	f.log.Warn("mount point busy: detached lazily", "mountpoint", mp)
	return ErrDetached
}

func (f *FS) forgetServer() {
	f.mu.Lock()
	f.srv, f.mountpoint = nil, ""
	f.mu.Unlock()
}

// ReapOrphans deletes every inode left with no links (its staged data, rows,
// key record; objects go to the delete queue). Mount runs it before serving.
func (f *FS) ReapOrphans(ctx context.Context) error {
	inos, err := f.cat.Orphans(ctx)
	if err != nil {
		return fmt.Errorf("list orphaned inodes: %w", err)
	}
	for _, ino := range inos {
		if err := f.reap(ctx, ino); err != nil {
			return err
		}
	}
	if len(inos) > 0 {
		f.log.Info("reaped inodes left unlinked by an earlier run", "count", len(inos))
	}
	return nil
}

// InvalidateCaches drops the kernel's cached pages of every regular file
// the kernel knows (after `coffer lock` wiped the keys, plaintext must not
// stay in the page cache): open ones, and closed ones whose pages
// FOPEN_KEEP_CACHE kept. It returns how many files it asked the kernel
// about. Call it from a goroutine that holds no lock of this package and
// is not serving a FUSE request (the kernel may wait for requests to end).
func (f *FS) InvalidateCaches() int {
	seen := map[uint64]bool{}
	var nodes []*gofs.Inode
	f.openMu.Lock()
	for ino, s := range f.open {
		if n := s.node.Load(); n != nil && !seen[ino] {
			seen[ino] = true
			nodes = append(nodes, &n.Inode)
		}
	}
	f.openMu.Unlock()
	f.walkKnown(func(_ *gofs.Inode, _ string, ch *gofs.Inode) {
		if ino := ch.StableAttr().Ino; ch.Mode()&syscall.S_IFMT == syscall.S_IFREG && !seen[ino] {
			seen[ino] = true
			nodes = append(nodes, ch)
		}
	})
	for _, n := range nodes {
		n.NotifyContent(0, 0)
	}
	return len(nodes)
}

// walkKnown calls fn for every non-directory entry (parent, name, child) in go-fuse's tree
// under the root: every inode the kernel holds a reference to is there (one node per
// inode, hard links merged), except open files whose every name is gone (see f.open).
func (f *FS) walkKnown(fn func(parent *gofs.Inode, name string, child *gofs.Inode)) {
	dirs := []*gofs.Inode{f.root.EmbeddedInode()}
	visited := map[*gofs.Inode]bool{}
	for len(dirs) > 0 {
		d := dirs[len(dirs)-1]
		dirs = dirs[:len(dirs)-1]
		if visited[d] {
			continue
		}
		visited[d] = true
		for name, ch := range d.Children() {
			if ch.IsDir() {
				dirs = append(dirs, ch)
			} else {
				fn(d, name, ch)
			}
		}
	}
}

// invalidateTimeout bounds how long Lock waits for the kernel to drop
// cached pages.
const invalidateTimeout = 10 * time.Second

// Lock is `coffer lock`: it locks the volume's keys (cached DEKs zeroed,
// provider wiped: HSM sessions closed, passphrase keys zeroed), wipes every
// key and cached plaintext block of the data path, and drops the kernel's
// page cache of every file, in that order. From then on opening a regular
// file, reading, writing, fallocate, truncate, fsync of a file and creating
// one fail with EKEYREVOKED, also through descriptors opened before; names
// and attributes keep working (ls, stat, mkdir, rename, unlink); staged
// writes stay staged (ciphertext) and upload after Unlock. It returns how
// long it took. The keys are wiped even when it returns an error (an HSM
// that did not close in time, a kernel that did not drop its pages in
// time). Call it from outside FUSE requests (the control socket). Locking
// a locked file system wipes again and succeeds.
func (f *FS) Lock() (time.Duration, error) {
	start := time.Now()
	var errs []error
	// The keyring zeroes its cached keys and refuses new operations at once, then waits
	// for calls in flight before it wipes the provider. An HSM call that hangs must not
	// keep the data path's keys and the page cache alive: wait a bounded time.
	locked := make(chan error, 1)
	go func() { locked <- f.vol.Lock() }()
	select {
	case err := <-locked:
		if err != nil {
			errs = append(errs, err)
		}
	case <-time.After(invalidateTimeout):
		errs = append(errs, fmt.Errorf("lock: a key provider call still running after %s holds the provider open; "+
			"cached keys are wiped, the provider is wiped when that call returns", invalidateTimeout))
		f.log.Error("lock: the key provider is busy (a hung HSM call?); wiping the rest now", "timeout", invalidateTimeout)
	}
	f.data.WipeKeys()
	// Plaintext lives in the page cache too. NotifyContent may block while
	// the kernel waits for reads in progress (they fail fast now), so it
	// runs on its own goroutine, bounded.
	done := make(chan int, 1)
	go func() { done <- f.InvalidateCaches() }()
	if f.opt.Scrub != nil {
		f.opt.Scrub()
	}
	select {
	case n := <-done:
		f.log.Info("volume locked: keys wiped, page cache dropped", "files", n, "took", time.Since(start))
	case <-time.After(invalidateTimeout):
		errs = append(errs, fmt.Errorf("lock: the kernel did not drop cached pages within %s", invalidateTimeout))
		f.log.Error("volume locked, but the kernel did not drop cached pages in time", "timeout", invalidateTimeout)
	}
	return time.Since(start), errors.Join(errs...)
}

// Unlock is `coffer unlock`: it opens the volume's key provider again with
// the PIN or passphrase in secret (not kept), exactly as mounting does, and
// restarts the uploads that the lock paused. A wrong secret fails with the
// same error as at mount (keys.ErrWrongPIN, keys.ErrWrongPassphrase) and
// leaves the file system locked. Unlocking an unlocked file system does
// nothing.
func (f *FS) Unlock(ctx context.Context, secret []byte) error {
	if err := f.vol.Unlock(ctx, secret); err != nil {
		return err
	}
	f.data.Resume()
	f.log.Info("volume unlocked")
	return nil
}

// Locked reports whether the file system is locked (coffer lock).
func (f *FS) Locked() bool { return f.vol.Locked() }
