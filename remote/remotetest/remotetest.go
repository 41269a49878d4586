// Package remotetest is the conformance suite every remote.Store must pass,
// in the spirit of rclone's fstests: the same assertions run against a
// local folder, a real S3 server and a real SFTP server (see remote's tests),
// and against any decorator that claims to be transparent.
package remotetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/remote"
)

// Config tunes the suite for a backend.
type Config struct {
	// LargeSize is the size of the large-object test (default 12 MiB,
	// which is multipart on S3 when upload_cutoff is below it).
	LargeSize int
	// Workers and OpsPerWorker shape the concurrency test (16 x 8).
	Workers, OpsPerWorker int
}

// Run runs the whole suite against st. Each subtest works under its own
// random prefix, so st may hold other objects; the suite deletes what it
// writes.
func Run(t *testing.T, st remote.Store, cfg Config) {
	if cfg.LargeSize == 0 {
		cfg.LargeSize = 12 << 20
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16
	}
	if cfg.OpsPerWorker == 0 {
		cfg.OpsPerWorker = 8
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, st remote.Store, p string, cfg Config)
	}{
		{"PutGet", testPutGet},
		{"Ranges", testRanges},
		{"NotFound", testNotFound},
		{"Delete", testDelete},
		{"List", testList},
		{"Overwrite", testOverwrite},
		{"Empty", testEmpty},
		{"InvalidNames", testInvalidNames},
		{"Concurrency", testConcurrency},
		{"Cancel", testCancel},
		{"Large", testLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := "t" + randName(8) + "/"
			t.Cleanup(func() { cleanup(t, st, p) })
			tc.fn(t, st, p, cfg)
		})
	}
	if st.String() == "" {
		t.Errorf("String() is empty")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func cleanup(t *testing.T, st remote.Store, p string) {
	ctx := context.Background()
	var names []string
	_ = st.List(ctx, p, func(name string, _ int64) error { names = append(names, name); return nil })
	for _, n := range names {
		if err := st.Delete(ctx, n); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

const alphabet = "abcdefghijklmnopqrstuvwxyz234567"

func randName(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// RandBytes returns n random bytes.
func RandBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func mustPut(t *testing.T, st remote.Store, name string, data []byte) {
	t.Helper()
	if err := st.Put(ctxT(t), name, data); err != nil {
		t.Fatalf("Put(%s, %d bytes): %v", name, len(data), err)
	}
}

func testPutGet(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	data := RandBytes(1000)
	name := p + "c/ab/" + randName(26)
	mustPut(t, st, name, data)
	got, err := st.GetRange(ctx, name, 0, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetRange(0,-1) = %d bytes, %v; want the 1000 bytes put", len(got), err)
	}
	size, err := st.Stat(ctx, name)
	if err != nil || size != 1000 {
		t.Fatalf("Stat = %d, %v; want 1000", size, err)
	}
	got, err = st.GetRange(ctx, name, 0, 1000)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetRange(0,1000) = %d bytes, %v", len(got), err)
	}
}

func testRanges(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	const size = 10000
	data := RandBytes(size)
	name := p + "obj"
	mustPut(t, st, name, data)
	ok := []struct{ off, n int64 }{
		{0, 10},         // start
		{4990, 20},      // middle
		{size - 10, 10}, // end
		{0, size},       // whole, exact end
		{size - 1, 1},   // last byte
		{size, 0},       // empty at the exact end
		{5000, 0},       // empty in the middle
		{size, -1},      // to the end, from the end: empty
		{5000, -1},      // to the end
		{0, -1},         // all
	}
	for _, c := range ok {
		got, err := st.GetRange(ctx, name, c.off, c.n)
		if err != nil {
			t.Errorf("GetRange(%d,%d): %v", c.off, c.n, err)
			continue
		}
		end := int64(size)
		if c.n >= 0 {
			end = c.off + c.n
		}
		if !bytes.Equal(got, data[c.off:end]) {
			t.Errorf("GetRange(%d,%d) = %d bytes, want bytes %d..%d", c.off, c.n, len(got), c.off, end)
		}
	}
	past := []struct{ off, n int64 }{
		{size - 5, 10}, // runs past the end
		{size, 1},      // starts at the end
		{size + 1, -1}, // starts past the end, to the end
		{size + 1, 0},  // empty, but past the end
		{20000, 5},     // far past
	}
	for _, c := range past {
		got, err := st.GetRange(ctx, name, c.off, c.n)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("GetRange(%d,%d) = %d bytes, %v; want an error wrapping io.ErrUnexpectedEOF", c.off, c.n, len(got), err)
		}
		if errors.Is(err, remote.ErrNotFound) {
			t.Errorf("GetRange(%d,%d): past the end must not look like a missing object: %v", c.off, c.n, err)
		}
	}
	for _, c := range []struct{ off, n int64 }{{-1, 5}, {0, -2}} {
		if _, err := st.GetRange(ctx, name, c.off, c.n); err == nil {
			t.Errorf("GetRange(%d,%d) succeeded; want an error", c.off, c.n)
		}
	}
}

func testNotFound(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	missing := p + "nope/" + randName(10)
	if _, err := st.Stat(ctx, missing); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("Stat(missing) = %v; want ErrNotFound", err)
	}
	for _, n := range []int64{-1, 0, 1, 100} {
		if _, err := st.GetRange(ctx, missing, 0, n); !errors.Is(err, remote.ErrNotFound) {
			t.Errorf("GetRange(missing, 0, %d) = %v; want ErrNotFound", n, err)
		}
	}
	// A name that is only a folder on local/sftp (a prefix on S3) is not
	// an object either.
	mustPut(t, st, p+"dir/leaf", []byte("x"))
	if _, err := st.Stat(ctx, p+"dir"); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("Stat(folder) = %v; want ErrNotFound", err)
	}
	if _, err := st.GetRange(ctx, p+"dir", 0, -1); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("GetRange(folder) = %v; want ErrNotFound", err)
	}
	if err := st.Delete(ctx, p+"dir"); err != nil {
		t.Errorf("Delete(folder) = %v; want nil (no such object)", err)
	}
	if _, err := st.Stat(ctx, p+"dir/leaf"); err != nil {
		t.Errorf("Delete(folder) removed what is under it: %v", err)
	}
}

func testDelete(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	name := p + "c/zz/" + randName(26)
	mustPut(t, st, name, []byte("doomed"))
	if err := st.Delete(ctx, name); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := st.Stat(ctx, name); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("Stat after Delete = %v; want ErrNotFound", err)
	}
	if _, err := st.GetRange(ctx, name, 0, -1); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("GetRange after Delete = %v; want ErrNotFound", err)
	}
	if err := st.Delete(ctx, name); err != nil {
		t.Errorf("Delete of a deleted object = %v; want nil", err)
	}
	if err := st.Delete(ctx, p+"never/was"); err != nil {
		t.Errorf("Delete of a never-written object = %v; want nil", err)
	}
	n := 0
	_ = st.List(ctx, p, func(string, int64) error { n++; return nil })
	if n != 0 {
		t.Errorf("List after Delete found %d objects; want 0", n)
	}
}

func listAll(t *testing.T, st remote.Store, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := st.List(ctxT(t), prefix, func(name string, size int64) error {
		if _, dup := got[name]; dup {
			t.Errorf("List(%q) gave %s twice", prefix, name)
		}
		got[name] = size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func testList(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	objs := map[string]int64{
		p + "a/1":     1,
		p + "a/2":     22,
		p + "a/b/3":   333,
		p + "a/b/c/4": 4,
		p + "ab/5":    55,
		p + "c/6":     6,
		p + "top":     7,
	}
	for name, size := range objs {
		mustPut(t, st, name, RandBytes(int(size)))
	}
	pick := func(f func(string) bool) map[string]int64 {
		m := map[string]int64{}
		for k, v := range objs {
			if f(k) {
				m[k] = v
			}
		}
		return m
	}
	cases := []struct {
		prefix string
		want   map[string]int64
	}{
		{p, objs},
		{p + "a/", pick(func(k string) bool { return strings.HasPrefix(k, p+"a/") })},
		{p + "a", pick(func(k string) bool { return strings.HasPrefix(k, p+"a") })},
		{p + "a/b/", pick(func(k string) bool { return strings.HasPrefix(k, p+"a/b/") })},
		{p + "t", map[string]int64{p + "top": 7}},
		{p + "top", map[string]int64{p + "top": 7}},
		{p + "zzz/", map[string]int64{}},
		{p + "zzz", map[string]int64{}},
	}
	for _, c := range cases {
		got := listAll(t, st, c.prefix)
		if !mapsEqual(got, c.want) {
			t.Errorf("List(%q) = %v; want %v", c.prefix, keys(got), keys(c.want))
		}
	}
	// The whole store lists at least ours, with full names.
	all := listAll(t, st, "")
	for name, size := range objs {
		if all[name] != size {
			t.Errorf("List(\"\") lacks %s (size %d)", name, size)
		}
	}
	// An error from fn stops the listing and comes back as is.
	stop := errors.New("stop here")
	calls := 0
	err := st.List(ctx, p, func(string, int64) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List with a failing fn = %v after %d calls; want the fn error after 1 call", err, calls)
	}
	if err := st.List(ctx, "Bad/", func(string, int64) error { return nil }); !errors.Is(err, remote.ErrInvalidName) {
		t.Errorf("List(invalid prefix) = %v; want ErrInvalidName", err)
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func keys(m map[string]int64) []string {
	var ks []string
	for k, v := range m {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(ks)
	return ks
}

func testOverwrite(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	name := p + "coffer-volume"
	mustPut(t, st, name, []byte("the old and longer content"))
	if _, err := st.GetRange(ctx, name, 0, 5); err != nil {
		t.Fatal(err)
	}
	mustPut(t, st, name, []byte("new"))
	got, err := st.GetRange(ctx, name, 0, -1)
	if err != nil || string(got) != "new" {
		t.Errorf("after overwrite GetRange = %q, %v; want \"new\"", got, err)
	}
	if size, err := st.Stat(ctx, name); err != nil || size != 3 {
		t.Errorf("after overwrite Stat = %d, %v; want 3", size, err)
	}
	if _, err := st.GetRange(ctx, name, 0, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("after overwrite with shorter content, GetRange(0,10) = %v; want io.ErrUnexpectedEOF", err)
	}
}

func testEmpty(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	name := p + "empty"
	mustPut(t, st, name, nil)
	if size, err := st.Stat(ctx, name); err != nil || size != 0 {
		t.Errorf("Stat(empty) = %d, %v", size, err)
	}
	if got, err := st.GetRange(ctx, name, 0, -1); err != nil || len(got) != 0 {
		t.Errorf("GetRange(empty, 0, -1) = %d bytes, %v", len(got), err)
	}
	if got, err := st.GetRange(ctx, name, 0, 0); err != nil || len(got) != 0 {
		t.Errorf("GetRange(empty, 0, 0) = %d bytes, %v", len(got), err)
	}
	if _, err := st.GetRange(ctx, name, 0, 1); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("GetRange(empty, 0, 1) = %v; want io.ErrUnexpectedEOF", err)
	}
	if got := listAll(t, st, p); got[name] != 0 || len(got) != 1 {
		t.Errorf("List = %v; want the empty object", keys(got))
	}
}

func testInvalidNames(t *testing.T, st remote.Store, p string, _ Config) {
	ctx := ctxT(t)
	bad := []string{
		"", "/abs", "a/", "a//b", "../x", "a/../b", "a/./b", ".", "..", "x..y",
		"Upper", "sp ace", "uni\u00e9", "nul\x00", "back\\slash", "colon:x",
		strings.Repeat("a", remote.MaxNameLen+1),
	}
	for _, name := range bad {
		check := func(op string, err error) {
			if !errors.Is(err, remote.ErrInvalidName) {
				t.Errorf("%s(%q) = %v; want ErrInvalidName", op, name, err)
			}
		}
		check("Put", st.Put(ctx, name, []byte("x")))
		_, err := st.GetRange(ctx, name, 0, -1)
		check("GetRange", err)
		_, err = st.Stat(ctx, name)
		check("Stat", err)
		check("Delete", st.Delete(ctx, name))
	}
	long := p + strings.Repeat("z", remote.MaxNameLen-len(p))
	mustPut(t, st, long, []byte("max"))
	if got, err := st.GetRange(ctx, long, 0, -1); err != nil || string(got) != "max" {
		t.Errorf("a %d-byte name: %q, %v", len(long), got, err)
	}
	odd := p + "x_y-z.1/..a"
	if err := st.Put(ctx, odd, []byte("x")); !errors.Is(err, remote.ErrInvalidName) {
		t.Errorf("Put(%q) = %v; want ErrInvalidName", odd, err)
	}
	ok := p + "_x-y.z/.hidden"
	mustPut(t, st, ok, []byte("ok"))
	if got, err := st.GetRange(ctx, ok, 0, -1); err != nil || string(got) != "ok" {
		t.Errorf("Put/Get(%q): %q, %v", ok, got, err)
	}
}

func testConcurrency(t *testing.T, st remote.Store, p string, cfg Config) {
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Workers*cfg.OpsPerWorker)
	for w := range cfg.Workers {
		wg.Go(func() {
			for i := range cfg.OpsPerWorker {
				name := fmt.Sprintf("%sw%02d/%s", p, w, randName(26))
				data := RandBytes(1000 + w*100 + i)
				if err := st.Put(ctx, name, data); err != nil {
					errs <- err
					continue
				}
				got, err := st.GetRange(ctx, name, 100, 500)
				if err != nil {
					errs <- err
				} else if !bytes.Equal(got, data[100:600]) {
					errs <- fmt.Errorf("%s: range read returned other bytes", name)
				}
				if size, err := st.Stat(ctx, name); err != nil || size != int64(len(data)) {
					errs <- fmt.Errorf("%s: Stat = %d, %v; want %d", name, size, err, len(data))
				}
				if i%2 == 0 {
					if err := st.Delete(ctx, name); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := listAll(t, st, p)
	want := cfg.Workers * (cfg.OpsPerWorker / 2)
	if len(got) != want {
		t.Errorf("after the concurrent run List found %d objects; want %d", len(got), want)
	}
}

func testCancel(t *testing.T, st remote.Store, p string, _ Config) {
	name := p + "obj"
	mustPut(t, st, name, []byte("content"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ops := map[string]func() error{
		"Put":      func() error { return st.Put(ctx, p+"other", []byte("x")) },
		"GetRange": func() error { _, err := st.GetRange(ctx, name, 0, -1); return err },
		"Stat":     func() error { _, err := st.Stat(ctx, name); return err },
		"Delete":   func() error { return st.Delete(ctx, name) },
		"List":     func() error { return st.List(ctx, p, func(string, int64) error { return nil }) },
	}
	for op, fn := range ops {
		start := time.Now()
		err := fn()
		if el := time.Since(start); el > 100*time.Millisecond {
			t.Errorf("%s with a cancelled context took %v; want < 100ms", op, el)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v; want context.Canceled", op, err)
		}
	}
	if _, err := st.Stat(context.Background(), name); err != nil {
		t.Errorf("the cancelled Delete deleted the object: %v", err)
	}
	if _, err := st.Stat(context.Background(), p+"other"); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("the cancelled Put wrote the object: %v", err)
	}
	// An expired deadline fails just as fast.
	dctx, dcancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer dcancel()
	<-dctx.Done()
	if _, err := st.GetRange(dctx, name, 0, -1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetRange with an expired deadline = %v; want context.DeadlineExceeded", err)
	}
}

func testLarge(t *testing.T, st remote.Store, p string, cfg Config) {
	ctx := ctxT(t)
	data := RandBytes(cfg.LargeSize)
	name := p + "c/lg/" + randName(26)
	mustPut(t, st, name, data)
	if size, err := st.Stat(ctx, name); err != nil || size != int64(len(data)) {
		t.Fatalf("Stat(large) = %d, %v; want %d", size, err, len(data))
	}
	got, err := st.GetRange(ctx, name, 0, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetRange(large, 0, -1) = %d bytes, %v; want the %d bytes put", len(got), err, len(data))
	}
	// A range straddling the 5 MiB part boundary of a multipart upload.
	off := int64(5<<20) - 1000
	if off+4096 > int64(len(data)) {
		off = int64(len(data)) / 2
	}
	got, err = st.GetRange(ctx, name, off, 4096)
	if err != nil || !bytes.Equal(got, data[off:off+4096]) {
		t.Errorf("GetRange(large, %d, 4096) = %d bytes, %v", off, len(got), err)
	}
	tail, err := st.GetRange(ctx, name, int64(len(data))-10, -1)
	if err != nil || !bytes.Equal(tail, data[len(data)-10:]) {
		t.Errorf("GetRange(large tail) = %d bytes, %v", len(tail), err)
	}
}
