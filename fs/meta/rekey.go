package meta

import (
	"context"
	"syscall"
)

// Derive-mode rotation (fs/keyops) re-encrypts chunks: it copies each chunk object to a new
// object sealed under the new key version, then swaps the chunk row. The functions here are
// its catalog side.
//
// A copy is put on the remote before its row exists, so a run killed in between would leave
// it orphaned. To avoid that, its name goes on the delete queue first, as an "intent": not due
// for a day, and marked with RekeyIntent in last_error. SwapChunkObject takes the intent off
// the queue in the transaction that records the copy; ReleaseRekeyIntents (the next run, which
// holds the catalog alone) makes the intents of a dead run due at once.

// RekeyIntent marks a delete-queue row that is a re-encrypted copy not recorded yet.
const RekeyIntent = "rekey: re-encrypted copy not recorded (yet)"

// RekeyChunk is one chunk that derive-mode rotation must re-encrypt, with what it needs to
// derive the file's keys.
type RekeyChunk struct {
	Ino    uint64
	FileID [16]byte
	Key    KeyRecord
	Chunk  Chunk
}

// ChunksToRekey returns up to limit chunks of derive-mode files whose key record is in chain
// and whose key version is below version, after chunk (afterIno, afterIdx), in (ino, idx)
// order: derive-mode rotation walks them in batches.
func (c *Catalog) ChunksToRekey(ctx context.Context, chain string, version uint32, afterIno uint64, afterIdx int64, limit int) ([]RekeyChunk, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := c.r.QueryContext(ctx, `SELECT k.mode, k.chain, k.version, k.iv, k.wrapped, k.salt,
			c.ino, i.file_id, c.idx, c.object, c.length, c.key_version
		FROM chunks c JOIN file_keys k ON k.ino = c.ino JOIN inodes i ON i.ino = c.ino
		WHERE k.chain = ? AND k.mode = 'derive' AND c.key_version < ? AND (c.ino, c.idx) > (?, ?)
		ORDER BY c.ino, c.idx LIMIT ?`, chain, int64(version), int64(afterIno), afterIdx, limit)
	if err != nil {
		return nil, wrapSQL("list chunks to re-encrypt", err)
	}
	defer rows.Close()
	var out []RekeyChunk
	for rows.Next() {
		var r RekeyChunk
		var ino, kv int64
		var fid, obj []byte
		if r.Key, err = scanKey(rows, &ino, &fid, &r.Chunk.Index, &obj, &r.Chunk.Length, &kv); err != nil {
			return nil, wrapSQL("list chunks to re-encrypt", err)
		}
		r.Ino = uint64(ino)
		copy(r.FileID[:], fid)
		copy(r.Chunk.Object[:], obj)
		r.Chunk.KeyVersion = uint32(kv)
		out = append(out, r)
	}
	return out, wrapSQL("list chunks to re-encrypt", rows.Err())
}

// CountChunksToRekey counts the chunks ChunksToRekey would return without a limit, and their
// plaintext bytes.
func (c *Catalog) CountChunksToRekey(ctx context.Context, chain string, version uint32) (n, bytes int64, err error) {
	err = c.r.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(c.length), 0)
		FROM chunks c JOIN file_keys k ON k.ino = c.ino
		WHERE k.chain = ? AND k.mode = 'derive' AND c.key_version < ?`, chain, int64(version)).Scan(&n, &bytes)
	return n, bytes, wrapSQL("count chunks to re-encrypt", err)
}

// QueueRekeyIntents puts the names of re-encrypted copies about to be uploaded on the delete
// queue as intents, due at notBefore (see RekeyIntent).
func (t *Tx) QueueRekeyIntents(names []string, now, notBefore int64) (err error) {
	defer t.track(&err)
	for _, n := range names {
		if n == "" {
			return errf(syscall.EINVAL, "queue re-encryption intent: empty name")
		}
		if _, err := t.exec("queue re-encryption intent", `INSERT INTO deletes (name, enqueued_ns, attempts, not_before_ns, last_error)
			VALUES (?, ?, 0, ?, ?) ON CONFLICT (name) DO NOTHING`, n, now, notBefore, RekeyIntent); err != nil {
			return err
		}
	}
	return t.step("rekey-intent")
}

// ReleaseRekeyIntents makes every intent left on the delete queue due at now: the copies of
// a run that died before recording them. Only a caller that holds the catalog alone (no
// rotation can be running) may call it. It returns how many there were.
func (c *Catalog) ReleaseRekeyIntents(ctx context.Context, now int64) (int64, error) {
	return do(c, ctx, "release re-encryption intents", func(t *Tx) (int64, error) {
		res, err := t.exec("release re-encryption intents", `UPDATE deletes SET not_before_ns = ?, last_error = ''
			WHERE last_error = ?`, now, RekeyIntent)
		if err != nil {
			return 0, err
		}
		n, _ := res.RowsAffected()
		return n, nil
	})
}

// ChunkSwap is one compare-and-swap of a chunk's object (see SwapChunkObjects).
type ChunkSwap struct {
	Ino      uint64
	Old, New Chunk // same Index and Length; New.Object is a copy queued as an intent
}

// SwapChunkObjects records re-encrypted copies: for each swap, if ino's chunk still equals
// Old (object, length and key version), it becomes New, Old's object is queued for deletion
// (due at now) and New's intent is taken off the queue. A swap whose chunk changed
// meanwhile, or whose intent is no longer queued (something deleted the copy), changes
// nothing but make New's object due for deletion. It returns, per swap, whether it happened.
func (t *Tx) SwapChunkObjects(swaps []ChunkSwap, now int64) (_ []bool, err error) {
	defer t.track(&err)
	out := make([]bool, len(swaps))
	for i, s := range swaps {
		if s.New.Index != s.Old.Index || s.New.Length != s.Old.Length || s.New.Object == [16]byte{} || s.New.Object == s.Old.Object {
			return nil, errf(syscall.EINVAL, "swap chunk object of inode %d chunk %d: the copy must keep index and length and have a new object id", s.Ino, s.Old.Index)
		}
		newName := ObjectName(s.New.Object)
		res, err := t.exec("swap chunk object: take intent", `DELETE FROM deletes WHERE name = ? AND last_error = ?`, newName, RekeyIntent)
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			continue // the copy was released (and maybe deleted): not usable
		}
		res, err = t.exec("swap chunk object", `UPDATE chunks SET object = ?, key_version = ?
			WHERE ino = ? AND idx = ? AND object = ? AND length = ? AND key_version = ?`,
			s.New.Object[:], int64(s.New.KeyVersion), int64(s.Ino), s.Old.Index, s.Old.Object[:], s.Old.Length, int64(s.Old.KeyVersion))
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			// Changed underneath: the copy is garbage.
			if err := t.queueDelete(newName, now); err != nil {
				return nil, err
			}
			continue
		}
		if err := t.queueDelete(ObjectName(s.Old.Object), now); err != nil {
			return nil, err
		}
		out[i] = true
	}
	return out, t.step("chunk-swap")
}

// RekeyDeriveRecords moves derive-mode key records to another version of their chain, keeping
// the salt (a compare-and-swap per record, like SwapKeys). Chunks of those files recorded
// with key version 0 ("the record's version") are pinned to the old version first, so they
// still name the key that sealed them. It returns, per swap, whether it happened.
func (t *Tx) RekeyDeriveRecords(swaps []KeySwap) (_ []bool, err error) {
	defer t.track(&err)
	for _, s := range swaps {
		if s.Old.Mode != KeyModeDerive || s.New.Mode != KeyModeDerive {
			return nil, errf(syscall.EINVAL, "re-key inode %d: not a derive-mode record", s.Ino)
		}
		if _, err := t.exec("pin chunk key versions", `UPDATE chunks SET key_version = ?
			WHERE ino = ? AND key_version = 0 AND EXISTS (SELECT 1 FROM file_keys k WHERE k.ino = ? AND k.version = ?)`,
			int64(s.Old.Version), int64(s.Ino), int64(s.Ino), int64(s.Old.Version)); err != nil {
			return nil, err
		}
	}
	return t.SwapKeys(swaps)
}
