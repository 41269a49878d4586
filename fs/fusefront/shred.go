package fusefront

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// The node layer's part in crypto-shredding files on a live mount (coffer shred while
// mounted, run by the daemon through fs/keyops with FS as its keyops.LiveFS):
//
//  1. RevokeFiles, before the key records go: every descriptor still open on the file fails
//     from then on with EKEYREVOKED ("Key has been revoked": read, write, fsync, fallocate,
//     lseek, fstat; close succeeds), and so does a new open; the data path drops the file's
//     key, ciphers, staged writes and cached plaintext (content.DataPath.Revoke); the keyring
//     forgets its DEK; the kernel drops the file's cached pages, so that no read is served
//     from them (FOPEN_KEEP_CACHE would otherwise).
//  2. The caller deletes the key record, every directory entry and the inode in one catalog
//     transaction.
//  3. FilesRemoved: the kernel forgets every cached name of the files (NotifyDelete), so
//     the next lookup asks the catalog and finds nothing.

// revoker is the data path's part (content.DataPath.Revoke).
type revoker interface {
	Revoke(ctx context.Context, ino uint64) error
}

// notifyTimeout bounds how long a shred waits for the kernel to drop pages or names.
const notifyTimeout = 10 * time.Second

// RevokeFiles makes regular files inos unusable on this mount before their key records are
// destroyed (step 1 above). It is idempotent. Call it from outside FUSE requests (the
// control socket): the kernel may wait for requests in progress on the files.
func (f *FS) RevokeFiles(ctx context.Context, inos []uint64) error {
	f.openMu.Lock()
	for _, ino := range inos {
		f.revoked[ino] = struct{}{}
		if s := f.open[ino]; s != nil {
			s.revoked.Store(true)
		}
	}
	f.openMu.Unlock()
	var errs []error
	for _, ino := range inos {
		in, err := f.cat.GetInode(ctx, ino)
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
			continue
		}
		if r, ok := f.data.(revoker); ok {
			if err := r.Revoke(ctx, ino); err != nil {
				errs = append(errs, fmt.Errorf("inode %d: %w", ino, err))
			}
		} else if err := f.data.Discard(ctx, ino); err != nil {
			errs = append(errs, fmt.Errorf("inode %d: %w", ino, err))
		}
		if in.FileID != [16]byte{} {
			f.vol.Keys().Forget(in.FileID)
		}
	}
	// The kernel's cached pages: the file's node wherever go-fuse knows it.
	nodes := f.knownNodes(inos)
	if err := f.notifyBounded("drop cached pages", func() {
		for _, e := range nodes {
			e.child.NotifyContent(0, 0)
		}
	}); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("revoke open files: %w", errors.Join(errs...))
	}
	return nil
}

// FilesRemoved tells the kernel that every name of inos is gone (step 3 above) and forgets
// them in go-fuse's tree. Failures are logged: the names expire with the entry timeout.
func (f *FS) FilesRemoved(inos []uint64) {
	entries := f.knownNodes(inos)
	err := f.notifyBounded("drop cached names", func() {
		for _, e := range entries {
			if e.parent == nil {
				continue
			}
			e.parent.RmChild(e.name)
			if errno := e.parent.NotifyDelete(e.name, e.child); errno != 0 && errno != syscall.ENOENT {
				f.log.Warn("shred: the kernel did not drop a cached name", "ino", e.child.StableAttr().Ino, "errno", errno.Error())
			}
		}
	})
	if err != nil {
		f.log.Warn("shred: "+err.Error(), "files", len(inos))
	}
	f.openMu.Lock()
	for _, ino := range inos {
		delete(f.revoked, ino) // the catalog has no such inode any more: opens fail with ENOENT
	}
	f.openMu.Unlock()
}

// knownEntry is one place go-fuse knows a node: parent/name -> child (parent nil: only the
// node, from the open-file table).
type knownEntry struct {
	parent *gofs.Inode
	name   string
	child  *gofs.Inode
}

// knownNodes finds every name under which go-fuse (so the kernel) knows one of inos, and
// their nodes, walking go-fuse's tree from the root once.
func (f *FS) knownNodes(inos []uint64) []knownEntry {
	want := make(map[uint64]bool, len(inos))
	for _, ino := range inos {
		want[ino] = true
	}
	var out []knownEntry
	seen := map[*gofs.Inode]bool{}
	f.openMu.Lock()
	for ino, s := range f.open {
		if n := s.node.Load(); n != nil && want[ino] {
			out = append(out, knownEntry{child: &n.Inode})
			seen[&n.Inode] = true
		}
	}
	f.openMu.Unlock()
	f.walkKnown(func(d *gofs.Inode, name string, ch *gofs.Inode) {
		if want[ch.StableAttr().Ino] {
			out = append(out, knownEntry{parent: d, name: name, child: ch})
		}
	})
	// A node found by name needs no separate entry for its pages.
	kept := out[:0]
	for _, e := range out {
		if e.parent == nil {
			dup := false
			for _, o := range out {
				if o.parent != nil && o.child == e.child {
					dup = true
					break
				}
			}
			if dup {
				continue
			}
		}
		kept = append(kept, e)
	}
	return kept
}

// notifyBounded runs fn (kernel notifications) on its own goroutine and waits up to
// notifyTimeout: the kernel may hold a notification until requests in progress end.
func (f *FS) notifyBounded(what string, fn func()) error {
	f.mu.Lock()
	mounted := f.srv != nil
	f.mu.Unlock()
	if !mounted {
		return nil // not mounted (tests of the node layer alone): the kernel caches nothing
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return nil
	case <-time.After(notifyTimeout):
		return fmt.Errorf("the kernel did not %s within %s", what, notifyTimeout)
	}
}
