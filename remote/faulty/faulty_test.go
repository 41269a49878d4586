package faulty_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/bits"
	"syscall"
	"testing"
	"time"

	"coffer/remote"
	"coffer/remote/faulty"
	"coffer/remote/remotetest"
)

func local(t *testing.T) remote.Store {
	t.Helper()
	st, err := remote.Open(context.Background(), t.TempDir(), remote.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	return st
}

var ctx = context.Background()

func TestTransparentWithoutFaults(t *testing.T) {
	f := faulty.New(local(t), 1)
	remotetest.Run(t, f, remotetest.Config{LargeSize: 1 << 20})
	if f.Injected(faulty.Put) != 0 || f.Calls(faulty.Put) == 0 {
		t.Errorf("calls %d, injected %d", f.Calls(faulty.Put), f.Injected(faulty.Put))
	}
}

func TestNextNCalls(t *testing.T) {
	f := faulty.New(local(t), 1)
	f.Inject(faulty.Fault{Ops: faulty.Put, Count: 2})
	for i := range 2 {
		if err := f.Put(ctx, "a", []byte("x")); !errors.Is(err, faulty.ErrInjected) {
			t.Fatalf("put %d = %v; want ErrInjected", i, err)
		}
	}
	if _, err := f.Stat(ctx, "a"); !errors.Is(err, remote.ErrNotFound) {
		t.Fatalf("an injected Put reached the store: %v", err)
	}
	if err := f.Put(ctx, "a", []byte("x")); err != nil {
		t.Fatalf("third put = %v; want success", err)
	}
	if f.Calls(faulty.Put) != 3 || f.Injected(faulty.Put) != 2 || f.Injected(faulty.Stat) != 0 {
		t.Errorf("calls %d injected %d", f.Calls(faulty.Put), f.Injected(faulty.Put))
	}
	if !remote.IsTransient(faulty.ErrInjected) {
		t.Error("ErrInjected should look transient")
	}
}

func TestProbabilityIsDeterministic(t *testing.T) {
	st := local(t)
	if err := st.Put(ctx, "obj", []byte("data")); err != nil {
		t.Fatal(err)
	}
	pattern := func(seed uint64) []bool {
		f := faulty.New(st, seed)
		f.Inject(faulty.Fault{Ops: faulty.Stat, Prob: 0.3})
		var out []bool
		for range 200 {
			_, err := f.Stat(ctx, "obj")
			out = append(out, err != nil)
		}
		return out
	}
	a, b, c := pattern(42), pattern(42), pattern(43)
	hits := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different decision at call %d", i)
		}
		if a[i] {
			hits++
		}
	}
	if hits < 30 || hits > 90 {
		t.Errorf("%d of 200 calls hit at p=0.3", hits)
	}
	same := true
	for i := range a {
		same = same && a[i] == c[i]
	}
	if same {
		t.Error("another seed gave the same 200 decisions")
	}
}

func TestLostReply(t *testing.T) {
	f := faulty.New(local(t), 1)
	f.Inject(faulty.Fault{Ops: faulty.Put | faulty.Delete, Kind: faulty.LostReply, Count: 2})
	if err := f.Put(ctx, "a", []byte("landed")); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("Put = %v", err)
	}
	if got, err := f.GetRange(ctx, "a", 0, -1); err != nil || string(got) != "landed" {
		t.Fatalf("the Put whose reply was lost did not land: %q, %v", got, err)
	}
	if err := f.Delete(ctx, "a"); !errors.Is(err, faulty.ErrInjected) {
		t.Fatalf("Delete = %v", err)
	}
	if _, err := f.Stat(ctx, "a"); !errors.Is(err, remote.ErrNotFound) {
		t.Fatalf("the Delete whose reply was lost did not happen: %v", err)
	}
}

func TestReadFaults(t *testing.T) {
	f := faulty.New(local(t), 3)
	data := remotetest.RandBytes(4096)
	if err := f.Put(ctx, "obj", data); err != nil {
		t.Fatal(err)
	}
	rm := f.Inject(faulty.Fault{Kind: faulty.ShortRead, Count: 1})
	if err := f.Put(ctx, "x", nil); err != nil {
		t.Fatal(err) // read faults never hit other operations
	}
	_, err := f.GetRange(ctx, "obj", 0, -1)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !remote.IsTransient(err) {
		t.Errorf("ShortRead = %v; want a transient io.ErrUnexpectedEOF", err)
	}
	rm()
	f.Inject(faulty.Fault{Kind: faulty.Truncate, Count: 1})
	got, err := f.GetRange(ctx, "obj", 0, -1)
	if err != nil || len(got) >= len(data) || !bytes.Equal(got, data[:len(got)]) {
		t.Errorf("Truncate = %d bytes, %v; want a silent prefix", len(got), err)
	}
	f.Inject(faulty.Fault{Kind: faulty.Corrupt, Count: 1})
	got, err = f.GetRange(ctx, "obj", 100, 1000)
	if err != nil || len(got) != 1000 {
		t.Fatalf("Corrupt = %d bytes, %v", len(got), err)
	}
	diff := 0
	for i := range got {
		diff += bits.OnesCount8(got[i] ^ data[100+i])
	}
	if diff != 1 {
		t.Errorf("Corrupt flipped %d bits; want 1", diff)
	}
	// The stored object is untouched.
	if got, _ := f.GetRange(ctx, "obj", 0, -1); !bytes.Equal(got, data) {
		t.Error("a read fault changed the stored object")
	}
}

func TestDelayHonoursContext(t *testing.T) {
	f := faulty.New(local(t), 1)
	f.Inject(faulty.Fault{Kind: faulty.Delay, Latency: 80 * time.Millisecond})
	start := time.Now()
	if err := f.Put(ctx, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 80*time.Millisecond {
		t.Errorf("a delayed Put took %v", el)
	}
	f.Reset()
	f.Inject(faulty.Fault{Kind: faulty.Delay, Latency: time.Hour})
	c, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err := f.Stat(c, "a")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 500*time.Millisecond {
		t.Errorf("a 1h delay under a 30ms deadline = %v after %v", err, time.Since(start))
	}
}

func TestDownAndHang(t *testing.T) {
	f := faulty.New(local(t), 1)
	if err := f.Put(ctx, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	f.SetDown(true)
	errs := []error{f.Put(ctx, "b", []byte("y")), f.Delete(ctx, "a"), f.List(ctx, "", func(string, int64) error { return nil })}
	_, err := f.Stat(ctx, "a")
	errs = append(errs, err)
	_, err = f.GetRange(ctx, "a", 0, -1)
	errs = append(errs, err)
	for _, err := range errs {
		if !errors.Is(err, faulty.ErrDown) || !errors.Is(err, syscall.ECONNREFUSED) || !remote.IsTransient(err) {
			t.Errorf("down: %v; want a transient ErrDown wrapping ECONNREFUSED", err)
		}
	}
	f.SetDown(false)
	if got, err := f.GetRange(ctx, "a", 0, -1); err != nil || string(got) != "x" {
		t.Errorf("after coming back up: %q, %v (and Delete while down must not have run)", got, err)
	}
	f.SetHang(true)
	c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = f.Stat(c, "a")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hang = %v", err)
	}
	if el := time.Since(start); el < 50*time.Millisecond || el > 500*time.Millisecond {
		t.Errorf("hang returned after %v; want right after the 50ms deadline", el)
	}
	if f.Injected(faulty.Stat) != 2 {
		t.Errorf("injected stats = %d; want 2", f.Injected(faulty.Stat))
	}
}

func TestPrefix(t *testing.T) {
	f := faulty.New(local(t), 1)
	f.Inject(faulty.Fault{Prefix: "c/"})
	if err := f.Put(ctx, "b/x", []byte("x")); err != nil {
		t.Errorf("outside the prefix: %v", err)
	}
	if err := f.Put(ctx, "c/x", []byte("x")); !errors.Is(err, faulty.ErrInjected) {
		t.Errorf("inside the prefix: %v", err)
	}
	custom := errors.New("disk on fire")
	f.Reset()
	f.Inject(faulty.Fault{Ops: faulty.Stat, Err: custom, Count: 1})
	if _, err := f.Stat(ctx, "b/x"); !errors.Is(err, custom) {
		t.Errorf("custom error: %v", err)
	}
}
