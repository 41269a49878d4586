package fusefront

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"coffer/fs/meta"
)

// relatimeWindow is how old atime may get before a read refreshes it.
const relatimeWindow = 24 * 3600 * 1e9

var (
	_ gofs.NodeOpener    = (*Node)(nil)
	_ gofs.NodeReader    = (*Node)(nil)
	_ gofs.NodeWriter    = (*Node)(nil)
	_ gofs.NodeFlusher   = (*Node)(nil)
	_ gofs.NodeFsyncer   = (*Node)(nil)
	_ gofs.NodeReleaser  = (*Node)(nil)
	_ gofs.NodeAllocater = (*Node)(nil)
	_ gofs.NodeLseeker   = (*Node)(nil)
)

// openState is the open-file table entry of one inode.
type openState struct {
	pins int // guarded by FS.openMu: the entry lives while pins > 0

	mu       sync.Mutex           // serializes open, last release and reaping of the inode
	opens    int                  // handles open (guarded by mu)
	unlinked bool                 // its last link went while open: reap at last release (mu)
	node     atomic.Pointer[Node] // a node of the inode, for cache invalidation

	// priv caches mode & (S_ISUID|S_ISGID|S_IXGRP), so that a write knows
	// without a catalog read whether it must clear suid/sgid.
	priv atomic.Uint32

	// revoked: the file is being (or was) shredded on the live mount; every
	// handle on it fails with EKEYREVOKED (see RevokeFiles).
	revoked atomic.Bool
}

func (f *FS) pin(ino uint64) *openState {
	f.openMu.Lock()
	defer f.openMu.Unlock()
	s := f.open[ino]
	if s == nil {
		s = &openState{}
		if _, ok := f.revoked[ino]; ok {
			s.revoked.Store(true)
		}
		f.open[ino] = s
	}
	s.pins++
	return s
}

func (f *FS) unpin(ino uint64, s *openState) {
	f.openMu.Lock()
	defer f.openMu.Unlock()
	s.pins--
	if s.pins == 0 {
		delete(f.open, ino)
	}
}

// state returns ino's entry if it has one (it may have no handles).
func (f *FS) state(ino uint64) *openState {
	f.openMu.Lock()
	defer f.openMu.Unlock()
	return f.open[ino]
}

// handle is one open file description.
type handle struct {
	ino  uint64
	file dataFile
	st   *openState
}

const privMask = syscall.S_ISUID | syscall.S_ISGID | syscall.S_IXGRP

func needsKill(priv uint32) bool { return killPriv(priv) != priv }

// openFile opens a handle on regular file ino; created says it was just
// made by this request (no atime to update).
func (f *FS) openFile(ctx context.Context, node *Node, ino uint64, flags uint32, created bool) (*handle, uint32, syscall.Errno) {
	if f.opt.ReadOnly && (flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0) {
		return nil, 0, syscall.EROFS
	}
	s := f.pin(ino)
	s.mu.Lock()
	in, err := f.cat.GetInode(ctx, ino)
	switch {
	case err != nil:
	case in.IsDir():
		err = syscall.EISDIR
	case !in.IsRegular():
		err = syscall.EINVAL
	case in.Nlink == 0 && s.opens == 0:
		err = syscall.ENOENT // unlinked and being reaped
	case s.revoked.Load():
		err = syscall.EKEYREVOKED // being shredded: its key is gone
	case f.vol.Locked():
		err = syscall.EKEYREVOKED // coffer lock: contents unreadable until unlock
	}
	var file dataFile
	if err == nil {
		file, err = f.data.Open(ctx, ino)
	}
	if err != nil {
		s.mu.Unlock()
		f.unpin(ino, s)
		return nil, 0, f.errno("open", ino, err)
	}
	s.opens++
	s.priv.Store(in.Mode & privMask)
	if node != nil {
		s.node.Store(node)
	}
	s.mu.Unlock()
	if !created && flags&syscall.O_ACCMODE != syscall.O_WRONLY && f.touchAtime(ctx, &in) && node != nil {
		// The kernel keeps atime as we last told it: drop its cached
		// attributes. Offset -1 invalidates attributes only, which takes
		// no lock in the kernel, so it is safe inside this request (page
		// invalidation here could deadlock).
		node.NotifyContent(-1, 0)
	}
	// KEEP_CACHE: every change goes through this kernel, so pages cached by
	// an earlier open are still right (without it every open drops them).
	return &handle{ino: ino, file: file, st: s}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *Node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	h, fuseFlags, errno := n.fsys.openFile(bg(ctx), n, n.ino(), flags, false)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, fuseFlags, 0
}

func (n *Node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	if n.fsys.vol.Locked() || h.st.revoked.Load() {
		return nil, syscall.EKEYREVOKED
	}
	c := bg(ctx)
	got, err := h.file.ReadAt(c, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, n.fsys.errno("read", h.ino, err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// touchAtime is relatime, applied when a file is opened for reading (its
// reads may all come from the page cache and never reach us): atime becomes
// now only if it is not after mtime and ctime, or is a day old. So a catalog
// write happens once after each change of the file, not on every read.
func (f *FS) touchAtime(ctx context.Context, in *meta.Inode) bool {
	if f.opt.ReadOnly {
		return false
	}
	now := nowNs()
	mtime := in.Mtime
	if _, m, ok := f.data.Attr(in.Ino); ok {
		mtime = max(mtime, m)
	}
	if in.Atime > mtime && in.Atime > in.Ctime && now-in.Atime < relatimeWindow {
		return false
	}
	err := f.cat.Update(ctx, func(t *meta.Tx) error {
		cur, err := t.GetInode(in.Ino)
		if err != nil {
			return err
		}
		ctime := cur.Ctime // atime alone does not change ctime
		_, err = t.SetAttr(in.Ino, meta.AttrChange{Atime: &now, Ctime: &ctime}, now)
		return err
	})
	if err != nil {
		if !errors.Is(err, syscall.ENOENT) {
			f.log.Warn("could not update atime", "ino", in.Ino, "err", err)
		}
		return false
	}
	return true
}

// clearPriv drops suid/sgid after a write by someone other than root (the
// kernel leaves it to us: CAP_HANDLE_KILLPRIV_V2).
func (f *FS) clearPriv(ctx context.Context, h *handle) {
	if !needsKill(h.st.priv.Load()) {
		return
	}
	if uid, _ := caller(ctx); uid == 0 {
		return
	}
	err := f.cat.Update(ctx, func(t *meta.Tx) error {
		in, err := t.GetInode(h.ino)
		if err != nil {
			return err
		}
		m := killPriv(in.Mode) & 0o7777
		if m != in.Mode&0o7777 {
			if _, err := t.SetAttr(h.ino, meta.AttrChange{Mode: &m}, nowNs()); err != nil {
				return err
			}
		}
		h.st.priv.Store(m & privMask)
		return nil
	})
	if err != nil {
		f.log.Error("could not clear suid/sgid after a write", "ino", h.ino, "err", err)
	}
}

func (n *Node) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	f := n.fsys
	if f.opt.ReadOnly {
		return 0, syscall.EROFS
	}
	h, ok := fh.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	if f.vol.Locked() || h.st.revoked.Load() {
		return 0, syscall.EKEYREVOKED
	}
	c := bg(ctx)
	f.clearPriv(c, h)
	// The kernel sends absolute offsets, O_APPEND included.
	w, err := h.file.WriteAt(c, data, off)
	if err != nil && w == 0 {
		return 0, f.errno("write", h.ino, err)
	}
	return uint32(w), 0
}

func (n *Node) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok || h.st.revoked.Load() {
		return 0 // a shredded file has nothing left to record; close(2) succeeds
	}
	if err := h.file.Flush(bg(ctx)); err != nil {
		return n.fsys.errno("flush", h.ino, err) // close(2) returns it
	}
	return 0
}

func (n *Node) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if h, ok := fh.(*handle); ok {
		if f.vol.Locked() || h.st.revoked.Load() {
			return syscall.EKEYREVOKED // staged data cannot be uploaded until unlock
		}
		if err := h.file.Sync(c); err != nil {
			return f.errno("fsync", h.ino, err)
		}
		return 0
	}
	// A directory (or a handle-less node): make the namespace durable.
	if err := f.cat.Sync(c); err != nil {
		return f.errno("fsync", n.ino(), err)
	}
	return 0
}

func (n *Node) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok {
		return 0
	}
	f, c := n.fsys, bg(ctx)
	if err := h.file.Release(c); err != nil {
		f.errno("release", h.ino, err) // logged; release has no caller to tell
	}
	s := h.st
	s.mu.Lock()
	s.opens--
	reap := s.opens == 0 && s.unlinked
	s.mu.Unlock()
	if reap {
		if err := f.reapUnlessOpen(c, h.ino); err != nil {
			f.log.Error("could not delete an unlinked file after its last close; the next mount retries", "ino", h.ino, "err", err)
		}
	}
	f.unpin(h.ino, s)
	return 0
}

func (n *Node) Allocate(ctx context.Context, fh gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	f := n.fsys
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	h, ok := fh.(*handle)
	if !ok {
		return syscall.EBADF
	}
	if off > 1<<62 || size > 1<<62 {
		return syscall.EFBIG
	}
	if f.vol.Locked() || h.st.revoked.Load() {
		return syscall.EKEYREVOKED
	}
	c := bg(ctx)
	f.clearPriv(c, h)
	if err := h.file.Allocate(c, int64(off), int64(size), mode); err != nil {
		return f.errno("fallocate", h.ino, err)
	}
	return 0
}

func (n *Node) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	if h.st.revoked.Load() {
		return 0, syscall.EKEYREVOKED
	}
	if off > 1<<63-1 {
		return 0, syscall.ENXIO
	}
	pos, err := h.file.Seek(bg(ctx), int64(off), int(whence))
	if err != nil {
		return 0, n.fsys.errno("lseek", h.ino, err)
	}
	return uint64(pos), 0
}

// ---- unlinked files ----

// unlinked handles an inode whose last link just went: reaped now if no
// handle is open, else at the last release.
func (f *FS) unlinked(ctx context.Context, ino uint64) {
	s := f.pin(ino)
	s.mu.Lock()
	open := s.opens > 0
	if open {
		s.unlinked = true
	}
	s.mu.Unlock()
	f.unpin(ino, s)
	if !open {
		if err := f.reapUnlessOpen(ctx, ino); err != nil {
			f.log.Error("could not delete an unlinked file; the next mount retries", "ino", ino, "err", err)
		}
	}
}

// reapUnlessOpen deletes inode ino if it has no links and no open handle:
// its staged data first, then its rows (objects queue for deletion).
func (f *FS) reapUnlessOpen(ctx context.Context, ino uint64) error {
	s := f.pin(ino)
	defer f.unpin(ino, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opens > 0 {
		s.unlinked = true
		return nil
	}
	return f.reap(ctx, ino)
}

// reap deletes ino if it has no links (the caller knows no handle is open).
func (f *FS) reap(ctx context.Context, ino uint64) error {
	in, err := f.cat.GetInode(ctx, ino)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	if in.Nlink > 0 || ino == meta.RootIno {
		return nil
	}
	if in.IsRegular() {
		if err := f.data.Discard(ctx, ino); err != nil {
			return err
		}
	}
	if _, err := f.cat.Reap(ctx, ino, nowNs()); err != nil {
		return err
	}
	if in.FileID != [16]byte{} {
		f.vol.Keys().Forget(in.FileID)
	}
	return nil
}
