package content

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
)

// TestRemoteDown: with the remote unreachable, uncached reads fail with EIO
// (not a hang), writes land in staging up to the cap and then fail with
// ENOSPC, fsync fails with EIO after SyncTimeout, and an unmount keeps what
// is staged; once the remote is back everything uploads.
func TestRemoteDown(t *testing.T) {
	const capSlots = 24
	slot := int64(smallLayout.BlockSize + format.BoxOverhead)
	C := smallLayout.ChunkSize
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: 10 * time.Millisecond, SyncTimeout: 300 * time.Millisecond,
		StagingCap: capSlots * slot, ReadTimeout: 400 * time.Millisecond})
	inoA := e.createFile("a")
	fa := e.openFile(inoA)
	dataA := pattern(1, 0, int(2*C))
	e.write(fa, 0, dataA)
	e.sync(fa)
	e.release(fa)
	e.reopen() // nothing cached

	e.fault.SetDown(true)
	fa = e.openFile(inoA)
	buf := make([]byte, 4096)
	start := time.Now()
	_, err := fa.ReadAt(e.ctx, buf, 0)
	wantErrno(t, err, syscall.EIO, "read with the remote down")
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("read with the remote down took %v", d)
	}
	if !strings.Contains(e.logs.String(), "object="+objName(e.chunks(inoA)[0].Object)) {
		t.Fatalf("no log line names the object:\n%s", e.logs.String())
	}

	// A remote that accepts connections and never answers: EIO after ReadTimeout.
	e.fault.SetDown(false)
	e.fault.SetHang(true)
	start = time.Now()
	_, err = fa.ReadAt(e.ctx, buf, C)
	wantErrno(t, err, syscall.EIO, "read with the remote hanging")
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Fatalf("read with the remote hanging returned after %v, want about the 400 ms read timeout", d)
	}
	e.fault.SetHang(false)
	e.fault.SetDown(true)

	inoB := e.createFile("b")
	fb := e.openFile(inoB)
	var want []byte
	n := 0
	for ; n < 100; n++ {
		p := pattern(2, int64(n)*4096, 4096)
		_, err := fb.WriteAt(e.ctx, p, int64(n)*4096)
		if err != nil {
			wantErrno(t, err, syscall.ENOSPC, "write past the staging cap")
			break
		}
		want = append(want, p...)
	}
	if n != capSlots {
		t.Fatalf("%d block writes fit in a staging cap of %d slots", n, capSlots)
	}
	start = time.Now()
	wantErrno(t, fb.Sync(e.ctx), syscall.EIO, "fsync with the remote down")
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("fsync failed after %v, want about the 300 ms SyncTimeout", d)
	}
	st := e.s.Stats()
	if st.StagedBytes != capSlots*slot || st.UploadsFailing == 0 || st.LastUploadError == "" || st.DirtyChunks != capSlots/4 {
		t.Fatalf("stats with the remote down: %+v", st)
	}
	mustEqual(t, e.read(fb, 0, len(want)+10), want, "staged data reads without the remote")
	ups, err := e.v.Catalog().ListUploads(e.ctx, "", 0, 0)
	if err != nil || len(ups) != capSlots/4 || ups[0].Attempts == 0 || ups[0].LastError == "" {
		t.Fatalf("upload queue: %+v, %v", ups, err)
	}

	// Back up: everything goes out.
	e.fault.SetDown(false)
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	if err := e.s.SyncAll(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.s.Stats(); st.StagedBytes != 0 || st.DirtyChunks != 0 {
		t.Fatalf("after the remote came back: %+v", st)
	}
	mustEqual(t, e.read(fa, 0, int(2*C)), dataA, "file a once the remote is back")

	// Unmount with the remote down: what is staged stays, and says so.
	// Down before the write, so its upload cannot slip through first (a whole block:
	// nothing to read from the remote).
	e.fault.SetDown(true)
	p := pattern(3, 0, int(format.DefaultLayout.BlockSize))
	e.write(fb, 0, p)
	copy(want, p)
	e.release(fb)
	e.release(fa)
	ctx2, cancel2 := context.WithTimeout(e.ctx, 300*time.Millisecond)
	defer cancel2()
	left, err := e.s.Close(ctx2)
	if err == nil || left == 0 {
		t.Fatalf("close with the remote down: %d bytes left, err %v; want data left and an error", left, err)
	}
	if !strings.Contains(e.logs.String(), "left staged") {
		t.Fatal("close did not log what it left staged")
	}
	// The catalog's last changes cannot reach the remote either: said, and the next open
	// replicates them (with a new snapshot).
	if err := e.v.Close(e.ctx); err == nil || !strings.Contains(err.Error(), "replica: final shipping") {
		t.Fatalf("closing the volume with the remote down: %v, want the replication's error", err)
	}
	e.s, e.v = nil, nil
	e.open() // remote up again; Recover picks up the leftovers
	fb = e.openFile(inoB)
	mustEqual(t, e.read(fb, 0, len(want)+10), want, "leftovers after remount")
	e.release(fb)
	e.close()
}
