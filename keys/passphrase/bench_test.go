package passphrase

import (
	"context"
	"testing"

	"coffer/keys"
)

func benchSetup(b *testing.B) (*Provider, keys.FileIdentity) {
	b.Helper()
	vol := randomVolume()
	p, _ := create(b, "bench", vol)
	for _, v := range []uint32{1, 2} {
		if _, err := p.CreateKEK(context.Background(), keys.KEKRef{Version: v}); err != nil {
			b.Fatal(err)
		}
	}
	return p, keys.FileIdentity{Volume: vol}
}

func opsPerSec(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkPassphraseWrap(b *testing.B) {
	p, id := benchSetup(b)
	ctx := context.Background()
	for b.Loop() {
		_, dek, err := keys.NewFileKey(ctx, p, keys.ModeWrap, keys.KEKRef{Version: 1}, id)
		if err != nil {
			b.Fatal(err)
		}
		dek.Wipe()
	}
	opsPerSec(b)
}

func BenchmarkPassphraseUnwrap(b *testing.B) {
	p, id := benchSetup(b)
	ctx := context.Background()
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeWrap, keys.KEKRef{Version: 1}, id)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		dek, err := keys.OpenFileKey(ctx, p, rec, id)
		if err != nil {
			b.Fatal(err)
		}
		dek.Wipe()
	}
	opsPerSec(b)
}

func BenchmarkPassphraseRewrap(b *testing.B) {
	p, id := benchSetup(b)
	ctx := context.Background()
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeWrap, keys.KEKRef{Version: 1}, id)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := keys.Rewrap(ctx, p, rec, id, keys.KEKRef{Version: 2}); err != nil {
			b.Fatal(err)
		}
	}
	opsPerSec(b)
}

func BenchmarkPassphraseDerive(b *testing.B) {
	p, id := benchSetup(b)
	ctx := context.Background()
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeDerive, keys.KEKRef{Version: 1}, id)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		dek, err := keys.OpenFileKey(ctx, p, rec, id)
		if err != nil {
			b.Fatal(err)
		}
		dek.Wipe()
	}
	opsPerSec(b)
}

// BenchmarkArgon2idDefault: the unlock cost a user waits for at mount time.
func BenchmarkArgon2idDefault(b *testing.B) {
	vol := randomVolume()
	params := Params{Cost: DefaultCost}
	for b.Loop() {
		kwk, _, err := derive(context.Background(), []byte("bench"), vol, params)
		if err != nil {
			b.Fatal(err)
		}
		clear(kwk)
	}
	opsPerSec(b)
}
