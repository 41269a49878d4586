package softkek

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
)

func TestHMACMatchesStdlib(t *testing.T) {
	for _, kl := range []int{0, 1, 32, 63, 64} {
		key := make([]byte, kl)
		_, _ = rand.Read(key)
		for _, ml := range []int{0, 1, 55, 56, 63, 64, 65, 200} {
			msg := make([]byte, ml)
			_, _ = rand.Read(msg)
			m := hmac.New(sha256.New, key)
			m.Write(msg)
			if got, want := HMAC(key, msg), m.Sum(nil); !bytes.Equal(got, want) {
				t.Fatalf("key %d msg %d: %x != %x", kl, ml, got, want)
			}
		}
	}
}

func TestKEK(t *testing.T) {
	raw := make([]byte, Size)
	_, _ = rand.Read(raw)
	k, err := New(raw)
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, 12)
	ct, err := k.Seal(iv, []byte("dek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := k.Open(iv, ct, []byte("aad")); err != nil || string(pt) != "dek" {
		t.Fatalf("open: %q %v", pt, err)
	}
	if _, err := k.Open(iv, ct, []byte("aaD")); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong aad: %v", err)
	}
	if _, err := k.Seal(make([]byte, 16), nil, nil); err == nil {
		t.Fatal("16-byte IV accepted")
	}
	k.Wipe()
	if !bytes.Equal(raw, make([]byte, Size)) {
		t.Fatal("Wipe did not zero the key")
	}
	if _, err := k.MAC([]byte("x")); !errors.Is(err, ErrWiped) {
		t.Fatalf("MAC after wipe: %v", err)
	}
	if _, err := New(make([]byte, 32)); err == nil {
		t.Fatal("32-byte material accepted")
	}
}
