package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

const rb = ReplicaBlockSize

func testReplicaKey(n byte) []byte { return seq(0x30+n, 32) }

func testReplicaHeader(kind ReplicaKind) ReplicaHeader {
	h := ReplicaHeader{Kind: kind, KEKVersion: 2, Volume: idOf(seq(0xa0, 16)), Epoch: 3, Position: 17, Object: idOf(seq(0xc0, 16))}
	if kind == ReplicaSnapshot {
		h.Part, h.Last = 4, true
	}
	return h
}

func mustSealReplica(t testing.TB, key []byte, h ReplicaHeader, plain []byte) []byte {
	t.Helper()
	obj, err := SealReplica(key, h, plain)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func wantReplicaAuth(t *testing.T, what string, p []byte, err error, reason string) {
	t.Helper()
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("%s: err = %v, want ErrAuth", what, err)
	}
	if p != nil {
		t.Fatalf("%s: returned %d bytes with the error", what, len(p))
	}
	var re *ReplicaError
	if !errors.As(err, &re) {
		t.Fatalf("%s: %T is not a *ReplicaError", what, err)
	}
	if reason != "" && !strings.Contains(err.Error(), reason) {
		t.Fatalf("%s: %v does not say %q", what, err, reason)
	}
}

func TestReplicaRoundTrip(t *testing.T) {
	key := testReplicaKey(0)
	for _, kind := range []ReplicaKind{ReplicaDelta, ReplicaSnapshot} {
		h := testReplicaHeader(kind)
		for _, n := range []int{0, 1, rb - 1, rb, rb + 1, 3 * rb} {
			plain := pattern(n)
			obj := mustSealReplica(t, key, h, plain)
			if int64(len(obj)) != ReplicaObjectSize(int64(n)) {
				t.Fatalf("%s %d bytes: object %d bytes, want %d", kind, n, len(obj), ReplicaObjectSize(int64(n)))
			}
			if got, ok := ReplicaPlainLen(int64(len(obj))); !ok || got != int64(n) {
				t.Fatalf("%s %d bytes: ReplicaPlainLen(%d) = %d, %v", kind, n, len(obj), got, ok)
			}
			want := h
			want.Object, want.Last = ID{}, false // not known from the name
			got, err := OpenReplica(key, want, obj)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%s %d bytes: OpenReplica: %v (%d bytes back)", kind, n, err, len(got))
			}
			ph, err := ParseReplicaHeader(obj)
			h.BlockSize = ReplicaBlockSize
			if err != nil || ph != h {
				t.Fatalf("%s %d bytes: ParseReplicaHeader = %+v, %v; want %+v", kind, n, ph, err, h)
			}
			h.BlockSize = 0
			hb, _ := h.Marshal()
			if !bytes.Equal(obj[:ReplicaHeaderSize], hb) {
				t.Fatalf("%s: stored header %x, Marshal %x", kind, obj[:ReplicaHeaderSize], hb)
			}
		}
	}
}

func TestReplicaHeaderLayout(t *testing.T) {
	h := ReplicaHeader{Kind: ReplicaSnapshot, KEKVersion: 0x01020304, Volume: idOf(seq(0xa0, 16)), Epoch: 0x05060708,
		Position: 0x1112131415161718, Part: 0x2122, Last: true, Object: idOf(seq(0xc0, 16))}
	b, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := "434f465245504c31" + "01" + "73" + "01" + "10" + "01020304" + "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf" +
		"05060708" + "1112131415161718" + "2122" + "0001" + "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
	if hx(b) != want {
		t.Fatalf("header\n got %x\nwant %s", b, want)
	}
}

func TestReplicaHeaderStrict(t *testing.T) {
	good, _ := testReplicaHeader(ReplicaSnapshot).Marshal()
	delta, _ := testReplicaHeader(ReplicaDelta).Marshal()
	mut := func(b []byte, f func([]byte)) []byte { b = bytes.Clone(b); f(b); return b }
	for name, b := range map[string][]byte{
		"short":              good[:63],
		"magic":              mut(good, func(b []byte) { b[7] = '2' }),
		"version 2":          mut(good, func(b []byte) { b[rhVersion] = 2 }),
		"version 0":          mut(good, func(b []byte) { b[rhVersion] = 0 }),
		"kind x":             mut(good, func(b []byte) { b[rhKind] = 'x' }),
		"aead 2":             mut(good, func(b []byte) { b[rhAEAD] = 2 }),
		"block 2^14":         mut(good, func(b []byte) { b[rhBlockLog2] = 14 }),
		"block 2^17":         mut(good, func(b []byte) { b[rhBlockLog2] = 17 }),
		"kek version 0":      mut(good, func(b []byte) { clear(b[rhKEK : rhKEK+4]) }),
		"zero volume":        mut(good, func(b []byte) { clear(b[rhVolume : rhVolume+16]) }),
		"reserved flag bit":  mut(good, func(b []byte) { b[rhFlags] |= 0x80 }),
		"flag bit 1":         mut(good, func(b []byte) { b[rhFlags+1] |= 2 }),
		"zero object":        mut(good, func(b []byte) { clear(b[rhObject:]) }),
		"delta with a part":  mut(delta, func(b []byte) { b[rhPart+1] = 1 }),
		"delta flagged last": mut(delta, func(b []byte) { b[rhFlags+1] = 1 }),
	} {
		if h, err := ParseReplicaHeader(b); err == nil {
			t.Errorf("%s: parsed as %+v", name, h)
		}
	}
	for name, h := range map[string]ReplicaHeader{
		"kind":        {Kind: 'x', KEKVersion: 1, Volume: idOf(seq(1, 16)), Object: idOf(seq(2, 16))},
		"block size":  {Kind: ReplicaDelta, BlockSize: 16384, KEKVersion: 1, Volume: idOf(seq(1, 16)), Object: idOf(seq(2, 16))},
		"kek version": {Kind: ReplicaDelta, Volume: idOf(seq(1, 16)), Object: idOf(seq(2, 16))},
		"volume":      {Kind: ReplicaDelta, KEKVersion: 1, Object: idOf(seq(2, 16))},
		"object":      {Kind: ReplicaDelta, KEKVersion: 1, Volume: idOf(seq(1, 16))},
		"delta part":  {Kind: ReplicaDelta, KEKVersion: 1, Volume: idOf(seq(1, 16)), Object: idOf(seq(2, 16)), Part: 1},
		"delta last":  {Kind: ReplicaDelta, KEKVersion: 1, Volume: idOf(seq(1, 16)), Object: idOf(seq(2, 16)), Last: true},
	} {
		if _, err := h.Marshal(); err == nil {
			t.Errorf("Marshal accepted bad %s", name)
		}
		if _, err := SealReplica(testReplicaKey(0), h, []byte("x")); err == nil {
			t.Errorf("SealReplica accepted bad %s", name)
		}
	}
	if _, err := SealReplica(seq(0, 31), testReplicaHeader(ReplicaDelta), nil); err == nil {
		t.Error("SealReplica accepted a 31-byte key")
	}
	if _, err := OpenReplica(seq(0, 33), testReplicaHeader(ReplicaDelta), nil); err == nil || errors.Is(err, ErrAuth) {
		t.Errorf("OpenReplica with a 33-byte key: %v, want a non-auth error", err)
	}
}

func TestReplicaPlainLen(t *testing.T) {
	for n := int64(0); n < 3*rb+40; n++ {
		if n > 40 && n < rb-40 || n > rb+40 && n < 2*rb-40 || n > 2*rb+40 && n < 3*rb-40 {
			continue
		}
		if got, ok := ReplicaPlainLen(ReplicaObjectSize(n)); !ok || got != n {
			t.Fatalf("ReplicaPlainLen(ReplicaObjectSize(%d)) = %d, %v", n, got, ok)
		}
	}
	// Sizes no plaintext gives: no blocks, a partial tag, an empty last
	// block after a full one.
	for _, size := range []int64{-1, 0, 63, 64, 65, 79, 64 + rb + 16 + 1, 64 + rb + 16 + 15, 64 + rb + 16 + 16, 64 + 2*(rb+16) + 16} {
		if got, ok := ReplicaPlainLen(size); ok {
			t.Errorf("ReplicaPlainLen(%d) = %d, want none", size, got)
		}
	}
}

func TestReplicaTamper(t *testing.T) {
	key := testReplicaKey(0)
	h := testReplicaHeader(ReplicaSnapshot)
	plain := pattern(2*rb + 100)
	obj := mustSealReplica(t, key, h, plain)
	want := h
	want.Object, want.Last = ID{}, false
	sb := rb + TagSize
	open := func(what string, o []byte, w ReplicaHeader, k []byte, reason string) {
		t.Helper()
		p, err := OpenReplica(k, w, o)
		wantReplicaAuth(t, what, p, err, reason)
	}
	mut := func(f func([]byte) []byte) []byte { return f(bytes.Clone(obj)) }
	flip := func(off, bit int) []byte { return mut(func(b []byte) []byte { b[off] ^= 1 << bit; return b }) }

	// Every header bit: a parse or match failure, or a tag failure (object id, last flag).
	for off := range ReplicaHeaderSize {
		for bit := range 8 {
			open("flip header", flip(off, bit), want, key, "")
		}
	}
	open("flip object id", flip(rhObject+3, 2), want, key, "block 0: tag mismatch")
	open("clear last flag", flip(rhFlags+1, 0), want, key, "block 0: tag mismatch")
	open("flip ciphertext of block 1", flip(ReplicaHeaderSize+sb+5, 0), want, key, "block 1: tag mismatch")
	open("flip tag of the last block", flip(len(obj)-1, 7), want, key, "block 2: tag mismatch")

	// Truncation: at each block boundary, inside the last block and inside a tag; extension.
	open("truncate to the header", obj[:ReplicaHeaderSize], want, key, "not the size")
	open("truncate short of the header", obj[:40], want, key, "shorter than its header")
	open("truncate at block boundary 2", obj[:ReplicaHeaderSize+2*sb], want, key, "block 1: tag mismatch")
	open("truncate at block boundary 1", obj[:ReplicaHeaderSize+sb], want, key, "block 0: tag mismatch")
	open("truncate inside the last block", obj[:len(obj)-50], want, key, "block 2: tag mismatch")
	open("truncate to a partial tag", obj[:ReplicaHeaderSize+2*sb+10], want, key, "not the size")
	open("extend by one byte", append(bytes.Clone(obj), 0), want, key, "block 2: tag mismatch")
	open("extend by an empty block", append(bytes.Clone(obj), make([]byte, TagSize)...), want, key, "block 2: tag mismatch")

	// Blocks swapped.
	open("swap blocks 0 and 1", mut(func(b []byte) []byte {
		b0 := bytes.Clone(b[ReplicaHeaderSize : ReplicaHeaderSize+sb])
		copy(b[ReplicaHeaderSize:], b[ReplicaHeaderSize+sb:ReplicaHeaderSize+2*sb])
		copy(b[ReplicaHeaderSize+sb:], b0)
		return b
	}), want, key, "block 0: tag mismatch")

	// The object opened under another name, as stored and with the stored
	// header rewritten to match that name.
	renames := map[string]func(*ReplicaHeader){
		"kind":        func(w *ReplicaHeader) { w.Kind, w.Part = ReplicaDelta, 0 },
		"kek version": func(w *ReplicaHeader) { w.KEKVersion++ },
		"volume":      func(w *ReplicaHeader) { w.Volume[15] ^= 1 },
		"epoch":       func(w *ReplicaHeader) { w.Epoch++ },
		"position":    func(w *ReplicaHeader) { w.Position-- },
		"part":        func(w *ReplicaHeader) { w.Part++ },
	}
	for name, f := range renames {
		w := want
		f(&w)
		open("renamed: "+name, obj, w, key, "does not match the name")
		forged := h
		f(&forged)
		if forged.Kind == ReplicaDelta {
			forged.Last = false
		}
		fb, err := forged.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		open("renamed with forged header: "+name, mut(func(b []byte) []byte { copy(b, fb); return b }), w, key, "block 0: tag mismatch")
	}

	// Another replica object (other position) in this one's place, with and
	// without its header; blocks spliced from it.
	other := h
	other.Position++
	other.Object = idOf(seq(0xd0, 16))
	obj2 := mustSealReplica(t, key, other, plain)
	open("replaced by another position", obj2, want, key, "does not match the name")
	open("replaced, header kept", append(bytes.Clone(obj[:ReplicaHeaderSize]), obj2[ReplicaHeaderSize:]...), want, key, "block 0: tag mismatch")
	open("block 1 spliced from another object", mut(func(b []byte) []byte {
		copy(b[ReplicaHeaderSize+sb:], obj2[ReplicaHeaderSize+sb:ReplicaHeaderSize+2*sb])
		return b
	}), want, key, "block 1: tag mismatch")

	// Wrong key (another KEK version's K_rep).
	open("wrong key", obj, want, testReplicaKey(1), "block 0: tag mismatch")

	// The untouched object still opens (the cases above worked on copies).
	if _, err := OpenReplica(key, want, obj); err != nil {
		t.Fatalf("untouched object: %v", err)
	}
}

func TestReplicaEmptyAndFreshIDs(t *testing.T) {
	key := testReplicaKey(0)
	h := testReplicaHeader(ReplicaDelta)
	obj := mustSealReplica(t, key, h, nil)
	if len(obj) != ReplicaHeaderSize+TagSize {
		t.Fatalf("empty replica is %d bytes", len(obj))
	}
	if p, err := OpenReplica(key, h, obj); err != nil || len(p) != 0 {
		t.Fatalf("empty replica: %v, %d bytes", err, len(p))
	}
	// The same plaintext under a fresh object id: different key, unrelated bytes.
	h2 := h
	h2.Object = idOf(seq(0xd0, 16))
	obj2 := mustSealReplica(t, key, h2, []byte("abc"))
	obj1 := mustSealReplica(t, key, h, []byte("abc"))
	if bytes.Equal(obj1[ReplicaHeaderSize:], obj2[ReplicaHeaderSize:]) {
		t.Fatal("two object ids gave the same ciphertext")
	}
	// The AAD of each block is 112 bytes and names the block and its last flag.
	hdr := h.marshal()
	tmpl := replicaAAD(&hdr)
	a := replicaBlockAAD(&tmpl, 5, true)
	if len(a) != 112 || binary.BigEndian.Uint64(a[replicaAADIndexOff:]) != 5 || a[111] != 1 {
		t.Fatalf("aad %x", a)
	}
}
