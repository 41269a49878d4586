package keys_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"coffer/keys"
	"coffer/keys/keystest"
	"coffer/keys/passphrase"
)

// TestVector checks the encodings against the spec's vector and that Go's own AES-GCM and
// HMAC over those bytes give the vector's outputs.
func TestVector(t *testing.T) {
	v := keystest.Vector
	ref := keys.KEKRef{Chain: v.Chain, Version: v.Version}
	id := keys.FileIdentity{Volume: v.Volume, File: v.File}
	aad := keys.WrapAAD(id, ref)
	if !bytes.Equal(aad, v.WrapAAD) {
		t.Fatalf("WrapAAD %x\nwant    %x", aad, v.WrapAAD)
	}
	msg := keys.DeriveMessage(id, v.Salt)
	if !bytes.Equal(msg, v.DeriveMessage) {
		t.Fatalf("DeriveMessage %x\nwant          %x", msg, v.DeriveMessage)
	}
	if got := keys.PassphraseKEKAAD(v.Volume, ref); !bytes.Equal(got, v.PassphraseKEKAAD) {
		t.Fatalf("PassphraseKEKAAD %x\nwant %x", got, v.PassphraseKEKAAD)
	}
	block, _ := aes.NewCipher(v.KEKAES)
	gcm, _ := cipher.NewGCM(block)
	if got := gcm.Seal(nil, v.IV, v.DEK, aad); !bytes.Equal(got, v.Wrapped) {
		t.Fatalf("Go AES-GCM %x\nvector     %x", got, v.Wrapped)
	}
	m := hmac.New(sha256.New, v.KEKHMAC)
	m.Write(msg)
	if got := m.Sum(nil); !bytes.Equal(got, v.DerivedDEK) {
		t.Fatalf("Go HMAC %x\nvector  %x", got, v.DerivedDEK)
	}
	label := keys.HSMLabel(v.Volume, ref, "aes")
	if label != "coffer:00112233445566778899aabbccddeeff:u1000:v2:aes" {
		t.Fatalf("HSM label %q", label)
	}
	if l := keys.HSMLabel(v.Volume, keys.KEKRef{Version: 1}, "hmac"); l != "coffer:00112233445566778899aabbccddeeff::v1:hmac" {
		t.Fatalf("volume chain HSM label %q", l)
	}
}

func TestKEKRef(t *testing.T) {
	for _, r := range []keys.KEKRef{{Version: 1}, {Chain: "u1000", Version: 7}, {Chain: "a.b_c-D9", Version: 1 << 31}} {
		if err := r.Validate(); err != nil {
			t.Errorf("%v: %v", r, err)
		}
	}
	for _, r := range []keys.KEKRef{{Version: 0}, {Chain: "a:b", Version: 1}, {Chain: "volume", Version: 1},
		{Chain: "é", Version: 1}, {Chain: strings.Repeat("x", 33), Version: 1}, {Chain: "a b", Version: 1}} {
		if err := r.Validate(); err == nil {
			t.Errorf("%q v%d accepted", r.Chain, r.Version)
		}
	}
	if s := (keys.KEKRef{Version: 3}).String(); s != "volume/v3" {
		t.Errorf("String %q", s)
	}
	if s := (keys.KEKRef{Chain: keys.UserChain(1000), Version: 2}).String(); s != "u1000/v2" {
		t.Errorf("String %q", s)
	}
	if m, err := keys.ParseMode("derive"); err != nil || m != keys.ModeDerive {
		t.Errorf("ParseMode derive: %v %v", m, err)
	}
	if _, err := keys.ParseMode("Wrap"); err == nil {
		t.Error("ParseMode accepted Wrap")
	}
}

func TestDEK(t *testing.T) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	keep := bytes.Clone(raw)
	d, err := keys.NewDEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.NewDEK(make([]byte, 16)); err == nil {
		t.Fatal("16-byte DEK accepted")
	}
	c := d.Clone()
	if !bytes.Equal(c.Bytes(), keep) || &c.Bytes()[0] == &d.Bytes()[0] {
		t.Fatal("Clone not an independent copy")
	}
	// No fmt verb reveals the key.
	hexKey := hex.EncodeToString(keep)
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		s := fmt.Sprintf(f, d)
		if strings.Contains(strings.ToLower(s), hexKey[:8]) || strings.Contains(s, string(keep[:4])) || !strings.Contains(s, "redacted") {
			t.Errorf("%s prints %q", f, s)
		}
	}
	if s := fmt.Sprintf("%v", struct{ K *keys.DEK }{d}); strings.Contains(s, hexKey[:8]) {
		t.Errorf("struct print %q", s)
	}
	var used []byte
	if err := d.Use(func(k []byte) error { used = k; return nil }); err != nil {
		t.Fatal(err)
	}
	d.Wipe()
	if !bytes.Equal(raw, make([]byte, 32)) || !bytes.Equal(used, make([]byte, 32)) {
		t.Fatal("Wipe did not zero the key bytes")
	}
	if d.Bytes() != nil || !d.Wiped() || d.Clone() != nil {
		t.Fatal("wiped DEK still hands out bytes")
	}
	if err := d.Use(func([]byte) error { return nil }); !errors.Is(err, keys.ErrWiped) {
		t.Fatalf("Use after Wipe: %v", err)
	}
	if !bytes.Equal(c.Bytes(), keep) {
		t.Fatal("wiping the original wiped the clone")
	}
	d.Wipe()
	var nilDEK *keys.DEK
	nilDEK.Wipe()
}

func newDEK(t *testing.T) (*keys.DEK, []byte) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	d, err := keys.NewDEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return d, raw // raw is the slice the DEK holds
}

func isZero(b []byte) bool { return bytes.Equal(b, make([]byte, len(b))) }

func fid(n byte) [16]byte { return [16]byte{n} }

func TestCacheGetPut(t *testing.T) {
	c := keys.NewCache(time.Minute, 10)
	defer c.Close()
	d, held := newDEK(t)
	want := bytes.Clone(held)
	c.Put(fid(1), d)
	got, ok := c.Get(fid(1))
	if !ok || !bytes.Equal(got.Bytes(), want) {
		t.Fatal("Get after Put")
	}
	got.Wipe() // the caller's copy: must not touch the cached key
	again, ok := c.Get(fid(1))
	if !ok || !bytes.Equal(again.Bytes(), want) {
		t.Fatal("wiping a returned copy damaged the cached key")
	}
	if _, ok := c.Get(fid(2)); ok {
		t.Fatal("Get of an absent id")
	}
	// Replacing an entry wipes the old key.
	d2, _ := newDEK(t)
	c.Put(fid(1), d2)
	if !isZero(held) {
		t.Fatal("replaced key not wiped")
	}
	c.Drop(fid(1))
	if c.Len() != 0 || !d2.Wiped() {
		t.Fatal("Drop did not remove and wipe")
	}
}

func TestCacheTTLExpiry(t *testing.T) {
	c := keys.NewCache(200*time.Millisecond, 10)
	defer c.Close()
	d, held := newDEK(t)
	keep, keepHeld := newDEK(t)
	c.Put(fid(1), d)
	c.Put(fid(2), keep)
	// Keep id 2 in use; id 1 idles out and the janitor wipes it without any access.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !isZero(held) {
		if g, ok := c.Get(fid(2)); ok {
			g.Wipe()
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !isZero(held) {
		t.Fatal("expired key not zeroed by the janitor")
	}
	if c.Len() != 1 {
		t.Fatalf("Len %d, want 1", c.Len())
	}
	if _, ok := c.Get(fid(1)); ok {
		t.Fatal("expired key still returned")
	}
	if g, ok := c.Get(fid(2)); !ok || isZero(keepHeld) {
		t.Fatal("key in use expired")
	} else {
		g.Wipe()
	}
	deadline = time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && c.Len() != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	if c.Len() != 0 || !isZero(keepHeld) {
		t.Fatal("idle key not expired")
	}
}

func TestCacheLRUBound(t *testing.T) {
	c := keys.NewCache(0, 2)
	defer c.Close()
	a, _ := newDEK(t)
	b, bHeld := newDEK(t)
	d, _ := newDEK(t)
	c.Put(fid(1), a)
	c.Put(fid(2), b)
	if g, ok := c.Get(fid(1)); ok { // 1 becomes most recent
		g.Wipe()
	}
	c.Put(fid(3), d)
	if c.Len() != 2 {
		t.Fatalf("Len %d, want 2", c.Len())
	}
	if _, ok := c.Get(fid(2)); ok || !isZero(bHeld) {
		t.Fatal("least recently used key not evicted and wiped")
	}
	for _, id := range []byte{1, 3} {
		if _, ok := c.Get(fid(id)); !ok {
			t.Fatalf("key %d evicted", id)
		}
	}
}

func TestCacheWipeAndClose(t *testing.T) {
	before := runtime.NumGoroutine()
	c := keys.NewCache(time.Hour, 0)
	var held [][]byte
	for i := byte(0); i < 5; i++ {
		d, h := newDEK(t)
		held = append(held, h)
		c.Put(fid(i), d)
	}
	c.Wipe()
	for i, h := range held {
		if !isZero(h) {
			t.Fatalf("key %d not zeroed by Wipe", i)
		}
	}
	if c.Len() != 0 {
		t.Fatal("Wipe left entries")
	}
	d, h := newDEK(t)
	c.Put(fid(9), d) // still usable after Wipe
	c.Close()
	if !isZero(h) {
		t.Fatal("Close did not zero")
	}
	c.Close() // idempotent
	late, lateHeld := newDEK(t)
	c.Put(fid(1), late)
	if !isZero(lateHeld) || c.Len() != 0 {
		t.Fatal("Put after Close kept the key")
	}
	// The janitor is gone.
	deadline := time.Now().Add(time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("goroutines %d after Close, %d before", n, before)
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := keys.NewCache(20*time.Millisecond, 8)
	defer c.Close()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				id := fid(byte(i % 16))
				switch i % 4 {
				case 0:
					d, _ := newDEK(t)
					c.Put(id, d)
				case 1, 2:
					if d, ok := c.Get(id); ok {
						if len(d.Bytes()) != 32 {
							t.Error("bad key from Get")
						}
						d.Wipe()
					}
				case 3:
					if i%40 == 3 {
						c.Wipe()
					} else {
						c.Drop(id)
					}
				}
			}
		}()
	}
	wg.Wait()
	if c.Len() > 8 {
		t.Fatalf("Len %d above max", c.Len())
	}
}

func newPassphrase(t *testing.T) (*passphrase.Provider, [16]byte) {
	var vol [16]byte
	_, _ = rand.Read(vol[:])
	p, _, err := passphrase.Create([]byte("pw"), vol, passphrase.Cost{Time: 1, MemoryKiB: passphrase.MinMemoryKiB, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Wipe() })
	return p, vol
}

func TestKeyring(t *testing.T) {
	ctx := context.Background()
	p, vol := newPassphrase(t)
	v1, v2 := keys.KEKRef{Version: 1}, keys.KEKRef{Version: 2}
	for _, r := range []keys.KEKRef{v1, v2} {
		if _, err := p.CreateKEK(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	kr := keys.NewKeyring(p, vol, keys.NewCache(time.Minute, 100))
	file := fid(7)
	rec, dek, err := kr.NewFileKey(ctx, keys.ModeWrap, v1, file)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(dek.Bytes())
	dek.Wipe() // the caller's copy; the keyring cached its own

	// Served from the cache: works even with the KEK gone from the provider.
	if err := p.DestroyKEK(ctx, v1); err != nil {
		t.Fatal(err)
	}
	got, err := kr.FileKey(ctx, rec, file)
	if err != nil || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("cached FileKey: %v", err)
	}
	// Another record for the same file must not be served the cached key.
	other := rec
	other.Wrapped = bytes.Clone(rec.Wrapped)
	other.Wrapped[0] ^= 1
	if _, err := kr.FileKey(ctx, other, file); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("other record: got %v, want a provider error", err)
	}
	kr.Forget(file)
	if _, err := kr.FileKey(ctx, rec, file); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("after Forget: got %v, want ErrKEKMissing", err)
	}

	// Rewrap keeps the cache coherent: the new record hits.
	rec2, _, err := kr.NewFileKey(ctx, keys.ModeWrap, v2, fid(8))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateKEK(ctx, keys.KEKRef{Version: 3}); err != nil {
		t.Fatal(err)
	}
	rec3, err := kr.Rewrap(ctx, rec2, fid(8), keys.KEKRef{Version: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DestroyKEK(ctx, keys.KEKRef{Version: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.FileKey(ctx, rec3, fid(8)); err != nil {
		t.Fatalf("rewrapped record not served from cache: %v", err)
	}

	if err := kr.Wipe(); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.FileKey(ctx, rec2, fid(8)); !errors.Is(err, keys.ErrWiped) {
		t.Fatalf("after Wipe: got %v, want ErrWiped", err)
	}
}

func TestRecordCheck(t *testing.T) {
	good := keys.Record{Mode: keys.ModeWrap, KEK: keys.KEKRef{Version: 1}, IV: make([]byte, 12), Wrapped: make([]byte, 48)}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	d := keys.Record{Mode: keys.ModeDerive, KEK: keys.KEKRef{Version: 1}, Salt: make([]byte, 32)}
	if err := d.Check(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]keys.Record{
		"version 0":    {Mode: keys.ModeWrap, IV: make([]byte, 12), Wrapped: make([]byte, 48)},
		"short salt":   {Mode: keys.ModeDerive, KEK: keys.KEKRef{Version: 1}, Salt: make([]byte, 31)},
		"iv + salt":    {Mode: keys.ModeDerive, KEK: keys.KEKRef{Version: 1}, Salt: make([]byte, 32), IV: make([]byte, 12)},
		"no mode":      {KEK: keys.KEKRef{Version: 1}},
		"long wrapped": {Mode: keys.ModeWrap, KEK: keys.KEKRef{Version: 1}, IV: make([]byte, 12), Wrapped: make([]byte, 64)},
	} {
		if err := r.Check(); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("%s: got %v, want ErrUnwrap", name, err)
		}
	}
}
