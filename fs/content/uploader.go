package content

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// uploader schedules and runs the uploads of dirty chunks (the upload of
// one chunk is upload.go). A chunk with new staged content is due once it
// has been idle for DirtyDelay; fsync, the last close and staging pressure
// make it due at once (urgent). The scheduler hands due chunks to the
// workers (Options.Uploaders of them), urgent and oldest first; a failed
// upload is retried with backoff, and one that met coffer lock waits for
// unlock without counting as a failure. Whoever waits for uploads (fsync,
// SyncAll) waits on the notify channel, closed and replaced whenever an
// upload ends or the data path changes under the waiters (lock, truncate,
// discard).
//
// Locking: schedMu guards dirty and the scheduling fields of every chunk
// (chunk.dueAt, firstDirty, queued, urgent, failures). It is taken under a
// File's and a chunk's locks or with none held, never around them, and
// nothing is locked while it is held. notifyMu guards notifyCh only and is
// a leaf too.
type uploader struct {
	dp *DataPath

	schedMu  sync.Mutex
	dirty    map[*chunk]struct{} // chunks with staged changes not yet uploaded
	kickCh   chan struct{}       // wakes the scheduler
	work     chan *chunk         // scheduler -> workers
	inFlight atomic.Int64        // uploads running now
	lastErr  atomic.Pointer[string]
	pressAt  atomic.Int64 // last time staging pressure expedited uploads (ns)

	notifyMu sync.Mutex
	notifyCh chan struct{} // closed and replaced when an upload ends
}

func newUploader(dp *DataPath) *uploader {
	return &uploader{
		dp:       dp,
		dirty:    make(map[*chunk]struct{}),
		kickCh:   make(chan struct{}, 1),
		work:     make(chan *chunk),
		notifyCh: make(chan struct{}),
	}
}

// start runs the scheduler and n workers until the data path stops; the
// data path's wait group counts them (the caller has added n+1).
func (u *uploader) start(n int) {
	go u.scheduler()
	for range n {
		go u.worker()
	}
}

// stats fills the upload counters of st.
func (u *uploader) stats(st *Stats) {
	st.UploadsInFlight = u.inFlight.Load()
	if p := u.lastErr.Load(); p != nil {
		st.LastUploadError = *p
	}
	u.schedMu.Lock()
	st.DirtyChunks = int64(len(u.dirty))
	for c := range u.dirty {
		if c.failures > 0 {
			st.UploadsFailing++
		}
	}
	u.schedMu.Unlock()
}

// touched records that chunk c has new staged content: it uploads once it
// has been idle for DirtyDelay (or at most 4 DirtyDelays after it first got
// dirty, so a chunk written without pause still goes out). c.mu is held.
func (u *uploader) touched(c *chunk) {
	now := time.Now()
	u.schedMu.Lock()
	if _, ok := u.dirty[c]; !ok {
		u.dirty[c] = struct{}{}
		c.firstDirty = now
		c.failures = 0
	}
	if !c.urgent {
		c.dueAt = now.Add(u.dp.opt.DirtyDelay)
		if latest := c.firstDirty.Add(4 * u.dp.opt.DirtyDelay); latest.Before(c.dueAt) {
			c.dueAt = latest
		}
		if c.dueAt.Before(now) {
			c.dueAt = now
		}
	}
	u.schedMu.Unlock()
	u.kick()
}

// expedite makes a dirty chunk upload now (fsync, last close, pressure).
func (u *uploader) expedite(c *chunk) {
	u.schedMu.Lock()
	if _, ok := u.dirty[c]; ok {
		c.urgent = true
		if c.failures == 0 || time.Until(c.dueAt) > time.Second {
			c.dueAt = time.Now()
		}
	}
	u.schedMu.Unlock()
	u.kick()
}

// forget takes a dropped chunk off the schedule. c.mu is held.
func (u *uploader) forget(c *chunk) {
	u.schedMu.Lock()
	delete(u.dirty, c)
	u.schedMu.Unlock()
}

// kick wakes the scheduler.
func (u *uploader) kick() {
	select {
	case u.kickCh <- struct{}{}:
	default:
	}
}

// pressure expedites every dirty chunk, at most every 100 ms.
func (u *uploader) pressure() {
	now := time.Now().UnixNano()
	last := u.pressAt.Load()
	if now-last < int64(100*time.Millisecond) || !u.pressAt.CompareAndSwap(last, now) {
		return
	}
	u.schedMu.Lock()
	for c := range u.dirty {
		c.urgent = true
		if c.failures == 0 {
			c.dueAt = time.Now()
		}
	}
	u.schedMu.Unlock()
	u.kick()
}

// scheduler hands due chunks to the workers, urgent and oldest first.
func (u *uploader) scheduler() {
	defer u.dp.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if u.dp.keys.Locked() {
			// coffer lock: staged data waits, as ciphertext, for unlock
			// (Resume kicks; the timer is a fallback).
			timer.Reset(time.Second)
			select {
			case <-u.kickCh:
			case <-timer.C:
			case <-u.dp.bg.Done():
				return
			}
			continue
		}
		now := time.Now()
		next := now.Add(time.Hour)
		var ready []*chunk
		u.schedMu.Lock()
		for c := range u.dirty {
			if c.queued {
				continue
			}
			if !c.dueAt.After(now) {
				c.queued = true
				ready = append(ready, c)
			} else if c.dueAt.Before(next) {
				next = c.dueAt
			}
		}
		slices.SortFunc(ready, func(a, b *chunk) int {
			if a.urgent != b.urgent {
				if a.urgent {
					return -1
				}
				return 1
			}
			return a.dueAt.Compare(b.dueAt)
		})
		u.schedMu.Unlock()
		for _, c := range ready {
			select {
			case u.work <- c:
			case <-u.dp.bg.Done():
				return
			}
		}
		if len(ready) > 0 {
			continue
		}
		timer.Reset(time.Until(next))
		select {
		case <-u.kickCh:
		case <-timer.C:
		case <-u.dp.bg.Done():
			return
		}
	}
}

// worker runs the uploads the scheduler hands it.
func (u *uploader) worker() {
	defer u.dp.wg.Done()
	for {
		select {
		case c := <-u.work:
			u.runUpload(c)
		case <-u.dp.bg.Done():
			return
		}
	}
}

// backoff is the wait before retrying a chunk after n failed uploads.
func backoff(n int) time.Duration {
	return min(100*time.Millisecond<<min(n-1, 10), 30*time.Second)
}

func (u *uploader) runUpload(c *chunk) {
	u.inFlight.Add(1)
	w := u.dp.wipes.Load()
	err := u.upload(c)
	u.inFlight.Add(-1)
	if errors.Is(err, context.Canceled) && u.dp.bg.Err() != nil {
		err = nil // shutting down
	}
	// Locked (coffer lock) while uploading: not a failure; the chunk stays
	// staged and goes first after unlock.
	paused := err != nil && u.dp.lockedDuring(err, w)
	f := c.f
	c.mu.RLock()
	stillDirty := c.stg != nil && !c.dead
	var uploadID int64
	if c.stg != nil {
		uploadID = c.stg.upload
	}
	u.schedMu.Lock()
	c.queued = false
	switch {
	case !stillDirty:
		delete(u.dirty, c)
		c.failures, c.urgent = 0, false
	case paused:
		c.dueAt = time.Now()
	case err != nil:
		c.failures++
		wait := backoff(c.failures)
		if c.urgent {
			wait = min(wait, time.Second)
		}
		c.dueAt = time.Now().Add(wait)
	default:
		c.failures = 0
		if c.urgent {
			c.dueAt = time.Now()
		}
	}
	failures := c.failures
	u.schedMu.Unlock()
	c.mu.RUnlock()
	if paused {
		u.dp.log.Debug("content: upload paused: the volume is locked", "ino", f.ino, "chunk", c.idx)
	} else if err != nil {
		msg := err.Error()
		u.lastErr.Store(&msg)
		if failures == 1 || failures%10 == 0 {
			u.dp.log.Warn("content: upload failed; the chunk stays staged and is retried", "ino", f.ino, "chunk", c.idx,
				"attempts", failures, "err", err)
		}
		if uploadID != 0 && u.dp.bg.Err() == nil {
			_ = u.dp.cat.SetUploadState(u.dp.bg, uploadID, uploadStateFailing, msg)
		}
	}
	u.kick()
	u.notify()
	if !stillDirty {
		u.dp.maybeFree(f)
	}
}

// notify wakes everyone waiting for uploads to progress.
func (u *uploader) notify() {
	u.notifyMu.Lock()
	close(u.notifyCh)
	u.notifyCh = make(chan struct{})
	u.notifyMu.Unlock()
}

func (u *uploader) notifyChan() <-chan struct{} {
	u.notifyMu.Lock()
	defer u.notifyMu.Unlock()
	return u.notifyCh
}

// waitUploaded waits until every target's generation is committed (or its
// chunk was dropped), or ctx ends (EIO, naming the last upload error).
func (u *uploader) waitUploaded(ctx context.Context, targets []syncTarget, what string) error {
	for _, t := range targets {
		u.expedite(t.c)
	}
	for {
		ch := u.notifyChan()
		pending := 0
		for _, t := range targets {
			t.c.mu.RLock()
			if !t.c.dead && t.c.committedGen < t.gen {
				pending++
			}
			t.c.mu.RUnlock()
		}
		if pending == 0 {
			return nil
		}
		if u.dp.keys.Locked() {
			return errLocked("%s: %d chunk(s) stay staged until unlock", what, pending)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			cause := errors.New("the remote did not take the data in time")
			if p := u.lastErr.Load(); p != nil {
				cause = errors.New("last upload error: " + *p)
			}
			u.dp.log.Error("content: "+what+": data still staged", "chunks", pending, "err", cause)
			return &Error{Errno: syscall.EIO, Op: what + ": " + itoa(uint64(pending)) + " chunk(s) still staged", Err: cause}
		}
	}
}
