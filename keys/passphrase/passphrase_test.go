package passphrase

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"coffer/keys"
	"coffer/keys/keystest"
)

// cheap keeps tests fast; DefaultCost is exercised once in TestDefaultCost.
var cheap = Cost{Time: 1, MemoryKiB: MinMemoryKiB, Threads: 1}

func randomVolume() [16]byte {
	var v [16]byte
	_, _ = rand.Read(v[:])
	return v
}

func create(t testing.TB, pass string, vol [16]byte) (*Provider, Params) {
	t.Helper()
	p, params, err := Create([]byte(pass), vol, cheap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Wipe() })
	return p, params
}

func TestConformance(t *testing.T) {
	keystest.Run(t, func(t *testing.T) keystest.Fixture {
		vol := randomVolume()
		p, params := create(t, "pass word", vol)
		return keystest.Fixture{
			P:      p,
			Volume: vol,
			Reopen: func(t *testing.T) keys.Provider {
				q, err := Open([]byte("pass word"), vol, params)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = q.Wipe() })
				return q
			},
		}
	})
}

// TestVector checks the passphrase vector of FORMAT.md section 9 (computed independently with
// Python's cryptography package) and that the provider's wrap/derive equal the key vector.
func TestVector(t *testing.T) {
	pv, v := keystest.Passphrase, keystest.Vector
	var params Params
	if err := params.UnmarshalBinary(pv.Params); err != nil {
		t.Fatal(err)
	}
	want := Params{Cost: Cost{Time: pv.Time, MemoryKiB: pv.MemoryKiB, Threads: pv.Threads}}
	copy(want.Salt[:], pv.Salt)
	copy(want.Check[:], pv.Check)
	if params != want {
		t.Fatalf("decoded params %+v, want %+v", params, want)
	}
	enc, err := want.MarshalBinary()
	if err != nil || !bytes.Equal(enc, pv.Params) {
		t.Fatalf("encoded params %x, want %x (%v)", enc, pv.Params, err)
	}
	kwk, check, err := derive(context.Background(), pv.Passphrase, v.Volume, params)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kwk, pv.KWK) || !bytes.Equal(check[:], pv.Check) {
		t.Fatalf("kwk %x check %x, want %x %x", kwk, check, pv.KWK, pv.Check)
	}

	p, err := Open(pv.Passphrase, v.Volume, params)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Wipe()
	ref := keys.KEKRef{Chain: v.Chain, Version: v.Version}
	if got := keys.PassphraseKEKAAD(v.Volume, ref); !bytes.Equal(got, v.PassphraseKEKAAD) {
		t.Fatalf("PassphraseKEKAAD %x, want %x", got, v.PassphraseKEKAAD)
	}
	// CreateKEK draws the 64 KEK bytes, then the nonce.
	p.rand = io.MultiReader(bytes.NewReader(v.KEKAES), bytes.NewReader(v.KEKHMAC), bytes.NewReader(pv.Nonce))
	mat, err := p.CreateKEK(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mat, pv.Material) {
		t.Fatalf("material %x\nwant     %x", mat, pv.Material)
	}

	q, err := Open(pv.Passphrase, v.Volume, params)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Wipe()
	if err := q.Load(ref, pv.Material); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := keys.FileIdentity{Volume: v.Volume, File: v.File}
	wrapped, err := q.Seal(ctx, ref, v.IV, v.DEK, keys.WrapAAD(id, ref))
	if err != nil || !bytes.Equal(wrapped, v.Wrapped) {
		t.Fatalf("wrap %x, want %x (%v)", wrapped, v.Wrapped, err)
	}
	dek, err := keys.OpenFileKey(ctx, q, keys.Record{Mode: keys.ModeDerive, KEK: ref, Salt: v.Salt}, id)
	if err != nil || !bytes.Equal(dek.Bytes(), v.DerivedDEK) {
		t.Fatalf("derive: %v", err)
	}
}

func TestWrongPassphrase(t *testing.T) {
	vol := randomVolume()
	_, params := create(t, "right horse", vol)
	_, err := Open([]byte("wrong horse"), vol, params)
	if !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("got %v, want ErrWrongPassphrase", err)
	}
	t.Logf("message: %s", err)
	if strings.Contains(err.Error(), "horse") {
		t.Fatal("message contains the passphrase")
	}
	// The params are bound to the volume: the right passphrase on another volume id fails.
	if _, err := Open([]byte("right horse"), randomVolume(), params); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("other volume: got %v, want ErrWrongPassphrase", err)
	}
	if _, err := Open([]byte("right horse"), vol, params); err != nil {
		t.Fatalf("right passphrase: %v", err)
	}
	if _, _, err := Create(nil, vol, cheap); err == nil {
		t.Fatal("empty passphrase accepted")
	}
}

func TestParamsEncoding(t *testing.T) {
	_, params := create(t, "p", randomVolume())
	b, err := params.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != EncodedParamsSize {
		t.Fatalf("encoded %d bytes, want %d", len(b), EncodedParamsSize)
	}
	var back Params
	if err := back.UnmarshalBinary(b); err != nil || back != params {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	mutate := func(f func(b []byte)) []byte {
		c := bytes.Clone(b)
		f(c)
		return c
	}
	for name, bad := range map[string][]byte{
		"short":          b[:len(b)-1],
		"magic":          mutate(func(b []byte) { b[0] = 'X' }),
		"version":        mutate(func(b []byte) { b[4] = 2 }),
		"algorithm":      mutate(func(b []byte) { b[5] = 9 }),
		"time 0":         mutate(func(b []byte) { copy(b[6:10], []byte{0, 0, 0, 0}) }),
		"huge memory":    mutate(func(b []byte) { copy(b[10:14], []byte{0xff, 0xff, 0xff, 0xff}) }),
		"threads 0":      mutate(func(b []byte) { b[14] = 0 }),
		"tiny memory":    mutate(func(b []byte) { copy(b[10:14], []byte{0, 0, 0, 64}) }),
		"time too large": mutate(func(b []byte) { copy(b[6:10], []byte{0, 0, 1, 0}) }),
	} {
		var p Params
		if err := p.UnmarshalBinary(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Raised parameters round-trip too.
	raised := params
	raised.Cost = Cost{Time: 8, MemoryKiB: 1 << 20, Threads: 8}
	b, _ = raised.MarshalBinary()
	if err := back.UnmarshalBinary(b); err != nil || back != raised {
		t.Fatalf("raised round trip: %+v %v", back, err)
	}
}

func TestTamperedMaterial(t *testing.T) {
	vol := randomVolume()
	p, params := create(t, "pw", vol)
	ctx := context.Background()
	v1, v2 := keys.KEKRef{Version: 1}, keys.KEKRef{Version: 2}
	m1, err := p.CreateKEK(ctx, v1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m1) != MaterialSize {
		t.Fatalf("material is %d bytes, want %d", len(m1), MaterialSize)
	}
	other, _ := create(t, "pw", randomVolume())
	mOther, err := other.CreateKEK(ctx, v1)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Open([]byte("pw"), vol, params)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Wipe()
	for name, tc := range map[string]struct {
		ref keys.KEKRef
		m   []byte
	}{
		"flipped ciphertext": {v1, flip(m1, 30)},
		"flipped nonce":      {v1, flip(m1, 2)},
		"flipped tag":        {v1, flip(m1, len(m1)-1)},
		"version byte":       {v1, flip(m1, 0)},
		"truncated":          {v1, m1[:len(m1)-1]},
		"as other version":   {v2, m1},
		"other volume's":     {v1, mOther},
		"empty":              {v1, nil},
	} {
		if err := q.Load(tc.ref, tc.m); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("%s: got %v, want ErrUnwrap", name, err)
		}
	}
	if err := q.Load(v1, m1); err != nil {
		t.Fatalf("intact material: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestChangePassphrase(t *testing.T) {
	vol := randomVolume()
	p, params := create(t, "old secret", vol)
	ctx := context.Background()
	mats := map[keys.KEKRef][]byte{}
	var recs []keys.Record
	var deks [][]byte
	id := keys.FileIdentity{Volume: vol}
	for _, r := range []keys.KEKRef{{Version: 1}, {Version: 2}, {Chain: "u7", Version: 1}} {
		m, err := p.CreateKEK(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		mats[r] = m
		rec, dek, err := keys.NewFileKey(ctx, p, keys.ModeWrap, r, id)
		if err != nil {
			t.Fatal(err)
		}
		recs, deks = append(recs, rec), append(deks, bytes.Clone(dek.Bytes()))
	}

	// A tampered material aborts the whole change and leaves the provider on the old key.
	bad := map[keys.KEKRef][]byte{{Version: 1}: mats[keys.KEKRef{Version: 1}], {Version: 2}: flip(mats[keys.KEKRef{Version: 2}], 20)}
	if _, _, err := p.ChangePassphrase([]byte("new secret"), cheap, bad); !errors.Is(err, keys.ErrUnwrap) {
		t.Fatalf("change with tampered material: got %v, want ErrUnwrap", err)
	}

	newParams, newMats, err := p.ChangePassphrase([]byte("new secret"), cheap, mats)
	if err != nil {
		t.Fatal(err)
	}
	if newParams.Salt == params.Salt || newParams.Check == params.Check {
		t.Fatal("new params reuse the old salt or check")
	}
	if len(newMats) != len(mats) {
		t.Fatalf("%d new materials, want %d", len(newMats), len(mats))
	}
	for r, m := range newMats {
		if bytes.Equal(m, mats[r]) {
			t.Fatalf("material %s unchanged", r)
		}
	}
	// The live provider keeps working and seals new versions under the new passphrase.
	m3, err := p.CreateKEK(ctx, keys.KEKRef{Version: 3})
	if err != nil {
		t.Fatal(err)
	}
	newMats[keys.KEKRef{Version: 3}] = m3

	if _, err := Open([]byte("old secret"), vol, newParams); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("old passphrase with new params: got %v", err)
	}
	q, err := Open([]byte("new secret"), vol, newParams)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Wipe()
	for r, m := range newMats {
		if err := q.Load(r, m); err != nil {
			t.Fatalf("load %s under the new passphrase: %v", r, err)
		}
	}
	for i, rec := range recs {
		dek, err := keys.OpenFileKey(ctx, q, rec, id)
		if err != nil || !bytes.Equal(dek.Bytes(), deks[i]) {
			t.Fatalf("file key %d after passphrase change: %v", i, err)
		}
	}
	// Old materials do not open under the new passphrase.
	r, err := Open([]byte("new secret"), vol, newParams)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Wipe()
	if err := r.Load(keys.KEKRef{Version: 1}, mats[keys.KEKRef{Version: 1}]); !errors.Is(err, keys.ErrUnwrap) {
		t.Fatalf("old material under new passphrase: got %v", err)
	}
}

func TestWipeZeroesKWK(t *testing.T) {
	p, _ := create(t, "pw", randomVolume())
	kwk := p.kwk
	if _, err := p.CreateKEK(context.Background(), keys.KEKRef{Version: 1}); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(kwk, make([]byte, len(kwk))) {
		t.Fatal("kwk all zero before wipe")
	}
	if err := p.Wipe(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kwk, make([]byte, len(kwk))) {
		t.Fatal("kwk not zeroed by Wipe")
	}
	if len(p.keks) != 0 {
		t.Fatal("KEKs still referenced after Wipe")
	}
}

func TestDefaultCost(t *testing.T) {
	start := time.Now()
	p, params, err := Create([]byte("pw"), randomVolume(), DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Wipe()
	t.Logf("Argon2id t=%d m=%d KiB p=%d took %v", params.Time, params.MemoryKiB, params.Threads, time.Since(start))
	if params.Cost != DefaultCost {
		t.Fatalf("params cost %+v", params.Cost)
	}
}
