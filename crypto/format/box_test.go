package format

import (
	"bytes"
	"errors"
	"testing"
)

func TestBox(t *testing.T) {
	key := seq(0x40, 32)
	aad := []byte("coffer/v1 staging|file")
	plain := pattern(1000)
	b1, err := SealBox(key, plain, aad)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := SealBox(key, plain, aad)
	if len(b1) != len(plain)+BoxOverhead {
		t.Fatalf("box is %d bytes, want %d", len(b1), len(plain)+BoxOverhead)
	}
	if bytes.Equal(b1[:NonceSize], b2[:NonceSize]) || bytes.Equal(b1, b2) {
		t.Fatal("two seals of the same message share a nonce")
	}
	for _, bx := range [][]byte{b1, b2} {
		got, err := OpenBox(key, bx, aad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("OpenBox: %v", err)
		}
	}
	// Every bit of nonce, ciphertext start and tag; one bit of the rest.
	for i := range b1 {
		for bit := range 8 {
			if i >= 20 && i < len(b1)-TagSize && bit != i%8 {
				continue
			}
			b1[i] ^= 1 << bit
			p, err := OpenBox(key, b1, aad)
			b1[i] ^= 1 << bit
			if !errors.Is(err, ErrAuth) || p != nil {
				t.Fatalf("flip %d/%d: %v", i, bit, err)
			}
		}
	}
	for cut := range len(b1) {
		if p, err := OpenBox(key, b1[:cut], aad); !errors.Is(err, ErrAuth) || p != nil {
			t.Fatalf("truncated to %d: %v", cut, err)
		}
	}
	if p, err := OpenBox(key, b1, []byte("coffer/v1 staging|filf")); !errors.Is(err, ErrAuth) || p != nil {
		t.Fatalf("wrong aad: %v", err)
	}
	if p, err := OpenBox(seq(0x41, 32), b1, aad); !errors.Is(err, ErrAuth) || p != nil {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := SealBox(key[:16], plain, aad); err == nil {
		t.Fatal("SealBox accepted a 16-byte key")
	}
	// Empty plaintext is allowed and still authenticated.
	e, _ := SealBox(key, nil, nil)
	if p, err := OpenBox(key, e, nil); err != nil || len(p) != 0 {
		t.Fatalf("empty box: %v", err)
	}
	if _, err := OpenBox(key, e, []byte{0}); !errors.Is(err, ErrAuth) {
		t.Fatal("empty box opened with other aad")
	}
}

func TestBoxReuseAndWipe(t *testing.T) {
	bx, err := NewBox(seq(0x40, 32))
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 0, 200)
	sealed, err := bx.Seal(dst, []byte("abc"), nil)
	if err != nil || &sealed[0] != &dst[:1][0] {
		t.Fatalf("Seal did not append into dst: %v", err)
	}
	if p, err := bx.Open(nil, sealed, nil); err != nil || string(p) != "abc" {
		t.Fatalf("Open: %v", err)
	}
	bx.Wipe()
	if _, err := bx.Seal(nil, []byte("abc"), nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("Seal after Wipe: %v", err)
	}
	if _, err := bx.Open(nil, sealed, nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("Open after Wipe: %v", err)
	}
}
