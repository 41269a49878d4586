package content

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"coffer/crypto/format"
	"coffer/remote"
)

// loadBlocks returns the plaintext of blocks need (ascending) of base
// object b of file f: from the cache, from a fetch already in flight, or
// with one ranged GET covering the blocks nobody is fetching.
func (s *DataPath) loadBlocks(ctx context.Context, f *File, b *baseObj, need []int64) (map[int64][]byte, error) {
	out := make(map[int64][]byte, len(need))
	type wait struct {
		block int64
		fl    *flight
	}
	var mine []int64
	var waits []wait
	for _, i := range need {
		data, fl, own := s.cache.getOrClaim(blockKey{b.id, i})
		switch {
		case data != nil:
			out[i] = data
		case own:
			mine = append(mine, i)
		default:
			waits = append(waits, wait{i, fl})
		}
	}
	if len(mine) > 0 {
		err := s.fetch(ctx, f, b, mine[0], mine[len(mine)-1], out)
		for _, i := range mine {
			s.cache.finish(blockKey{b.id, i})
		}
		if err != nil {
			return nil, err
		}
	}
	// A fetch someone else claimed is waited for at most ReadTimeout (its own
	// deadline): past that it is stuck, or waits for a lock this caller
	// holds, and the blocks are fetched here instead of hanging.
	var again []int64
	var late <-chan time.Time
	if len(waits) > 0 {
		t := time.NewTimer(s.opt.ReadTimeout)
		defer t.Stop()
		late = t.C
	}
	for _, w := range waits {
		if late != nil {
			select {
			case <-w.fl.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-late:
				late = nil
				s.log.Warn("content: a fetch of blocks this read needs did not finish in time; fetching them again",
					"ino", f.ino, "object", b.name(), "block", w.block, "waited", s.opt.ReadTimeout)
			}
		}
		if data, ok := s.cache.get(blockKey{b.id, w.block}); ok {
			out[w.block] = data
		} else if _, ok := out[w.block]; !ok {
			again = append(again, w.block) // that fetch failed, or the block was evicted already
		}
	}
	if len(again) > 0 {
		if err := s.fetch(ctx, f, b, again[0], again[len(again)-1], out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// fetch GETs sealed blocks first..last of base object b in one ranged
// request, authenticates each against the catalog's binding, and caches
// and returns their plaintext.
func (s *DataPath) fetch(ctx context.Context, f *File, b *baseObj, first, last int64, out map[int64][]byte) error {
	l := s.layout
	L := b.row.Length
	off, n, err := l.CiphertextRange(L, first, last)
	if err != nil {
		return fmt.Errorf("object %s: %w", b.name(), err)
	}
	gen := s.cache.gen.Load() // before decrypting: a wipe after it keeps these blocks out
	ciph, err := f.cipherFor(ctx, b)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.opt.ReadTimeout)
	ct, err := s.remote.GetRange(rctx, b.name(), off, n)
	cancel()
	if err != nil {
		return err
	}
	if int64(len(ct)) != n {
		return &format.AuthError{Object: b.id, Block: first, Reason: fmt.Sprintf("got %d bytes of blocks %d..%d, want %d", len(ct), first, last, n)}
	}
	lastBlock, _ := l.LastBlock(L)
	for i := first; i <= last; i++ {
		blen, err := l.BlockLen(L, i)
		if err != nil {
			return err
		}
		sb := blen + format.TagSize
		pt, err := ciph.OpenBlock(make([]byte, 0, blen), ct[:sb], i, i == lastBlock)
		if err != nil {
			return err
		}
		ct = ct[sb:]
		out[i] = pt
		s.cache.put(blockKey{b.id, i}, pt, gen)
	}
	return nil
}

// readFailed turns a failed read of base object b into EIO, logging an
// ERROR line that names the object and the inode. Only a cancelled request
// is quiet (EINTR).
func (s *DataPath) readFailed(ctx context.Context, f *File, chunk int64, b *baseObj, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return ioErr(ctx, err, "read inode %d chunk %d", f.ino, chunk)
	}
	if s.keyLocked(err) {
		return errLocked("read inode %d chunk %d", f.ino, chunk) // coffer lock: nothing wrong with the object
	}
	obj := "(none)"
	if b != nil {
		obj = b.name()
	}
	switch {
	case errors.Is(err, format.ErrAuth):
		s.log.Error("content: chunk object failed authentication (tampered, swapped, truncated or rolled back); refusing its data",
			"object", obj, "ino", f.ino, "chunk", chunk, "err", err)
	case errors.Is(err, remote.ErrNotFound):
		s.log.Error("content: chunk object is missing from the remote (deleted?)",
			"object", obj, "ino", f.ino, "chunk", chunk, "err", err)
	case errors.Is(err, io.ErrUnexpectedEOF) && !remote.IsTransient(err):
		s.log.Error("content: chunk object is shorter than the catalog says (truncated)",
			"object", obj, "ino", f.ino, "chunk", chunk, "err", err)
	case keyGone(err):
		s.log.Warn("content: read after the file's keys were wiped", "object", obj, "ino", f.ino, "chunk", chunk)
	default:
		s.log.Error("content: cannot read chunk object from the remote",
			"object", obj, "ino", f.ino, "chunk", chunk, "err", err)
	}
	return ioErr(nil, err, "read inode %d chunk %d (object %s)", f.ino, chunk, obj)
}

// noteRead tracks sequential access on the file and starts a prefetch of
// the next window when reads follow each other. f.mu is held shared.
func (f *File) noteRead(ctx context.Context, off, n, size int64) {
	ra := f.s.opt.Readahead
	if ra <= 0 {
		return
	}
	end := off + n
	var from, to int64
	f.raMu.Lock()
	if off == f.raNext {
		f.raSeq++
	} else {
		f.raSeq, f.raAhead = 0, 0
	}
	f.raNext = end
	if f.raSeq >= 1 && f.raAhead < end+ra/2 {
		from, to = max(f.raAhead, end), min(end+ra, size)
		if to > from {
			f.raAhead = to
		}
	}
	f.raMu.Unlock()
	if to > from {
		f.s.startPrefetch(ctx, f, from, to)
	}
}

// prefetchJob is a run of blocks of one object whose fetch the prefetch
// has claimed (readers of those blocks wait for it instead of fetching).
type prefetchJob struct {
	chunk  int64
	base   *baseObj
	blocks []int64
}

// startPrefetch fetches [from, to) of f into the cache in the background.
// The blocks are claimed here, before the next read can ask for them, so a
// read that catches up with the prefetch waits for it rather than issuing
// a GET of its own; the GETs run under the data path's own context (never a
// request's, which a signal may cancel). Nothing is done when enough
// prefetches are already running. f.mu is held shared.
func (s *DataPath) startPrefetch(ctx context.Context, f *File, from, to int64) {
	select {
	case s.prefetchSem <- struct{}{}:
	default:
		f.raMu.Lock()
		f.raAhead = min(f.raAhead, from)
		f.raMu.Unlock()
		return
	}
	s.mu.Lock()
	if s.closed || f.gone {
		s.mu.Unlock()
		<-s.prefetchSem
		return
	}
	f.pins++
	s.wg.Add(1)
	s.mu.Unlock()
	jobs, end := f.claimPrefetch(ctx, from, to)
	if end < to {
		f.raMu.Lock()
		f.raAhead = min(f.raAhead, end) // the rest is claimed by a later read
		f.raMu.Unlock()
	}
	go func() {
		defer s.wg.Done()
		defer func() { <-s.prefetchSem }()
		defer s.drop(f, false)
		pctx, cancel := context.WithTimeout(s.bg, s.opt.ReadTimeout)
		defer cancel()
		// The window goes as GETs of at most prefetchPiece bytes, up to
		// prefetchGETs at a time: over S3 one GET at a time left the
		// connection idle between requests.
		var failed atomic.Bool
		var wg sync.WaitGroup
		sem := make(chan struct{}, prefetchGETs)
		for _, j := range splitJobs(jobs, max(1, prefetchPiece/int(s.layout.BlockSize))) {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if !failed.Load() {
					out := make(map[int64][]byte, len(j.blocks))
					if err := s.fetch(pctx, f, j.base, j.blocks[0], j.blocks[len(j.blocks)-1], out); err != nil {
						// The read that needs these blocks fetches them again
						// and reports the failure; a prefetch only notes it.
						s.log.Debug("content: prefetch failed", "ino", f.ino, "chunk", j.chunk, "object", j.base.name(), "err", err)
						failed.Store(true)
					}
				}
				for _, b := range j.blocks {
					s.cache.finish(blockKey{j.base.id, b})
				}
			}()
		}
		wg.Wait()
	}()
}

// A prefetch window is fetched as GETs of up to prefetchPiece bytes,
// prefetchGETs of them at a time.
const (
	prefetchPiece = 1 << 20
	prefetchGETs  = 4
)

// splitJobs cuts jobs into runs of at most n claimed blocks.
func splitJobs(jobs []prefetchJob, n int) []prefetchJob {
	var out []prefetchJob
	for _, j := range jobs {
		for len(j.blocks) > n {
			out = append(out, prefetchJob{chunk: j.chunk, base: j.base, blocks: j.blocks[:n]})
			j.blocks = j.blocks[n:]
		}
		out = append(out, j)
	}
	return out
}

// claimPrefetch claims the base blocks of [from, to) that are neither
// staged, cached nor being fetched. f.mu is held shared.
//
// Once it holds claims it must not wait for anything: a writer holding the
// next chunk's lock may itself be waiting for a block claimed here. So
// past the first chunk with claims it stops at a chunk that is not loaded
// or whose lock is taken; the next read moves the window on. end is where
// it stopped.
func (f *File) claimPrefetch(ctx context.Context, from, to int64) (jobs []prefetchJob, end int64) {
	s := f.s
	B := int64(s.layout.BlockSize)
	C := s.layout.ChunkSize
	for end = from; end < to; {
		k, in := end/C, end%C
		m := min(to-end, C-in)
		c := f.chunk(k) // cmu is a leaf lock: never held long
		if len(jobs) == 0 {
			if err := c.load(ctx); err != nil {
				return jobs, end
			}
			c.mu.RLock()
		} else if !c.mu.TryRLock() {
			return jobs, end
		} else if !c.loaded {
			c.mu.RUnlock()
			return jobs, end
		}
		end += m
		j := prefetchJob{chunk: k, base: c.base}
		if c.base != nil {
			for b := in / B; b <= (in+m-1)/B && b*B < c.baseLimit; b++ {
				if c.stg != nil && c.stg.has(b) {
					continue
				}
				if _, _, mine := s.cache.getOrClaim(blockKey{c.base.id, b}); mine {
					j.blocks = append(j.blocks, b)
				}
			}
		}
		c.mu.RUnlock()
		if len(j.blocks) > 0 {
			jobs = append(jobs, j)
		}
	}
	return jobs, end
}
