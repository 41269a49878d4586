package content

import (
	"testing"

	"coffer/crypto/format"
)

// BenchmarkSequential measures the data path alone (no FUSE) on a local
// remote with fsync on every Put: sequential 128 KiB writes of a 64 MiB
// file followed by fsync, and sequential 128 KiB reads of it with a cold
// cache (remote reads, decryption, prefetch) and a warm one. MB/s is
// reported by the testing package from SetBytes.
func BenchmarkSequential(b *testing.B) {
	const size = 64 << 20
	const rec = 128 << 10
	e := newEnv(b, "local", format.DefaultLayout, Options{})
	e.ropt.NoSync = false
	e.reopen()
	buf := pattern(1, 0, rec)
	files := 0
	writeFile := func() uint64 {
		files++
		ino := e.createFile("f" + itoa(uint64(files)))
		f := e.openFile(ino)
		for off := int64(0); off < size; off += rec {
			if _, err := f.WriteAt(e.ctx, buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(e.ctx); err != nil {
			b.Fatal(err)
		}
		e.release(f)
		return ino
	}
	readFile := func(ino uint64) {
		f := e.openFile(ino)
		out := make([]byte, rec)
		for off := int64(0); off < size; off += rec {
			if n, err := f.ReadAt(e.ctx, out, off); err != nil || n != rec {
				b.Fatal(n, err)
			}
		}
		e.release(f)
	}
	b.Run("write+fsync", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			writeFile()
		}
	})
	ino := writeFile()
	b.Run("read-cold", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			e.reopen()
			b.StartTimer()
			readFile(ino)
		}
	})
	b.Run("read-warm", func(b *testing.B) {
		e.opt.CacheBytes = 2 * size
		e.reopen()
		readFile(ino)
		b.SetBytes(size)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			readFile(ino)
		}
	})
}
