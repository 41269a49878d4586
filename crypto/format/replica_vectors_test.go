package format

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// The "replica" section of the vectors file (FORMAT.md 12.7).
type replicaSection struct {
	Objects  []replicaVector       `json:"objects"`
	Tampered []replicaTamperVector `json:"tampered"`
}

// replicaName is what a reader knows from an object's name and the volume:
// the expected header without object id and flags.
type replicaName struct {
	Kind       string `json:"kind"` // "d" or "s"
	KEKVersion uint32 `json:"kek_version"`
	Volume     string `json:"volume_id"`
	Epoch      uint32 `json:"epoch"`
	Position   uint64 `json:"position"`
	Part       uint16 `json:"part"`
}

type replicaVector struct {
	Name string `json:"name"`
	Key  string `json:"key"` // K_rep
	replicaName
	BlockSize  int           `json:"block_size"`
	Last       bool          `json:"last"`
	Object     string        `json:"object_id"`
	PlainLen   int64         `json:"plaintext_len"`
	Plaintext  *string       `json:"plaintext,omitempty"`         // hex, for short plaintexts (present even if empty)
	PlainGen   string        `json:"plaintext_pattern,omitempty"` // else byte i = (7*i+3) mod 251
	Header     string        `json:"header"`
	KDFInfo    string        `json:"subkey_info"`
	Subkey     string        `json:"subkey"`
	Blocks     []blockVector `json:"blocks"`
	ObjectSize int64         `json:"object_size"`
	ObjectData string        `json:"object"`
}

// replicaTamperVector describes a change to objects[Vector], or to what the
// reader expects or the key it uses, that must make OpenReplica fail.
type replicaTamperVector struct {
	Desc    string       `json:"desc"`
	Vector  int          `json:"vector"`
	Kind    string       `json:"kind"` // flip | truncate | extend | swap_blocks | swap_header | replace | rename | key
	Offset  int64        `json:"offset"`
	Bit     int          `json:"bit"`
	Length  int64        `json:"length"`
	Append  string       `json:"append,omitempty"`
	BlockA  int64        `json:"block_a"`
	BlockB  int64        `json:"block_b"`
	With    int          `json:"with"`
	Expect  *replicaName `json:"expect,omitempty"`
	Rewrite bool         `json:"rewrite_header"`
	Key     string       `json:"key,omitempty"`
}

const replicaPattern = "(7*i+3) mod 251"

// K_rep of the replica vectors: the "replica" volume key of FORMAT.md 9.8's
// example (keys/testdata/vectors.json volume_keys[0]: volume
// 00112233445566778899aabbccddeeff, volume chain version 2).
var (
	vecRepKey    = unhexMust("024395254904cebbc18503276032fd696d04299540032e976a5be400b947ff69")
	vecRepVolume = idOf(unhexMust("00112233445566778899aabbccddeeff"))
	vecRepOther  = unhexMust("69a01e86c4d7f750cb64cda5b4f1c63d0cf75e38535495298fddbd8e0f15d92a")
)

func unhexMust(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func (n replicaName) header(t *testing.T) ReplicaHeader {
	t.Helper()
	if len(n.Kind) != 1 {
		t.Fatalf("replica vector kind %q", n.Kind)
	}
	return ReplicaHeader{Kind: ReplicaKind(n.Kind[0]), KEKVersion: n.KEKVersion, Volume: idOf(unhex(t, n.Volume)),
		Epoch: n.Epoch, Position: n.Position, Part: n.Part}
}

func nameOf(h ReplicaHeader) replicaName {
	return replicaName{Kind: string(rune(h.Kind)), KEKVersion: h.KEKVersion, Volume: hx(h.Volume[:]), Epoch: h.Epoch, Position: h.Position, Part: h.Part}
}

func (v replicaVector) plaintext(t *testing.T) []byte {
	if v.PlainGen != "" {
		if v.PlainGen != replicaPattern {
			t.Fatalf("unknown plaintext pattern %q", v.PlainGen)
		}
		return pattern(int(v.PlainLen))
	}
	if v.Plaintext == nil {
		t.Fatal("replica vector without plaintext")
	}
	return unhex(t, *v.Plaintext)
}

func buildReplicaVectors(t *testing.T) replicaSection {
	t.Helper()
	specs := []struct {
		name  string
		h     ReplicaHeader
		plain []byte
		gen   bool
	}{
		{"delta, one short block (the worked example of FORMAT.md 12.8)",
			ReplicaHeader{Kind: ReplicaDelta, KEKVersion: 2, Volume: vecRepVolume, Epoch: 1, Position: 5, Object: vecObj1},
			[]byte("coffer replica vector 1\n"), false},
		{"snapshot part 2, the last part: one full 64 KiB block and a last block of 100 bytes",
			ReplicaHeader{Kind: ReplicaSnapshot, KEKVersion: 2, Volume: vecRepVolume, Epoch: 1, Position: 4, Part: 2, Last: true, Object: vecObj2},
			pattern(ReplicaBlockSize + 100), true},
		{"snapshot part 0, not the last part, empty plaintext (one empty block)",
			ReplicaHeader{Kind: ReplicaSnapshot, KEKVersion: 2, Volume: vecRepVolume, Epoch: 1, Position: 4, Part: 0, Object: vecObj3},
			nil, false},
	}
	var rs replicaSection
	for _, s := range specs {
		obj, err := SealReplica(vecRepKey, s.h, s.plain)
		if err != nil {
			t.Fatal(err)
		}
		hs := s.h
		hs.BlockSize = ReplicaBlockSize
		sub, err := replicaObjectKey(vecRepKey, hs)
		if err != nil {
			t.Fatal(err)
		}
		hdr := hs.marshal()
		n := int64(len(s.plain))
		v := replicaVector{
			Name: s.name, Key: hx(vecRepKey), replicaName: nameOf(s.h), BlockSize: ReplicaBlockSize, Last: s.h.Last,
			Object: hx(s.h.Object[:]), PlainLen: n, Header: hx(hdr[:]),
			KDFInfo: hx(kdfInfo(LabelReplicaObject, replicaKDFFields(hs))), Subkey: hx(sub),
			ObjectSize: ReplicaObjectSize(n), ObjectData: hx(obj),
		}
		if s.gen {
			v.PlainGen = replicaPattern
		} else {
			p := hx(s.plain)
			v.Plaintext = &p
		}
		tmpl := replicaAAD(&hdr)
		nb := ReplicaBlocks(n)
		for i := range nb {
			pl := min(ReplicaBlockSize, n-i*ReplicaBlockSize)
			off := ReplicaHeaderSize + i*(ReplicaBlockSize+TagSize)
			nonce := replicaNonce(uint64(i))
			aad := replicaBlockAAD(&tmpl, uint64(i), i == nb-1)
			v.Blocks = append(v.Blocks, blockVector{Index: i, Last: i == nb-1, PlainLen: int(pl), Offset: off, Length: pl + TagSize,
				Nonce: hx(nonce[:]), AAD: hx(aad[:]), Tag: hx(obj[off+pl : off+pl+TagSize])})
		}
		rs.Objects = append(rs.Objects, v)
	}

	n0 := nameOf(specs[0].h)
	n1 := nameOf(specs[1].h)
	rename := func(n replicaName, f func(*replicaName)) *replicaName { f(&n); return &n }
	other := idOf(seq(0x50, 16))
	sb := int64(ReplicaBlockSize + TagSize)
	size1 := ReplicaObjectSize(ReplicaBlockSize + 100)
	rs.Tampered = []replicaTamperVector{
		{Desc: "flip bit 0 of the magic", Vector: 0, Kind: "flip", Offset: rhMagic},
		{Desc: "flip the format version", Vector: 0, Kind: "flip", Offset: rhVersion, Bit: 1},
		{Desc: "flip the kind byte", Vector: 0, Kind: "flip", Offset: rhKind, Bit: 0},
		{Desc: "flip the AEAD id", Vector: 0, Kind: "flip", Offset: rhAEAD, Bit: 1},
		{Desc: "flip log2(B)", Vector: 0, Kind: "flip", Offset: rhBlockLog2, Bit: 0},
		{Desc: "flip the KEK version", Vector: 0, Kind: "flip", Offset: rhKEK + 3, Bit: 0},
		{Desc: "flip the volume id", Vector: 0, Kind: "flip", Offset: rhVolume + 15, Bit: 0},
		{Desc: "flip the epoch", Vector: 0, Kind: "flip", Offset: rhEpoch + 3, Bit: 1},
		{Desc: "flip the position", Vector: 0, Kind: "flip", Offset: rhPosition + 7, Bit: 0},
		{Desc: "flip the part", Vector: 1, Kind: "flip", Offset: rhPart + 1, Bit: 0},
		{Desc: "clear the last flag of a snapshot's last part", Vector: 1, Kind: "flip", Offset: rhFlags + 1, Bit: 0},
		{Desc: "set the last flag of a snapshot part", Vector: 2, Kind: "flip", Offset: rhFlags + 1, Bit: 0},
		{Desc: "set the last flag of a delta", Vector: 0, Kind: "flip", Offset: rhFlags + 1, Bit: 0},
		{Desc: "set a reserved flag bit", Vector: 1, Kind: "flip", Offset: rhFlags, Bit: 7},
		{Desc: "flip the object id", Vector: 0, Kind: "flip", Offset: rhObject + 15, Bit: 0},
		{Desc: "flip a ciphertext bit", Vector: 0, Kind: "flip", Offset: ReplicaHeaderSize + 3, Bit: 2},
		{Desc: "flip a ciphertext bit of block 1", Vector: 1, Kind: "flip", Offset: ReplicaHeaderSize + sb + 50, Bit: 4},
		{Desc: "flip a tag bit of the last block", Vector: 1, Kind: "flip", Offset: size1 - 1, Bit: 7},
		{Desc: "flip a tag bit of the empty block", Vector: 2, Kind: "flip", Offset: ReplicaHeaderSize + 8, Bit: 3},
		{Desc: "truncate at the block boundary (drop the last block)", Vector: 1, Kind: "truncate", Length: ReplicaHeaderSize + sb},
		{Desc: "truncate inside the last block", Vector: 1, Kind: "truncate", Length: size1 - 50},
		{Desc: "truncate to the header alone", Vector: 0, Kind: "truncate", Length: ReplicaHeaderSize},
		{Desc: "truncate inside the header", Vector: 0, Kind: "truncate", Length: 40},
		{Desc: "truncate inside the empty block's tag", Vector: 2, Kind: "truncate", Length: ReplicaHeaderSize + 15},
		{Desc: "extend by one byte", Vector: 0, Kind: "extend", Append: "00"},
		{Desc: "extend by an empty sealed block's worth of bytes", Vector: 1, Kind: "extend", Append: hx(make([]byte, TagSize))},
		{Desc: "swap blocks 0 and 1", Vector: 1, Kind: "swap_blocks", BlockA: 0, BlockB: 1},
		{Desc: "header of another object (snapshot part 2 of position 4) on this one", Vector: 0, Kind: "swap_header", With: 1},
		{Desc: "header of a part of the same snapshot on this one", Vector: 1, Kind: "swap_header", With: 2},
		{Desc: "another object in this one's place (same volume and epoch)", Vector: 0, Kind: "replace", With: 2},
		{Desc: "another part of the same snapshot in this one's place", Vector: 2, Kind: "replace", With: 1},
		{Desc: "opened as another epoch", Vector: 0, Kind: "rename", Expect: rename(n0, func(n *replicaName) { n.Epoch = 2 })},
		{Desc: "opened as another epoch, header rewritten to match", Vector: 0, Kind: "rename", Rewrite: true, Expect: rename(n0, func(n *replicaName) { n.Epoch = 2 })},
		{Desc: "opened as another position", Vector: 0, Kind: "rename", Expect: rename(n0, func(n *replicaName) { n.Position = 6 })},
		{Desc: "opened as another position, header rewritten to match", Vector: 0, Kind: "rename", Rewrite: true, Expect: rename(n0, func(n *replicaName) { n.Position = 6 })},
		{Desc: "opened as another volume's, header rewritten to match", Vector: 0, Kind: "rename", Rewrite: true, Expect: rename(n0, func(n *replicaName) { n.Volume = hx(other[:]) })},
		{Desc: "opened as another volume's", Vector: 0, Kind: "rename", Expect: rename(n0, func(n *replicaName) { n.Volume = hx(other[:]) })},
		{Desc: "delta opened as a snapshot part 0, header rewritten to match", Vector: 0, Kind: "rename", Rewrite: true, Expect: rename(n0, func(n *replicaName) { n.Kind = "s" })},
		{Desc: "snapshot part opened as a delta, header rewritten to match", Vector: 2, Kind: "rename", Rewrite: true, Expect: rename(nameOf(specs[2].h), func(n *replicaName) { n.Kind = "d" })},
		{Desc: "opened as another part", Vector: 1, Kind: "rename", Expect: rename(n1, func(n *replicaName) { n.Part = 3 })},
		{Desc: "opened as another part, header rewritten to match", Vector: 1, Kind: "rename", Rewrite: true, Expect: rename(n1, func(n *replicaName) { n.Part = 3 })},
		{Desc: "opened under KEK version 3", Vector: 0, Kind: "rename", Expect: rename(n0, func(n *replicaName) { n.KEKVersion = 3 })},
		{Desc: "opened under KEK version 3, header rewritten to match", Vector: 0, Kind: "rename", Rewrite: true, Expect: rename(n0, func(n *replicaName) { n.KEKVersion = 3 })},
		{Desc: "wrong replica key (volume_keys[1] of keys/testdata/vectors.json)", Vector: 0, Kind: "key", Key: hx(vecRepOther)},
		{Desc: "wrong replica key, empty plaintext", Vector: 2, Kind: "key", Key: hx(vecRepOther)},
	}
	return rs
}

// applyReplicaTamper returns the key, the expected header and the object a
// reader would open after tv.
func applyReplicaTamper(t *testing.T, rs replicaSection, tv replicaTamperVector) ([]byte, ReplicaHeader, []byte) {
	t.Helper()
	v := rs.Objects[tv.Vector]
	key := unhex(t, v.Key)
	want := v.replicaName.header(t)
	obj := unhex(t, v.ObjectData)
	blocks := func(o []byte) [][]byte {
		var bs [][]byte
		for _, bv := range v.Blocks {
			bs = append(bs, o[bv.Offset:bv.Offset+bv.Length])
		}
		return bs
	}
	switch tv.Kind {
	case "flip":
		obj[tv.Offset] ^= 1 << tv.Bit
	case "truncate":
		obj = obj[:tv.Length]
	case "extend":
		obj = append(obj, unhex(t, tv.Append)...)
	case "swap_blocks":
		bs := blocks(bytes.Clone(obj))
		bs[tv.BlockA], bs[tv.BlockB] = bs[tv.BlockB], bs[tv.BlockA]
		obj = append(obj[:ReplicaHeaderSize:ReplicaHeaderSize], bytes.Join(bs, nil)...)
	case "swap_header":
		copy(obj, unhex(t, rs.Objects[tv.With].Header))
	case "replace":
		obj = unhex(t, rs.Objects[tv.With].ObjectData)
	case "rename":
		want = tv.Expect.header(t)
		if tv.Rewrite {
			// The expected header with the stored object id and flags (a
			// delta has none).
			m := want.marshal()
			copy(obj[rhKind:rhFlags], m[rhKind:rhFlags])
			if want.Kind == ReplicaDelta {
				clear(obj[rhFlags:rhObject])
			}
		}
	case "key":
		key = unhex(t, tv.Key)
	default:
		t.Fatalf("unknown replica tamper kind %q", tv.Kind)
	}
	return key, want, obj
}

func checkReplicaVectors(t *testing.T, rs replicaSection) {
	for i, v := range rs.Objects {
		want := v.replicaName.header(t)
		obj := unhex(t, v.ObjectData)
		plain := v.plaintext(t)
		if int64(len(plain)) != v.PlainLen || int64(len(obj)) != v.ObjectSize || ReplicaObjectSize(v.PlainLen) != v.ObjectSize {
			t.Errorf("replica %d: sizes: plaintext %d/%d, object %d/%d", i, len(plain), v.PlainLen, len(obj), v.ObjectSize)
		}
		p, err := OpenReplica(unhex(t, v.Key), want, obj)
		if err != nil || !bytes.Equal(p, plain) {
			t.Errorf("replica %d: OpenReplica: %v", i, err)
		}
		h, err := ParseReplicaHeader(obj)
		want.Object, want.Last, want.BlockSize = idOf(unhex(t, v.Object)), v.Last, v.BlockSize
		if err != nil || h != want {
			t.Errorf("replica %d: ParseReplicaHeader = %+v, %v; want %+v", i, h, err, want)
		}
		if hb, _ := want.Marshal(); hx(hb) != v.Header || hx(obj[:ReplicaHeaderSize]) != v.Header {
			t.Errorf("replica %d: header %x", i, hb)
		}
	}
	for _, tv := range rs.Tampered {
		key, want, obj := applyReplicaTamper(t, rs, tv)
		if p, err := OpenReplica(key, want, obj); !errors.Is(err, ErrAuth) || p != nil {
			t.Errorf("replica tampered %q: err = %v, want ErrAuth", tv.Desc, err)
		}
	}
	// A vector whose tamper only renames must have a header the reader
	// could have been given (else the test proves nothing about the tag).
	for _, tv := range rs.Tampered {
		if tv.Kind == "rename" && tv.Rewrite {
			_, want, obj := applyReplicaTamper(t, rs, tv)
			if h, err := ParseReplicaHeader(obj); err != nil || replicaHeaderMatches(h, want) != nil {
				t.Errorf("replica tampered %q: rewritten header %x does not fit %s: %v", tv.Desc, obj[:ReplicaHeaderSize], want, err)
			}
		}
	}
}
