package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// A row of a results table.
type row struct {
	key, label, unit string
	higher           bool    // higher is better (rates); else lower is better (seconds)
	latency          bool    // a latency (lower is better); the replication table shows it as on/off
	goal             float64 // the ratio coffer/peer the issue asks for (as a speed-up factor); 0: none
	note             string
}

const mb = 1e6 // MB/s as the peers report it

// fillBuf fills b with incompressible bytes; the first 8 bytes of each MiB carry its index,
// so a read back can check that every MiB came back in place.
func fillBuf(b []byte, idx int64, rng *rand.ChaCha8) {
	_, _ = rng.Read(b)
	binary.LittleEndian.PutUint64(b, uint64(idx))
}

// seqWrite writes size bytes to path in 1 MiB writes, fsyncs and closes; returns MB/s.
func seqWrite(path string, size int64) (float64, error) {
	var seed [32]byte
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	_, _ = rng.Read(buf)
	start := time.Now()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		binary.LittleEndian.PutUint64(buf, uint64(off>>20))
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return 0, fmt.Errorf("write %s at %d: %w", path, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return float64(size) / mb / time.Since(start).Seconds(), nil
}

// seqRead reads path in 1 MiB reads and checks each MiB's index; returns MB/s.
func seqRead(path string, size int64) (float64, error) {
	buf := make([]byte, 1<<20)
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var off int64
	for off < size {
		n, err := readFull(f, buf)
		if n > 0 && binary.LittleEndian.Uint64(buf) != uint64(off>>20) {
			return 0, fmt.Errorf("read %s: MiB %d holds the wrong data", path, off>>20)
		}
		off += int64(n)
		if err != nil {
			break
		}
	}
	if off != size {
		return 0, fmt.Errorf("read %s: got %d bytes, want %d", path, off, size)
	}
	return float64(size) / mb / time.Since(start).Seconds(), nil
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// randIO does 4 KiB reads (or writes) at random aligned offsets of path for d, then (for
// writes) fsyncs; returns operations per second over the whole time, fsync included.
func randIO(path string, size int64, d time.Duration, write bool) (float64, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// Each 4 KiB block at most once (a random permutation): a repeat would be served from
	// the kernel's page cache and measure nothing of the filesystem.
	order := rand.New(rand.NewPCG(1, 2)).Perm(int(size / 4096))
	buf := make([]byte, 4096)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(buf)
	start := time.Now()
	ops := 0
	for time.Since(start) < d && ops+64 <= len(order) {
		for range 64 {
			off := int64(order[ops]) * 4096
			if write {
				_, err = f.WriteAt(buf, off)
			} else {
				_, err = f.ReadAt(buf, off)
			}
			if err != nil {
				return 0, fmt.Errorf("random 4 KiB I/O on %s at %d: %w", path, off, err)
			}
			ops++
		}
	}
	if write {
		if err := f.Sync(); err != nil {
			return 0, fmt.Errorf("fsync %s: %w", path, err)
		}
	}
	return float64(ops) / time.Since(start).Seconds(), nil
}

// timed runs a command and returns its wall time in seconds.
func timed(ctx context.Context, dir string, name string, args ...string) (float64, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	cmd.Stdout = devnull
	errf, err := os.CreateTemp("", "bench-stderr-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(errf.Name())
	defer errf.Close()
	cmd.Stderr = errf
	start := time.Now()
	err = cmd.Run()
	el := time.Since(start).Seconds()
	if err != nil {
		msg, _ := os.ReadFile(errf.Name())
		if len(msg) > 600 {
			msg = msg[:600]
		}
		return 0, fmt.Errorf("%s %v: %v: %s", name, args, err, msg)
	}
	return el, nil
}

// smallFiles creates n files of 1 KiB in 100 folders under dir; returns seconds.
func smallFiles(dir string, n int) (float64, error) {
	data := make([]byte, 1024)
	_, _ = rand.NewChaCha8([32]byte{2}).Read(data)
	start := time.Now()
	per := max(1, n/100)
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/per))
		if i%per == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return 0, err
			}
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%05d", i)), data, 0o644); err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds(), nil
}

// fsyncFiles is how many files the fsync-latency row creates per run.
const fsyncFiles = 200

// fsyncLatency creates n new files in dir, each: create, write 4 KiB of fresh random bytes,
// fsync, close, timed one by one; returns each file's latency in milliseconds.
func fsyncLatency(dir string, n int, seed uint64) ([]float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	buf := make([]byte, 4096)
	lat := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		_, _ = rng.Read(buf)
		path := filepath.Join(dir, fmt.Sprintf("f%04d", i))
		start := time.Now()
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("fsync %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("close %s: %w", path, err)
		}
		lat = append(lat, float64(time.Since(start).Nanoseconds())/1e6)
	}
	return lat, nil
}

// percentile is the nearest-rank p-th percentile of v (p in (0, 100]): of 200 values the
// p50 is the 100th smallest, the p99 the 198th.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}
