package meta

import (
	"bytes"
	"testing"
)

// TestRekey covers the catalog side of derive-mode rotation: listing and counting chunks by
// key version, moving records (salt kept, version-0 chunks pinned), intents, and the
// compare-and-swap of chunk objects.
func TestRekey(t *testing.T) {
	c := newCatalog(t)
	salt := bytes.Repeat([]byte{7}, 32)
	mk := func(name, chain string) Inode {
		t.Helper()
		in, err := c.CreateFile(ctx, RootIno, []byte(name), fileAttr(), &KeyRecord{Mode: KeyModeDerive, Chain: chain, Version: 1, Salt: salt})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	f, g, u := mk("f", ""), mk("g", ""), mk("u", "u1000")
	w := mkfile(t, c, RootIno, "w") // a wrap record: never listed
	set := func(ino uint64, ch Chunk) {
		t.Helper()
		if _, err := c.SetChunk(ctx, ino, ch, ch.Index*c.ChunkSize()+ch.Length, 0); err != nil {
			t.Fatal(err)
		}
	}
	cs := c.ChunkSize()
	set(f.Ino, Chunk{Index: 0, Object: obj(1), Length: cs, KeyVersion: 1})
	set(f.Ino, Chunk{Index: 1, Object: obj(2), Length: 10, KeyVersion: 0}) // "the record's version"
	set(f.Ino, Chunk{Index: 2, Object: obj(3), Length: 20, KeyVersion: 2})
	set(g.Ino, Chunk{Index: 5, Object: obj(4), Length: 30, KeyVersion: 1})
	set(u.Ino, Chunk{Index: 0, Object: obj(5), Length: 40, KeyVersion: 1})
	set(w.Ino, Chunk{Index: 0, Object: obj(6), Length: 50})

	n, b, err := c.CountChunksToRekey(ctx, "", 2)
	if err != nil || n != 3 || b != cs+10+30 {
		t.Fatalf("count: %d chunks, %d bytes, %v", n, b, err)
	}
	page, err := c.ChunksToRekey(ctx, "", 2, 0, -1, 2)
	if err != nil || len(page) != 2 || page[0].Ino != f.Ino || page[0].Chunk.Index != 0 || page[1].Chunk.Index != 1 ||
		page[0].FileID != f.FileID || !bytes.Equal(page[0].Key.Salt, salt) {
		t.Fatalf("first page: %+v %v", page, err)
	}
	page, err = c.ChunksToRekey(ctx, "", 2, page[1].Ino, page[1].Chunk.Index, 2)
	if err != nil || len(page) != 1 || page[0].Ino != g.Ino || page[0].Chunk != (Chunk{Index: 5, Object: obj(4), Length: 30, KeyVersion: 1}) {
		t.Fatalf("second page: %+v %v", page, err)
	}

	// Records move to v2 keeping the salt; f's version-0 chunk is pinned to v1 first.
	old := KeyRecord{Mode: KeyModeDerive, Version: 1, Salt: salt}
	nw := old
	nw.Version = 2
	stale := old
	stale.Version = 9
	var ok []bool
	if err := c.Update(ctx, func(t *Tx) error {
		ok, err = t.RekeyDeriveRecords([]KeySwap{{Ino: f.Ino, Old: old, New: nw}, {Ino: g.Ino, Old: stale, New: nw}})
		return err
	}); err != nil || !ok[0] || ok[1] {
		t.Fatalf("re-key records: %v %v", ok, err)
	}
	if k, _ := c.GetKey(ctx, f.Ino); k.Version != 2 || !bytes.Equal(k.Salt, salt) {
		t.Fatalf("f's record: %+v", k)
	}
	if rows, _ := c.Chunks(ctx, f.Ino, 1, 2); rows[0].KeyVersion != 1 {
		t.Fatalf("version-0 chunk not pinned to v1: %+v", rows[0])
	}
	if err := c.Update(ctx, func(t *Tx) error {
		_, err := t.RekeyDeriveRecords([]KeySwap{{Ino: w.Ino, Old: *testKey(1), New: nw}})
		return err
	}); err == nil {
		t.Fatal("a wrap record was re-keyed")
	}

	// Intents: queued, not due; a swap takes its intent; a lost swap leaves the copy due.
	ts := now()
	if err := c.Update(ctx, func(t *Tx) error {
		return t.QueueRekeyIntents([]string{ObjectName(obj(11)), ObjectName(obj(12)), ObjectName(obj(13))}, ts, ts+1e12)
	}); err != nil {
		t.Fatal(err)
	}
	if due, _ := c.NextDeletes(ctx, ts+1, 10); len(due) != 0 {
		t.Fatalf("intents due at once: %+v", due)
	}
	f0 := Chunk{Index: 0, Object: obj(1), Length: cs, KeyVersion: 1}
	swaps := []ChunkSwap{
		{Ino: f.Ino, Old: f0, New: Chunk{Index: 0, Object: obj(11), Length: cs, KeyVersion: 2}},
		// stale: g's chunk is on v1, not v0
		{Ino: g.Ino, Old: Chunk{Index: 5, Object: obj(4), Length: 30, KeyVersion: 0}, New: Chunk{Index: 5, Object: obj(12), Length: 30, KeyVersion: 2}},
		// no intent for obj(14): its copy cannot be trusted to exist
		{Ino: u.Ino, Old: Chunk{Index: 0, Object: obj(5), Length: 40, KeyVersion: 1}, New: Chunk{Index: 0, Object: obj(14), Length: 40, KeyVersion: 2}},
	}
	if err := c.Update(ctx, func(t *Tx) error {
		ok, err = t.SwapChunkObjects(swaps, ts)
		return err
	}); err != nil || !ok[0] || ok[1] || ok[2] {
		t.Fatalf("swaps: %v %v", ok, err)
	}
	if rows, _ := c.Chunks(ctx, f.Ino, 0, 1); rows[0] != swaps[0].New {
		t.Fatalf("f chunk 0 after swap: %+v", rows[0])
	}
	if rows, _ := c.Chunks(ctx, u.Ino, 0, 1); rows[0].Object != obj(5) {
		t.Fatalf("u chunk 0 swapped without an intent: %+v", rows[0])
	}
	due, _ := c.NextDeletes(ctx, ts, 10)
	names := map[string]bool{}
	for _, d := range due {
		names[d.Name] = true
	}
	if len(due) != 2 || !names[ObjectName(obj(1))] || !names[ObjectName(obj(12))] {
		t.Fatalf("due after swaps (want old f0 and the lost copy): %+v", due)
	}
	for _, d := range due {
		c.DeleteDone(ctx, d.Name)
	}
	// Only obj(13)'s intent is left; releasing makes it due.
	if n, err := c.ReleaseRekeyIntents(ctx, ts); err != nil || n != 1 {
		t.Fatalf("release: %d %v", n, err)
	}
	if due, _ := c.NextDeletes(ctx, ts, 10); len(due) != 1 || due[0].Name != ObjectName(obj(13)) {
		t.Fatalf("due after release: %+v", due)
	}
	// A swap must keep index and length and change the object.
	if err := c.Update(ctx, func(t *Tx) error {
		_, err := t.SwapChunkObjects([]ChunkSwap{{Ino: f.Ino, Old: swaps[0].New, New: swaps[0].New}}, ts)
		return err
	}); err == nil {
		t.Fatal("a swap onto the same object was accepted")
	}
	mustCheck(t, c)
}
