package keyops

import (
	"strconv"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
)

// BenchmarkDeriveRotation measures derive-mode rotation on a local-folder remote (fsync on
// every put, as in production) with the default layout (4 MiB chunks), on a SoftHSM2 token:
// COFFER_BENCH_MB MiB (default 64) in 16 MiB files are re-encrypted by Rotate, and the same
// objects are copied raw (whole GET + PUT + DELETE, no crypto, no catalog) with the same
// number of workers for comparison. Run it once:
//
//	go test ./fs/keyops -run '^$' -bench DeriveRotation -benchtime 1x
func BenchmarkDeriveRotation(b *testing.B) {
	mb := envInt("COFFER_BENCH_MB", 64)
	workers := envInt("COFFER_BENCH_WORKERS", 4)
	// newVol takes the package's small test layout; this benchmark wants the real one (no
	// test here runs in parallel).
	saved := testLayout
	testLayout = format.DefaultLayout
	e := newVol(b, volOpt{derive: true})
	testLayout = saved

	const fileMB = 16
	t0 := time.Now()
	var inos []uint64
	for i := 0; i < (mb+fileMB-1)/fileMB; i++ {
		inos = append(inos, e.writeFile("f"+strconv.Itoa(i), 0, pattern(byte(i), fileMB<<20)).Ino)
	}
	total := int64(len(inos)) * fileMB << 20
	b.Logf("wrote %d MiB in %s", total>>20, time.Since(t0).Round(time.Millisecond))

	// Raw: copy every chunk object with the same concurrency, no crypto, no catalog.
	var objs []string
	for _, ino := range inos {
		rows, err := e.v.Catalog().Chunks(ctx, ino, 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rows {
			objs = append(objs, meta.ObjectName(r.Object))
		}
	}
	start := time.Now()
	striped(b, workers, len(objs), func(i int) error {
		data, err := e.v.Store().GetRange(ctx, objs[i], 0, -1)
		if err == nil {
			err = e.v.Store().Put(ctx, objs[i]+"x", data)
		}
		if err == nil {
			err = e.v.Store().Delete(ctx, objs[i]+"x")
		}
		return err
	})
	raw := float64(total) / (1 << 20) / time.Since(start).Seconds()

	b.ResetTimer()
	res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, Workers: workers})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.ReencryptedBytes != total {
		b.Fatalf("re-encrypted %d bytes, want %d", res.ReencryptedBytes, total)
	}
	rot := float64(total) / (1 << 20) / res.Elapsed.Seconds()
	b.ReportMetric(raw, "raw-copy-MiB/s")
	b.ReportMetric(rot, "rotate-MiB/s")
	b.ReportMetric(rot/raw, "rotate/raw")
	b.Logf("derive rotation of %d MiB (%d chunks, %d workers): %s = %.1f MiB/s; raw copy of the same objects: %.1f MiB/s (%.0f%%)",
		total>>20, res.Reencrypted, workers, res.Elapsed.Round(time.Millisecond), rot, raw, 100*rot/raw)
}
