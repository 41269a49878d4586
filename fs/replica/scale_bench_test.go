package replica

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
)

// BenchmarkRestoreScale measures a restore of a large catalog: it builds one
// of COFFER_BENCH_FILES regular files (default 100,000) through the catalog
// API, 1,000 per directory, each with a key record and one chunk; replicates
// it to a local folder (the first snapshot, then a few hundred changes as
// deltas after it); and times, as separate phases, replica.Restore into a
// fresh file (list, download, authenticate, apply) and meta.Open + Check
// (SQLite integrity_check and the catalog's own checks) on the result. Only
// those two phases count in ns/op; build and snapshot times are reported as
// metrics. Run it once:
//
//	COFFER_BENCH_FILES=1000000 go test ./fs/replica -run '^$' -bench BenchmarkRestoreScale -benchtime 1x -timeout 60m
//
// (Without -benchtime 1x the framework may call it again with a larger b.N,
// which builds the catalog again.) GB is 10^9 bytes of catalog file. The
// remote is a local folder the objects were just written to, so the restore
// reads them from the page cache: the figures are the CPU and local-disk
// cost of a restore, without the network.
func BenchmarkRestoreScale(b *testing.B) {
	b.StopTimer()
	n := scaleFiles(b)
	ctx := context.Background()
	root := b.TempDir()
	remDir := filepath.Join(root, "remote")
	vol := meta.Volume{ID: [16]byte{0x5c, 0xa1, 0xe0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, FormatVersion: 1,
		BlockSize: 16384, ChunkSize: 4 << 20, Remote: remDir, KeyMode: meta.KeyModeWrap, Provider: meta.ProviderPKCS11,
		HSMModule: "/usr/lib/softhsm/libsofthsm2.so", HSMToken: "coffer", Created: time.Now().UnixNano(),
		RootUID: 1000, RootGID: 1000}
	ks := keySet{1: randomKey(b)}
	g := &scaleGen{rng: rand.NewChaCha8([32]byte{1, 2, 3}), ns: vol.Created}
	g.r = rand.New(g.rng)

	// 1. Build the catalog: one transaction per directory of 1,000 files.
	start := time.Now()
	cat, err := meta.Create(ctx, filepath.Join(root, "state"), vol)
	if err != nil {
		b.Fatal(err)
	}
	catOpen := true
	defer func() {
		if catOpen {
			cat.Close()
		}
	}()
	ndirs := (n + scaleFilesPerDir - 1) / scaleFilesPerDir
	dirs := make([]uint64, 0, ndirs)
	for d := range ndirs {
		err := cat.Update(ctx, func(tx *meta.Tx) error {
			dir, err := tx.Mkdir(meta.RootIno, fmt.Appendf(nil, "d%05d", d), g.attr(0o755))
			if err != nil {
				return err
			}
			dirs = append(dirs, dir.Ino)
			for i := d * scaleFilesPerDir; i < min(n, (d+1)*scaleFilesPerDir); i++ {
				if err := g.file(tx, dir.Ino, scaleName(i), vol.ChunkSize); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatalf("build: directory %d: %v", d, err)
		}
		if ndirs >= 100 && (d+1)%(ndirs/4) == 0 && d+1 < ndirs { // b.Log keeps only 10 lines of a benchmark
			b.Logf("build: %d of %d files, %.0f s", min(n, (d+1)*scaleFilesPerDir), n, time.Since(start).Seconds())
		}
	}
	st, err := cat.Stats(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if st.Inodes != int64(1+ndirs+n) || st.Chunks != int64(n) {
		b.Fatalf("built %d inodes and %d chunks, want %d and %d", st.Inodes, st.Chunks, 1+ndirs+n, n)
	}
	build := time.Since(start)

	// 2. Replicate: the first snapshot, then deltas after it.
	store, err := remote.Open(ctx, remDir, remote.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close(ctx)
	r, err := Start(ctx, Config{Catalog: cat, Store: store, Volume: vol.ID, Epoch: 1, Key: ks.fn(),
		Current: func() uint32 { return 1 }, Interval: time.Hour, Logger: benchLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	rOpen := true
	defer func() {
		if rOpen {
			r.Close(ctx)
		}
	}()
	start = time.Now()
	if err := cat.Sync(ctx); err != nil { // the epoch is empty: a snapshot
		b.Fatal(err)
	}
	snapshot := time.Since(start)
	if s := r.Status(); s.Position != 1 || s.LastError != "" {
		b.Fatalf("after the first Sync: position %d, error %q; want a snapshot at 1", s.Position, s.LastError)
	}
	// A few hundred changes, one transaction each (as FUSE makes them), in
	// three deltas: new files with a chunk, and chunks rewritten in old files.
	extra, err := cat.Mkdir(ctx, meta.RootIno, []byte("extra"), g.attr(0o755))
	if err != nil {
		b.Fatal(err)
	}
	const rounds, perRound = 3, 100
	for round := range rounds {
		for i := range perRound / 2 {
			err := cat.Update(ctx, func(tx *meta.Tx) error {
				return g.file(tx, extra.Ino, fmt.Appendf(nil, "new-%d-%03d", round, i), vol.ChunkSize)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		for range perRound / 2 {
			i := g.r.IntN(n)
			f, err := cat.Lookup(ctx, dirs[i/scaleFilesPerDir], scaleName(i))
			if err != nil {
				b.Fatal(err)
			}
			length := g.length(vol.ChunkSize)
			if _, err := cat.SetChunk(ctx, f.Ino, meta.Chunk{Index: 0, Object: g.id(), Length: length}, length, g.now()); err != nil {
				b.Fatal(err)
			}
		}
		if err := cat.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
	last := r.Status().Position
	if last != 1+rounds {
		b.Fatalf("replica at position %d after %d syncs, want %d (a snapshot, then one delta each)", last, rounds, 1+rounds)
	}
	rOpen = false
	if err := r.Close(ctx); err != nil {
		b.Fatal(err)
	}
	catOpen = false
	if err := cat.Close(); err != nil {
		b.Fatal(err)
	}
	// After Close's checkpoint the catalog file alone holds state last: the
	// restore must rebuild it byte for byte.
	wantSum, size := fileSum(b, cat.Path())
	l, err := list(ctx, store, 1)
	if err != nil {
		b.Fatal(err)
	}
	parts := 0
	for _, ps := range l.snaps {
		parts += len(ps)
	}
	if len(l.snaps) != 1 || len(l.deltas) != rounds {
		b.Fatalf("the remote holds %d snapshots and %d deltas, want 1 and %d", len(l.snaps), len(l.deltas), rounds)
	}
	b.Logf("built %d files in %d directories in %.1f s: catalog %.1f MB (%.0f bytes/file); snapshot %.1f s; "+
		"remote: %d snapshot parts and %d deltas, %.1f MB", n, ndirs, build.Seconds(), float64(size)/1e6,
		float64(size)/float64(n), snapshot.Seconds(), parts, len(l.deltas), float64(l.bytes)/1e6)

	// 3. The measured phases.
	// CPU time (user + system, every thread) besides wall time: on a shared
	// machine it is the steadier figure.
	var restore, check, restoreCPU, checkCPU time.Duration
	for range b.N {
		dir := filepath.Join(root, "restored")
		if err := os.Mkdir(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(dir, meta.FileName)
		b.StartTimer()
		start, cpu := time.Now(), cpuTime(b)
		res, err := Restore(ctx, RestoreConfig{Store: store, Volume: vol.ID, Epoch: 1, Key: ks.fn(), Dst: dst,
			Logger: benchLogger(b)})
		restore += time.Since(start)
		restoreCPU += cpuTime(b) - cpu
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if res.Position != last || res.DroppedTail != "" || res.Objects != parts+rounds {
			b.Fatalf("restored %+v, want position %d from %d objects", res, last, parts+rounds)
		}
		if sum, _ := fileSum(b, dst); sum != wantSum {
			b.Fatalf("the restored catalog differs from the replicated one")
		}
		b.StartTimer()
		start, cpu = time.Now(), cpuTime(b)
		c, err := meta.Open(ctx, dir)
		if err != nil {
			b.Fatal(err)
		}
		probs, err := c.Check(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		check += time.Since(start)
		checkCPU += cpuTime(b) - cpu
		b.StopTimer()
		if len(probs) > 0 {
			b.Fatalf("check of the restored catalog: %d problems, the first: inode %d: %s", len(probs), probs[0].Ino, probs[0].Detail)
		}
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
	}

	gb := float64(size) / 1e9
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(float64(n), "files")
	b.ReportMetric(float64(size)/1e6, "catalog-MB")
	b.ReportMetric(float64(size)/float64(n), "bytes/file")
	b.ReportMetric(float64(l.bytes)/1e6, "remote-MB")
	b.ReportMetric(build.Seconds(), "build-s")
	b.ReportMetric(snapshot.Seconds(), "snapshot-s")
	b.ReportMetric(per(restore), "restore-s")
	b.ReportMetric(per(check), "check-s")
	b.ReportMetric(per(restoreCPU), "restore-cpu-s")
	b.ReportMetric(per(checkCPU), "check-cpu-s")
	b.ReportMetric(per(restore)/gb, "restore-s/GB")
	b.ReportMetric(per(restore+check)/gb, "restore+check-s/GB")
}

const scaleFilesPerDir = 1000

// scaleFiles is the catalog size BenchmarkRestoreScale builds.
func scaleFiles(b *testing.B) int {
	s := os.Getenv("COFFER_BENCH_FILES")
	if s == "" {
		return 100_000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("COFFER_BENCH_FILES=%q: want a positive number of files", s)
	}
	return n
}

func scaleName(i int) []byte { return fmt.Appendf(nil, "file-%07d.dat", i) }

// scaleGen makes the catalog's content: random ids, IVs and wrapped keys
// (from a seeded generator, so every run builds the same catalog but for
// the FileIDs and times), and a clock that moves 1 µs per call.
type scaleGen struct {
	rng *rand.ChaCha8
	r   *rand.Rand
	ns  int64
}

func (g *scaleGen) now() int64 { g.ns += 1000; return g.ns }

func (g *scaleGen) id() (id [16]byte) {
	g.rng.Read(id[:])
	return id
}

func (g *scaleGen) attr(perm uint32) meta.Inode {
	return meta.Inode{Mode: perm, UID: 1000, GID: 1000, Ctime: g.now()}
}

func (g *scaleGen) length(chunkSize int64) int64 { return 1 + g.r.Int64N(chunkSize) }

// file creates a regular file as a write and close through FUSE leaves it:
// its key record (wrap mode: a 12-byte IV and a 48-byte wrapped DEK) and one
// chunk of up to a chunk size, in tx.
func (g *scaleGen) file(tx *meta.Tx, dir uint64, name []byte, chunkSize int64) error {
	key := &meta.KeyRecord{Mode: meta.KeyModeWrap, Version: 1, IV: make([]byte, keys.IVSize), Wrapped: make([]byte, keys.WrappedSize)}
	g.rng.Read(key.IV)
	g.rng.Read(key.Wrapped)
	a := g.attr(0o644)
	a.FileID = g.id()
	in, err := tx.CreateFile(dir, name, a, key)
	if err != nil {
		return err
	}
	length := g.length(chunkSize)
	_, err = tx.SetChunks(in.Ino, []meta.Chunk{{Index: 0, Object: g.id(), Length: length}}, length, g.now())
	return err
}

// fileSum is the SHA-256 and the size of the file at path.
func fileSum(b *testing.B, path string) ([32]byte, int64) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		b.Fatal(err)
	}
	return [32]byte(h.Sum(nil)), n
}

// cpuTime is the CPU time the process used so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchLogger passes the replicator's warnings and errors to b.Log (its
// per-object info lines would flood a benchmark's output).
func benchLogger(b *testing.B) *slog.Logger {
	return slog.New(slog.NewTextHandler(bWriter{b}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type bWriter struct{ b *testing.B }

func (w bWriter) Write(p []byte) (int, error) {
	w.b.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
