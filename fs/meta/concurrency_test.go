package meta

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentReadersWriters runs readers against writers and checks that
// every read sees a whole transaction: a file renamed back and forth is
// always listed exactly once, and a growing directory never shrinks. Run it
// with -race.
func TestConcurrentReadersWriters(t *testing.T) {
	c := newCatalog(t)
	flip := mkdir(t, c, RootIno, "flip")
	mkfile(t, c, flip.Ino, "a")
	grow := mkdir(t, c, RootIno, "grow")
	x := mkfile(t, c, RootIno, "x")

	const writes = 300
	var done atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	fail := func(format string, args ...any) {
		select {
		case errs <- fmt.Errorf(format, args...):
		default:
		}
	}

	wg.Add(1)
	go func() { // writer 1: the namespace
		defer wg.Done()
		defer done.Store(true)
		names := [2][]byte{[]byte("a"), []byte("b")}
		for i := range writes {
			if _, err := c.Rename(ctx, flip.Ino, names[i%2], flip.Ino, names[(i+1)%2], 0, now(), true); err != nil {
				fail("rename %d: %v", i, err)
				return
			}
			f, err := c.CreateFile(ctx, grow.Ino, fmt.Appendf(nil, "f%05d", i), fileAttr(), testKey(1))
			if err != nil {
				fail("create %d: %v", i, err)
				return
			}
			if _, err := c.SetChunk(ctx, f.Ino, Chunk{Index: 0, Object: obj(i + 1), Length: 10}, 10, now()); err != nil {
				fail("chunk %d: %v", i, err)
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // writer 2: attributes of another file, competing for the writer
		defer wg.Done()
		for i := 0; !done.Load(); i++ {
			if err := c.SetXattr(ctx, x.Ino, "user.n", fmt.Appendf(nil, "%d", i), 0, now()); err != nil {
				fail("setxattr: %v", err)
				return
			}
		}
	}()
	var reads atomic.Int64
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for !done.Load() {
				ents, err := c.ReadDir(ctx, flip.Ino, nil, 0)
				if err != nil || len(ents) != 1 {
					fail("reader %d: flip dir lists %d entries (%v), want exactly 1", r, len(ents), err)
					return
				}
				if _, err := c.GetInode(ctx, ents[0].Ino); err != nil {
					fail("reader %d: getinode: %v", r, err)
					return
				}
				all, err := c.ReadDirPlus(ctx, grow.Ino, nil, 0)
				if err != nil || len(all) < last {
					fail("reader %d: grow dir went from %d to %d entries (%v)", r, last, len(all), err)
					return
				}
				last = len(all)
				if last > 0 {
					in, err := c.Lookup(ctx, grow.Ino, all[last/2].Name)
					if err != nil || in.Ino != all[last/2].Inode.Ino {
						fail("reader %d: lookup: %v", r, err)
						return
					}
				}
				if _, err := c.Stats(ctx); err != nil {
					fail("reader %d: stats: %v", r, err)
					return
				}
				reads.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if reads.Load() < 10 {
		t.Fatalf("only %d read rounds ran alongside the writers", reads.Load())
	}
	st, err := c.Stats(ctx)
	if err != nil || st.Inodes != 5+writes || st.Chunks != writes || st.Bytes != 10*writes {
		t.Fatalf("stats at the end: %+v %v", st, err)
	}
	mustCheck(t, c)
	t.Logf("%d read rounds during %d write rounds", reads.Load(), writes)
}
