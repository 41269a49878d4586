package meta

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// go test -run '^$' -bench . ./fs/meta/
//
// Creates are one transaction each (inode + entry + parent + key record).

func BenchmarkCreate(b *testing.B) {
	for _, mode := range []string{"NORMAL", "FULL"} {
		b.Run("sync="+mode, func(b *testing.B) {
			c := newCatalogOpts(b, options{syncMode: mode})
			d := mkdir(b, c, RootIno, "d")
			key := testKey(1)
			b.ResetTimer()
			for i := range b.N {
				if _, err := c.CreateFile(ctx, d.Ino, fmt.Appendf(nil, "file-%08d", i), fileAttr(), key); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
		})
	}
}

// BenchmarkSetChunk is the write path's commit: replace a chunk, queue the
// old object, update size and mtime.
func BenchmarkSetChunk(b *testing.B) {
	c := newCatalog(b)
	f := mkfile(b, c, RootIno, "f")
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: int64(i % 64), Object: obj(i + 1), Length: 100}, 64*c.ChunkSize(), now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}

// BenchmarkSync is an fsync with one commit to make durable.
func BenchmarkSync(b *testing.B) {
	c := newCatalog(b)
	f := mkfile(b, c, RootIno, "f")
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(i + 1), Length: 1}, 1, now()); err != nil {
			b.Fatal(err)
		}
		if err := c.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commit+sync/s")
}

// tenThousand makes a catalog with 10,000 files in one directory.
func tenThousand(b *testing.B) (*Catalog, uint64) {
	c := newCatalog(b)
	d := mkdir(b, c, RootIno, "d")
	for batch := range 10 {
		err := c.Update(ctx, func(tx *Tx) error {
			for i := range 1000 {
				if _, err := tx.CreateFile(d.Ino, fmt.Appendf(nil, "file-%08d", batch*1000+i), fileAttr(), testKey(1)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return c, d.Ino
}

func BenchmarkLookup(b *testing.B) {
	c, d := tenThousand(b)
	b.Run("serial", func(b *testing.B) {
		r := rand.New(rand.NewPCG(1, 2))
		for range b.N {
			name := fmt.Appendf(nil, "file-%08d", r.IntN(10000))
			if _, err := c.Lookup(ctx, d, name); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(rand.Uint64(), 2))
			for pb.Next() {
				name := fmt.Appendf(nil, "file-%08d", r.IntN(10000))
				if _, err := c.Lookup(ctx, d, name); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
	b.Run("miss", func(b *testing.B) {
		for i := range b.N {
			if _, err := c.Lookup(ctx, d, fmt.Appendf(nil, "nope-%d", i)); Errno(err) != 2 {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
	b.Run("getinode", func(b *testing.B) {
		r := rand.New(rand.NewPCG(3, 4))
		for range b.N {
			if _, err := c.GetInode(ctx, uint64(3+r.IntN(10000))); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "getattrs/s")
	})
	b.Run("readdirplus-10k", func(b *testing.B) {
		for range b.N {
			var after []byte
			n := 0
			for {
				ents, err := c.ReadDirPlus(ctx, d, after, 512)
				if err != nil {
					b.Fatal(err)
				}
				if len(ents) == 0 {
					break
				}
				n += len(ents)
				after = ents[len(ents)-1].Name
			}
			if n != 10000 {
				b.Fatalf("listed %d", n)
			}
		}
		b.ReportMetric(float64(b.N*10000)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("stats-10k", func(b *testing.B) {
		for range b.N {
			if _, err := c.Stats(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
