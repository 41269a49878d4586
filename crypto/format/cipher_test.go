package format

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
)

func testDEK(n byte) []byte { return seq(n*32, 32) }

func testBinding(obj byte) Binding {
	return Binding{Volume: idOf(seq(0xa0, 16)), File: idOf(seq(0xb0, 16)), Object: idOf(bytes.Repeat([]byte{obj}, 16))}
}

var small = Layout{BlockSize: 4096, ChunkSize: 16384}

func mustSeal(t *testing.T, dek []byte, b Binding, l Layout, plain []byte) []byte {
	t.Helper()
	obj, err := SealChunk(dek, b, l, plain)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func wantAuth(t *testing.T, what string, p []byte, err error) {
	t.Helper()
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("%s: err = %v, want ErrAuth", what, err)
	}
	if p != nil {
		t.Fatalf("%s: returned %d bytes of data with the error", what, len(p))
	}
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("%s: %T is not an *AuthError", what, err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, l := range []Layout{small, DefaultLayout, {4096, 4096}} {
		for _, n := range []int{1, 15, 16, 17, 4095, 4096, 4097, 8192, 12289, int(l.ChunkSize) - 1, int(l.ChunkSize)} {
			if int64(n) > l.ChunkSize {
				continue
			}
			plain := pattern(n)
			b := testBinding(1)
			obj := mustSeal(t, testDEK(1), b, l, plain)
			got, err := OpenChunk(testDEK(1), b, l, int64(n), obj)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%+v n=%d: OpenChunk: %v", l, n, err)
			}
			if k := min(n, l.BlockSize); k >= 16 && bytes.Equal(obj[HeaderSize:HeaderSize+k], plain[:k]) {
				t.Fatalf("%+v n=%d: ciphertext equals plaintext", l, n)
			}
		}
	}
}

func TestSealArgumentsChecked(t *testing.T) {
	c, err := NewCipher(testDEK(1), testBinding(1), small)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []func() error{
		func() error { _, err := c.SealBlock(nil, nil, 0, true); return err },                // empty block
		func() error { _, err := c.SealBlock(nil, make([]byte, 100), 0, false); return err }, // short non-last
		func() error { _, err := c.SealBlock(nil, make([]byte, 4097), 0, true); return err }, // too long
		func() error { _, err := c.SealBlock(nil, make([]byte, 4096), 4, true); return err }, // index past chunk
		func() error { _, err := c.SealBlock(nil, make([]byte, 4096), -1, true); return err },
		func() error { _, err := c.SealChunk(nil, nil); return err },
		func() error { _, err := c.SealChunk(nil, make([]byte, 16385)); return err },
	} {
		if err := f(); err == nil || errors.Is(err, ErrAuth) {
			t.Errorf("bad seal arguments: err = %v, want a non-auth error", err)
		}
	}
	for _, bad := range []Binding{
		{Volume: ID{}, File: idOf(seq(1, 16)), Object: idOf(seq(2, 16))},
		{Volume: idOf(seq(1, 16)), File: ID{}, Object: idOf(seq(2, 16))},
		{Volume: idOf(seq(1, 16)), File: idOf(seq(2, 16)), Object: ID{}},
	} {
		if _, err := NewCipher(testDEK(1), bad, small); err == nil {
			t.Errorf("NewCipher accepted a zero id in %+v", bad)
		}
	}
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := NewCipher(make([]byte, n), testBinding(1), small); err == nil {
			t.Errorf("NewCipher accepted a %d-byte DEK", n)
		}
	}
}

// Flip every bit of the header and of every tag, and one bit of every
// other byte: each must be detected by a reader that has the whole object.
func TestBitFlipsDetected(t *testing.T) {
	b := testBinding(1)
	plain := pattern(2*4096 + 100)
	obj := mustSeal(t, testDEK(1), b, small, plain)
	c, _ := NewCipher(testDEK(1), b, small)
	isTagOrHeader := func(i int) bool {
		if i < HeaderSize {
			return true
		}
		r := (i - HeaderSize) % 4112
		return r >= 4096 || i >= len(obj)-TagSize
	}
	checked := 0
	for i := range obj {
		bitsToFlip := []byte{1 << (i % 8)}
		if isTagOrHeader(i) {
			bitsToFlip = []byte{1, 2, 4, 8, 16, 32, 64, 128}
		}
		for _, bit := range bitsToFlip {
			obj[i] ^= bit
			p, err := c.OpenChunk(nil, obj, int64(len(plain)))
			obj[i] ^= bit
			if !errors.Is(err, ErrAuth) || p != nil {
				t.Fatalf("flip byte %d bit %#x: err %v, data %d bytes", i, bit, err, len(p))
			}
			checked++
		}
	}
	if got, err := c.OpenChunk(nil, obj, int64(len(plain))); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("restored object no longer opens: %v", err)
	}
	t.Logf("%d flips detected", checked)
}

func TestSwapsDetected(t *testing.T) {
	dek := testDEK(1)
	l := small
	plain := pattern(3 * 4096)
	b1, b2 := testBinding(1), testBinding(2)
	obj1 := mustSeal(t, dek, b1, l, plain)
	obj2 := mustSeal(t, dek, b2, l, plain) // same file, same content, other object
	otherFile := b1
	otherFile.File = idOf(seq(0x33, 16))
	objOF := mustSeal(t, dek, otherFile, l, plain) // other file, same object id and DEK
	otherDEK := mustSeal(t, testDEK(2), b1, l, plain)
	sb := int(l.SealedBlockSize())
	blk := func(obj []byte, i int) []byte { return obj[HeaderSize+i*sb : HeaderSize+(i+1)*sb] }
	c1, _ := NewCipher(dek, b1, l)

	// Within the object: every block opened at every other index.
	for i := range 3 {
		for j := range 3 {
			p, err := c1.OpenBlock(nil, blk(obj1, i), int64(j), j == 2)
			if i == j {
				if err != nil || !bytes.Equal(p, plain[i*4096:(i+1)*4096]) {
					t.Fatalf("block %d: %v", i, err)
				}
				continue
			}
			wantAuth(t, "block moved within the object", p, err)
		}
	}
	// Swap two blocks in place.
	sw := bytes.Clone(obj1)
	copy(sw[HeaderSize:HeaderSize+sb], blk(obj1, 1))
	copy(sw[HeaderSize+sb:HeaderSize+2*sb], blk(obj1, 0))
	p, err := c1.OpenChunk(nil, sw, int64(len(plain)))
	wantAuth(t, "swapped blocks 0 and 1", p, err)

	// Same index from another object of the same file, another file, another DEK.
	for name, src := range map[string][]byte{"other object, same file": obj2, "other file": objOF, "other DEK": otherDEK} {
		for i := range 3 {
			spliced := bytes.Clone(obj1)
			copy(spliced[HeaderSize+i*sb:], blk(src, i))
			p, err := c1.OpenChunk(nil, spliced, int64(len(plain)))
			wantAuth(t, name+" spliced", p, err)
		}
	}
}

func TestTruncationDetected(t *testing.T) {
	dek, b, l := testDEK(1), testBinding(1), small
	for _, n := range []int{3 * 4096, 2*4096 + 100} {
		plain := pattern(n)
		obj := mustSeal(t, dek, b, l, plain)
		c, _ := NewCipher(dek, b, l)
		// Every possible truncation of the whole object.
		for cut := 0; cut < len(obj); cut++ {
			p, err := c.OpenChunk(nil, obj[:cut], int64(n))
			if !errors.Is(err, ErrAuth) || p != nil {
				t.Fatalf("n=%d truncated to %d: %v", n, cut, err)
			}
		}
		// A ranged read of the last blocks that comes back short.
		nb, _ := l.Blocks(int64(n))
		off, ln, _ := l.CiphertextRange(int64(n), 1, nb-1)
		for _, short := range []int64{ln - 1, ln - TagSize, l.SealedBlockSize(), 0} {
			p, err := c.OpenRange(nil, obj[off:off+short], int64(n), 1, nb-1)
			wantAuth(t, "short ranged read", p, err)
		}
		// A dropped last block: the remaining final block, opened as the
		// last block (as a reader would that was told a shorter length),
		// fails because it was sealed with last=false.
		p, err := c.OpenBlock(nil, obj[HeaderSize+(nb-2)*l.SealedBlockSize():HeaderSize+(nb-1)*l.SealedBlockSize()], nb-2, true)
		wantAuth(t, "dropped last block", p, err)
		// The catalog length must match: one block shorter, one byte off.
		for _, bad := range []int64{int64(n) - 4096, int64(n) - 1, int64(n) + 1} {
			p, err := c.OpenChunk(nil, obj, bad)
			wantAuth(t, "wrong chunk length", p, err)
		}
		// Extended object (garbage appended).
		p, err = c.OpenChunk(nil, append(bytes.Clone(obj), 0), int64(n))
		wantAuth(t, "extended object", p, err)
	}
}

func TestRollbackDetected(t *testing.T) {
	dek, l := testDEK(1), small
	oldB, newB := testBinding(1), testBinding(2)
	old := mustSeal(t, dek, oldB, l, pattern(3*4096))
	cur := pattern(3 * 4096)
	cur[5000] ^= 0xff // the chunk was rewritten under a fresh object id
	mustSeal(t, dek, newB, l, cur)
	// The remote serves the old object's bytes under the new name; the
	// catalog says newB. Same size, same file, same DEK: still refused.
	p, err := OpenChunk(dek, newB, l, int64(len(cur)), old)
	wantAuth(t, "rolled-back object", p, err)
	// Even with the header rewritten to carry the new object id.
	forged := bytes.Clone(old)
	copy(forged[hdrObject:], newB.Object[:])
	p, err = OpenChunk(dek, newB, l, int64(len(cur)), forged)
	wantAuth(t, "rolled-back object with forged header", p, err)
	p, err = OpenRange(dek, newB, l, int64(len(cur)), 0, 2, forged[HeaderSize:])
	wantAuth(t, "rolled-back blocks", p, err)
}

func TestHeaderTamperAndWrongIdentity(t *testing.T) {
	dek, b, l := testDEK(1), testBinding(1), small
	plain := pattern(5000)
	obj := mustSeal(t, dek, b, l, plain)
	c, _ := NewCipher(dek, b, l)
	if err := c.CheckHeader(obj[:HeaderSize]); err != nil {
		t.Fatal(err)
	}
	for i := range HeaderSize {
		h := bytes.Clone(obj[:HeaderSize])
		h[i] ^= 0x40
		err := c.CheckHeader(h)
		wantAuth(t, "tampered header", nil, err)
		if err.(*AuthError).Block != HeaderBlock {
			t.Fatalf("header error names block %d", err.(*AuthError).Block)
		}
	}
	if err := c.CheckHeader(obj[:HeaderSize-1]); !errors.Is(err, ErrAuth) {
		t.Fatal("short header accepted")
	}
	// A header for another block size (the same object at another layout).
	c2, _ := NewCipher(dek, b, Layout{8192, 16384})
	if err := c2.CheckHeader(obj[:HeaderSize]); !errors.Is(err, ErrAuth) {
		t.Fatal("header of another layout accepted")
	}
	for name, wrong := range map[string]Binding{
		"volume": {Volume: idOf(seq(0x11, 16)), File: b.File, Object: b.Object},
		"file":   {Volume: b.Volume, File: idOf(seq(0x11, 16)), Object: b.Object},
		"object": {Volume: b.Volume, File: b.File, Object: idOf(seq(0x11, 16))},
	} {
		p, err := OpenChunk(dek, wrong, l, int64(len(plain)), obj)
		wantAuth(t, "wrong "+name+" id (whole object)", p, err)
		p, err = OpenRange(dek, wrong, l, int64(len(plain)), 0, 1, obj[HeaderSize:])
		wantAuth(t, "wrong "+name+" id (blocks only)", p, err)
	}
	p, err := OpenChunk(testDEK(2), b, l, int64(len(plain)), obj)
	wantAuth(t, "wrong DEK", p, err)
}

func TestErrorsNameObjectNotKeys(t *testing.T) {
	dek, b := testDEK(1), testBinding(7)
	obj := mustSeal(t, dek, b, small, pattern(9000))
	obj[HeaderSize+4112+10] ^= 1
	_, err := OpenChunk(dek, b, small, 9000, obj)
	msg := err.Error()
	if !strings.Contains(msg, b.Object.String()) || !strings.Contains(msg, "block 1") {
		t.Fatalf("error %q does not name object %s block 1", msg, b.Object)
	}
	sub, _ := DeriveKey(dek, LabelObjectKey, b.Volume[:], b.File[:], b.Object[:])
	for _, secret := range [][]byte{dek, sub} {
		for _, form := range []string{hex.EncodeToString(secret), string(secret), hex.EncodeToString(secret[:8])} {
			if strings.Contains(msg, form) {
				t.Fatalf("error %q contains key bytes", msg)
			}
		}
	}
	var ae *AuthError
	if !errors.As(err, &ae) || ae.Object != b.Object || ae.Block != 1 {
		t.Fatalf("AuthError = %+v", ae)
	}
}

func TestWipe(t *testing.T) {
	c, _ := NewCipher(testDEK(1), testBinding(1), small)
	sealed, err := c.SealBlock(nil, pattern(4096), 0, false)
	if err != nil {
		t.Fatal(err)
	}
	c.Wipe()
	c.Wipe()
	if _, err := c.SealBlock(nil, pattern(4096), 0, false); !errors.Is(err, ErrWiped) {
		t.Fatalf("SealBlock after Wipe: %v", err)
	}
	if p, err := c.OpenBlock(nil, sealed, 0, false); !errors.Is(err, ErrWiped) || p != nil {
		t.Fatalf("OpenBlock after Wipe: %v", err)
	}
	if _, err := c.OpenRange(nil, sealed, 16384, 0, 0); !errors.Is(err, ErrWiped) {
		t.Fatalf("OpenRange after Wipe: %v", err)
	}
	if _, err := c.SealChunk(nil, pattern(10)); !errors.Is(err, ErrWiped) {
		t.Fatalf("SealChunk after Wipe: %v", err)
	}
	if c.aead.Load() != nil {
		t.Fatal("Wipe kept the cipher reference")
	}
}

// In-place operation (dst = src[:0]) works both ways.
func TestInPlace(t *testing.T) {
	c, _ := NewCipher(testDEK(1), testBinding(1), small)
	buf := make([]byte, 4096, 4096+TagSize)
	copy(buf, pattern(4096))
	sealed, err := c.SealBlock(buf[:0], buf, 2, false)
	if err != nil || &sealed[0] != &buf[0] {
		t.Fatalf("in-place seal: %v", err)
	}
	plain, err := c.OpenBlock(sealed[:0], sealed, 2, false)
	if err != nil || !bytes.Equal(plain, pattern(4096)) {
		t.Fatalf("in-place open: %v", err)
	}
}

func TestBlockHotPathDoesNotAllocate(t *testing.T) {
	c, _ := NewCipher(testDEK(1), testBinding(1), DefaultLayout)
	plain := pattern(DefaultLayout.BlockSize)
	sealed := make([]byte, 0, len(plain)+TagSize)
	out := make([]byte, 0, len(plain))
	sealed, _ = c.SealBlock(sealed, plain, 3, false)
	seal := testing.AllocsPerRun(100, func() { _, _ = c.SealBlock(sealed[:0:cap(sealed)], plain, 3, false) })
	open := testing.AllocsPerRun(100, func() {
		if _, err := c.OpenBlock(out[:0], sealed, 3, false); err != nil {
			panic(err)
		}
	})
	if seal != 0 || open != 0 {
		t.Fatalf("allocations per block: seal %v, open %v; want 0", seal, open)
	}
}

func TestConcurrentUse(t *testing.T) {
	c, _ := NewCipher(testDEK(1), testBinding(1), small)
	plain := pattern(16384)
	obj, _ := c.SealChunk(nil, plain)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				blk := int64((g + i) % 4)
				off, n, _ := small.CiphertextRange(16384, blk, blk)
				p, err := c.OpenBlock(nil, obj[off:off+n], blk, blk == 3)
				if err != nil || !bytes.Equal(p, plain[blk*4096:(blk+1)*4096]) {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent open: %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	b := testBinding(9)
	c, _ := NewCipher(testDEK(1), b, Layout{BlockSize: 65536, ChunkSize: 1 << 20})
	h, err := ParseHeader(c.Header())
	if err != nil || h.Version != 1 || h.BlockSize != 65536 || h.Object != b.Object {
		t.Fatalf("ParseHeader = %+v, %v", h, err)
	}
	good := c.Header()
	for name, mut := range map[string]func([]byte){
		"magic":    func(h []byte) { h[0] = 'X' },
		"version":  func(h []byte) { h[hdrVersion] = 2 },
		"cipher":   func(h []byte) { h[hdrAEAD] = 9 },
		"small bs": func(h []byte) { h[hdrBlockLog2] = 11 },
		"big bs":   func(h []byte) { h[hdrBlockLog2] = 21 },
		"reserved": func(h []byte) { h[hdrReserved+6] = 1 },
	} {
		h := bytes.Clone(good)
		mut(h)
		if _, err := ParseHeader(h); err == nil {
			t.Errorf("ParseHeader accepted a bad %s", name)
		}
	}
	if _, err := ParseHeader(good[:31]); err == nil {
		t.Error("ParseHeader accepted 31 bytes")
	}
}
