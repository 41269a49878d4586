package content

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"coffer/fs/meta"
	"coffer/remote"
)

// deleteBatch is how many queued names DrainDeletes takes at a time; each
// batch leaves the queue in one catalog transaction.
const deleteBatch = 64

// deleter is the data path's delete-queue worker: it runs DrainDeletes when
// woken (an upload replaced an object, a truncation or discard dropped some)
// and every 2 s, until the data path stops.
type deleter struct {
	cat     *meta.Catalog
	remote  remote.Store
	log     *slog.Logger
	workers int           // deletes at a time
	kickCh  chan struct{} // wakes run
}

func newDeleter(cat *meta.Catalog, rs remote.Store, log *slog.Logger, workers int) *deleter {
	return &deleter{cat: cat, remote: rs, log: log, workers: workers, kickCh: make(chan struct{}, 1)}
}

// kick makes run drain the queue now.
func (d *deleter) kick() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

// run drains the catalog's durable delete queue (replaced and dropped chunk
// objects, and any other name queued) until ctx ends.
func (d *deleter) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.kickCh:
		}
		DrainDeletes(ctx, d.cat, d.remote, d.log, d.workers)
		t.Reset(2 * time.Second)
	}
}

// DrainDeletes deletes from the remote every object on the catalog's delete
// queue that is due now, once each, in batches of deleteBatch (DeleteQueued
// on each). It is the one drain of the queue: the data path's deleter runs
// it in a loop, offline key operations (fs/keyops) run it once. It returns
// how many objects were deleted and how many stay queued; it stops early
// when ctx ends.
func DrainDeletes(ctx context.Context, cat *meta.Catalog, rs remote.Store, log *slog.Logger, workers int) (deleted, failed int) {
	if log == nil {
		log = slog.Default()
	}
	tried := map[string]bool{} // a name whose row could not be updated stays due: once is enough
	for ctx.Err() == nil {
		ds, err := cat.NextDeletes(ctx, time.Now().UnixNano(), deleteBatch)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("content: cannot read the delete queue", "err", err)
			}
			break
		}
		var todo []meta.PendingDelete
		for _, d := range ds {
			if !tried[d.Name] {
				tried[d.Name] = true
				todo = append(todo, d)
			}
		}
		if len(todo) == 0 {
			break
		}
		n, f := DeleteQueued(ctx, cat, rs, log, workers, todo)
		deleted += n
		failed += f
		if len(ds) < deleteBatch {
			break // that was every due name
		}
	}
	return deleted, failed
}

// DeleteQueued deletes the queued objects ds from the remote, workers at a
// time, once the catalog's replica holds the commits that queued them, and takes those that are gone off the queue in one transaction (a
// crash before it only repeats deletes, which find nothing and succeed). It
// returns how many were deleted and how many stay queued.
//
// The queue holds remote object names as the remote uses them (chunk
// objects as format.ObjectName, re-encryption intents likewise). An object
// whose delete fails stays queued, due again after a backoff (that of
// uploads, then every 10 minutes from the 10th attempt); a name that is not
// a valid object name cannot name anything on the remote, and is logged at
// ERROR and postponed a day, its row left as the trace of whatever wrote it.
// Both count as failed.
func DeleteQueued(ctx context.Context, cat *meta.Catalog, rs remote.Store, log *slog.Logger, workers int, ds []meta.PendingDelete) (deleted, failed int) {
	if log == nil {
		log = slog.Default()
	}
	// An object goes only once the commit that dropped it is on the remote too: a
	// catalog restored from the replica must never name a deleted object.
	if err := cat.Sync(ctx); err != nil {
		if ctx.Err() == nil && !errors.Is(err, syscall.EKEYREVOKED) {
			log.Warn("content: deletes wait until the catalog change that queued them is replicated", "err", err)
		}
		return 0, len(ds)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []string
	sem := make(chan struct{}, max(1, workers))
	for _, d := range ds {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ok := deleteQueued(ctx, cat, rs, log, d)
			mu.Lock()
			if ok {
				done = append(done, d.Name)
			} else {
				failed++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := cat.DeleteDone(ctx, done...); err != nil && ctx.Err() == nil {
		log.Warn("content: cannot take deleted objects off the queue", "objects", len(done), "err", err)
	}
	return len(done), failed
}

// deleteQueued deletes one queued object; true when it is gone (the caller
// takes it off the queue), false when it stays queued (the row says when
// it is due again, unless ctx ended).
func deleteQueued(ctx context.Context, cat *meta.Catalog, rs remote.Store, log *slog.Logger, d meta.PendingDelete) bool {
	if remote.ValidName(d.Name) != nil {
		log.Error("content: delete queue holds a name that is not a valid object name; postponing it a day",
			"name", d.Name)
		_ = cat.DeleteFailed(ctx, d.Name, time.Now().Add(24*time.Hour).UnixNano(), "invalid object name")
		return false
	}
	err := rs.Delete(ctx, d.Name)
	if err == nil || errors.Is(err, remote.ErrNotFound) {
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	attempts := d.Attempts + 1
	next := time.Now().Add(backoff(attempts))
	if attempts >= 10 {
		next = time.Now().Add(10 * time.Minute)
	}
	if attempts == 1 || attempts%10 == 0 {
		log.Warn("content: delete of a queued object failed; it stays queued and is retried later", "object", d.Name,
			"attempts", attempts, "err", err)
	}
	_ = cat.DeleteFailed(ctx, d.Name, next.UnixNano(), err.Error())
	return false
}
