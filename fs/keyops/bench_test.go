package keyops

import (
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// BenchmarkRotation compares, in one run on one SoftHSM2 token, the raw re-wrap rate
// (keys.Rewrap in a loop over records held in memory: one goroutine, and Workers goroutines)
// with a full rotation over N catalog rows (read in batches, re-wrapped, swapped by
// compare-and-swap, committed 1,000 per transaction). N is COFFER_BENCH_ROWS (default
// 100,000). Run it once:
//
//	go test ./fs/keyops -run '^$' -bench Rotation -benchtime 1x
func BenchmarkRotation(b *testing.B) {
	n := envInt("COFFER_BENCH_ROWS", 100000)
	e := newVol(b, volOpt{})
	t0 := time.Now()
	e.addFiles("f", n, 0)
	b.Logf("populated %d rows in %s", n, time.Since(t0).Round(time.Millisecond))

	// Raw: re-wrap (v1 -> a scratch version) records held in memory, no catalog.
	sample := min(n, 20000)
	rows, err := e.v.Catalog().KeysUsing(ctx, "", 1, 0, sample)
	if err != nil {
		b.Fatal(err)
	}
	scratch := keys.KEKRef{Chain: "bench", Version: 1}
	if _, err := e.v.Provider().CreateKEK(ctx, scratch); err != nil {
		b.Fatal(err)
	}
	defer e.v.Provider().DestroyKEK(ctx, scratch)
	raw := func(workers int) float64 {
		start := time.Now()
		striped(b, workers, len(rows), func(i int) error {
			id := keys.FileIdentity{Volume: e.v.ID, File: rows[i].FileID}
			_, err := keys.Rewrap(ctx, e.v.Provider(), volume.RecordOf(rows[i].Key), id, scratch)
			return err
		})
		return float64(len(rows)) / time.Since(start).Seconds()
	}
	workers := envInt("COFFER_BENCH_WORKERS", 2)
	raw1 := raw(1)
	rawW := raw(workers)
	best := max(raw1, rawW)

	b.ResetTimer()
	res, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet, Workers: workers})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.Rewrapped != int64(n) {
		b.Fatalf("rotated %d rows, want %d", res.Rewrapped, n)
	}
	if left, _ := e.v.Catalog().CountKeysUsing(ctx, "", 1); left != 0 {
		b.Fatalf("%d rows left on v1", left)
	}
	rot := float64(n) / res.Elapsed.Seconds()
	b.ReportMetric(raw1, "raw-1-rewraps/s")
	b.ReportMetric(rawW, "raw-"+strconv.Itoa(workers)+"-rewraps/s")
	b.ReportMetric(rot, "rotate-rows/s")
	b.ReportMetric(rot/best, "rotate/raw")
	b.Logf("raw re-wrap: %.0f/s (1 goroutine), %.0f/s (%d goroutines); rotation of %d rows: %s = %.0f rows/s = %.0f%% of the best raw rate",
		raw1, rawW, workers, n, res.Elapsed.Round(time.Millisecond), rot, 100*rot/best)
	_ = meta.FileName
}

// striped runs fn(0..n-1) on workers goroutines, item i on goroutine i%workers; a
// goroutine stops at its first error, which fails b.
func striped(b *testing.B, workers, n int, fn func(i int) error) {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := fn(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// envInt is the integer in the environment variable name, or def when it is unset or not a
// number (benchmark knobs).
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}
