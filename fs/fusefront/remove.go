package fusefront

// Removing names: unlink, rmdir, rename, and reaping what they leave without a name.

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"coffer/fs/meta"
)

func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if ch := n.GetChild(name); ch != nil {
		if errno, done := f.unlinkIdle(c, n.ino(), name, ch.StableAttr().Ino); done {
			return errno
		}
	}
	in, err := f.cat.Unlink(c, n.ino(), []byte(name), nowNs(), false)
	if err != nil {
		return f.errno("unlink", n.ino(), err)
	}
	if in.Nlink == 0 {
		f.unlinked(c, in.Ino)
	}
	return 0
}

// unlinkIdle removes name and, when that was the last link of a file nothing
// holds (not open, nothing staged), deletes the file in the same catalog
// transaction: one commit per rm instead of two. ino is the kernel's idea of
// the child; done is false when the file is in use, so the caller takes the
// general path.
func (f *FS) unlinkIdle(ctx context.Context, parent uint64, name string, ino uint64) (syscall.Errno, bool) {
	var in meta.Inode
	var reaped bool
	s := f.pin(ino)
	inUse, err := func() (bool, error) {
		s.mu.Lock() // no open can start while we decide
		defer s.mu.Unlock()
		if s.opens > 0 || !f.data.Idle(ino) {
			return true, nil
		}
		return false, f.cat.Update(ctx, func(t *meta.Tx) error {
			var err error
			reaped = false
			now := nowNs()
			if in, err = t.Unlink(parent, []byte(name), now, false); err != nil || in.Nlink > 0 || in.Ino != ino {
				return err
			}
			if staged, err := t.HasUploads(ino); err != nil || staged {
				return err
			}
			reaped = true
			_, err = t.Reap(ino, now)
			return err
		})
	}()
	f.unpin(ino, s)
	switch {
	case inUse:
		return 0, false
	case err != nil:
		return f.errno("unlink", parent, err), true
	case reaped:
		if in.FileID != [16]byte{} {
			f.vol.Keys().Forget(in.FileID)
		}
	case in.Nlink == 0:
		f.unlinked(ctx, in.Ino) // staged uploads, or the kernel's child was stale
	}
	return 0, true
}

func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	known := n.GetChild(name) != nil
	in, err := f.cat.Rmdir(c, n.ino(), []byte(name), nowNs(), false)
	if err != nil {
		return f.errno("rmdir", n.ino(), err)
	}
	f.removedDir(c, in.Ino, known)
	return 0
}

// removedDir reaps a removed directory now if the kernel does not know it,
// else when the kernel forgets it (a process may still have it as its
// working directory: stat and readdir keep working there, as on ext4).
func (f *FS) removedDir(ctx context.Context, ino uint64, known bool) {
	f.orphanMu.Lock()
	f.orphans[ino] = struct{}{}
	f.orphanMu.Unlock()
	if !known {
		f.reapOrphan(ctx, ino)
	}
}

// reapOrphan reaps an inode on the orphan list (idempotent).
func (f *FS) reapOrphan(ctx context.Context, ino uint64) {
	if err := f.reapUnlessOpen(ctx, ino); err != nil {
		f.log.Error("could not delete a removed inode; the next mount retries", "ino", ino, "err", err)
		return
	}
	f.orphanMu.Lock()
	delete(f.orphans, ino)
	f.orphanMu.Unlock()
}

func (n *Node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	f, c := n.fsys, bg(ctx)
	if f.opt.ReadOnly {
		return syscall.EROFS
	}
	if flags&^(meta.RenameNoReplace|meta.RenameExchange) != 0 {
		return syscall.EINVAL // RENAME_WHITEOUT is for overlay file systems
	}
	np := newParent.EmbeddedInode()
	known := np.GetChild(newName) != nil
	replaced, err := f.cat.Rename(c, n.ino(), []byte(name), np.StableAttr().Ino, []byte(newName), flags, nowNs(), false)
	if err != nil {
		return f.errno("rename", n.ino(), err)
	}
	if replaced != nil && replaced.Nlink == 0 {
		if replaced.IsDir() {
			f.removedDir(c, replaced.Ino, known)
		} else {
			f.unlinked(c, replaced.Ino)
		}
	}
	return 0
}

// OnForget runs when the kernel drops its last reference to the node: a
// removed directory can go now. (It also runs for live inodes, e.g. after
// drop_caches: those are not on the orphan list.)
func (n *Node) OnForget() {
	if n.IsRoot() {
		return
	}
	f, ino := n.fsys, n.ino()
	f.orphanMu.Lock()
	_, orphan := f.orphans[ino]
	f.orphanMu.Unlock()
	if orphan {
		// Inline (rare: removed directories only), so that nothing runs
		// after the server stops and the caller closes the volume.
		f.reapOrphan(context.Background(), ino)
	}
}
