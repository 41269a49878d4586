package content

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"coffer/fs/meta"
)

// Recover picks up what an earlier run left staged (a crash, or an unmount
// while the remote was down): every staging file named in the catalog's
// upload queue is attached to its chunk and scheduled for upload now; the
// file sizes grow to cover the staged writes. Staging files the queue does
// not name are removed (they were created just before a crash and hold
// nothing that was recorded). It returns once the data is attached; the
// uploads run in the background (SyncAll waits for them). Call it at
// mount, before serving requests.
func (s *DataPath) Recover(ctx context.Context) error {
	ups, err := s.cat.ListUploads(ctx, "", 0, 0)
	if err != nil {
		return metaErr(err, "recover staged data: read the upload queue")
	}
	known := make(map[string]bool, len(ups))
	recovered := 0
	var firstErr error
	for _, u := range ups {
		known[u.Staging] = true
		if u.State == meta.UploadLost {
			// Staged on a lost host: kept, so that the chunk reads EIO until fsck --repair.
			if _, err := s.cat.GetInode(ctx, u.Ino); Errno(err) == syscall.ENOENT {
				_ = s.cat.CompleteUpload(ctx, u.ID)
				continue
			}
			s.hasLost.Store(true)
			continue
		}
		s.mu.Lock()
		inUse := s.stgNames[u.Staging]
		s.mu.Unlock()
		if inUse {
			continue
		}
		ok, err := s.recoverUpload(ctx, u)
		if err != nil {
			s.log.Error("content: cannot recover a staged chunk now; it stays staged", "ino", u.Ino, "chunk", u.Index,
				"staging", u.Staging, "err", err)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if ok {
			recovered++
		}
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return localErr(err, "recover staged data: read %s", s.dir)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, stagingSuffix) || known[name] {
			continue
		}
		s.mu.Lock()
		inUse := s.stgNames[name]
		s.mu.Unlock()
		if inUse {
			continue
		}
		s.log.Info("content: removing a staging file no upload refers to", "staging", name)
		_ = os.Remove(filepath.Join(s.dir, name))
	}
	if recovered > 0 {
		s.log.Info("content: recovered staged data from an earlier run; uploading it", "chunks", recovered,
			"bytes", s.staged.Load())
	}
	return firstErr
}

// recoverUpload attaches one queued staging file to its chunk. It reports
// whether data was recovered; rows that cannot mean anything any more (the
// inode is gone, the file is missing or unreadable) are cleared.
func (s *DataPath) recoverUpload(ctx context.Context, u meta.Upload) (bool, error) {
	clearRow := func(why string, level func(string, ...any), extra ...any) (bool, error) {
		level("content: dropping a queued staging file: "+why,
			append([]any{"ino", u.Ino, "chunk", u.Index, "staging", u.Staging}, extra...)...)
		if _, err := parseStagingName(u.Staging); err == nil {
			_ = os.Remove(filepath.Join(s.dir, u.Staging))
		}
		if err := s.cat.CompleteUpload(ctx, u.ID); err != nil && !errors.Is(err, syscall.ENOENT) {
			return false, metaErr(err, "recover: clear upload %d", u.ID)
		}
		return false, nil
	}
	if _, err := parseStagingName(u.Staging); err != nil {
		return clearRow("bad staging file name", s.log.Error)
	}
	if _, err := os.Stat(filepath.Join(s.dir, u.Staging)); errors.Is(err, os.ErrNotExist) {
		return clearRow("the file is missing", s.log.Warn)
	}
	if u.Index < 0 || u.Index > MaxFileSize/s.layout.ChunkSize {
		return clearRow("impossible chunk index", s.log.Error)
	}
	f, err := s.acquire(ctx, u.Ino, false)
	if err != nil {
		switch Errno(err) {
		case syscall.ENOENT, syscall.EISDIR, syscall.EINVAL:
			return clearRow("the inode is gone or not a regular file", s.log.Warn)
		}
		return false, err
	}
	defer s.drop(f, false)
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.chunk(u.Index)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensureLoaded(ctx); err != nil {
		return false, err
	}
	s.mu.Lock()
	s.stgNames[u.Staging] = true
	s.mu.Unlock()
	st, err := s.openStaging(c, u)
	if err != nil {
		s.mu.Lock()
		delete(s.stgNames, u.Staging)
		s.mu.Unlock()
		// Without the header nothing in the file can be trusted or placed.
		return clearRow("it cannot be opened with the file's key (damaged, or the key record changed)", s.log.Error, "err", err)
	}
	C := s.layout.ChunkSize
	if c.stg == nil {
		c.stg = st
		s.staged.Add(st.n * s.slot)
		f.dirtyChunks.Add(1)
	} else {
		// Two staging files for one chunk (should not happen): the later
		// one's blocks win; fold them into the attached one.
		bp := getSlotBuf(int64(s.layout.BlockSize))
		for b := range s.layout.BlocksPerChunk() {
			if !st.has(b) {
				continue
			}
			p, err := st.readBlock((*bp)[:0], b)
			if err != nil {
				continue
			}
			was := c.stg.has(b)
			if err := c.stg.writeBlock(b, p); err != nil {
				putSlotBuf(bp)
				return false, localErr(err, "recover inode %d chunk %d", f.ino, c.idx)
			}
			if !was {
				s.staged.Add(s.slot)
			}
		}
		clear(*bp)
		putSlotBuf(bp)
		c.stg.hdr.limit = min(c.stg.hdr.limit, st.hdr.limit)
		c.stg.hdr.extent = max(c.stg.hdr.extent, st.hdr.extent)
		st.close()
		_ = os.Remove(st.path)
		s.mu.Lock()
		delete(s.stgNames, st.name)
		s.mu.Unlock()
		if err := s.cat.CompleteUpload(ctx, u.ID); err != nil {
			return false, metaErr(err, "recover: clear upload %d", u.ID)
		}
		st = c.stg
	}
	// The header's limit masks a base object that a truncation cut (its
	// rewrite never made it out); its extent says how long the file grew.
	if c.base != nil {
		c.baseLimit = min(c.baseLimit, st.hdr.limit)
	}
	if err := st.writeHeader(); err != nil {
		return false, localErr(err, "recover inode %d chunk %d", f.ino, c.idx)
	}
	f.growSize(u.Index*C + min(st.hdr.extent, C))
	c.gen++
	s.up.touched(c)
	s.up.expedite(c)
	return true, nil
}

// DiscardStaged drops what the upload queue holds for the files in inos while no data path
// runs on the volume (an offline shred): each row's staging file in stagingDir, then the
// row. It returns how many rows went. A live mount drops them through the data path instead
// (RevokeFiles).
func DiscardStaged(ctx context.Context, cat *meta.Catalog, stagingDir string, inos map[uint64]bool) (int, error) {
	ups, err := cat.ListUploads(ctx, "", 0, 0)
	if err != nil {
		return 0, metaErr(err, "discard staged data: read the upload queue")
	}
	n := 0
	for _, u := range ups {
		if !inos[u.Ino] {
			continue
		}
		if _, err := parseStagingName(u.Staging); err == nil {
			_ = os.Remove(filepath.Join(stagingDir, u.Staging))
		}
		if err := cat.CompleteUpload(ctx, u.ID); err != nil && !errors.Is(err, syscall.ENOENT) {
			return n, metaErr(err, "discard staged data: clear upload %d", u.ID)
		}
		n++
	}
	return n, nil
}
