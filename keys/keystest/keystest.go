// Package keystest is the conformance suite every keys.Provider passes: wrap/unwrap and
// derive round trips, rejection of wrong associated data and tampered records, rewrap across
// versions and chains, destruction and wipe. Provider packages run it from their tests.
package keystest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"coffer/keys"
)

// Fixture is a fresh provider for one volume plus how to load a KEK version's material into
// another provider instance of the same volume (to check persistence).
type Fixture struct {
	P      keys.Provider
	Volume [keys.IDSize]byte
	// Reopen returns a second provider for the same volume and token/passphrase, with no
	// version loaded (after P was wiped).
	Reopen func(t *testing.T) keys.Provider
}

// Run runs the suite. newFixture must return a provider with no KEK versions.
func Run(t *testing.T, newFixture func(t *testing.T) Fixture) {
	ctx := context.Background()
	v1 := keys.KEKRef{Version: 1}
	v2 := keys.KEKRef{Version: 2}
	u1 := keys.KEKRef{Chain: keys.UserChain(1000), Version: 1}

	setup := func(t *testing.T) (Fixture, map[keys.KEKRef][]byte) {
		f := newFixture(t)
		mats := map[keys.KEKRef][]byte{}
		for _, r := range []keys.KEKRef{v1, v2, u1} {
			m, err := f.P.CreateKEK(ctx, r)
			if err != nil {
				t.Fatalf("CreateKEK(%s): %v", r, err)
			}
			mats[r] = m
		}
		return f, mats
	}
	id := func(f Fixture) keys.FileIdentity {
		var fid keys.FileIdentity
		fid.Volume = f.Volume
		_, _ = rand.Read(fid.File[:])
		return fid
	}

	t.Run("WrapRoundTrip", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, dek, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Mode != keys.ModeWrap || rec.KEK != v1 || len(rec.IV) != keys.IVSize ||
			len(rec.Wrapped) != keys.WrappedSize || rec.Salt != nil {
			t.Fatalf("bad record %+v", rec)
		}
		if bytes.Contains(rec.Wrapped, dek.Bytes()) {
			t.Fatal("wrapped record contains the DEK in clear")
		}
		got, err := keys.OpenFileKey(ctx, f.P, rec, fid)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), dek.Bytes()) {
			t.Fatal("unwrapped DEK differs from the generated one")
		}
		// Two files never share a DEK or an IV.
		rec2, dek2, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(dek.Bytes(), dek2.Bytes()) || bytes.Equal(rec.IV, rec2.IV) {
			t.Fatal("two new file keys share a DEK or IV")
		}
	})

	t.Run("WrongAssociatedDataRejected", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, _, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		otherFile := fid
		otherFile.File[0] ^= 1
		otherVol := fid
		otherVol.Volume[15] ^= 0x80
		for name, tc := range map[string]struct {
			rec keys.Record
			id  keys.FileIdentity
		}{
			"other file":     {rec, otherFile},
			"other volume":   {rec, otherVol},
			"other version":  {withKEK(rec, v2), fid},
			"other chain":    {withKEK(rec, u1), fid},
			"swapped to v1'": {withKEK(withKEK(rec, v2), v1), otherFile},
		} {
			_, err := keys.OpenFileKey(ctx, f.P, tc.rec, tc.id)
			if !errors.Is(err, keys.ErrUnwrap) {
				t.Errorf("%s: got %v, want ErrUnwrap", name, err)
			}
		}
		// The provider level: same key, different aad.
		aad := keys.WrapAAD(fid, v1)
		aad[len(aad)-1] ^= 1
		if _, err := f.P.Open(ctx, v1, rec.IV, rec.Wrapped, aad); !errors.Is(err, keys.ErrUnwrap) {
			t.Errorf("provider Open with altered aad: got %v, want ErrUnwrap", err)
		}
	})

	t.Run("TamperedRecordRejected", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, _, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 1, 17, 31, 32, 40, 47} {
			bad := clone(rec)
			bad.Wrapped[i] ^= 0x01
			if _, err := keys.OpenFileKey(ctx, f.P, bad, fid); !errors.Is(err, keys.ErrUnwrap) {
				t.Errorf("wrapped byte %d flipped: got %v, want ErrUnwrap", i, err)
			}
		}
		for _, i := range []int{0, 11} {
			bad := clone(rec)
			bad.IV[i] ^= 0x80
			if _, err := keys.OpenFileKey(ctx, f.P, bad, fid); !errors.Is(err, keys.ErrUnwrap) {
				t.Errorf("IV byte %d flipped: got %v, want ErrUnwrap", i, err)
			}
		}
		short := clone(rec)
		short.Wrapped = short.Wrapped[:40]
		long := clone(rec)
		long.IV = append(long.IV, 0)
		mixed := clone(rec)
		mixed.Salt = make([]byte, keys.SaltSize)
		badMode := clone(rec)
		badMode.Mode = "wrapx"
		for name, bad := range map[string]keys.Record{"truncated": short, "long IV": long, "salt in wrap": mixed, "mode": badMode} {
			if _, err := keys.OpenFileKey(ctx, f.P, bad, fid); !errors.Is(err, keys.ErrUnwrap) {
				t.Errorf("%s: got %v, want ErrUnwrap", name, err)
			}
		}
	})

	t.Run("DeriveRoundTrip", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, dek, err := keys.NewFileKey(ctx, f.P, keys.ModeDerive, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Mode != keys.ModeDerive || len(rec.Salt) != keys.SaltSize || rec.IV != nil || rec.Wrapped != nil {
			t.Fatalf("bad derive record %+v", rec)
		}
		got, err := keys.OpenFileKey(ctx, f.P, rec, fid)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), dek.Bytes()) {
			t.Fatal("derived DEK not reproducible")
		}
		other := fid
		other.File[3] ^= 4
		d2, err := keys.OpenFileKey(ctx, f.P, rec, other)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(d2.Bytes(), dek.Bytes()) {
			t.Fatal("same salt, other file: same DEK")
		}
		d3, err := keys.OpenFileKey(ctx, f.P, withKEK(rec, v2), fid)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(d3.Bytes(), dek.Bytes()) {
			t.Fatal("other KEK version derived the same DEK")
		}
		if _, err := keys.Rewrap(ctx, f.P, rec, fid, v2); err == nil {
			t.Fatal("Rewrap of a derive-mode record succeeded")
		}
	})

	t.Run("RewrapAcrossVersionsAndChains", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, dek, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		cur := rec
		for _, to := range []keys.KEKRef{v2, u1, v1, v2} {
			next, err := keys.Rewrap(ctx, f.P, cur, fid, to)
			if err != nil {
				t.Fatalf("rewrap %s -> %s: %v", cur.KEK, to, err)
			}
			if next.KEK != to || bytes.Equal(next.IV, cur.IV) || bytes.Equal(next.Wrapped, cur.Wrapped) {
				t.Fatalf("rewrap %s -> %s: record not renewed", cur.KEK, to)
			}
			got, err := keys.OpenFileKey(ctx, f.P, next, fid)
			if err != nil {
				t.Fatalf("open after rewrap to %s: %v", to, err)
			}
			if !bytes.Equal(got.Bytes(), dek.Bytes()) {
				t.Fatalf("rewrap to %s changed the DEK", to)
			}
			cur = next
		}
		// Rewrap of a tampered record fails and produces nothing.
		bad := clone(rec)
		bad.Wrapped[5] ^= 1
		if _, err := keys.Rewrap(ctx, f.P, bad, fid, v2); !errors.Is(err, keys.ErrUnwrap) {
			t.Fatalf("rewrap of tampered record: got %v, want ErrUnwrap", err)
		}
		// Rewrap to a version the provider does not have.
		if _, err := keys.Rewrap(ctx, f.P, rec, fid, keys.KEKRef{Version: 9}); !errors.Is(err, keys.ErrKEKMissing) {
			t.Fatalf("rewrap to missing version: got %v, want ErrKEKMissing", err)
		}
	})

	t.Run("MACIsHMACSHA256Sized", func(t *testing.T) {
		f, _ := setup(t)
		a, err := f.P.MAC(ctx, v1, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := f.P.MAC(ctx, v1, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := f.P.MAC(ctx, v1, []byte("y"))
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != keys.MACSize || !bytes.Equal(a, b) || bytes.Equal(a, c) {
			t.Fatalf("MAC not a deterministic 32-byte function: %x %x %x", a, b, c)
		}
	})

	t.Run("VolumeKey", func(t *testing.T) {
		f, mats := setup(t)
		a, err := keys.VolumeKey(ctx, f.P, v1, f.Volume, "replica")
		if err != nil {
			t.Fatal(err)
		}
		mac, err := f.P.MAC(ctx, v1, keys.VolumeKeyMessage(f.Volume, "replica"))
		if err != nil || !bytes.Equal(a.Bytes(), mac) || len(mac) != keys.DEKSize {
			t.Fatalf("VolumeKey is not the provider's HMAC over VolumeKeyMessage: %v", err)
		}
		other, _ := keys.VolumeKey(ctx, f.P, v1, f.Volume, "names")
		next, _ := keys.VolumeKey(ctx, f.P, v2, f.Volume, "replica")
		if other == nil || next == nil || bytes.Equal(a.Bytes(), other.Bytes()) || bytes.Equal(a.Bytes(), next.Bytes()) {
			t.Fatal("volume keys of another purpose or KEK version are not distinct")
		}
		if _, err := keys.VolumeKey(ctx, f.P, u1, f.Volume, "replica"); err == nil {
			t.Fatal("a user chain's version gave a volume key")
		}
		for _, bad := range []string{"", "Replica", "a b", "x/y", strings.Repeat("a", 33)} {
			if _, err := keys.VolumeKey(ctx, f.P, v1, f.Volume, bad); err == nil {
				t.Fatalf("purpose %q accepted", bad)
			}
		}
		// The same key from a new instance of the provider (the HSM's stored HMAC key, or the
		// passphrase material): a replica sealed before a remount opens after it.
		if f.Reopen != nil {
			if err := f.P.Wipe(); err != nil {
				t.Fatal(err)
			}
			p2 := f.Reopen(t)
			if err := p2.Load(v1, mats[v1]); err != nil {
				t.Fatal(err)
			}
			again, err := keys.VolumeKey(ctx, p2, v1, f.Volume, "replica")
			if err != nil || !bytes.Equal(again.Bytes(), a.Bytes()) {
				t.Fatalf("volume key differs on a new instance: %v", err)
			}
			if err := p2.DestroyKEK(ctx, v1); err != nil {
				t.Fatal(err)
			}
			if _, err := keys.VolumeKey(ctx, p2, v1, f.Volume, "replica"); !errors.Is(err, keys.ErrKEKMissing) {
				t.Fatalf("volume key after DestroyKEK: %v, want ErrKEKMissing", err)
			}
		}
	})

	t.Run("CreateExistingVersionRefused", func(t *testing.T) {
		f, _ := setup(t)
		if _, err := f.P.CreateKEK(ctx, v1); err == nil {
			t.Fatal("CreateKEK of an existing version succeeded")
		}
		if _, err := f.P.CreateKEK(ctx, keys.KEKRef{Version: 0}); err == nil {
			t.Fatal("CreateKEK of version 0 succeeded")
		}
		if _, err := f.P.CreateKEK(ctx, keys.KEKRef{Chain: "a:b", Version: 1}); err == nil {
			t.Fatal("CreateKEK with ':' in chain succeeded")
		}
	})

	t.Run("DestroyedKEK", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec1, _, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		drec1, _, err := keys.NewFileKey(ctx, f.P, keys.ModeDerive, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		rec2, dek2, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v2, fid)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.P.DestroyKEK(ctx, v1); err != nil {
			t.Fatal(err)
		}
		if _, err := keys.OpenFileKey(ctx, f.P, rec1, fid); !errors.Is(err, keys.ErrKEKMissing) {
			t.Fatalf("unwrap after destroy: got %v, want ErrKEKMissing", err)
		}
		if _, err := keys.OpenFileKey(ctx, f.P, drec1, fid); !errors.Is(err, keys.ErrKEKMissing) {
			t.Fatalf("derive after destroy: got %v, want ErrKEKMissing", err)
		}
		got, err := keys.OpenFileKey(ctx, f.P, rec2, fid)
		if err != nil || !bytes.Equal(got.Bytes(), dek2.Bytes()) {
			t.Fatalf("other version broken by destroy: %v", err)
		}
	})

	t.Run("Persistence", func(t *testing.T) {
		f, mats := setup(t)
		if f.Reopen == nil {
			t.Fatal("keystest: the fixture must set Reopen")
		}
		fid := id(f)
		rec, dek, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, u1, fid)
		if err != nil {
			t.Fatal(err)
		}
		drec, ddek, err := keys.NewFileKey(ctx, f.P, keys.ModeDerive, v2, fid)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.P.Wipe(); err != nil {
			t.Fatal(err)
		}
		p2 := f.Reopen(t)
		for r, m := range mats {
			if err := p2.Load(r, m); err != nil {
				t.Fatalf("Load(%s) on a new instance: %v", r, err)
			}
		}
		got, err := keys.OpenFileKey(ctx, p2, rec, fid)
		if err != nil || !bytes.Equal(got.Bytes(), dek.Bytes()) {
			t.Fatalf("unwrap on new instance: %v", err)
		}
		got, err = keys.OpenFileKey(ctx, p2, drec, fid)
		if err != nil || !bytes.Equal(got.Bytes(), ddek.Bytes()) {
			t.Fatalf("derive on new instance: %v", err)
		}
	})

	t.Run("Wipe", func(t *testing.T) {
		f, _ := setup(t)
		fid := id(f)
		rec, _, err := keys.NewFileKey(ctx, f.P, keys.ModeWrap, v1, fid)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.P.Wipe(); err != nil {
			t.Fatal(err)
		}
		if err := f.P.Wipe(); err != nil {
			t.Fatalf("second Wipe: %v", err)
		}
		if _, err := keys.OpenFileKey(ctx, f.P, rec, fid); !errors.Is(err, keys.ErrWiped) {
			t.Fatalf("unwrap after wipe: got %v, want ErrWiped", err)
		}
		if _, _, err := keys.NewFileKey(ctx, f.P, keys.ModeDerive, v1, fid); !errors.Is(err, keys.ErrWiped) {
			t.Fatalf("derive after wipe: got %v, want ErrWiped", err)
		}
		if _, err := f.P.CreateKEK(ctx, keys.KEKRef{Version: 7}); !errors.Is(err, keys.ErrWiped) {
			t.Fatalf("create after wipe: got %v, want ErrWiped", err)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		f, _ := setup(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, _, err := keys.NewFileKey(cctx, f.P, keys.ModeWrap, v1, id(f)); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

func withKEK(r keys.Record, k keys.KEKRef) keys.Record {
	r = clone(r)
	r.KEK = k
	return r
}

func clone(r keys.Record) keys.Record {
	r.IV = bytes.Clone(r.IV)
	r.Wrapped = bytes.Clone(r.Wrapped)
	r.Salt = bytes.Clone(r.Salt)
	return r
}
