package format

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code")

const vectorsPath = "testdata/vectors.json"

// The vectors file. Byte strings are lowercase hex; offsets and sizes are
// decimal. FORMAT.md describes every field; test/format/decode.py checks it.
type vectorFile struct {
	Comment     string         `json:"comment"`
	IDs         []idVector     `json:"ids"`
	DerivedKeys []kdfVector    `json:"derived_keys"`
	Objects     []objectVector `json:"objects"`
	Tampered    []tamperVector `json:"tampered"`
	Boxes       []boxVector    `json:"boxes"`
	BadBoxes    []badBoxVector `json:"bad_boxes"`
	Replica     replicaSection `json:"replica"`
}

type idVector struct {
	Hex  string `json:"hex"`
	Text string `json:"text"`
	Name string `json:"object_name"`
}

type kdfVector struct {
	Master  string   `json:"master"`
	Purpose string   `json:"purpose"`
	Fields  []string `json:"fields"`
	Info    string   `json:"info"`
	Key     string   `json:"key"`
}

type objectVector struct {
	Name       string        `json:"name"`
	DEK        string        `json:"dek"`
	Volume     string        `json:"volume_id"`
	File       string        `json:"file_id"`
	Object     string        `json:"object_id"`
	ObjectName string        `json:"object_name"`
	BlockSize  int           `json:"block_size"`
	ChunkSize  int64         `json:"chunk_size"`
	ChunkLen   int64         `json:"chunk_len"`
	Plaintext  string        `json:"plaintext"`
	Header     string        `json:"header"`
	KDFInfo    string        `json:"subkey_info"`
	Subkey     string        `json:"subkey"`
	Blocks     []blockVector `json:"blocks"`
	ObjectSize int64         `json:"object_size"`
	ObjectData string        `json:"object"`
}

type blockVector struct {
	Index    int64  `json:"index"`
	Last     bool   `json:"last"`
	PlainLen int    `json:"plain_len"`
	Offset   int64  `json:"offset"`
	Length   int64  `json:"length"`
	Nonce    string `json:"nonce"`
	AAD      string `json:"aad"`
	Tag      string `json:"tag"`
}

// tamperVector describes a modification of objects[Vector] (or of the
// catalog values used to open it) that must make opening fail.
type tamperVector struct {
	Desc     string `json:"desc"`
	Vector   int    `json:"vector"`
	Kind     string `json:"kind"` // flip | truncate | swap_blocks | splice | replace | binding | chunk_len | dek
	Offset   int64  `json:"offset"`
	Bit      int    `json:"bit"`
	Length   int64  `json:"length"`
	BlockA   int64  `json:"block_a"`
	BlockB   int64  `json:"block_b"`
	With     int    `json:"with"` // replace: the object of vector With
	Volume   string `json:"volume_id,omitempty"`
	File     string `json:"file_id,omitempty"`
	Object   string `json:"object_id,omitempty"`
	ChunkLen int64  `json:"chunk_len"`
	DEK      string `json:"dek,omitempty"`
}

type boxVector struct {
	Name      string `json:"name"`
	Key       string `json:"key"`
	Nonce     string `json:"nonce"`
	AAD       string `json:"aad"`
	Plaintext string `json:"plaintext"`
	Box       string `json:"box"`
}

type badBoxVector struct {
	Desc string `json:"desc"`
	Key  string `json:"key"`
	AAD  string `json:"aad"`
	Box  string `json:"box"`
}

func seq(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func idOf(b []byte) ID { var id ID; copy(id[:], b); return id }

// pattern is the plaintext of the multi-block vectors: byte i = (7*i+3) mod 251.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((7*i + 3) % 251)
	}
	return b
}

var (
	vecDEK    = seq(0x00, 32)
	vecVolume = idOf(seq(0xa0, 16))
	vecFile   = idOf(seq(0xb0, 16))
	vecObj1   = idOf(seq(0xc0, 16))
	vecObj2   = idOf(seq(0xd0, 16))
	vecObj3   = idOf(seq(0xe0, 16))
	vecObj4   = idOf(seq(0xf0, 16))
)

type objectSpec struct {
	name  string
	obj   ID
	l     Layout
	plain []byte
}

func objectSpecs() []objectSpec {
	small := Layout{BlockSize: 4096, ChunkSize: 16384}
	return []objectSpec{
		{"one short block (16 KiB blocks, 4 MiB chunks: the default layout)", vecObj1, Layout{BlockSize: 16 << 10, ChunkSize: 4 << 20}, []byte("coffer test vector 1\n")},
		{"three full blocks, the last one flagged last (4 KiB blocks, 16 KiB chunks)", vecObj2, small, pattern(3 * 4096)},
		{"two full blocks and a short last block of 100 bytes", vecObj3, small, pattern(2*4096 + 100)},
		{"one full block filling a minimal chunk (4 KiB blocks, 4 KiB chunks)", vecObj4, Layout{BlockSize: 4096, ChunkSize: 4096}, pattern(4096)},
	}
}

func hx(b []byte) string { return hex.EncodeToString(b) }

func buildVectors(t *testing.T) vectorFile {
	t.Helper()
	vf := vectorFile{Comment: "coffer content format v1 test vectors; see FORMAT.md. Byte strings are lowercase hex."}

	for _, b := range [][]byte{seq(0x00, 16), vecVolume[:], vecObj1[:], bytes.Repeat([]byte{0xff}, 16)} {
		id := idOf(b)
		vf.IDs = append(vf.IDs, idVector{Hex: hx(b), Text: id.String(), Name: ObjectName(id)})
	}

	kdfs := []struct {
		master  []byte
		purpose string
		fields  [][]byte
	}{
		{vecDEK, LabelObjectKey, [][]byte{vecVolume[:], vecFile[:], vecObj1[:]}},
		{seq(0x20, 32), "coffer/v1 test key", nil},
		{seq(0x20, 32), "coffer/v1 test key", [][]byte{[]byte("ab"), []byte("c")}},
		{seq(0x20, 32), "coffer/v1 test key", [][]byte{[]byte("a"), []byte("bc")}},
		{seq(0x20, 32), "coffer/v1 test key", [][]byte{{}}},
	}
	for _, k := range kdfs {
		key, err := DeriveKey(k.master, k.purpose, k.fields...)
		if err != nil {
			t.Fatal(err)
		}
		v := kdfVector{Master: hx(k.master), Purpose: k.purpose, Fields: []string{}, Info: hx(kdfInfo(k.purpose, k.fields)), Key: hx(key)}
		for _, f := range k.fields {
			v.Fields = append(v.Fields, hx(f))
		}
		vf.DerivedKeys = append(vf.DerivedKeys, v)
	}

	for _, s := range objectSpecs() {
		b := Binding{Volume: vecVolume, File: vecFile, Object: s.obj}
		c, err := NewCipher(vecDEK, b, s.l)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := c.SealChunk(nil, s.plain)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := DeriveKey(vecDEK, LabelObjectKey, b.Volume[:], b.File[:], b.Object[:])
		if err != nil {
			t.Fatal(err)
		}
		n := int64(len(s.plain))
		size, _ := s.l.ObjectSize(n)
		nb, _ := s.l.Blocks(n)
		v := objectVector{
			Name: s.name, DEK: hx(vecDEK), Volume: hx(b.Volume[:]), File: hx(b.File[:]), Object: hx(b.Object[:]),
			ObjectName: ObjectName(b.Object), BlockSize: s.l.BlockSize, ChunkSize: s.l.ChunkSize, ChunkLen: n,
			Plaintext: hx(s.plain), Header: hx(c.Header()),
			KDFInfo: hx(kdfInfo(LabelObjectKey, [][]byte{b.Volume[:], b.File[:], b.Object[:]})), Subkey: hx(sub),
			ObjectSize: size, ObjectData: hx(obj),
		}
		for i := range nb {
			off, ln, _ := s.l.CiphertextRange(n, i, i)
			pl, _ := s.l.BlockLen(n, i)
			sc := c.prepare(i, i == nb-1)
			v.Blocks = append(v.Blocks, blockVector{
				Index: i, Last: i == nb-1, PlainLen: pl, Offset: off, Length: ln,
				Nonce: hx(sc.nonce[:]), AAD: hx(sc.aad[:]), Tag: hx(obj[off+ln-TagSize : off+ln]),
			})
		}
		vf.Objects = append(vf.Objects, v)
		c.Wipe()
	}

	other := idOf(seq(0x50, 16))
	vf.Tampered = []tamperVector{
		{Desc: "flip bit 0 of the magic", Vector: 1, Kind: "flip", Offset: 0, Bit: 0},
		{Desc: "flip the block-size byte of the header", Vector: 1, Kind: "flip", Offset: hdrBlockLog2, Bit: 1},
		{Desc: "flip a reserved header bit", Vector: 1, Kind: "flip", Offset: 12, Bit: 7},
		{Desc: "flip a bit of the header's object id", Vector: 1, Kind: "flip", Offset: 31, Bit: 0},
		{Desc: "flip a ciphertext bit in block 1", Vector: 1, Kind: "flip", Offset: HeaderSize + 4112 + 77, Bit: 3},
		{Desc: "flip a tag bit of the last block", Vector: 2, Kind: "flip", Offset: HeaderSize + 2*4112 + 100 + 15, Bit: 7},
		{Desc: "swap blocks 0 and 1", Vector: 1, Kind: "swap_blocks", BlockA: 0, BlockB: 1},
		{Desc: "truncate at a block boundary (drop the last block)", Vector: 1, Kind: "truncate", Length: HeaderSize + 2*4112},
		{Desc: "truncate inside the last block", Vector: 2, Kind: "truncate", Length: HeaderSize + 2*4112 + 50},
		{Desc: "block 0 of another object of the same file spliced in as block 0", Vector: 1, Kind: "splice", With: 2, BlockA: 0, BlockB: 0},
		{Desc: "object replaced by another object of the same file (older version of the chunk)", Vector: 1, Kind: "replace", With: 2},
		{Desc: "wrong volume id", Vector: 0, Kind: "binding", Volume: hx(other[:])},
		{Desc: "wrong file id", Vector: 0, Kind: "binding", File: hx(other[:])},
		{Desc: "wrong object id (object copied under another name)", Vector: 0, Kind: "binding", Object: hx(other[:])},
		{Desc: "catalog chunk length one block shorter (block 1 is not last)", Vector: 1, Kind: "chunk_len", ChunkLen: 2 * 4096},
		{Desc: "catalog chunk length one byte longer", Vector: 2, Kind: "chunk_len", ChunkLen: 2*4096 + 101},
		{Desc: "wrong data key", Vector: 0, Kind: "dek", DEK: hx(seq(0x01, 32))},
	}

	boxKey := seq(0x40, 32)
	stagingKey, err := DeriveKey(vecDEK, "coffer/v1 test staging key", vecFile[:])
	if err != nil {
		t.Fatal(err)
	}
	boxes := []struct {
		name            string
		key, nonce, aad []byte
		plain           []byte
	}{
		{"short message with associated data", boxKey, seq(0x60, 12), []byte("coffer/v1 test box aad"), []byte("hello, box")},
		{"empty message, empty associated data", boxKey, seq(0x70, 12), nil, nil},
		{"4 KiB under a key from DeriveKey(dek, \"coffer/v1 test staging key\", file id)", stagingKey, seq(0x80, 12), vecFile[:], pattern(4096)},
	}
	for _, bx := range boxes {
		b, err := NewBox(bx.key)
		if err != nil {
			t.Fatal(err)
		}
		out, err := b.sealWithNonce(nil, bx.nonce, bx.plain, bx.aad)
		if err != nil {
			t.Fatal(err)
		}
		vf.Boxes = append(vf.Boxes, boxVector{Name: bx.name, Key: hx(bx.key), Nonce: hx(bx.nonce), AAD: hx(bx.aad), Plaintext: hx(bx.plain), Box: hx(out)})
	}
	good, _ := hex.DecodeString(vf.Boxes[0].Box)
	flip := bytes.Clone(good)
	flip[NonceSize+2] ^= 0x10
	nflip := bytes.Clone(good)
	nflip[0] ^= 1
	vf.BadBoxes = []badBoxVector{
		{"ciphertext bit flipped", hx(boxKey), vf.Boxes[0].AAD, hx(flip)},
		{"nonce bit flipped", hx(boxKey), vf.Boxes[0].AAD, hx(nflip)},
		{"tag truncated by one byte", hx(boxKey), vf.Boxes[0].AAD, hx(good[:len(good)-1])},
		{"wrong associated data", hx(boxKey), hx([]byte("coffer/v1 test box aae")), hx(good)},
		{"wrong key", hx(seq(0x41, 32)), vf.Boxes[0].AAD, hx(good)},
		{"shorter than nonce and tag", hx(boxKey), "", hx(good[:27])},
	}
	vf.Replica = buildReplicaVectors(t)
	return vf
}

func encodeVectors(t *testing.T, vf vectorFile) []byte {
	t.Helper()
	out, err := json.MarshalIndent(vf, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

// TestVectors regenerates the vectors and requires the stored file to match
// byte for byte (run with -update to rewrite it), then opens every stored
// vector with the public API alone.
func TestVectors(t *testing.T) {
	want := encodeVectors(t, buildVectors(t))
	if *update {
		if err := os.WriteFile(vectorsPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", vectorsPath, len(want))
	}
	got, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors (generate with: go test ./crypto/format -run TestVectors -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from what the code produces: the format changed. If intended, bump the version and regenerate with -update", vectorsPath)
	}
	var vf vectorFile
	if err := json.Unmarshal(got, &vf); err != nil {
		t.Fatal(err)
	}
	checkStoredVectors(t, vf)
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in vectors: %v", err)
	}
	return b
}

func checkStoredVectors(t *testing.T, vf vectorFile) {
	for _, v := range vf.IDs {
		id, err := ParseID(v.Text)
		if err != nil || hx(id[:]) != v.Hex {
			t.Errorf("id %s: ParseID = %x, %v", v.Text, id, err)
		}
		if got, err := ParseObjectName(v.Name); err != nil || got != id {
			t.Errorf("object name %s: %x, %v", v.Name, got, err)
		}
	}
	for _, v := range vf.DerivedKeys {
		var fields [][]byte
		for _, f := range v.Fields {
			fields = append(fields, unhex(t, f))
		}
		k, err := DeriveKey(unhex(t, v.Master), v.Purpose, fields...)
		if err != nil || hx(k) != v.Key {
			t.Errorf("derived key %q %v: %x, %v", v.Purpose, v.Fields, k, err)
		}
	}
	for i, v := range vf.Objects {
		b := Binding{Volume: idOf(unhex(t, v.Volume)), File: idOf(unhex(t, v.File)), Object: idOf(unhex(t, v.Object))}
		l := Layout{BlockSize: v.BlockSize, ChunkSize: v.ChunkSize}
		obj := unhex(t, v.ObjectData)
		plain, err := OpenChunk(unhex(t, v.DEK), b, l, v.ChunkLen, obj)
		if err != nil || hx(plain) != v.Plaintext {
			t.Errorf("object %d: OpenChunk: %v", i, err)
		}
		h, err := ParseHeader(obj)
		if err != nil || h.BlockSize != v.BlockSize || h.Object != b.Object || h.Version != Version {
			t.Errorf("object %d: ParseHeader = %+v, %v", i, h, err)
		}
		// Every single block on its own, through one ranged read each.
		for _, bv := range v.Blocks {
			off, n, err := l.CiphertextRange(v.ChunkLen, bv.Index, bv.Index)
			if err != nil || off != bv.Offset || n != bv.Length {
				t.Fatalf("object %d block %d: range %d+%d, %v; vector says %d+%d", i, bv.Index, off, n, err, bv.Offset, bv.Length)
			}
			pl, err := OpenRange(unhex(t, v.DEK), b, l, v.ChunkLen, bv.Index, bv.Index, obj[off:off+n])
			start := bv.Index * int64(v.BlockSize)
			if err != nil || hx(pl) != v.Plaintext[2*start:2*(start+int64(bv.PlainLen))] {
				t.Errorf("object %d block %d: OpenRange: %v", i, bv.Index, err)
			}
		}
	}
	for _, tv := range vf.Tampered {
		if _, err := openTampered(t, vf, tv); !errors.Is(err, ErrAuth) {
			t.Errorf("tampered %q: err = %v, want ErrAuth", tv.Desc, err)
		}
	}
	for _, v := range vf.Boxes {
		p, err := OpenBox(unhex(t, v.Key), unhex(t, v.Box), unhex(t, v.AAD))
		if err != nil || hx(p) != v.Plaintext {
			t.Errorf("box %q: %v", v.Name, err)
		}
	}
	for _, v := range vf.BadBoxes {
		if p, err := OpenBox(unhex(t, v.Key), unhex(t, v.Box), unhex(t, v.AAD)); !errors.Is(err, ErrAuth) || p != nil {
			t.Errorf("bad box %q: err = %v, want ErrAuth and no data", v.Desc, err)
		}
	}
	checkReplicaVectors(t, vf.Replica)
}

// openTampered applies a tamper vector and opens the result as a reader
// with the (possibly altered) catalog values would.
func openTampered(t *testing.T, vf vectorFile, tv tamperVector) ([]byte, error) {
	v := vf.Objects[tv.Vector]
	dek := unhex(t, v.DEK)
	b := Binding{Volume: idOf(unhex(t, v.Volume)), File: idOf(unhex(t, v.File)), Object: idOf(unhex(t, v.Object))}
	l := Layout{BlockSize: v.BlockSize, ChunkSize: v.ChunkSize}
	obj := unhex(t, v.ObjectData)
	chunkLen := v.ChunkLen
	switch tv.Kind {
	case "flip":
		obj[tv.Offset] ^= 1 << tv.Bit
	case "truncate":
		obj = obj[:tv.Length]
	case "swap_blocks":
		sb := l.SealedBlockSize()
		a, c := HeaderSize+tv.BlockA*sb, HeaderSize+tv.BlockB*sb
		tmp := bytes.Clone(obj[a : a+sb])
		copy(obj[a:a+sb], obj[c:c+sb])
		copy(obj[c:c+sb], tmp)
	case "splice":
		sb := l.SealedBlockSize()
		src := unhex(t, vf.Objects[tv.With].ObjectData)
		copy(obj[HeaderSize+tv.BlockA*sb:HeaderSize+(tv.BlockA+1)*sb], src[HeaderSize+tv.BlockB*sb:])
	case "replace":
		obj = unhex(t, vf.Objects[tv.With].ObjectData)
	case "binding":
		if tv.Volume != "" {
			b.Volume = idOf(unhex(t, tv.Volume))
		}
		if tv.File != "" {
			b.File = idOf(unhex(t, tv.File))
		}
		if tv.Object != "" {
			b.Object = idOf(unhex(t, tv.Object))
		}
	case "chunk_len":
		chunkLen = tv.ChunkLen
	case "dek":
		dek = unhex(t, tv.DEK)
	default:
		t.Fatalf("unknown tamper kind %q", tv.Kind)
	}
	// A reader that has the whole object checks everything.
	if p, err := OpenChunk(dek, b, l, chunkLen, obj); err == nil {
		return p, nil
	}
	// A reader that fetches only the blocks (no header) must fail too,
	// unless the damage is confined to the header, which it never reads.
	nb, err := l.Blocks(chunkLen)
	if err != nil {
		return nil, err
	}
	off, n, _ := l.CiphertextRange(chunkLen, 0, nb-1)
	if int64(len(obj)) < off+n {
		n = int64(len(obj)) - off
	}
	_, err = OpenRange(dek, b, l, chunkLen, 0, nb-1, obj[off:off+n])
	if err == nil && tv.Kind == "flip" && tv.Offset < HeaderSize {
		return nil, &AuthError{Reason: "header only: detected by CheckHeader"}
	}
	if err == nil {
		return nil, errors.New("OpenRange accepted tampered blocks")
	}
	return nil, err
}

// TestFormatDocQuotesVectors keeps FORMAT.md's worked example in sync with
// the vectors: every hex value it quotes from vector 0 (and from replica
// vector 0, section 12.8) must be current.
func TestFormatDocQuotesVectors(t *testing.T) {
	doc, err := os.ReadFile("../../FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	vf := buildVectors(t)
	v, r := vf.Objects[0], vf.Replica.Objects[0]
	for name, want := range map[string]string{
		"header": v.Header, "subkey": v.Subkey, "nonce": v.Blocks[0].Nonce, "aad": v.Blocks[0].AAD,
		"object": v.ObjectData, "object name": v.ObjectName, "box": vf.Boxes[0].Box,
		"replica header": r.Header, "replica subkey info": r.KDFInfo, "replica subkey": r.Subkey,
		"replica nonce": r.Blocks[0].Nonce, "replica aad": r.Blocks[0].AAD, "replica object": r.ObjectData,
	} {
		if !strings.Contains(strings.Join(strings.Fields(string(doc)), ""), want) {
			t.Errorf("FORMAT.md does not quote the current %s of vector 0 (%s...)", name, want[:min(len(want), 16)])
		}
	}
}
