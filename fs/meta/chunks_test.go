package meta

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

func TestChunks(t *testing.T) {
	c := newCatalog(t)
	f := mkfile(t, c, RootIno, "f")
	cs := c.ChunkSize()

	ts := now()
	old, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(1), Length: cs, KeyVersion: 3}, cs, ts)
	if err != nil || old != nil {
		t.Fatalf("first chunk: %v %v", old, err)
	}
	if in := stat(t, c, f.Ino); in.Size != cs || in.Mtime != ts || in.Ctime != ts {
		t.Fatalf("size/times not updated with the chunk: %+v", in)
	}
	// Replace: the old object is returned and queued in the same transaction.
	old, err = c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(2), Length: 10}, -1, 0)
	if err != nil || old == nil || old.Object != obj(1) || old.KeyVersion != 3 || old.Length != cs {
		t.Fatalf("replace: %+v %v", old, err)
	}
	if in := stat(t, c, f.Ino); in.Size != cs || in.Mtime != ts {
		t.Fatal("size/mtime changed though not asked to")
	}
	due, _ := c.NextDeletes(ctx, allDue, 10)
	if len(due) != 1 || due[0].Name != ObjectName(obj(1)) {
		t.Fatalf("queue after replace: %+v", due)
	}
	// The same commit twice is harmless; the same object with other fields
	// is not.
	if old, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(2), Length: 10}, -1, 0); err != nil || old != nil {
		t.Fatalf("repeated commit: %v %v", old, err)
	}
	_, err = c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(2), Length: 11}, -1, 0)
	wantErrno(t, err, syscall.EEXIST)
	// Object ids are sealed once: not reusable by another chunk or file,
	// nor once queued for deletion.
	g := mkfile(t, c, RootIno, "g")
	_, err = c.SetChunk(ctx, g.Ino, Chunk{Index: 0, Object: obj(2), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.EEXIST)
	_, err = c.SetChunk(ctx, f.Ino, Chunk{Index: 1, Object: obj(2), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.EEXIST)
	_, err = c.SetChunk(ctx, g.Ino, Chunk{Index: 0, Object: obj(1), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.EEXIST)

	// Several at once, with holes.
	replaced, err := c.SetChunks(ctx, f.Ino, []Chunk{
		{Index: 5, Object: obj(5), Length: cs}, {Index: 3, Object: obj(3), Length: cs}, {Index: 0, Object: obj(6), Length: cs},
	}, 6*cs, now())
	if err != nil || len(replaced) != 1 || replaced[0].Object != obj(2) {
		t.Fatalf("set chunks: %+v %v", replaced, err)
	}
	all, err := c.Chunks(ctx, f.Ino, 0, -1)
	if err != nil || fmt.Sprint(indexes(all)) != "[0 3 5]" {
		t.Fatalf("chunks %v %v", indexes(all), err)
	}
	some, _ := c.Chunks(ctx, f.Ino, 1, 5)
	if fmt.Sprint(indexes(some)) != "[3]" {
		t.Fatalf("chunks [1,5): %v", indexes(some))
	}
	n, err := c.DropChunks(ctx, f.Ino, 3, 4, now())
	if err != nil || n != 1 {
		t.Fatalf("punch hole: %d %v", n, err)
	}
	if all, _ := c.Chunks(ctx, f.Ino, 0, -1); fmt.Sprint(indexes(all)) != "[0 5]" {
		t.Fatalf("after punch: %v", indexes(all))
	}
	if n, _ := c.PendingDeletes(ctx); n != 3 {
		t.Fatalf("%d queued, want 3", n)
	}
	mustCheck(t, c)

	for _, bad := range []Chunk{
		{Index: -1, Object: obj(90), Length: 1},
		{Index: 0, Object: obj(91), Length: cs + 1},
		{Index: 0, Object: obj(92), Length: -1},
		{Index: 0, Length: 1},
	} {
		_, err := c.SetChunk(ctx, f.Ino, bad, -1, 0)
		wantErrno(t, err, syscall.EINVAL)
	}
	d := mkdir(t, c, RootIno, "d")
	_, err = c.SetChunk(ctx, d.Ino, Chunk{Index: 0, Object: obj(93), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.EISDIR)
	s, _ := c.Symlink(ctx, RootIno, []byte("s"), []byte("x"), fileAttr())
	_, err = c.SetChunk(ctx, s.Ino, Chunk{Index: 0, Object: obj(94), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.SetChunk(ctx, 9999, Chunk{Index: 0, Object: obj(95), Length: 1}, -1, 0)
	wantErrno(t, err, syscall.ENOENT)
}

func indexes(chs []Chunk) []int64 {
	var out []int64
	for _, c := range chs {
		out = append(out, c.Index)
	}
	return out
}

func TestDeleteQueue(t *testing.T) {
	c := newCatalog(t)
	t0 := now()
	if err := c.EnqueueDelete(ctx, "snap/1", t0, t0+100); err != nil {
		t.Fatal(err)
	}
	if err := c.EnqueueDelete(ctx, "b", t0, t0); err != nil {
		t.Fatal(err)
	}
	if err := c.EnqueueDelete(ctx, "a", t0, t0); err != nil {
		t.Fatal(err)
	}
	if err := c.EnqueueDelete(ctx, "a", t0, t0+5000); err != nil { // already queued: unchanged
		t.Fatal(err)
	}
	wantErrno(t, c.EnqueueDelete(ctx, "", t0, t0), syscall.EINVAL)
	due, err := c.NextDeletes(ctx, t0+50, 10)
	if err != nil || len(due) != 2 || due[0].Name != "a" || due[1].Name != "b" {
		t.Fatalf("due at t0+50: %+v %v", due, err)
	}
	if due, _ := c.NextDeletes(ctx, t0+100, 1); len(due) != 1 {
		t.Fatalf("limit ignored: %+v", due)
	}
	if err := c.DeleteFailed(ctx, "a", t0+1000, "remote: 503 slow down"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.DeleteFailed(ctx, "zz", t0, "x"), syscall.ENOENT)
	due, _ = c.NextDeletes(ctx, t0+200, 10)
	if len(due) != 2 || due[0].Name != "b" || due[1].Name != "snap/1" {
		t.Fatalf("after a failure 'a' should wait: %+v", due)
	}
	due, _ = c.NextDeletes(ctx, t0+1000, 10)
	if due[len(due)-1].Name != "a" || due[len(due)-1].Attempts != 1 || due[len(due)-1].LastError != "remote: 503 slow down" {
		t.Fatalf("retry bookkeeping: %+v", due)
	}
	for _, n := range []string{"a", "b", "snap/1"} {
		if err := c.DeleteDone(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := c.PendingDeletes(ctx); n != 0 {
		t.Fatalf("%d left", n)
	}
}

func TestUploadQueue(t *testing.T) {
	c := newCatalog(t)
	var ids []int64
	for i := range 3 {
		id, err := c.EnqueueUpload(ctx, Upload{Ino: 5, Index: int64(i), Staging: fmt.Sprintf("stage-%d", i), Bytes: 100, State: "pending", Created: now()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	_, err := c.EnqueueUpload(ctx, Upload{Ino: 5})
	wantErrno(t, err, syscall.EINVAL)
	if err := c.SetUploadState(ctx, ids[1], "uploading", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.SetUploadState(ctx, ids[2], "pending", "remote: timeout"); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.SetUploadState(ctx, 999, "x", ""), syscall.ENOENT)
	pend, err := c.ListUploads(ctx, "pending", 0, 0)
	if err != nil || len(pend) != 2 || pend[0].ID != ids[0] || pend[1].Attempts != 1 || pend[1].LastError != "remote: timeout" {
		t.Fatalf("pending: %+v %v", pend, err)
	}
	all, _ := c.ListUploads(ctx, "", ids[0], 1)
	if len(all) != 1 || all[0].ID != ids[1] || all[0].State != "uploading" || all[0].Staging != "stage-1" {
		t.Fatalf("paged: %+v", all)
	}
	// Completing an upload together with the chunk it produced.
	f := mkfile(t, c, RootIno, "f")
	err = c.Update(ctx, func(tx *Tx) error {
		if _, err := tx.SetChunks(f.Ino, []Chunk{{Index: 0, Object: obj(1), Length: 100}}, 100, now()); err != nil {
			return err
		}
		return tx.CompleteUpload(ids[0])
	})
	if err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.CompleteUpload(ctx, ids[0]), syscall.ENOENT)
	if left, _ := c.ListUploads(ctx, "", 0, 0); len(left) != 2 {
		t.Fatalf("left %+v", left)
	}
	// One inode's rows only (unlink asks for them).
	other, err := c.EnqueueUpload(ctx, Upload{Ino: 6, Index: 0, Staging: "stage-6", State: "pending", Created: now()})
	if err != nil {
		t.Fatal(err)
	}
	of5, err := c.UploadsOf(ctx, 5)
	if err != nil || len(of5) != 2 || of5[0].ID != ids[1] || of5[1].ID != ids[2] || of5[1].Staging != "stage-2" {
		t.Fatalf("uploads of inode 5: %+v %v", of5, err)
	}
	if of6, err := c.UploadsOf(ctx, 6); err != nil || len(of6) != 1 || of6[0].ID != other || of6[0].Ino != 6 {
		t.Fatalf("uploads of inode 6: %+v %v", of6, err)
	}
	if none, err := c.UploadsOf(ctx, 7); err != nil || len(none) != 0 {
		t.Fatalf("uploads of inode 7: %+v %v", none, err)
	}
}

// With a delete delay (the point-in-time window), objects a rewrite, a truncate or an
// unlink drops are due only after it; ExpediteDeletes (a shred) makes those queued since a
// time due at once, and leaves older ones waiting.
func TestDeleteDelay(t *testing.T) {
	c := newCatalog(t)
	const day = int64(24 * 3600 * 1e9)
	c.SetDeleteDelay(24 * time.Hour)
	f := mkfile(t, c, RootIno, "f")
	cs := c.ChunkSize()
	t0 := now()
	if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(1), Length: cs}, cs, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(2), Length: cs}, -1, t0+1); err != nil { // drops obj(1)
		t.Fatal(err)
	}
	g := mkfile(t, c, RootIno, "g")
	if _, err := c.SetChunk(ctx, g.Ino, Chunk{Index: 0, Object: obj(3), Length: cs}, cs, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DropChunks(ctx, g.Ino, 0, -1, t0+2); err != nil { // drops obj(3)
		t.Fatal(err)
	}
	if due, _ := c.NextDeletes(ctx, t0+day-10, 10); len(due) != 0 {
		t.Fatalf("due inside the delay: %+v", due)
	}
	if due, _ := c.NextDeletes(ctx, t0+day+10, 10); len(due) != 2 {
		t.Fatalf("due after the delay: %+v, want obj 1 and 3", due)
	}
	// A shred that started at t0+2 expedites only what was queued since (obj 3).
	if n, err := c.ExpediteDeletes(ctx, t0+2); err != nil || n != 1 {
		t.Fatalf("expedite: %d %v", n, err)
	}
	due, _ := c.NextDeletes(ctx, t0+3, 10)
	if len(due) != 1 || due[0].Name != ObjectName(obj(3)) {
		t.Fatalf("due after expediting: %+v, want only obj 3", due)
	}
}
