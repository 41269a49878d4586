package volume

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/test/softhsm"
)

// lockRoundTrip checks Lock and Unlock on an open volume: keys fail with ErrLocked while
// locked, a wrong secret leaves it locked with the same error Open gives, the right one
// brings back every KEK version (a key made under v2 opens after unlock).
func lockRoundTrip(t *testing.T, v *Volume, secret, wrong []byte, wrongErr error) {
	t.Helper()
	ctx := context.Background()
	// A second KEK version, as rotation would make it.
	v2 := keys.KEKRef{Version: 2}
	material, err := v.Provider().CreateKEK(ctx, v2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog().AddKEKVersion(ctx, meta.KEK{Version: 2, Material: material, Created: time.Now().UnixNano()}, "test"); err != nil {
		t.Fatal(err)
	}
	var f1, f2 [16]byte
	f1[0], f2[0] = 1, 2
	rec1, d1, err := v.Keys().NewFileKey(ctx, v.KeyMode, v.KEK(), f1)
	if err != nil {
		t.Fatal(err)
	}
	rec2, d2, err := v.Keys().NewFileKey(ctx, v.KeyMode, v2, f2)
	if err != nil {
		t.Fatal(err)
	}
	want1, want2 := bytes.Clone(d1.Bytes()), bytes.Clone(d2.Bytes())
	d1.Wipe()
	d2.Wipe()

	if v.Locked() {
		t.Fatal("locked before Lock")
	}
	if err := v.Lock(); err != nil {
		t.Fatal(err)
	}
	if !v.Locked() {
		t.Fatal("not locked after Lock")
	}
	if _, err := v.Keys().FileKey(ctx, rec1, f1); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("FileKey while locked: %v", err)
	}
	if _, err := v.Provider().MAC(ctx, v.KEK(), []byte("x")); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("Provider while locked: %v", err)
	}
	// The catalog still answers (metadata keeps working).
	if _, err := v.Catalog().Volume(ctx); err != nil {
		t.Fatalf("catalog while locked: %v", err)
	}

	err = v.Unlock(ctx, wrong)
	if !errors.Is(err, wrongErr) {
		t.Fatalf("Unlock with a wrong secret: %v, want %v", err, wrongErr)
	}
	if bytes.Contains([]byte(err.Error()), wrong) {
		t.Fatalf("the error shows the secret: %v", err)
	}
	if !v.Locked() {
		t.Fatal("a wrong secret unlocked the volume")
	}
	if _, err := v.Keys().FileKey(ctx, rec1, f1); !errors.Is(err, keys.ErrLocked) {
		t.Fatalf("FileKey after a failed unlock: %v", err)
	}
	if err := v.Unlock(ctx, nil); err == nil || !v.Locked() {
		t.Fatalf("Unlock with an empty secret: %v", err)
	}

	if err := v.Unlock(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if v.Locked() {
		t.Fatal("still locked after Unlock")
	}
	for _, c := range []struct {
		rec  keys.Record
		file [16]byte
		want []byte
	}{{rec1, f1, want1}, {rec2, f2, want2}} {
		got, err := v.Keys().FileKey(ctx, c.rec, c.file)
		if err != nil {
			t.Fatalf("FileKey (KEK %s) after unlock: %v", c.rec.KEK, err)
		}
		if !bytes.Equal(got.Bytes(), c.want) {
			t.Fatalf("key under KEK %s changed across lock/unlock", c.rec.KEK)
		}
		got.Wipe()
	}
	if err := SelfTest(ctx, v.Provider(), v.KeyMode, v2, v.ID); err != nil {
		t.Fatalf("provider after unlock: %v", err)
	}
	// Unlock of an unlocked volume is a no-op (the secret is not even looked at).
	if err := v.Unlock(ctx, wrong); err != nil || v.Locked() {
		t.Fatalf("Unlock of an unlocked volume: %v", err)
	}
}

func TestLockUnlockPassphrase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("a passphrase for tests")
	if _, err := Create(ctx, passConfig(dir, pass)); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, filepath.Join(dir, "state"), pass, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	lockRoundTrip(t, v, pass, []byte("not the passphrase"), keys.ErrWrongPassphrase)
}

func TestLockUnlockHSM(t *testing.T) {
	ctx := context.Background()
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	cfg := Config{StateDir: filepath.Join(dir, "state"), Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPKCS11, HSMModule: tok.Module, HSMToken: tok.Label, Secret: tok.PIN,
		KeyMode: keys.ModeWrap, Layout: format.DefaultLayout}
	if _, err := Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, cfg.StateDir, tok.PIN, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	lockRoundTrip(t, v, tok.PIN, []byte("999999"), keys.ErrWrongPIN)

	// Lock time with 1,000 cached keys, HSM sessions included.
	var worst time.Duration
	for round := range 3 {
		for i := range 1000 {
			var f [16]byte
			f[0], f[1], f[2] = byte(i), byte(i>>8), 0xF0
			_, d, err := v.Keys().NewFileKey(ctx, v.KeyMode, v.KEK(), f)
			if err != nil {
				t.Fatal(err)
			}
			d.Wipe()
		}
		start := time.Now()
		if err := v.Lock(); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, time.Since(start))
		if round < 2 {
			if err := v.Unlock(ctx, tok.PIN); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("HSM volume: Lock with 1,000 cached keys took %v (worst of 3)", worst)
	if worst > 100*time.Millisecond {
		t.Fatalf("Lock took %v, want well under 100 ms", worst)
	}
}
