package format

import (
	"bytes"
	"math"
	"testing"
)

// Fuzz targets for every decoder. Each must never panic and never return
// data for input that differs from what was sealed. Run one with e.g.
//   go test ./crypto/format -run '^$' -fuzz '^FuzzOpenBlock$' -fuzztime 5s

func FuzzParseID(f *testing.F) {
	id := idOf(seq(0xc0, 16))
	f.Add(id.String())
	f.Add(ObjectName(id))
	f.Add("77777777777777777777777777")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if id, err := ParseID(s); err == nil && id.String() != s {
			t.Fatalf("ParseID(%q) accepted a non-canonical form of %s", s, id)
		}
		if id, err := ParseObjectName(s); err == nil && ObjectName(id) != s {
			t.Fatalf("ParseObjectName(%q) accepted a non-canonical form of %s", s, ObjectName(id))
		}
	})
}

func FuzzHeader(f *testing.F) {
	c, _ := NewCipher(testDEK(1), testBinding(1), DefaultLayout)
	f.Add(c.Header())
	f.Add(make([]byte, HeaderSize))
	f.Add([]byte("COFFER"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err == nil {
			want := marshalHeader(Layout{BlockSize: h.BlockSize, ChunkSize: int64(h.BlockSize)}, h.Object)
			if !bytes.Equal(b[:HeaderSize], want[:]) {
				t.Fatalf("ParseHeader accepted a non-canonical header %x", b[:HeaderSize])
			}
		}
		if c.CheckHeader(b) == nil && !bytes.Equal(b, c.Header()) {
			t.Fatalf("CheckHeader accepted %x", b)
		}
	})
}

// fuzzObject is a fixed sealed object the open fuzzers mutate.
func fuzzObject(f *testing.F) (*Cipher, []byte, []byte) {
	c, err := NewCipher(testDEK(1), testBinding(1), small)
	if err != nil {
		f.Fatal(err)
	}
	plain := pattern(2*4096 + 100)
	obj, err := c.SealChunk(nil, plain)
	if err != nil {
		f.Fatal(err)
	}
	return c, obj, plain
}

func FuzzOpenBlock(f *testing.F) {
	c, obj, _ := fuzzObject(f)
	const chunkLen = 2*4096 + 100
	var blocks [][]byte
	for i := range int64(3) {
		off, n, _ := small.CiphertextRange(chunkLen, i, i)
		blocks = append(blocks, obj[off:off+n])
		f.Add(bytes.Clone(obj[off:off+n]), i, i == 2)
	}
	f.Add(blocks[0][:20], int64(0), true)
	f.Add([]byte{}, int64(-1), false)
	f.Add(blocks[1], int64(math.MaxInt64), false)
	f.Fuzz(func(t *testing.T, sealed []byte, index int64, last bool) {
		p, err := c.OpenBlock(nil, sealed, index, last)
		if err != nil {
			if p != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		if index < 0 || index > 2 || last != (index == 2) || !bytes.Equal(sealed, blocks[index]) {
			t.Fatalf("OpenBlock accepted forged block (index %d last %v, %d bytes)", index, last, len(sealed))
		}
	})
}

func FuzzOpenRange(f *testing.F) {
	c, obj, plain := fuzzObject(f)
	chunkLen := int64(len(plain))
	for _, r := range [][2]int64{{0, 0}, {0, 2}, {1, 2}, {2, 2}} {
		off, n, _ := small.CiphertextRange(chunkLen, r[0], r[1])
		f.Add(bytes.Clone(obj[off:off+n]), chunkLen, r[0], r[1])
	}
	f.Add(obj[HeaderSize:], int64(3*4096), int64(0), int64(2))
	f.Add([]byte{}, int64(0), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, ct []byte, cl, first, last int64) {
		p, err := c.OpenRange(nil, ct, cl, first, last)
		if err != nil {
			if p != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		// Success is right only if ct is exactly the stored blocks
		// first..last and the caller's chunk length agrees about which of
		// them is last (a shorter or longer catalog length is fine for
		// blocks that are full and not last in both views).
		off, n, rerr := small.CiphertextRange(chunkLen, first, last)
		gotLast, _ := small.LastBlock(cl)
		if rerr != nil || !bytes.Equal(ct, obj[off:off+n]) || (last == 2) != (gotLast == last) {
			t.Fatalf("OpenRange accepted forged input (chunkLen %d, blocks %d..%d, %d bytes)", cl, first, last, len(ct))
		}
		if !bytes.Equal(p, plain[first*4096:first*4096+int64(len(p))]) {
			t.Fatal("OpenRange returned the wrong plaintext")
		}
	})
}

func FuzzOpenChunk(f *testing.F) {
	c, obj, plain := fuzzObject(f)
	chunkLen := int64(len(plain))
	f.Add(bytes.Clone(obj), chunkLen)
	f.Add(obj[:len(obj)-1], chunkLen-1)
	f.Add(obj[:HeaderSize], int64(1))
	f.Fuzz(func(t *testing.T, o []byte, cl int64) {
		p, err := c.OpenChunk(nil, o, cl)
		if err != nil {
			if p != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		if cl != chunkLen || !bytes.Equal(o, obj) || !bytes.Equal(p, plain) {
			t.Fatalf("OpenChunk accepted a forged object (%d bytes, chunkLen %d)", len(o), cl)
		}
	})
}

func FuzzOpenBox(f *testing.F) {
	key := seq(0x40, 32)
	aad := []byte("coffer/v1 fuzz")
	bx, _ := NewBox(key)
	// Fixed nonces: fuzz workers rebuild these values and must agree.
	good, _ := bx.sealWithNonce(nil, seq(1, NonceSize), []byte("fuzz me"), aad)
	empty, _ := bx.sealWithNonce(nil, seq(2, NonceSize), nil, nil)
	f.Add(bytes.Clone(good), aad)
	f.Add(bytes.Clone(empty), []byte{})
	f.Add(good[:BoxOverhead-1], aad)
	f.Fuzz(func(t *testing.T, box, a []byte) {
		p, err := bx.Open(nil, box, a)
		if err != nil {
			if p != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		switch {
		case bytes.Equal(box, good) && bytes.Equal(a, aad) && string(p) == "fuzz me":
		case bytes.Equal(box, empty) && len(a) == 0 && len(p) == 0:
		default:
			t.Fatalf("OpenBox accepted a forged box (%d bytes)", len(box))
		}
	})
}

// FuzzLayout checks the offset math never panics and stays consistent on
// arbitrary (including invalid and extreme) inputs.
func FuzzLayout(f *testing.F) {
	f.Add(65536, int64(4<<20), int64(100000), int64(5), int64(70000), int64(1<<40))
	f.Add(4096, int64(4096), int64(1), int64(0), int64(1), int64(math.MaxInt64))
	f.Add(0, int64(0), int64(0), int64(-1), int64(-1), int64(-1))
	f.Fuzz(func(t *testing.T, bs int, cs, chunkLen, off, n, fileOff int64) {
		l := Layout{BlockSize: bs, ChunkSize: cs}
		ch, in, err := l.Locate(fileOff)
		if err == nil && (ch*cs+in != fileOff || in < 0 || in >= cs) {
			t.Fatalf("Locate(%d) = %d, %d", fileOff, ch, in)
		}
		if cnt, err := l.Chunks(fileOff); err == nil && fileOff > 0 {
			last, _ := l.ChunkLen(fileOff, cnt-1)
			if last < 1 || last > cs || (cnt-1)*cs+last != fileOff {
				t.Fatalf("Chunks/ChunkLen(%d) = %d, %d", fileOff, cnt, last)
			}
		}
		first, lastB, err := l.BlockSpan(chunkLen, off, n)
		if err != nil {
			return
		}
		if first*int64(bs) > off || (first+1)*int64(bs) <= off || lastB*int64(bs) > off+n-1 || (lastB+1)*int64(bs) <= off+n-1 {
			t.Fatalf("BlockSpan(%d, %d, %d) = %d, %d", chunkLen, off, n, first, lastB)
		}
		o, m, err := l.CiphertextRange(chunkLen, first, lastB)
		size, _ := l.ObjectSize(chunkLen)
		if err != nil || o < HeaderSize || o+m > size || m < TagSize+1 {
			t.Fatalf("CiphertextRange(%d, %d, %d) = %d, %d, %v (object %d)", chunkLen, first, lastB, o, m, err, size)
		}
	})
}

// FuzzOpenReplica opens arbitrary bytes as a replica object under arbitrary
// expected names: it must never panic, and succeed only on the sealed
// object under its own name (the object id and last flag come from the
// stored header).
func FuzzOpenReplica(f *testing.F) {
	key := testReplicaKey(0)
	h := testReplicaHeader(ReplicaSnapshot)
	plain := pattern(ReplicaBlockSize + 100)
	obj := mustSealReplica(f, key, h, plain)
	empty := h
	empty.Kind, empty.Part, empty.Last, empty.Position = ReplicaDelta, 0, false, h.Position+1
	eobj := mustSealReplica(f, key, empty, nil)
	f.Add(bytes.Clone(obj), byte(h.Kind), h.KEKVersion, h.Epoch, h.Position, h.Part)
	f.Add(bytes.Clone(eobj), byte(empty.Kind), empty.KEKVersion, empty.Epoch, empty.Position, empty.Part)
	f.Add(obj[:len(obj)-1], byte(h.Kind), h.KEKVersion, h.Epoch, h.Position, h.Part)
	f.Add(obj[:ReplicaHeaderSize+ReplicaBlockSize+TagSize], byte(h.Kind), h.KEKVersion, h.Epoch, h.Position, h.Part)
	f.Add(obj[:ReplicaHeaderSize], byte('d'), uint32(0), uint32(0), uint64(0), uint16(0))
	f.Fuzz(func(t *testing.T, o []byte, kind byte, kek, epoch uint32, pos uint64, part uint16) {
		want := ReplicaHeader{Kind: ReplicaKind(kind), KEKVersion: kek, Volume: h.Volume, Epoch: epoch, Position: pos, Part: part}
		p, err := OpenReplica(key, want, o)
		if err != nil {
			if p != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		ok := bytes.Equal(o, obj) && want.Kind == h.Kind && kek == h.KEKVersion && epoch == h.Epoch && pos == h.Position && part == h.Part && bytes.Equal(p, plain)
		eok := bytes.Equal(o, eobj) && want.Kind == empty.Kind && kek == empty.KEKVersion && epoch == empty.Epoch && pos == empty.Position && part == 0 && len(p) == 0
		if !ok && !eok {
			t.Fatalf("OpenReplica accepted a forged object (%d bytes) as %s", len(o), want)
		}
		if _, err := ParseReplicaHeader(o); err != nil {
			t.Fatalf("opened, but the header does not parse: %v", err)
		}
	})
}
