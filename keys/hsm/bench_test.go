package hsm

import (
	"context"
	"testing"

	"coffer/keys"
	"coffer/test/softhsm"
)

// benchSetup opens a provider on a fresh token with versions v1 and v2.
func benchSetup(b *testing.B) (*Provider, keys.FileIdentity) {
	b.Helper()
	tok := softhsm.NewToken(b, "")
	vol := randomVolume()
	p := openP(b, tok, vol)
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

// BenchmarkHSMWrap: a new file key (random DEK sealed inside SoftHSM2).
func BenchmarkHSMWrap(b *testing.B) {
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

// BenchmarkHSMUnwrap: opening a file key (GCM decrypt inside SoftHSM2).
func BenchmarkHSMUnwrap(b *testing.B) {
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

// BenchmarkHSMUnwrapParallel: the same from GOMAXPROCS goroutines (session pool).
func BenchmarkHSMUnwrapParallel(b *testing.B) {
	p, id := benchSetup(b)
	ctx := context.Background()
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeWrap, keys.KEKRef{Version: 1}, id)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			dek, err := keys.OpenFileKey(ctx, p, rec, id)
			if err != nil {
				b.Error(err)
				return
			}
			dek.Wipe()
		}
	})
	opsPerSec(b)
}

// BenchmarkHSMRewrap: rotation of one file key from v1 to v2 (unwrap + wrap).
func BenchmarkHSMRewrap(b *testing.B) {
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

// BenchmarkHSMDerive: a derive-mode file key (HMAC-SHA256 inside SoftHSM2).
func BenchmarkHSMDerive(b *testing.B) {
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
