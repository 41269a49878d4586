package format

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

// hkdfByHand is RFC 5869 written out with HMAC, to check DeriveKey against
// the spec rather than against crypto/hkdf.
func hkdfByHand(ikm, info []byte) []byte {
	ext := hmac.New(sha256.New, make([]byte, 32)) // empty salt = HashLen zeros
	ext.Write(ikm)
	prk := ext.Sum(nil)
	exp := hmac.New(sha256.New, prk)
	exp.Write(info)
	exp.Write([]byte{1})
	return exp.Sum(nil) // L = 32 = one block
}

func TestDeriveKeyMatchesSpec(t *testing.T) {
	master := seq(0x20, 32)
	got, err := DeriveKey(master, "coffer/v1 test key", []byte("ab"), []byte("c"))
	if err != nil {
		t.Fatal(err)
	}
	info := []byte("\x00\x00\x00\x12coffer/v1 test key\x00\x00\x00\x02ab\x00\x00\x00\x01c")
	if want := hkdfByHand(master, info); !bytes.Equal(got, want) {
		t.Fatalf("DeriveKey = %x, spec says %x", got, want)
	}
}

func TestDeriveKeySeparation(t *testing.T) {
	m := seq(0x20, 32)
	keys := map[string]bool{}
	for _, c := range []struct {
		purpose string
		fields  [][]byte
	}{
		{"coffer/v1 a", nil},
		{"coffer/v1 b", nil},
		{"coffer/v1 a", [][]byte{{}}},
		{"coffer/v1 a", [][]byte{{}, {}}},
		{"coffer/v1 a", [][]byte{[]byte("ab"), []byte("c")}},
		{"coffer/v1 a", [][]byte{[]byte("a"), []byte("bc")}},
		{"coffer/v1 a", [][]byte{[]byte("abc")}},
		{"coffer/v1 ", [][]byte{[]byte("a")}},
	} {
		k, err := DeriveKey(m, c.purpose, c.fields...)
		if err != nil || len(k) != KeySize {
			t.Fatalf("DeriveKey(%q, %q): %x, %v", c.purpose, c.fields, k, err)
		}
		if keys[string(k)] {
			t.Fatalf("DeriveKey(%q, %q) collides with an earlier input", c.purpose, c.fields)
		}
		keys[string(k)] = true
	}
	other := seq(0x21, 32)
	k1, _ := DeriveKey(m, "coffer/v1 a")
	k2, _ := DeriveKey(other, "coffer/v1 a")
	if bytes.Equal(k1, k2) {
		t.Fatal("different masters gave the same key")
	}
	if _, err := DeriveKey(m[:31], "coffer/v1 a"); err == nil {
		t.Fatal("31-byte master accepted")
	}
	if _, err := DeriveKey(m, ""); err == nil {
		t.Fatal("empty purpose accepted")
	}
}
