package keys_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"coffer/keys"
	"coffer/keys/passphrase"
)

var testCost = passphrase.Cost{Time: 1, MemoryKiB: passphrase.MinMemoryKiB, Threads: 1}

// lockFixture is a passphrase provider with KEK v1 and what it takes to open it again (the
// stored params and KEK material), as Volume.Unlock does.
type lockFixture struct {
	vol      [16]byte
	pass     []byte
	params   passphrase.Params
	material []byte
	p        *passphrase.Provider
}

func newLockFixture(t *testing.T) *lockFixture {
	t.Helper()
	fx := &lockFixture{pass: []byte("lock test pw")}
	_, _ = rand.Read(fx.vol[:])
	p, params, err := passphrase.Create(fx.pass, fx.vol, testCost)
	if err != nil {
		t.Fatal(err)
	}
	fx.p, fx.params = p, params
	if fx.material, err = p.CreateKEK(context.Background(), keys.KEKRef{Version: 1}); err != nil {
		t.Fatal(err)
	}
	return fx
}

// reopen opens a fresh provider with every KEK loaded.
func (fx *lockFixture) reopen(t testing.TB) keys.Provider {
	t.Helper()
	p, err := passphrase.Open(fx.pass, fx.vol, fx.params)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Load(keys.KEKRef{Version: 1}, fx.material); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKeyringLockUnlock: after Lock every operation fails with ErrLocked (and its message says
// what to do), the cached keys are zeroed and the provider wiped; after Unlock with a freshly
// opened provider the same file keys come back.
func TestKeyringLockUnlock(t *testing.T) {
	ctx := context.Background()
	fx := newLockFixture(t)
	cache := keys.NewCache(time.Minute, 0)
	kr := keys.NewKeyring(fx.p, fx.vol, cache)
	defer kr.Wipe()
	v1 := keys.KEKRef{Version: 1}

	rec, dek, err := kr.NewFileKey(ctx, keys.ModeWrap, v1, fid(1))
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(dek.Bytes())
	dek.Wipe()
	// A key put into the cache directly: the test keeps a pointer to see it zeroed.
	held, _ := keys.NewDEK(bytes.Repeat([]byte{0xAB}, keys.DEKSize))
	heldBytes := held.Bytes()
	cache.Put(fid(2), held)
	if kr.Locked() {
		t.Fatal("new keyring reports locked")
	}

	if err := kr.Lock(); err != nil {
		t.Fatal(err)
	}
	if !kr.Locked() {
		t.Fatal("Locked() false after Lock")
	}
	if !held.Wiped() || !bytes.Equal(heldBytes, make([]byte, keys.DEKSize)) {
		t.Fatal("a cached DEK survived Lock")
	}
	if cache.Len() != 0 {
		t.Fatalf("cache holds %d keys after Lock", cache.Len())
	}
	// The provider itself was wiped: direct use fails.
	if _, err := fx.p.Open(ctx, v1, rec.IV, rec.Wrapped, nil); !errors.Is(err, keys.ErrWiped) {
		t.Fatalf("provider after Lock: %v, want ErrWiped", err)
	}
	if _, err := kr.FileKey(ctx, rec, fid(1)); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("FileKey while locked: %v", err)
	} else if err.Error() != "volume is locked: run coffer unlock" {
		t.Fatalf("message %q", err)
	}
	if _, _, err := kr.NewFileKey(ctx, keys.ModeWrap, v1, fid(3)); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("NewFileKey while locked: %v", err)
	}
	if _, err := kr.Rewrap(ctx, rec, fid(1), v1); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("Rewrap while locked: %v", err)
	}
	gp := kr.Provider()
	if _, err := gp.CreateKEK(ctx, keys.KEKRef{Version: 2}); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("Provider().CreateKEK while locked: %v", err)
	}
	if gp.Kind() != passphrase.Kind {
		t.Fatalf("Kind while locked %q", gp.Kind())
	}
	if err := kr.Lock(); err != nil {
		t.Fatalf("second Lock: %v", err)
	}

	if err := kr.Unlock(fx.reopen(t)); err != nil {
		t.Fatal(err)
	}
	if kr.Locked() {
		t.Fatal("still locked after Unlock")
	}
	got, err := kr.FileKey(ctx, rec, fid(1))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatal("file key changed across lock/unlock")
	}
	got.Wipe()
	// The same Provider value reaches the new provider.
	if _, err := gp.CreateKEK(ctx, keys.KEKRef{Version: 2}); err != nil {
		t.Fatalf("Provider().CreateKEK after unlock: %v", err)
	}

	if err := kr.Wipe(); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.FileKey(ctx, rec, fid(1)); !errors.Is(err, keys.ErrWiped) || errors.Is(err, keys.ErrLocked) {
		t.Fatalf("FileKey after Wipe: %v", err)
	}
	if err := kr.Unlock(fx.reopen(t)); !errors.Is(err, keys.ErrWiped) {
		t.Fatalf("Unlock after Wipe: %v", err)
	}
}

// TestKeyringLockConcurrent: FileKey and NewFileKey calls race with Lock/Unlock cycles. Every
// call returns the right key or ErrLocked, never a wrong or zeroed key, and no key gets back
// into the cache after a Lock returns.
func TestKeyringLockConcurrent(t *testing.T) {
	ctx := context.Background()
	fx := newLockFixture(t)
	cache := keys.NewCache(time.Minute, 0)
	kr := keys.NewKeyring(fx.p, fx.vol, cache)
	defer kr.Wipe()
	const files = 32
	recs := make([]keys.Record, files)
	wants := make([][]byte, files)
	for i := range files {
		rec, dek, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, fid(byte(i)))
		if err != nil {
			t.Fatal(err)
		}
		recs[i], wants[i] = rec, bytes.Clone(dek.Bytes())
		dek.Wipe()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, locked atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := i % files
				if i%7 == 0 {
					_, d, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, fid(byte(100+g)))
					if err == nil {
						d.Wipe()
					} else if !errors.Is(err, keys.ErrLocked) {
						t.Errorf("NewFileKey: %v", err)
						return
					}
					continue
				}
				d, err := kr.FileKey(ctx, recs[n], fid(byte(n)))
				switch {
				case errors.Is(err, keys.ErrLocked):
					locked.Add(1)
				case err != nil:
					t.Errorf("FileKey: %v", err)
					return
				default:
					if !bytes.Equal(d.Bytes(), wants[n]) {
						t.Errorf("FileKey %d returned a wrong key", n)
					}
					d.Wipe()
					ok.Add(1)
				}
			}
		}()
	}
	for range 20 {
		time.Sleep(2 * time.Millisecond)
		if err := kr.Lock(); err != nil {
			t.Fatal(err)
		}
		if n := cache.Len(); n != 0 {
			t.Fatalf("%d keys in the cache right after Lock", n)
		}
		time.Sleep(2 * time.Millisecond)
		if n := cache.Len(); n != 0 {
			t.Fatalf("%d keys got into the cache while locked", n)
		}
		if err := kr.Unlock(fx.reopen(t)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if ok.Load() == 0 || locked.Load() == 0 {
		t.Fatalf("the race did not happen: %d keys served, %d refused", ok.Load(), locked.Load())
	}
}

// TestKeyringLockTime: Lock with 1,000 cached keys is well under 100 ms.
func TestKeyringLockTime(t *testing.T) {
	ctx := context.Background()
	fx := newLockFixture(t)
	kr := keys.NewKeyring(fx.p, fx.vol, keys.NewCache(time.Minute, 0))
	defer kr.Wipe()
	var worst time.Duration
	for round := range 3 {
		if round > 0 {
			if err := kr.Unlock(fx.reopen(t)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 1000 {
			var f [16]byte
			f[0], f[1] = byte(i), byte(i>>8)
			_, d, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, f)
			if err != nil {
				t.Fatal(err)
			}
			d.Wipe()
		}
		start := time.Now()
		if err := kr.Lock(); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("Lock with 1,000 cached keys: %v (worst of 3)", worst)
	if worst > 50*time.Millisecond {
		t.Fatalf("Lock with 1,000 cached keys took %v, want well under 100 ms", worst)
	}
}

func BenchmarkKeyringLock1000(b *testing.B) {
	ctx := context.Background()
	var vol [16]byte
	p, params, err := passphrase.Create([]byte("pw"), vol, testCost)
	if err != nil {
		b.Fatal(err)
	}
	material, err := p.CreateKEK(ctx, keys.KEKRef{Version: 1})
	if err != nil {
		b.Fatal(err)
	}
	fx := &lockFixture{vol: vol, pass: []byte("pw"), params: params, material: material}
	kr := keys.NewKeyring(p, vol, keys.NewCache(time.Minute, 0))
	defer kr.Wipe()
	for b.Loop() {
		b.StopTimer()
		if kr.Locked() {
			if err := kr.Unlock(fx.reopen(b)); err != nil {
				b.Fatal(err)
			}
		}
		for i := range 1000 {
			var f [16]byte
			f[0], f[1] = byte(i), byte(i>>8)
			_, d, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, f)
			if err != nil {
				b.Fatal(err)
			}
			d.Wipe()
		}
		b.StartTimer()
		if err := kr.Lock(); err != nil {
			b.Fatal(err)
		}
	}
}

// hangingOpen is a provider whose Open blocks until release is closed: an HSM that stops
// answering in the middle of an unwrap.
type hangingOpen struct {
	keys.Provider
	entered chan struct{}
	release chan struct{}
}

func (h *hangingOpen) Open(ctx context.Context, ref keys.KEKRef, iv, ct, aad []byte) ([]byte, error) {
	close(h.entered)
	<-h.release
	return h.Provider.Open(ctx, ref, iv, ct, aad)
}

// TestKeyringLockWithHungCall: while a provider call hangs, Lock zeroes the cached keys,
// Locked reports true and new operations fail with ErrLocked at once; the provider is
// wiped and Lock returns when the call does, and the key that call produced is not
// cached.
func TestKeyringLockWithHungCall(t *testing.T) {
	ctx := context.Background()
	fx := newLockFixture(t)
	cache := keys.NewCache(time.Minute, 0)
	h := &hangingOpen{Provider: fx.p, entered: make(chan struct{}), release: make(chan struct{})}
	kr := keys.NewKeyring(h, fx.vol, cache)
	defer kr.Wipe()
	rec, dek, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, fid(1))
	if err != nil {
		t.Fatal(err)
	}
	dek.Wipe()
	rec2, dek2, err := kr.NewFileKey(ctx, keys.ModeWrap, keys.KEKRef{Version: 1}, fid(2))
	if err != nil {
		t.Fatal(err)
	}
	dek2.Wipe()
	kr.Forget(fid(2)) // its next FileKey goes to the provider, and hangs there
	if cache.Len() != 1 {
		t.Fatalf("%d keys cached; want 1", cache.Len())
	}
	hung := make(chan error, 1)
	go func() {
		d, err := kr.FileKey(ctx, rec2, fid(2))
		if err == nil {
			d.Wipe()
		}
		hung <- err
	}()
	<-h.entered
	lockDone := make(chan error, 1)
	go func() { lockDone <- kr.Lock() }()

	// Checked on a goroutine: before the fix these calls waited behind Lock for good.
	checked := make(chan string, 1)
	go func() {
		deadline := time.Now().Add(2 * time.Second)
		for !kr.Locked() || cache.Len() != 0 {
			if time.Now().After(deadline) {
				checked <- fmt.Sprintf("2 s after Lock: Locked() = %v, %d keys cached", kr.Locked(), cache.Len())
				return
			}
			time.Sleep(time.Millisecond)
		}
		if _, err := kr.FileKey(ctx, rec, fid(1)); !errors.Is(err, keys.ErrLocked) {
			checked <- fmt.Sprintf("FileKey while Lock waits for a hung call = %v; want ErrLocked", err)
			return
		}
		checked <- ""
	}()
	select {
	case msg := <-checked:
		if msg != "" {
			t.Error(msg)
		}
	case <-time.After(3 * time.Second):
		t.Error("with a provider call hanging, Locked or FileKey blocked behind Lock")
	}
	select {
	case err := <-lockDone:
		t.Fatalf("Lock returned (%v) while a provider call still ran", err)
	default:
	}

	close(h.release)
	if err := <-hung; err != nil {
		t.Errorf("the call that hung: %v", err)
	}
	if err := <-lockDone; err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if n := cache.Len(); n != 0 {
		t.Errorf("%d keys cached after Lock returned", n)
	}
	if _, err := kr.FileKey(ctx, rec, fid(1)); !errors.Is(err, keys.ErrLocked) {
		t.Errorf("FileKey after Lock = %v; want ErrLocked", err)
	}
	if err := kr.Unlock(fx.reopen(t)); err != nil {
		t.Fatal(err)
	}
	if kr.Locked() {
		t.Error("Locked() after Unlock")
	}
	d, err := kr.FileKey(ctx, rec, fid(1))
	if err != nil {
		t.Fatalf("FileKey after Unlock: %v", err)
	}
	d.Wipe()
}
