package content

import (
	"encoding/hex"
	"sync"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/remote"
)

const deleteBatch = 64

func (s *DataPath) kickDeleter() {
	select {
	case s.delKick <- struct{}{}:
	default:
	}
}

// deleter drains the catalog's durable delete queue: replaced and dropped
// chunk objects (and any other name queued), each once it is due; failures
// are retried with backoff through DeleteFailed.
func (s *DataPath) deleter() {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-t.C:
		case <-s.delKick:
		}
		wait := 2 * time.Second
		if s.drainDeletes() == deleteBatch {
			wait = 0
		}
		t.Reset(wait)
	}
}

// remoteName maps a delete-queue name to the object's remote name: chunk
// objects are queued as 32 hex digits (meta.ObjectName); other names are
// queued as they are on the remote.
func remoteName(n string) (string, bool) {
	if len(n) == 2*format.IDSize {
		if b, err := hex.DecodeString(n); err == nil {
			return format.ObjectName(format.ID(b)), true
		}
	}
	return n, remote.ValidName(n) == nil
}

// drainDeletes deletes one batch of due objects and returns its size.
func (s *DataPath) drainDeletes() int {
	ctx := s.bg
	ds, err := s.cat.NextDeletes(ctx, time.Now().UnixNano(), deleteBatch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("content: cannot read the delete queue", "err", err)
		}
		return 0
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var done []string
	sem := make(chan struct{}, s.opt.Uploaders)
	for _, d := range ds {
		sem <- struct{}{}
		wg.Add(1)
		go func(d meta.PendingDelete) {
			defer wg.Done()
			defer func() { <-sem }()
			if s.deleteOne(d) {
				mu.Lock()
				done = append(done, d.Name)
				mu.Unlock()
			}
		}(d)
	}
	wg.Wait()
	// One transaction for the batch (a crash before it only repeats deletes,
	// which find nothing and succeed).
	if err := s.cat.DeleteDone(ctx, done...); err != nil && ctx.Err() == nil {
		s.log.Warn("content: cannot take deleted objects off the queue", "objects", len(done), "err", err)
	}
	return len(ds)
}

// deleteOne deletes one queued object; true when it is gone (the caller takes
// it off the queue).
func (s *DataPath) deleteOne(d meta.PendingDelete) bool {
	ctx := s.bg
	name, ok := remoteName(d.Name)
	if !ok {
		s.log.Error("content: delete queue holds a name that is not a valid object name; postponing it a day",
			"name", d.Name)
		_ = s.cat.DeleteFailed(ctx, d.Name, time.Now().Add(24*time.Hour).UnixNano(), "invalid object name")
		return false
	}
	if err := s.remote.Delete(ctx, name); err != nil {
		if ctx.Err() != nil {
			return false
		}
		next := time.Now().Add(backoff(d.Attempts + 1)).UnixNano()
		if d.Attempts+1 >= 10 {
			next = time.Now().Add(10 * time.Minute).UnixNano()
		}
		if d.Attempts == 0 || (d.Attempts+1)%10 == 0 {
			s.log.Warn("content: delete of a replaced object failed; retrying later", "object", name,
				"attempts", d.Attempts+1, "err", err)
		}
		_ = s.cat.DeleteFailed(ctx, d.Name, next, err.Error())
		return false
	}
	return true
}
