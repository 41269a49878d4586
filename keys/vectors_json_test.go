package keys_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"

	"coffer/keys"
	"coffer/keys/internal/softkek"
	"coffer/keys/keystest"
	"coffer/keys/passphrase"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code")

const vectorsPath = "testdata/vectors.json"

// The key vectors of FORMAT.md section 9, machine-readable. Byte strings are lowercase hex,
// integers decimal. test/format/decode_keys.py (written from FORMAT.md alone) checks them.
type keyVectorFile struct {
	Comment    string             `json:"comment"`
	Wrap       []wrapVector       `json:"wrap"`
	Derive     []deriveVector     `json:"derive"`
	HSM        []hsmVector        `json:"hsm"`
	Passphrase []passphraseVector `json:"passphrase"`
	EdgeParams []edgeParamsVector `json:"edge_params"`
	BadParams  []badParamsVector  `json:"bad_params"`
	BadRecords []badRecordVector  `json:"bad_records"`
	BadRefs    []refVector        `json:"bad_refs"`
	VolumeKeys []volumeKeyVector  `json:"volume_keys"`
}

// volumeKeyVector is a volume-level key (FORMAT.md 9.8) of the volume chain's version.
type volumeKeyVector struct {
	Name    string `json:"name"`
	HMACKey string `json:"hmac_key"`
	Volume  string `json:"volume_id"`
	Version uint32 `json:"version"`
	Purpose string `json:"purpose"`
	Msg     string `json:"msg"`
	Key     string `json:"key"`
}

type wrapVector struct {
	Name     string       `json:"name"`
	AESKey   string       `json:"aes_key,omitempty"` // omitted when nested in a passphrase material
	Volume   string       `json:"volume_id"`
	File     string       `json:"file_id"`
	Chain    string       `json:"chain"`
	Version  uint32       `json:"version"`
	IV       string       `json:"iv"`
	DEK      string       `json:"dek"`
	AAD      string       `json:"aad"`
	Wrapped  string       `json:"wrapped"`
	Tampered []recordJSON `json:"tampered,omitempty"`
}

type deriveVector struct {
	Name    string `json:"name"`
	HMACKey string `json:"hmac_key,omitempty"` // omitted when nested in a passphrase material
	Volume  string `json:"volume_id"`
	File    string `json:"file_id"`
	Chain   string `json:"chain"`
	Version uint32 `json:"version"`
	Salt    string `json:"salt"`
	Msg     string `json:"msg"`
	DEK     string `json:"dek"`
}

type hsmVector struct {
	Name        string `json:"name"`
	Volume      string `json:"volume_id"`
	Chain       string `json:"chain"`
	Version     uint32 `json:"version"`
	AESLabel    string `json:"aes_label"`
	HMACLabel   string `json:"hmac_label"`
	SelfTestAAD string `json:"selftest_aad"`
}

type passphraseVector struct {
	Name           string           `json:"name"`
	PassphraseText string           `json:"passphrase_text"`
	Passphrase     string           `json:"passphrase"` // hex of the bytes given to Argon2id
	Volume         string           `json:"volume_id"`
	T              uint32           `json:"t"`
	M              uint32           `json:"m"`
	P              uint8            `json:"p"`
	Salt           string           `json:"salt"`
	Master         string           `json:"master"`
	KWK            string           `json:"kwk"`
	Check          string           `json:"check"`
	Params         string           `json:"params"`
	Materials      []materialVector `json:"materials"`
}

type materialVector struct {
	Chain    string        `json:"chain"`
	Version  uint32        `json:"version"`
	AESKey   string        `json:"aes_key"`
	HMACKey  string        `json:"hmac_key"`
	Nonce    string        `json:"nonce"`
	AAD      string        `json:"aad"`
	Material string        `json:"material"`
	Wrap     *wrapVector   `json:"wrap,omitempty"`
	Derive   *deriveVector `json:"derive,omitempty"`
}

type edgeParamsVector struct {
	Name   string `json:"name"`
	Params string `json:"params"`
	T      uint32 `json:"t"`
	M      uint32 `json:"m"`
	P      uint8  `json:"p"`
}

type badParamsVector struct {
	Name   string `json:"name"`
	Params string `json:"params"`
}

// recordJSON is a file key record of FORMAT.md 9.3. In a wrap vector's "tampered" list it
// holds only the fields that differ from the vector's own record.
type recordJSON struct {
	Name    string  `json:"name,omitempty"`
	Mode    *string `json:"mode,omitempty"`
	Chain   *string `json:"chain,omitempty"`
	Version *uint32 `json:"version,omitempty"`
	IV      *string `json:"iv,omitempty"`
	Wrapped *string `json:"wrapped,omitempty"`
	Salt    *string `json:"salt,omitempty"`
}

type badRecordVector struct {
	Name   string     `json:"name"`
	Record recordJSON `json:"record"`
}

type refVector struct {
	Name    string `json:"name"`
	Chain   string `json:"chain"`
	Version uint32 `json:"version"`
}

func hx(b []byte) string { return hex.EncodeToString(b) }

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

func id16(b []byte) [keys.IDSize]byte {
	var a [keys.IDSize]byte
	if copy(a[:], b) != keys.IDSize {
		panic("not 16 bytes")
	}
	return a
}

func ptr[T any](v T) *T { return &v }

// kekProvider is the smallest keys.Provider over coffer's software KEK (what the passphrase
// provider holds per version), so OpenFileKey runs its real path on fixed keys.
type kekProvider map[keys.KEKRef]*softkek.KEK

func (p kekProvider) Kind() string { return "test" }
func (p kekProvider) CreateKEK(context.Context, keys.KEKRef) ([]byte, error) {
	return nil, errors.New("not supported")
}
func (p kekProvider) Load(keys.KEKRef, []byte) error { return nil }
func (p kekProvider) get(ref keys.KEKRef) (*softkek.KEK, error) {
	if k, ok := p[ref]; ok {
		return k, nil
	}
	return nil, keys.Errorf(keys.ErrKEKMissing, "no KEK %s", ref)
}
func (p kekProvider) Seal(_ context.Context, ref keys.KEKRef, iv, pt, aad []byte) ([]byte, error) {
	k, err := p.get(ref)
	if err != nil {
		return nil, err
	}
	return k.Seal(iv, pt, aad)
}
func (p kekProvider) Open(_ context.Context, ref keys.KEKRef, iv, ct, aad []byte) ([]byte, error) {
	k, err := p.get(ref)
	if err != nil {
		return nil, err
	}
	pt, err := k.Open(iv, ct, aad)
	if err != nil {
		return nil, keys.Errorf(keys.ErrUnwrap, "test provider: %v", err)
	}
	return pt, nil
}
func (p kekProvider) MAC(_ context.Context, ref keys.KEKRef, msg []byte) ([]byte, error) {
	k, err := p.get(ref)
	if err != nil {
		return nil, err
	}
	return k.MAC(msg)
}
func (p kekProvider) DestroyKEK(context.Context, keys.KEKRef) error { return nil }
func (p kekProvider) Wipe() error {
	for _, k := range p {
		k.Wipe()
	}
	return nil
}

func newKEK(t *testing.T, aesKey, hmacKey []byte) *softkek.KEK {
	t.Helper()
	k, err := softkek.New(append(bytes.Clone(aesKey), hmacKey...))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keySpec is one (KEK version, file) pair from which a wrap and a derive vector are made.
type keySpec struct {
	name             string
	volume, file     []byte
	ref              keys.KEKRef
	aesKey, hmacKey  []byte
	dek, iv, salt    []byte
	tamperedVariants bool
}

func keySpecs() []keySpec {
	v := keystest.Vector
	return []keySpec{
		{name: "FORMAT.md 9.6 (user chain u1000, version 2)", volume: v.Volume[:], file: v.File[:],
			ref: keys.KEKRef{Chain: v.Chain, Version: v.Version}, aesKey: v.KEKAES, hmacKey: v.KEKHMAC,
			dek: v.DEK, iv: v.IV, salt: v.Salt, tamperedVariants: true},
		{name: "volume chain, version 1", volume: seq(0x30, 16), file: seq(0x40, 16),
			ref: keys.KEKRef{Chain: "", Version: 1}, aesKey: seq(0x50, 32), hmacKey: seq(0x70, 32),
			dek: seq(0x90, 32), iv: seq(0xb0, 12), salt: seq(0xd0, 32)},
		{name: "32-character chain, version 2^32-1", volume: seq(0xe0, 16), file: seq(0xf0, 16),
			ref:    keys.KEKRef{Chain: "Team.A_b-9" + strings.Repeat("x", 22), Version: 0xffffffff},
			aesKey: seq(0x11, 32), hmacKey: seq(0x33, 32), dek: seq(0x55, 32), iv: seq(0x77, 12), salt: seq(0x99, 32)},
	}
}

func makeWrap(t *testing.T, s keySpec) wrapVector {
	t.Helper()
	id := keys.FileIdentity{Volume: id16(s.volume), File: id16(s.file)}
	aad := keys.WrapAAD(id, s.ref)
	k := newKEK(t, s.aesKey, s.hmacKey)
	defer k.Wipe()
	wrapped, err := k.Seal(s.iv, s.dek, aad)
	if err != nil {
		t.Fatal(err)
	}
	w := wrapVector{Name: s.name, AESKey: hx(s.aesKey), Volume: hx(s.volume), File: hx(s.file),
		Chain: s.ref.Chain, Version: s.ref.Version, IV: hx(s.iv), DEK: hx(s.dek), AAD: hx(aad), Wrapped: hx(wrapped)}
	if s.tamperedVariants {
		flipped := bytes.Clone(wrapped)
		flipped[40] ^= 0x80
		otherIV := bytes.Clone(s.iv)
		otherIV[0] ^= 1
		w.Tampered = []recordJSON{
			{Name: "tag bit flipped", Wrapped: ptr(hx(flipped))},
			{Name: "IV changed", IV: ptr(hx(otherIV))},
			{Name: "relabelled as another version", Version: ptr(s.ref.Version + 1)},
			{Name: "relabelled to the volume chain", Chain: ptr("")},
			{Name: "wrapped truncated to 47 bytes", Wrapped: ptr(hx(wrapped[:47]))},
			{Name: "relabelled as derive mode", Mode: ptr("derive")},
		}
	}
	return w
}

func makeDerive(t *testing.T, s keySpec) deriveVector {
	t.Helper()
	id := keys.FileIdentity{Volume: id16(s.volume), File: id16(s.file)}
	msg := keys.DeriveMessage(id, s.salt)
	k := newKEK(t, s.aesKey, s.hmacKey)
	defer k.Wipe()
	dek, err := k.MAC(msg)
	if err != nil {
		t.Fatal(err)
	}
	return deriveVector{Name: s.name, HMACKey: hx(s.hmacKey), Volume: hx(s.volume), File: hx(s.file),
		Chain: s.ref.Chain, Version: s.ref.Version, Salt: hx(s.salt), Msg: hx(msg), DEK: hx(dek)}
}

type ppSpec struct {
	name string
	pass string
	vol  []byte
	cost passphrase.Cost
	salt []byte
	keks []keySpec // each becomes one material, sealed with nonce seq(0x60+i*16, 12)
}

func ppSpecs() []ppSpec {
	v, pv := keystest.Vector, keystest.Passphrase
	specs := keySpecs()
	return []ppSpec{
		{name: "FORMAT.md 9.6", pass: string(pv.Passphrase), vol: v.Volume[:],
			cost: passphrase.Cost{Time: pv.Time, MemoryKiB: pv.MemoryKiB, Threads: pv.Threads},
			salt: pv.Salt, keks: specs[:1]},
		// Non-ASCII (UTF-8 bytes, no normalization), several lanes, and a memory size that is
		// not a multiple of 4*p (Argon2 rounds it down to 4*p*floor(m/4p) blocks).
		{name: "UTF-8 passphrase, t=2, m=8202 KiB, p=3, two KEK versions",
			pass: "Grüße, 鍵 🔑 e\u0301", vol: specs[1].volume,
			cost: passphrase.Cost{Time: 2, MemoryKiB: 8202, Threads: 3},
			salt: seq(0xa0, 16), keks: []keySpec{specs[1], func() keySpec {
				s := specs[1]
				s.ref = keys.KEKRef{Chain: "u1000", Version: 7}
				s.aesKey, s.hmacKey = seq(0x21, 32), seq(0x41, 32)
				return s
			}()}},
	}
}

func makePassphrase(t *testing.T, s ppSpec) passphraseVector {
	t.Helper()
	pass := []byte(s.pass)
	vol := id16(s.vol)
	master := argon2.IDKey(pass, s.salt, s.cost.Time, s.cost.MemoryKiB, s.cost.Threads, 32)
	mac := func(label string) []byte {
		m := hmac.New(sha256.New, master)
		m.Write(keys.AppendLP(keys.AppendLP(nil, []byte(label)), vol[:]))
		return m.Sum(nil)
	}
	kwk, check := mac(keys.LabelPassKWK), mac(keys.LabelPassCheck)
	params := passphrase.Params{Cost: s.cost}
	copy(params.Salt[:], s.salt)
	copy(params.Check[:], check)
	enc, err := params.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	pv := passphraseVector{Name: s.name, PassphraseText: s.pass, Passphrase: hx(pass), Volume: hx(s.vol),
		T: s.cost.Time, M: s.cost.MemoryKiB, P: s.cost.Threads, Salt: hx(s.salt),
		Master: hx(master), KWK: hx(kwk), Check: hx(check), Params: hx(enc)}
	block, _ := aes.NewCipher(kwk)
	gcm, _ := cipher.NewGCM(block)
	for i, k := range s.keks {
		nonce := seq(0x60+16*i, 12)
		aad := keys.PassphraseKEKAAD(vol, k.ref)
		mat := gcm.Seal(append([]byte{1}, nonce...), nonce, append(bytes.Clone(k.aesKey), k.hmacKey...), aad)
		w, d := makeWrap(t, k), makeDerive(t, k)
		w.Name, w.AESKey, w.Tampered = "", "", nil
		d.Name, d.HMACKey = "", ""
		pv.Materials = append(pv.Materials, materialVector{Chain: k.ref.Chain, Version: k.ref.Version,
			AESKey: hx(k.aesKey), HMACKey: hx(k.hmacKey), Nonce: hx(nonce), AAD: hx(aad), Material: hx(mat),
			Wrap: &w, Derive: &d})
	}
	return pv
}

func paramsBytes(t *testing.T, c passphrase.Cost) []byte {
	t.Helper()
	p := passphrase.Params{Cost: c}
	copy(p.Salt[:], seq(0x50, 16))
	copy(p.Check[:], seq(0x80, 32))
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func buildKeyVectors(t *testing.T) keyVectorFile {
	vf := keyVectorFile{Comment: "coffer key vectors, FORMAT.md section 9; generated by " +
		"go test ./keys -run TestKeyVectorsJSON -update; checked by test/format/decode_keys.py"}
	for _, s := range keySpecs() {
		vf.Wrap = append(vf.Wrap, makeWrap(t, s))
		vf.Derive = append(vf.Derive, makeDerive(t, s))
		vol := id16(s.volume)
		vf.HSM = append(vf.HSM, hsmVector{Name: s.name, Volume: hx(s.volume), Chain: s.ref.Chain, Version: s.ref.Version,
			AESLabel: keys.HSMLabel(vol, s.ref, "aes"), HMACLabel: keys.HSMLabel(vol, s.ref, "hmac"),
			SelfTestAAD: hx(keys.SelfTestAAD(vol, s.ref))})
	}
	for i, s := range keySpecs() {
		purpose := []string{"replica", "names", "replica"}[i%3]
		vol := id16(s.volume)
		msg := keys.VolumeKeyMessage(vol, purpose)
		m := hmac.New(sha256.New, s.hmacKey)
		m.Write(msg)
		vf.VolumeKeys = append(vf.VolumeKeys, volumeKeyVector{Name: "volume chain, HMAC key of " + s.name, HMACKey: hx(s.hmacKey), Volume: hx(s.volume),
			Version: s.ref.Version, Purpose: purpose, Msg: hx(msg), Key: hx(m.Sum(nil))})
	}
	for _, s := range ppSpecs() {
		vf.Passphrase = append(vf.Passphrase, makePassphrase(t, s))
	}

	for _, c := range []struct {
		name string
		cost passphrase.Cost
	}{
		{"smallest cost", passphrase.Cost{Time: passphrase.MinTime, MemoryKiB: passphrase.MinMemoryKiB, Threads: passphrase.MinThreads}},
		{"largest cost", passphrase.Cost{Time: passphrase.MaxTime, MemoryKiB: passphrase.MaxMemoryKiB, Threads: passphrase.MaxThreads}},
		{"defaults", passphrase.DefaultCost},
	} {
		vf.EdgeParams = append(vf.EdgeParams, edgeParamsVector{Name: c.name, Params: hx(paramsBytes(t, c.cost)),
			T: c.cost.Time, M: c.cost.MemoryKiB, P: c.cost.Threads})
	}

	good := paramsBytes(t, passphrase.DefaultCost)
	mut := func(f func(b []byte) []byte) string { return hx(f(bytes.Clone(good))) }
	set32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte {
			b[off], b[off+1], b[off+2], b[off+3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
			return b
		}
	}
	vf.BadParams = []badParamsVector{
		{"62 bytes", mut(func(b []byte) []byte { return b[:62] })},
		{"64 bytes", mut(func(b []byte) []byte { return append(b, 0) })},
		{"magic cfpp", mut(func(b []byte) []byte { b[0] = 'c'; return b })},
		{"format version 2", mut(func(b []byte) []byte { b[4] = 2; return b })},
		{"format version 0", mut(func(b []byte) []byte { b[4] = 0; return b })},
		{"algorithm 2", mut(func(b []byte) []byte { b[5] = 2; return b })},
		{"t = 0", mut(set32(6, 0))},
		{"t = 11", mut(set32(6, 11))},
		{"t = 64", mut(set32(6, 64))},
		{"m = 8191 KiB", mut(set32(10, 8191))},
		{"m = 1048577 KiB", mut(set32(10, 1048577))},
		{"m = 4194304 KiB", mut(set32(10, 4194304))},
		{"m = 2^32-1 KiB", mut(set32(10, 0xffffffff))},
		{"p = 0", mut(func(b []byte) []byte { b[14] = 0; return b })},
		{"p = 17", mut(func(b []byte) []byte { b[14] = 17; return b })},
		{"p = 255", mut(func(b []byte) []byte { b[14] = 255; return b })},
	}

	s := func(v string) *string { return &v }
	goodIV, goodWrapped, goodSalt := hx(seq(0, 12)), hx(seq(0, 48)), hx(seq(0, 32))
	wrapRec := func(name string, chain string, version uint32, iv, wrapped, salt string) badRecordVector {
		return badRecordVector{name, recordJSON{Mode: s("wrap"), Chain: s(chain), Version: ptr(version), IV: s(iv), Wrapped: s(wrapped), Salt: s(salt)}}
	}
	deriveRec := func(name string, iv, wrapped, salt string) badRecordVector {
		return badRecordVector{name, recordJSON{Mode: s("derive"), Chain: s("u1000"), Version: ptr(uint32(1)), IV: s(iv), Wrapped: s(wrapped), Salt: s(salt)}}
	}
	vf.BadRecords = []badRecordVector{
		wrapRec("wrap, 11-byte IV", "", 1, hx(seq(0, 11)), goodWrapped, ""),
		wrapRec("wrap, 13-byte IV", "", 1, hx(seq(0, 13)), goodWrapped, ""),
		wrapRec("wrap, 47 wrapped bytes", "", 1, goodIV, hx(seq(0, 47)), ""),
		wrapRec("wrap, 49 wrapped bytes", "", 1, goodIV, hx(seq(0, 49)), ""),
		wrapRec("wrap with a salt", "", 1, goodIV, goodWrapped, goodSalt),
		wrapRec("wrap, version 0", "", 0, goodIV, goodWrapped, ""),
		wrapRec("wrap, chain \"volume\"", "volume", 1, goodIV, goodWrapped, ""),
		deriveRec("derive, 31-byte salt", "", "", hx(seq(0, 31))),
		deriveRec("derive, 33-byte salt", "", "", hx(seq(0, 33))),
		deriveRec("derive with an IV", goodIV, "", goodSalt),
		deriveRec("derive with wrapped bytes", "", goodWrapped, goodSalt),
		{"mode \"Wrap\"", recordJSON{Mode: s("Wrap"), Chain: s(""), Version: ptr(uint32(1)), IV: s(goodIV), Wrapped: s(goodWrapped), Salt: s("")}},
		{"mode \"\"", recordJSON{Mode: s(""), Chain: s(""), Version: ptr(uint32(1)), IV: s(""), Wrapped: s(""), Salt: s(goodSalt)}},
	}
	vf.BadRefs = []refVector{
		{"version 0", "", 0},
		{"reserved chain name", "volume", 1},
		{"33 characters", strings.Repeat("a", 33), 1},
		{"colon (label separator)", "a:b", 1},
		{"space", "a b", 1},
		{"slash", "u1000/v2", 1},
		{"non-ASCII", "é", 1},
	}
	return vf
}

func encodeKeyVectors(t *testing.T, vf keyVectorFile) []byte {
	b, err := json.MarshalIndent(vf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestKeyVectorsJSON checks that keys/testdata/vectors.json is what the code produces today,
// byte for byte (run with -update to rewrite it), then checks every value in it with coffer's
// own decoders and providers, independently of how it was generated.
func TestKeyVectorsJSON(t *testing.T) {
	want := encodeKeyVectors(t, buildKeyVectors(t))
	if *update {
		if err := os.WriteFile(vectorsPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors (generate with: go test ./keys -run TestKeyVectorsJSON -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from what the code produces: a key format changed. If intended, bump the version, update FORMAT.md section 9 and regenerate with -update", vectorsPath)
	}
	var vf keyVectorFile
	if err := json.Unmarshal(got, &vf); err != nil {
		t.Fatal(err)
	}
	checkKeyVectors(t, vf)
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func checkKeyVectors(t *testing.T, vf keyVectorFile) {
	ctx := context.Background()
	kv := keystest.Vector
	// The first wrap/derive/passphrase vectors are FORMAT.md 9.6 (keystest), quoted there.
	if w := vf.Wrap[0]; w.AAD != hx(kv.WrapAAD) || w.Wrapped != hx(kv.Wrapped) {
		t.Errorf("wrap vector 0 is not keystest.Vector: aad %s wrapped %s", w.AAD, w.Wrapped)
	}
	if d := vf.Derive[0]; d.Msg != hx(kv.DeriveMessage) || d.DEK != hx(kv.DerivedDEK) {
		t.Errorf("derive vector 0 is not keystest.Vector: msg %s dek %s", d.Msg, d.DEK)
	}
	pv := keystest.Passphrase
	if p := vf.Passphrase[0]; p.Master != hx(pv.Master) || p.KWK != hx(pv.KWK) || p.Check != hx(pv.Check) ||
		p.Params != hx(pv.Params) || p.Materials[0].Material != hx(pv.Material) || p.Materials[0].AAD != hx(kv.PassphraseKEKAAD) {
		t.Errorf("passphrase vector 0 is not keystest.Passphrase: %+v", p)
	}

	for _, w := range vf.Wrap {
		checkWrap(t, ctx, w, unhex(t, w.AESKey))
	}
	for _, d := range vf.Derive {
		checkDerive(t, ctx, d, unhex(t, d.HMACKey))
	}
	for _, h := range vf.HSM {
		vol, ref := id16(unhex(t, h.Volume)), keys.KEKRef{Chain: h.Chain, Version: h.Version}
		if keys.HSMLabel(vol, ref, "aes") != h.AESLabel || keys.HSMLabel(vol, ref, "hmac") != h.HMACLabel ||
			hx(keys.SelfTestAAD(vol, ref)) != h.SelfTestAAD {
			t.Errorf("hsm %s: labels or self-test AAD differ", h.Name)
		}
	}
	for _, p := range vf.Passphrase {
		checkPassphrase(t, ctx, p)
	}
	for _, e := range vf.EdgeParams {
		var p passphrase.Params
		if err := p.UnmarshalBinary(unhex(t, e.Params)); err != nil {
			t.Errorf("edge params %s: %v", e.Name, err)
		} else if p.Time != e.T || p.MemoryKiB != e.M || p.Threads != e.P {
			t.Errorf("edge params %s: decoded %+v", e.Name, p.Cost)
		}
	}
	for _, b := range vf.BadParams {
		var p passphrase.Params
		if err := p.UnmarshalBinary(unhex(t, b.Params)); err == nil {
			t.Errorf("bad params %s accepted", b.Name)
		}
	}
	for _, b := range vf.BadRecords {
		r := b.Record
		rec := keys.Record{Mode: keys.Mode(*r.Mode), KEK: keys.KEKRef{Chain: *r.Chain, Version: *r.Version},
			IV: unhex(t, *r.IV), Wrapped: unhex(t, *r.Wrapped), Salt: unhex(t, *r.Salt)}
		if err := rec.Check(); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("bad record %s: Check = %v, want ErrUnwrap", b.Name, err)
		}
	}
	for _, r := range vf.BadRefs {
		if err := (keys.KEKRef{Chain: r.Chain, Version: r.Version}).Validate(); err == nil {
			t.Errorf("bad ref %s accepted", r.Name)
		}
	}
	if len(vf.VolumeKeys) == 0 {
		t.Error("no volume key vectors")
	}
	for _, v := range vf.VolumeKeys {
		vol, ref := id16(unhex(t, v.Volume)), keys.KEKRef{Version: v.Version}
		if got := hx(keys.VolumeKeyMessage(vol, v.Purpose)); got != v.Msg {
			t.Errorf("volume key %s: msg %s, vector %s", v.Name, got, v.Msg)
		}
		prov := kekProvider{ref: newKEK(t, make([]byte, 32), unhex(t, v.HMACKey))}
		k, err := keys.VolumeKey(ctx, prov, ref, vol, v.Purpose)
		if err != nil {
			t.Fatalf("volume key %s: %v", v.Name, err)
		}
		if hx(k.Bytes()) != v.Key {
			t.Errorf("volume key %s: VolumeKey gives %s, vector %s", v.Name, hx(k.Bytes()), v.Key)
		}
		k.Wipe()
		prov.Wipe()
	}
}

// checkWrap opens the vector's record through keys.OpenFileKey and checks Go's AES-GCM
// agrees; every tampered variant must fail with ErrUnwrap.
func checkWrap(t *testing.T, ctx context.Context, w wrapVector, aesKey []byte) {
	t.Helper()
	ref := keys.KEKRef{Chain: w.Chain, Version: w.Version}
	id := keys.FileIdentity{Volume: id16(unhex(t, w.Volume)), File: id16(unhex(t, w.File))}
	if got := hx(keys.WrapAAD(id, ref)); got != w.AAD {
		t.Errorf("wrap %s: AAD %s, vector %s", w.Name, got, w.AAD)
	}
	block, _ := aes.NewCipher(aesKey)
	gcm, _ := cipher.NewGCM(block)
	if got := hx(gcm.Seal(nil, unhex(t, w.IV), unhex(t, w.DEK), unhex(t, w.AAD))); got != w.Wrapped {
		t.Errorf("wrap %s: Go AES-GCM gives %s, vector %s", w.Name, got, w.Wrapped)
	}
	prov := kekProvider{ref: newKEK(t, aesKey, make([]byte, 32))}
	defer prov.Wipe()
	rec := keys.Record{Mode: keys.ModeWrap, KEK: ref, IV: unhex(t, w.IV), Wrapped: unhex(t, w.Wrapped)}
	dek, err := keys.OpenFileKey(ctx, prov, rec, id)
	if err != nil {
		t.Fatalf("wrap %s: OpenFileKey: %v", w.Name, err)
	}
	if hx(dek.Bytes()) != w.DEK {
		t.Errorf("wrap %s: opened DEK differs", w.Name)
	}
	dek.Wipe()
	for _, tv := range w.Tampered {
		r := rec
		if tv.Mode != nil {
			r.Mode = keys.Mode(*tv.Mode)
		}
		if tv.Chain != nil {
			r.KEK.Chain = *tv.Chain
		}
		if tv.Version != nil {
			r.KEK.Version = *tv.Version
		}
		if tv.IV != nil {
			r.IV = unhex(t, *tv.IV)
		}
		if tv.Wrapped != nil {
			r.Wrapped = unhex(t, *tv.Wrapped)
		}
		// Give the provider the relabelled version too (same key), so only the AAD can refuse.
		prov[r.KEK] = newKEK(t, aesKey, make([]byte, 32))
		if _, err := keys.OpenFileKey(ctx, prov, r, id); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("wrap %s, tampered %q: err %v, want ErrUnwrap", w.Name, tv.Name, err)
		}
	}
}

func checkDerive(t *testing.T, ctx context.Context, d deriveVector, hmacKey []byte) {
	t.Helper()
	ref := keys.KEKRef{Chain: d.Chain, Version: d.Version}
	id := keys.FileIdentity{Volume: id16(unhex(t, d.Volume)), File: id16(unhex(t, d.File))}
	if got := hx(keys.DeriveMessage(id, unhex(t, d.Salt))); got != d.Msg {
		t.Errorf("derive %s: msg %s, vector %s", d.Name, got, d.Msg)
	}
	m := hmac.New(sha256.New, hmacKey)
	m.Write(unhex(t, d.Msg))
	if got := hx(m.Sum(nil)); got != d.DEK {
		t.Errorf("derive %s: Go HMAC gives %s, vector %s", d.Name, got, d.DEK)
	}
	prov := kekProvider{ref: newKEK(t, make([]byte, 32), hmacKey)}
	defer prov.Wipe()
	dek, err := keys.OpenFileKey(ctx, prov, keys.Record{Mode: keys.ModeDerive, KEK: ref, Salt: unhex(t, d.Salt)}, id)
	if err != nil {
		t.Fatalf("derive %s: OpenFileKey: %v", d.Name, err)
	}
	if hx(dek.Bytes()) != d.DEK {
		t.Errorf("derive %s: derived DEK differs", d.Name)
	}
	dek.Wipe()
}

// checkPassphrase unlocks with coffer's passphrase provider (which recomputes Argon2id, the
// check and the KWK itself), loads each material and opens the nested wrap and derive
// records through it: the material must open to exactly the vector's KEK.
func checkPassphrase(t *testing.T, ctx context.Context, p passphraseVector) {
	t.Helper()
	pass := unhex(t, p.Passphrase)
	if string(pass) != p.PassphraseText {
		t.Errorf("passphrase %s: hex is not the UTF-8 of the text", p.Name)
	}
	vol := id16(unhex(t, p.Volume))
	var params passphrase.Params
	if err := params.UnmarshalBinary(unhex(t, p.Params)); err != nil {
		t.Fatalf("passphrase %s: params: %v", p.Name, err)
	}
	if params.Time != p.T || params.MemoryKiB != p.M || params.Threads != p.P ||
		hx(params.Salt[:]) != p.Salt || hx(params.Check[:]) != p.Check {
		t.Errorf("passphrase %s: decoded params differ", p.Name)
	}
	if got := argon2.IDKey(pass, params.Salt[:], p.T, p.M, p.P, 32); hx(got) != p.Master {
		t.Errorf("passphrase %s: Argon2id %x, vector %s", p.Name, got, p.Master)
	}
	if _, err := passphrase.Open(append(bytes.Clone(pass), '!'), vol, params); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Errorf("passphrase %s: wrong passphrase gave %v", p.Name, err)
	}
	prov, err := passphrase.Open(pass, vol, params)
	if err != nil {
		t.Fatalf("passphrase %s: Open: %v", p.Name, err)
	}
	defer prov.Wipe()
	for _, m := range p.Materials {
		ref := keys.KEKRef{Chain: m.Chain, Version: m.Version}
		if got := hx(keys.PassphraseKEKAAD(vol, ref)); got != m.AAD {
			t.Errorf("passphrase %s %s: AAD %s, vector %s", p.Name, ref, got, m.AAD)
		}
		mat := unhex(t, m.Material)
		other := keys.KEKRef{Chain: ref.Chain, Version: ref.Version + 1}
		if err := prov.Load(other, mat); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("passphrase %s %s: material loaded as %s: %v", p.Name, ref, other, err)
		}
		if err := prov.Load(ref, mat); err != nil {
			t.Fatalf("passphrase %s %s: Load: %v", p.Name, ref, err)
		}
		w, d := *m.Wrap, *m.Derive
		if w.Chain != m.Chain || w.Version != m.Version || d.Chain != m.Chain || d.Version != m.Version {
			t.Fatalf("passphrase %s %s: nested records name another KEK", p.Name, ref)
		}
		id := keys.FileIdentity{Volume: id16(unhex(t, w.Volume)), File: id16(unhex(t, w.File))}
		dek, err := keys.OpenFileKey(ctx, prov, keys.Record{Mode: keys.ModeWrap, KEK: ref, IV: unhex(t, w.IV), Wrapped: unhex(t, w.Wrapped)}, id)
		if err != nil || hx(dek.Bytes()) != w.DEK {
			t.Errorf("passphrase %s %s: wrap record through the loaded KEK: %v", p.Name, ref, err)
		}
		if dek != nil {
			dek.Wipe()
		}
		id = keys.FileIdentity{Volume: id16(unhex(t, d.Volume)), File: id16(unhex(t, d.File))}
		dek, err = keys.OpenFileKey(ctx, prov, keys.Record{Mode: keys.ModeDerive, KEK: ref, Salt: unhex(t, d.Salt)}, id)
		if err != nil || hx(dek.Bytes()) != d.DEK {
			t.Errorf("passphrase %s %s: derive record through the loaded KEK: %v", p.Name, ref, err)
		}
		if dek != nil {
			dek.Wipe()
		}
		checkWrap(t, ctx, w, unhex(t, m.AESKey))
		checkDerive(t, ctx, d, unhex(t, m.HMACKey))
	}
}
