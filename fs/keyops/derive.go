package keyops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"coffer/crypto/format"
	"coffer/fs/content"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/remote"
)

// Derive-mode rotation. A derive-mode DEK is HMAC(KEK version, salt and identity), so a new
// KEK version means new DEKs: the content itself must be re-encrypted. Design (FORMAT.md
// 9.3.2):
//
//   - A file keeps its salt. Its record moves to the new version first (a compare-and-swap,
//     no HSM call), then each chunk is re-encrypted. Every chunk row records the version that
//     sealed it, and the data path derives that version's DEK from the same salt
//     (content.File.dekFor), so a file whose chunks are half old, half new reads normally
//     at every point. A new salt would need both salts stored until the last chunk is done;
//     it would buy nothing, because the salt is not secret and the new DEK is independent of
//     the old one through the new KEK version alone.
//   - A chunk is copied, never rewritten in place: fetch, open under its old version, seal as
//     a new object id under the new version (content.ReencryptChunk), put, then swap the row
//     by compare-and-swap on the old object id and key version, queueing the old object for
//     deletion in the same transaction; the old object is then deleted at once (best effort;
//     the queue keeps what failed). Until the swap commits the old object is what the
//     catalog names, and it is deleted only after: no chunk is ever unreadable.
//   - A copy's name is queued as a delete "intent" before it is put, and the swap takes the
//     intent off the queue. A run killed between put and swap leaves an intent, which the
//     next run makes due: no orphan object stays on the remote.

// ErrDeriveMounted is returned by Rotate on a derive-mode volume when RotateOptions.Mounted
// says a data path runs on it.
var ErrDeriveMounted = errors.New("a derive-mode volume re-encrypts its files when it rotates, which needs it unmounted: " +
	"unmount it, then run coffer rotate")

// ChunkRef names one chunk of one inode.
type ChunkRef struct {
	Ino   uint64
	Index int64
}

// FailedChunksError lists chunks that could not be re-encrypted because they do not open
// (tampered, missing or truncated object, or a key version destroyed). The rotation stays
// incomplete: their old key version cannot be retired.
type FailedChunksError struct{ Chunks []ChunkRef }

func (e *FailedChunksError) Error() string {
	show, more := firstTen(e.Chunks)
	parts := make([]string, len(show))
	for i, c := range show {
		parts[i] = fmt.Sprintf("inode %d chunk %d", c.Ino, c.Index)
	}
	return fmt.Sprintf("%d chunks could not be re-encrypted because they do not open (missing, truncated or tampered object?): %v%s; "+
		"the rotation is incomplete: restore or delete those files, then run coffer rotate again", len(e.Chunks), parts, more)
}

// intentDelay is how long a copy's intent waits on the delete queue before it is due: far
// longer than one batch takes; the next run releases the intents of a dead one at once.
const intentDelay = 24 * time.Hour

type reencryptor struct {
	v     *volume.Volume
	opt   RotateOptions
	start time.Time
	res   *RotateResult

	total, totalBytes int64
	failed            map[ChunkRef]bool
}

// reencryptAll re-keys every derive-mode file of the target chains: records first, then
// chunks (see the comment at the top of this file).
func reencryptAll(ctx context.Context, v *volume.Volume, targets []keys.KEKRef, keks []meta.KEK, opt RotateOptions, res *RotateResult, start time.Time) error {
	cat := v.Catalog()
	r := &reencryptor{v: v, opt: opt, start: start, res: res, failed: map[ChunkRef]bool{}}
	// We hold the catalog alone: intents left on the queue belong to a run that died.
	if n, err := cat.ReleaseRekeyIntents(ctx, time.Now().UnixNano()); err != nil {
		return err
	} else if n > 0 {
		opt.Logger.Info("rotate: deleting copies an interrupted rotation had not recorded", "objects", n)
	}
	for _, to := range targets {
		if err := r.rekeyRecords(ctx, to, keks); err != nil {
			return err
		}
	}
	for _, to := range targets {
		n, b, err := cat.CountChunksToRekey(ctx, to.Chain, to.Version)
		if err != nil {
			return err
		}
		r.total += n
		r.totalBytes += b
	}
	var errs []error
	for _, to := range targets {
		if err := r.chunks(ctx, to); err != nil {
			errs = append(errs, err)
			break
		}
	}
	// Released intents, and old objects whose deletion failed, go now if they can.
	d, _ := content.DrainDeletes(ctx, cat, v.Store(), opt.Logger, deleteWorkers)
	res.DeletedObjects += d
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if len(r.failed) > 0 {
		fc := make([]ChunkRef, 0, len(r.failed))
		for c := range r.failed {
			fc = append(fc, c)
		}
		sort.Slice(fc, func(i, j int) bool {
			return fc[i].Ino < fc[j].Ino || fc[i].Ino == fc[j].Ino && fc[i].Index < fc[j].Index
		})
		return &FailedChunksError{Chunks: fc}
	}
	opt.Logger.Info("rotate: chunks re-encrypted", "chunks", res.Reencrypted, "bytes", res.ReencryptedBytes,
		"records", res.Rekeyed, "elapsed", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// rekeyRecords moves every derive-mode record of to's chain under a live older version to
// version to, keeping its salt, in batches of compare-and-swap updates.
func (r *reencryptor) rekeyRecords(ctx context.Context, to keys.KEKRef, keks []meta.KEK) error {
	cat := r.v.Catalog()
	for _, k := range keks {
		if k.Chain != to.Chain || k.Version >= to.Version || k.State == meta.KEKDestroyed {
			continue
		}
		var after uint64
		for {
			rows, err := cat.KeysUsing(ctx, k.Chain, k.Version, after, r.opt.BatchSize)
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				break
			}
			after = rows[len(rows)-1].Ino
			swaps := make([]meta.KeySwap, 0, len(rows))
			for _, row := range rows {
				if row.Key.Mode != meta.KeyModeDerive {
					continue // not ours (a wrap record on a derive volume cannot be made by coffer)
				}
				nk := row.Key
				nk.Version = to.Version
				swaps = append(swaps, meta.KeySwap{Ino: row.Ino, Old: row.Key, New: nk})
			}
			var n int64
			err = cat.Update(ctx, func(t *meta.Tx) error {
				n = 0
				ok, err := t.RekeyDeriveRecords(swaps)
				for _, s := range ok {
					if s {
						n++
					}
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("rotate: move key records to KEK %s: %w", to, err)
			}
			r.res.Rekeyed += n
			if err := r.opt.hook.at("records"); err != nil {
				return err
			}
		}
	}
	return nil
}

// chunks re-encrypts every chunk of to's chain sealed under an older version, in passes:
// a chunk that changed underneath (its swap lost) is picked up by the next pass.
func (r *reencryptor) chunks(ctx context.Context, to keys.KEKRef) error {
	cat := r.v.Catalog()
	for pass := 0; pass < 5; pass++ {
		progressed := false
		var afterIno uint64
		afterIdx := int64(-1)
		for {
			rows, err := cat.ChunksToRekey(ctx, to.Chain, to.Version, afterIno, afterIdx, r.opt.ChunkBatch)
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				break
			}
			afterIno, afterIdx = rows[len(rows)-1].Ino, rows[len(rows)-1].Chunk.Index
			kept := rows[:0]
			for _, row := range rows {
				if !r.failed[ChunkRef{row.Ino, row.Chunk.Index}] {
					kept = append(kept, row)
				}
			}
			if len(kept) == 0 {
				continue
			}
			n, err := r.batch(ctx, to, kept)
			if n > 0 {
				progressed = true
			}
			if err != nil {
				return err
			}
		}
		left, _, err := cat.CountChunksToRekey(ctx, to.Chain, to.Version)
		if err != nil {
			return err
		}
		if left <= int64(len(r.failed)) || !progressed {
			return nil
		}
	}
	return nil
}

// batch re-encrypts rows with Workers goroutines, records the copies in one transaction and
// deletes the old objects. A chunk that does not open is remembered in r.failed; any other
// error (remote down, HSM gone, cancelled) stops the rotation after the copies already made
// are recorded.
func (r *reencryptor) batch(ctx context.Context, to keys.KEKRef, rows []meta.RekeyChunk) (int64, error) {
	v := r.v
	ids := make([]format.ID, len(rows))
	names := make([]string, len(rows))
	for i := range rows {
		id, err := format.NewID()
		if err != nil {
			return 0, err
		}
		ids[i], names[i] = id, meta.ObjectName(id)
	}
	now := time.Now()
	if err := v.Catalog().Update(ctx, func(t *meta.Tx) error {
		return t.QueueRekeyIntents(names, now.UnixNano(), now.Add(intentDelay).UnixNano())
	}); err != nil {
		return 0, fmt.Errorf("rotate: queue re-encrypted copies: %w", err)
	}
	if err := r.opt.hook.at("intents"); err != nil {
		return 0, err
	}

	done := make([]bool, len(rows))
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	jobs := make(chan int)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range min(r.opt.Workers, len(rows)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				err := r.copyChunk(wctx, to, rows[i], ids[i])
				if err == nil {
					err = r.opt.hook.at("put")
				}
				mu.Lock()
				switch {
				case err == nil:
					done[i] = true
				case unopenable(err) && wctx.Err() == nil:
					r.failed[ChunkRef{rows[i].Ino, rows[i].Chunk.Index}] = true
					r.opt.Logger.Error("rotate: a chunk cannot be re-encrypted; leaving it as it is", "ino", rows[i].Ino,
						"chunk", rows[i].Chunk.Index, "object", meta.ObjectName(rows[i].Chunk.Object), "err", err)
				case firstErr == nil:
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	for i := range rows {
		if wctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	// Record what was copied, even when the batch stopped early.
	var swaps []meta.ChunkSwap
	for i, row := range rows {
		if done[i] {
			nc := row.Chunk
			nc.Object, nc.KeyVersion = ids[i], to.Version
			swaps = append(swaps, meta.ChunkSwap{Ino: row.Ino, Old: row.Chunk, New: nc})
		}
	}
	var swapped int64
	var bytes int64
	var olds []string
	if len(swaps) > 0 {
		err := v.Catalog().Update(ctx, func(t *meta.Tx) error {
			swapped, bytes, olds = 0, 0, olds[:0]
			ok, err := t.SwapChunkObjects(swaps, time.Now().UnixNano())
			for i, s := range ok {
				if s {
					swapped++
					bytes += swaps[i].Old.Length
					olds = append(olds, meta.ObjectName(swaps[i].Old.Object))
				}
			}
			return err
		})
		if err != nil {
			return 0, errors.Join(firstErr, fmt.Errorf("rotate: record re-encrypted chunks: %w", err))
		}
	}
	r.res.Reencrypted += swapped
	r.res.ReencryptedBytes += bytes
	r.res.Changed += int64(len(swaps)) - swapped
	if err := r.opt.hook.at("batch"); err != nil {
		return swapped, errors.Join(firstErr, err)
	}
	r.res.DeletedObjects += r.deleteOld(ctx, olds)
	if r.opt.Progress != nil {
		r.opt.Progress(Progress{Done: r.res.Reencrypted, Total: r.total, Bytes: r.res.ReencryptedBytes,
			TotalBytes: r.totalBytes, Elapsed: time.Since(r.start), Unit: "chunks"})
	}
	if firstErr != nil {
		return swapped, fmt.Errorf("rotate: re-encrypt to KEK %s: %w", to, firstErr)
	}
	return swapped, nil
}

// copyChunk derives the chunk's old and new DEKs (same salt, two versions) and copies it.
func (r *reencryptor) copyChunk(ctx context.Context, to keys.KEKRef, row meta.RekeyChunk, id format.ID) error {
	v := r.v
	rec := volume.RecordOf(row.Key)
	fid := keys.FileIdentity{Volume: v.ID, File: row.FileID}
	oldRec, newRec := rec, rec
	if row.Chunk.KeyVersion != 0 { // 0: sealed under the record's version (not moved yet)
		oldRec.KEK.Version = row.Chunk.KeyVersion
	}
	newRec.KEK.Version = to.Version
	oldKey, err := keys.OpenFileKey(ctx, v.Provider(), oldRec, fid)
	if err != nil {
		return err
	}
	defer oldKey.Wipe()
	newKey, err := keys.OpenFileKey(ctx, v.Provider(), newRec, fid)
	if err != nil {
		return err
	}
	defer newKey.Wipe()
	return content.ReencryptChunk(ctx, v.Store(), v.Layout, content.Reencrypt{
		Volume: format.ID(v.ID), File: format.ID(row.FileID), Chunk: row.Chunk, To: id, OldKey: oldKey, NewKey: newKey})
}

// unopenable reports an error that is about the chunk itself (it will not open however often
// it is tried), as opposed to the remote, the HSM or a cancellation.
func unopenable(err error) bool {
	return errors.Is(err, format.ErrAuth) || errors.Is(err, remote.ErrNotFound) || errors.Is(err, keys.ErrUnwrap) ||
		errors.Is(err, keys.ErrKEKMissing) || errors.Is(err, io.ErrUnexpectedEOF) && !remote.IsTransient(err)
}

// deleteOld deletes replaced objects now, Workers at a time (they are queued: what fails
// stays queued for the daemon or the next command). It returns how many went.
func (r *reencryptor) deleteOld(ctx context.Context, names []string) int {
	ds := make([]meta.PendingDelete, len(names))
	for i, name := range names {
		ds[i] = meta.PendingDelete{Name: name} // just queued: no attempt yet
	}
	n, _ := content.DeleteQueued(ctx, r.v.Catalog(), r.v.Store(), r.opt.Logger, r.opt.Workers, ds)
	return n
}
