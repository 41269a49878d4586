package keyops

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
)

// dfile is a file written through the data path and what it must read back as.
type dfile struct {
	name string
	ino  uint64
	data []byte
}

// deriveFiles writes files covering the chunk shapes (testLayout: 16 KiB chunks of 4 KiB
// blocks): several full chunks and a partial last one, one byte, exactly one chunk, empty,
// and a sparse file whose first chunks are holes. uids, if given, own them in turn.
func deriveFiles(e *tvol, uids ...uint32) []dfile {
	e.t.Helper()
	sparse := make([]byte, 70<<10)
	copy(sparse[66<<10:], pattern(9, 4<<10))
	specs := []struct {
		name string
		data []byte
	}{
		{"big", pattern(1, 100<<10+123)},
		{"one", []byte{42}},
		{"exact", pattern(3, 16<<10)},
		{"empty", nil},
		{"sparse", sparse},
		{"mid", pattern(5, 40<<10)},
	}
	var out []dfile
	for i, s := range specs {
		uid := uint32(0)
		if len(uids) > 0 {
			uid = uids[i%len(uids)]
		}
		in := e.writeFile(s.name, uid, s.data)
		out = append(out, dfile{s.name, in.Ino, s.data})
	}
	return out
}

// checkFiles reads every file back through the data path.
func (e *tvol) checkFiles(files []dfile, when string) {
	e.t.Helper()
	for _, f := range files {
		got, err := e.readFile(f.ino)
		if err != nil {
			e.t.Fatalf("%s: read %s: %v", when, f.name, err)
		}
		mustEqualBytes(e.t, got, f.data, when+": "+f.name)
	}
}

// chunkRows returns every chunk row of the files.
func (e *tvol) chunkRows(files []dfile) map[ChunkRef]meta.Chunk {
	e.t.Helper()
	out := map[ChunkRef]meta.Chunk{}
	for _, f := range files {
		rows, err := e.v.Catalog().Chunks(ctx, f.ino, 0, -1)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range rows {
			out[ChunkRef{f.ino, r.Index}] = r
		}
	}
	return out
}

// remoteObjects is the set of chunk object names on the local remote.
func (e *tvol) remoteObjects() map[string]bool {
	e.t.Helper()
	out := map[string]bool{}
	for _, p := range e.objectFiles() {
		rel, err := filepath.Rel(e.remote, p)
		if err != nil {
			e.t.Fatal(err)
		}
		out[filepath.ToSlash(rel)] = true
	}
	return out
}

// checkRemoteMatches: the remote holds exactly the objects the catalog names (old objects
// deleted, no orphaned copy) and the delete queue is empty.
func (e *tvol) checkRemoteMatches(rows map[ChunkRef]meta.Chunk, when string) {
	e.t.Helper()
	objs := e.remoteObjects()
	for c, r := range rows {
		if !objs[meta.ObjectName(r.Object)] {
			e.t.Fatalf("%s: inode %d chunk %d: object %s missing from the remote", when, c.Ino, c.Index, meta.ObjectName(r.Object))
		}
		delete(objs, meta.ObjectName(r.Object))
	}
	if len(objs) > 0 {
		e.t.Fatalf("%s: %d objects on the remote that no chunk names: %v", when, len(objs), objs)
	}
	if n, err := e.v.Catalog().PendingDeletes(ctx); err != nil || n != 0 {
		e.t.Fatalf("%s: %d deletes still queued (%v)", when, n, err)
	}
}

// TestDeriveRotateHSM rotates a derive-mode volume on a real SoftHSM2 token: every record
// moves to v2 with its salt, every chunk is re-encrypted into a new object under v2, the old
// objects are gone from the remote, every file reads back identically, progress counts chunks
// and bytes, and --retire-old then destroys v1 in the token.
func TestDeriveRotateHSM(t *testing.T) {
	e := newVol(t, volOpt{derive: true})
	files := deriveFiles(e)
	before := e.chunkRows(files)
	var wantBytes int64
	for _, r := range before {
		if r.KeyVersion != 1 {
			t.Fatalf("chunk written under v1 records key version %d", r.KeyVersion)
		}
		wantBytes += r.Length
	}
	if len(before) != 7+1+1+1+3 { // big 7, one 1, exact 1, sparse 1 (chunk 4), mid 3
		t.Fatalf("%d chunks written, want 13", len(before))
	}
	salts := map[uint64][]byte{}
	for _, f := range files {
		k, err := e.v.Catalog().GetKey(ctx, f.ino)
		if err != nil || k.Mode != meta.KeyModeDerive {
			t.Fatalf("key of %s: %+v %v", f.name, k, err)
		}
		salts[f.ino] = k.Salt
	}
	objsBefore := e.remoteObjects()

	var progress []Progress
	res, err := Rotate(ctx, e.v, RotateOptions{Actor: "test", Logger: quiet, ChunkBatch: 4, Workers: 3,
		Progress: func(p Progress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || len(res.Targets) != 1 || res.Targets[0] != (keys.KEKRef{Version: 2}) ||
		res.Rekeyed != int64(len(files)) || res.Reencrypted != 13 || res.ReencryptedBytes != wantBytes ||
		res.DeletedObjects != 13 || res.Changed != 0 {
		t.Fatalf("result %+v (want 13 chunks, %d bytes)", res, wantBytes)
	}
	if len(progress) != 4 { // 13 chunks in batches of 4
		t.Fatalf("progress %+v", progress)
	}
	last := progress[len(progress)-1]
	if last.Unit != "chunks" || last.Done != 13 || last.Total != 13 || last.Bytes != wantBytes || last.TotalBytes != wantBytes {
		t.Fatalf("last progress %+v", last)
	}
	if got := e.versions(); !slices.Equal(got, []string{"volume/v1:old", "volume/v2:active"}) {
		t.Fatalf("versions %v", got)
	}
	after := e.chunkRows(files)
	if len(after) != len(before) {
		t.Fatalf("%d chunks after rotation, %d before", len(after), len(before))
	}
	for c, r := range after {
		old := before[c]
		if r.KeyVersion != 2 || r.Length != old.Length || r.Object == old.Object {
			t.Fatalf("inode %d chunk %d after rotation: %+v (before %+v)", c.Ino, c.Index, r, old)
		}
		if objsBefore[meta.ObjectName(r.Object)] {
			t.Fatalf("inode %d chunk %d: new object id was already on the remote", c.Ino, c.Index)
		}
	}
	e.checkRemoteMatches(after, "after rotation")
	for _, f := range files {
		k, _ := e.v.Catalog().GetKey(ctx, f.ino)
		if k.Version != 2 || string(k.Salt) != string(salts[f.ino]) {
			t.Fatalf("record of %s after rotation: version %d, salt kept %v", f.name, k.Version, string(k.Salt) == string(salts[f.ino]))
		}
	}
	e.checkFiles(files, "after rotation")
	rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Authenticated != rep.Entries {
		t.Fatalf("audit after rotation: %+v %v", rep, err)
	}
	endEv, ok, err := e.v.Catalog().LastAuditEvent(ctx, eventRotateStart, eventRotateEnd)
	var detail map[string]any
	if err != nil || !ok || endEv.Event != eventRotateEnd || json.Unmarshal([]byte(endEv.Detail), &detail) != nil ||
		detail["reencrypted"] != float64(13) || detail["reencrypted_bytes"] != float64(wantBytes) {
		t.Fatalf("rotate.end: %+v %v", endEv, err)
	}

	// Nothing uses v1 now: a second rotation with --retire-old makes v3, re-encrypts again
	// and destroys v1 and v2 in the token; a fresh open still reads everything.
	res, err = Rotate(ctx, e.v, RotateOptions{Actor: "test", Logger: quiet, RetireOld: true})
	if err != nil || res.Reencrypted != 13 || len(res.Retired) != 2 {
		t.Fatalf("second rotation: %+v %v", res, err)
	}
	if tv := e.tokenVersions(); !slices.Equal(tv, []string{"volume/v3"}) {
		t.Fatalf("token holds %v after --retire-old", tv)
	}
	e.reopen()
	e.checkFiles(files, "after retire and reopen")
	e.checkRemoteMatches(e.chunkRows(files), "after the second rotation")
}

// TestDeriveRotateResume kills a derive-mode rotation at every step (a hook that fails there,
// as a kill would), checks that every file still reads back before the rerun, and that the
// rerun finishes the same plan: every chunk on v2, no old object and no orphaned copy left.
func TestDeriveRotateResume(t *testing.T) {
	for _, step := range []string{"planned", "kek-created", "keks-ready", "records", "intents", "put", "batch", "reencrypted"} {
		t.Run(step, func(t *testing.T) {
			e := newVol(t, volOpt{derive: true})
			files := []dfile{}
			for i, n := range []int{70 << 10, 33 << 10, 5} {
				name := fmt.Sprintf("f%d", i)
				data := pattern(byte(i+1), n)
				files = append(files, dfile{name, e.writeFile(name, 0, data).Ino, data})
			}
			stop := errors.New("killed")
			_, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, ChunkBatch: 3, Workers: 2, hook: func(s string) error {
				if s == step {
					return stop
				}
				return nil
			}})
			if !errors.Is(err, stop) {
				t.Fatalf("rotation did not stop at %s: %v", step, err)
			}
			// The process dies; the files read back on the next open, before any rerun.
			e.reopen()
			e.checkFiles(files, "after a kill at "+step)
			res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, ChunkBatch: 3})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Resumed {
				t.Error("the rerun did not say it finished an interrupted rotation")
			}
			if got := e.versions(); !slices.Equal(got, []string{"volume/v1:old", "volume/v2:active"}) {
				t.Fatalf("versions after the rerun: %v", got)
			}
			rows := e.chunkRows(files)
			if len(rows) != 5+3+1 {
				t.Fatalf("%d chunks, want 9", len(rows))
			}
			for c, r := range rows {
				if r.KeyVersion != 2 {
					t.Fatalf("inode %d chunk %d still on key version %d", c.Ino, c.Index, r.KeyVersion)
				}
			}
			e.checkRemoteMatches(rows, "after the rerun")
			e.checkFiles(files, "after the rerun")
			if n := e.countUsing("", 1); n != 0 {
				t.Fatalf("%d records still on v1", n)
			}
			if _, err := Retire(ctx, e.v, "test", quiet); err != nil {
				t.Fatalf("retire after the rerun: %v", err)
			}
			if tv := e.tokenVersions(); !slices.Equal(tv, []string{"volume/v2"}) {
				t.Fatalf("token holds %v", tv)
			}
			e.checkFiles(files, "after retiring v1")
		})
	}
}

// TestDeriveRetireRefused: while a chunk still uses v1 — the rotation was stopped after the
// records moved, or a chunk object is damaged and cannot be re-encrypted — retiring refuses
// and destroys nothing; the damaged chunk is named; once its file is shredded, rotation
// finishes and retires v1.
func TestDeriveRetireRefused(t *testing.T) {
	e := newVol(t, volOpt{derive: true})
	files := deriveFiles(e)
	stop := errors.New("killed")
	_, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, hook: func(s string) error {
		if s == "records" {
			return stop
		}
		return nil
	}})
	if !errors.Is(err, stop) {
		t.Fatal(err)
	}
	_, err = Retire(ctx, e.v, "test", quiet)
	if !errors.Is(err, ErrRetireBusy) || !strings.Contains(err.Error(), "volume/v1 (13 chunks)") {
		t.Fatalf("retire with every chunk on v1: %v", err)
	}
	if tv := e.tokenVersions(); !contains(tv, "volume/v1") {
		t.Fatalf("refused retire destroyed v1: %v", tv)
	}
	e.checkFiles(files, "records on v2, chunks on v1")

	// Damage one object of "mid" (flip a ciphertext byte on the remote).
	var mid dfile
	for _, f := range files {
		if f.name == "mid" {
			mid = f
		}
	}
	rows, err := e.v.Catalog().Chunks(ctx, mid.ino, 1, 2)
	if err != nil || len(rows) != 1 {
		t.Fatal(rows, err)
	}
	p := filepath.Join(e.remote, filepath.FromSlash(meta.ObjectName(rows[0].Object)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[format.HeaderSize+100] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, RetireOld: true})
	var fc *FailedChunksError
	if !errors.As(err, &fc) || len(fc.Chunks) != 1 || fc.Chunks[0] != (ChunkRef{mid.ino, 1}) ||
		!strings.Contains(err.Error(), fmt.Sprintf("inode %d chunk 1", mid.ino)) {
		t.Fatalf("rotation with a damaged chunk: %v", err)
	}
	if !res.Resumed || res.Reencrypted != 12 {
		t.Fatalf("the other chunks were not re-encrypted: %+v", res)
	}
	_, err = Retire(ctx, e.v, "test", quiet)
	if !errors.Is(err, ErrRetireBusy) || !strings.Contains(err.Error(), "volume/v1 (1 chunks)") {
		t.Fatalf("retire with one chunk on v1: %v", err)
	}
	if tv := e.tokenVersions(); !contains(tv, "volume/v1") {
		t.Fatalf("refused retire destroyed v1: %v", tv)
	}
	var good []dfile
	for _, f := range files {
		if f.name != "mid" {
			good = append(good, f)
		}
	}
	e.checkFiles(good, "after the incomplete rotation")

	if _, err := ShredPaths(ctx, e.v, []string{"/mid"}, ShredOptions{Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	res, err = Rotate(ctx, e.v, RotateOptions{Logger: quiet, RetireOld: true})
	if err != nil || !res.Resumed || len(res.Retired) != 1 || res.Retired[0] != (keys.KEKRef{Version: 1}) {
		t.Fatalf("rotation after the shred: %+v %v", res, err)
	}
	if tv := e.tokenVersions(); contains(tv, "volume/v1") {
		t.Fatalf("v1 still on the token: %v", tv)
	}
	e.checkFiles(good, "after retiring v1")
	e.checkRemoteMatches(e.chunkRows(good), "after retiring v1")
}

// TestDeriveRotatePassphrase: a passphrase volume with per-user chains in derive mode
// rotates every chain, re-encrypts every file, and --retire-old erases the old materials.
func TestDeriveRotatePassphrase(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true, derive: true, perUser: true})
	files := deriveFiles(e, 0, 1000)
	res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, RetireOld: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Targets) != 3 || res.Reencrypted != 13 || len(res.Retired) != 3 {
		t.Fatalf("result %+v", res)
	}
	want := []string{"volume/v1:destroyed", "volume/v2:active", "u0/v1:destroyed", "u0/v2:active", "u1000/v1:destroyed", "u1000/v2:active"}
	if got := e.versions(); !slices.Equal(got, want) {
		t.Fatalf("versions %v, want %v", got, want)
	}
	e.reopen()
	rows := e.chunkRows(files)
	for c, r := range rows {
		if r.KeyVersion != 2 {
			t.Fatalf("inode %d chunk %d on key version %d", c.Ino, c.Index, r.KeyVersion)
		}
	}
	e.checkRemoteMatches(rows, "after rotation")
	e.checkFiles(files, "after rotation and reopen")
}
