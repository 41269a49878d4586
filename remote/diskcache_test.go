package remote_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/remote"
	"coffer/remote/remotetest"
	"coffer/test/s3server"
)

func TestConformanceDiskCache(t *testing.T) {
	srv := s3server.Start(t)
	st := open(t, srv.Remote("bkt/vol", "upload_cutoff=5Mi"), remote.Options{})
	// 8 MiB: the conformance suite's large object (12 MiB) is never kept, smaller ones are.
	dc, err := remote.NewDiskCache(st, t.TempDir(), 8<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	remotetest.Run(t, dc, remotetest.Config{})
}

// cachedFiles lists the copies in a disk cache folder.
func cachedFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// The disk cache serves reads of what was Put through it without asking S3, keeps at
// most its size (least recently used out first), forgets deleted objects, survives a
// reopen, drops a copy torn by a crash, and falls back to S3 when a copy goes bad.
func TestDiskCache(t *testing.T) {
	st, mc := countedS3(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const size = 100 << 10
	dc, err := remote.NewDiskCache(st, dir, 3*size+10, nil) // room for three objects
	if err != nil {
		t.Fatal(err)
	}
	obj := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, size) }
	names := []string{"c/aa/zero", "c/ab/one", "c/ac/two", "c/ad/three"}
	get := func(i int, off, n int64) {
		t.Helper()
		got, err := dc.GetRange(ctx, names[i], off, n)
		if err != nil || !bytes.Equal(got, obj(i)[off:off+n]) {
			t.Fatalf("GetRange(%s, %d, %d) = %d bytes, %v", names[i], off, n, len(got), err)
		}
	}
	for i := range 3 {
		if err := dc.Put(ctx, names[i], obj(i)); err != nil {
			t.Fatal(err)
		}
	}
	mc.reset()
	get(0, 0, 100)
	get(1, 5000, 16384)
	get(2, size-7, 7)
	if n := mc.count(http.MethodGet); n != 0 {
		t.Errorf("reads of cached objects sent %d GETs; want 0", n)
	}
	// A copy is the object's bytes: ciphertext in coffer's use, nothing else.
	for i := range 3 {
		b, err := os.ReadFile(filepath.Join(dir, strings.ReplaceAll(names[i], "/", "%")+".102400"))
		if err != nil || !bytes.Equal(b, obj(i)) {
			t.Fatalf("copy of %s: %d bytes, %v", names[i], len(b), err)
		}
	}

	// A fourth object evicts the least recently used (zero). A small read of it then goes
	// to S3, and starts a fill: a GET of the whole object into the cache, after which it
	// is read locally again (the least recently used, one, makes room).
	get(1, 0, 10)
	get(2, 0, 10)
	if err := dc.Put(ctx, names[3], obj(3)); err != nil {
		t.Fatal(err)
	}
	if got := cachedFiles(t, dir); len(got) != 3 || hasCopy(got, names[0]) {
		t.Errorf("copies after a fourth Put: %v; want 3, without zero's", got)
	}
	mc.reset()
	get(0, 0, 100)
	get(3, 0, 100)
	waitCopy(t, dir, names[0])
	get(0, 5000, 100)
	if n := mc.count(http.MethodGet); n != 2 {
		t.Errorf("reads of an evicted object before and after its fill, and of a cached one, sent %d GETs; want 2 (the read, the fill)", n)
	}
	if got := cachedFiles(t, dir); len(got) != 3 || hasCopy(got, names[1]) {
		t.Errorf("copies after the fill: %v; want 3, without one's", got)
	}
	// A range past the end fails as on the remote.
	if _, err := dc.GetRange(ctx, names[3], size-5, 10); err == nil {
		t.Error("a range past the end of a cached object succeeded")
	}

	// Delete removes the copy and the object.
	if err := dc.Delete(ctx, names[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.GetRange(ctx, names[2], 0, 10); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("GetRange of a deleted object = %v; want ErrNotFound", err)
	}
	if got := cachedFiles(t, dir); len(got) != 2 || hasCopy(got, names[2]) {
		t.Errorf("copies after a Delete: %v; want 2, without two's", got)
	}

	// A reopen keeps the copies; one torn by a crash (short) is dropped, as is a
	// temporary file left by an unfinished copy.
	torn := filepath.Join(dir, strings.ReplaceAll(names[0], "/", "%")+".102400")
	if err := os.Truncate(torn, 4096); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	dc2, err := remote.NewDiskCache(st, dir, 3*size+10, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dc2.Close(ctx)
	if got := cachedFiles(t, dir); len(got) != 1 || !hasCopy(got, names[3]) {
		t.Errorf("copies after a reopen: %v; want only three's", got)
	}
	mc.reset()
	for _, i := range []int{3, 0} {
		got, err := dc2.GetRange(ctx, names[i], 0, size)
		if err != nil || !bytes.Equal(got, obj(i)) {
			t.Fatalf("after reopen, GetRange(%s) = %d bytes, %v", names[i], len(got), err)
		}
	}
	waitCopy(t, dir, names[0])
	if n := mc.count(http.MethodGet); n != 2 {
		t.Errorf("after a reopen, reads of a kept and a dropped copy sent %d GETs; want 2 (the read and the fill of the dropped one)", n)
	}

	// A copy that goes bad while cached (here: cut short) is dropped and S3 answers.
	kept := filepath.Join(dir, strings.ReplaceAll(names[3], "/", "%")+".102400")
	if err := os.Truncate(kept, 10); err != nil {
		t.Fatal(err)
	}
	got, err := dc2.GetRange(ctx, names[3], 1000, 2000)
	if err != nil || !bytes.Equal(got, obj(3)[1000:3000]) {
		t.Fatalf("GetRange of a damaged copy = %d bytes, %v; want the object's bytes from S3", len(got), err)
	}
	if _, err := os.Stat(kept); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the damaged copy is still there: %v", err)
	}
}

func hasCopy(files []string, name string) bool {
	for _, f := range files {
		if strings.HasPrefix(f, strings.ReplaceAll(name, "/", "%")+".") {
			return true
		}
	}
	return false
}

// waitCopy waits until the cache folder holds a copy of name (a fill finished).
func waitCopy(t *testing.T, dir, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !hasCopy(cachedFiles(t, dir), name) {
		if time.Now().After(deadline) {
			t.Fatalf("no copy of %s 10 s after a read that missed: %v", name, cachedFiles(t, dir))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
