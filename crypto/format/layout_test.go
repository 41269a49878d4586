package format

import (
	"math/rand/v2"
	"testing"
)

func TestLayoutValidate(t *testing.T) {
	for _, c := range []struct {
		l  Layout
		ok bool
	}{
		{DefaultLayout, true},
		{Layout{4096, 4096}, true},
		{Layout{1 << 20, 64 << 20}, true},
		{Layout{4096, 64 << 20}, true},
		{Layout{2048, 4096}, false},       // block too small
		{Layout{2 << 20, 4 << 20}, false}, // block too big
		{Layout{6000, 12000}, false},      // not a power of two
		{Layout{4096, 2048}, false},       // chunk smaller than block
		{Layout{4096, 4096*3 + 1}, false}, // not a multiple
		{Layout{4096, 128 << 20}, false},  // chunk too big
		{Layout{0, 0}, false},             // zero value
		{Layout{-4096, 4096}, false},      // negative
		{Layout{4096, -4096}, false},      // negative
		{Layout{1 << 12, 1<<12 + 1<<12}, true},
	} {
		if err := c.l.Validate(); (err == nil) != c.ok {
			t.Errorf("%+v.Validate() = %v, want ok=%v", c.l, err, c.ok)
		}
	}
	// Every method refuses an invalid layout instead of dividing by zero.
	bad := Layout{}
	if _, _, err := bad.Locate(1); err == nil {
		t.Error("Locate on a zero layout succeeded")
	}
	if _, err := bad.Blocks(1); err == nil {
		t.Error("Blocks on a zero layout succeeded")
	}
	if _, err := NewCipher(seq(0, 32), Binding{idOf(seq(1, 16)), idOf(seq(2, 16)), idOf(seq(3, 16))}, bad); err == nil {
		t.Error("NewCipher on a zero layout succeeded")
	}
}

// Table tests on a 64 KiB / 4 MiB layout.
func TestLayoutTable(t *testing.T) {
	l := Layout{BlockSize: 65536, ChunkSize: 4 << 20}
	const B, C, S = 65536, 4 << 20, 65536 + 16
	for _, c := range []struct{ off, chunk, in int64 }{
		{0, 0, 0}, {1, 0, 1}, {C - 1, 0, C - 1}, {C, 1, 0}, {C + 5, 1, 5}, {10*C + 7, 10, 7},
		{1 << 40, (1 << 40) / C, 0},
	} {
		ch, in, err := l.Locate(c.off)
		if err != nil || ch != c.chunk || in != c.in {
			t.Errorf("Locate(%d) = %d, %d, %v; want %d, %d", c.off, ch, in, err, c.chunk, c.in)
		}
	}
	for _, c := range []struct{ size, chunks, lastLen int64 }{
		{0, 0, 0}, {1, 1, 1}, {C, 1, C}, {C + 1, 2, 1}, {3*C - 1, 3, C - 1},
	} {
		n, err := l.Chunks(c.size)
		if err != nil || n != c.chunks {
			t.Errorf("Chunks(%d) = %d, %v; want %d", c.size, n, err, c.chunks)
		}
		if n > 0 {
			if got, _ := l.ChunkLen(c.size, n-1); got != c.lastLen {
				t.Errorf("ChunkLen(%d, %d) = %d, want %d", c.size, n-1, got, c.lastLen)
			}
		}
		if got, _ := l.ChunkLen(c.size, n); got != 0 {
			t.Errorf("ChunkLen past the end = %d, want 0", got)
		}
	}
	for _, c := range []struct {
		chunkLen, blocks, last, lastLen, size int64
	}{
		{1, 1, 0, 1, 32 + 1 + 16},
		{B, 1, 0, B, 32 + B + 16},
		{B + 1, 2, 1, 1, 32 + B + 1 + 32},
		{C, 64, 63, B, 32 + C + 64*16},
		{C - 1, 64, 63, B - 1, 32 + C - 1 + 64*16},
	} {
		nb, err1 := l.Blocks(c.chunkLen)
		last, err2 := l.LastBlock(c.chunkLen)
		ll, err3 := l.BlockLen(c.chunkLen, last)
		size, err4 := l.ObjectSize(c.chunkLen)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || nb != c.blocks || last != c.last || int64(ll) != c.lastLen || size != c.size {
			t.Errorf("chunkLen %d: blocks %d last %d lastLen %d size %d; want %+v", c.chunkLen, nb, last, ll, size, c)
		}
	}
	for _, c := range []struct{ chunkLen, off, n, first, last int64 }{
		{C, 0, 1, 0, 0}, {C, 0, B, 0, 0}, {C, 0, B + 1, 0, 1}, {C, B - 1, 2, 0, 1},
		{C, B, 4096, 1, 1}, {C, 0, C, 0, 63}, {C, C - 1, 1, 63, 63}, {100, 99, 1, 0, 0},
		{B + 10, B, 10, 1, 1}, {3*B + 7, 2*B + B - 1, 2, 2, 3}, {3*B + 7, 3 * B, 7, 3, 3},
	} {
		f, la, err := l.BlockSpan(c.chunkLen, c.off, c.n)
		if err != nil || f != c.first || la != c.last {
			t.Errorf("BlockSpan(%d, %d, %d) = %d, %d, %v; want %d, %d", c.chunkLen, c.off, c.n, f, la, err, c.first, c.last)
		}
	}
	for _, c := range []struct{ chunkLen, first, last, off, n int64 }{
		{C, 0, 0, 32, S}, {C, 1, 1, 32 + S, S}, {C, 0, 63, 32, 64 * S}, {C, 63, 63, 32 + 63*S, S},
		{B + 1, 1, 1, 32 + S, 17}, {B + 1, 0, 1, 32, S + 17}, {1, 0, 0, 32, 17},
	} {
		off, n, err := l.CiphertextRange(c.chunkLen, c.first, c.last)
		if err != nil || off != c.off || n != c.n {
			t.Errorf("CiphertextRange(%d, %d, %d) = %d, %d, %v; want %d, %d", c.chunkLen, c.first, c.last, off, n, err, c.off, c.n)
		}
	}
	// Bad inputs are errors, not panics or nonsense.
	bads := []func() error{
		func() error { _, _, err := l.Locate(-1); return err },
		func() error { _, err := l.Chunks(-1); return err },
		func() error { _, err := l.ChunkLen(-1, 0); return err },
		func() error { _, err := l.ChunkLen(10, -1); return err },
		func() error { _, err := l.Blocks(0); return err },
		func() error { _, err := l.Blocks(C + 1); return err },
		func() error { _, err := l.BlockLen(B+1, 2); return err },
		func() error { _, err := l.BlockLen(B+1, -1); return err },
		func() error { _, _, err := l.BlockSpan(C, 0, 0); return err },
		func() error { _, _, err := l.BlockSpan(C, -1, 2); return err },
		func() error { _, _, err := l.BlockSpan(C, C-1, 2); return err },
		func() error { _, _, err := l.BlockSpan(10, 5, 1<<62); return err },
		func() error { _, _, err := l.CiphertextRange(C, 1, 0); return err },
		func() error { _, _, err := l.CiphertextRange(C, 0, 64); return err },
		func() error { _, _, err := l.CiphertextRange(B, -1, 0); return err },
		func() error { _, err := l.ObjectSize(0); return err },
	}
	for i, f := range bads {
		if f() == nil {
			t.Errorf("bad input %d accepted", i)
		}
	}
}

// naiveBlock is one block of a chunk as a model computes it by walking.
type naiveBlock struct{ pStart, pEnd, cStart, cEnd int64 }

// naiveBlocks walks a chunk byte run by byte run, the way a reader that
// knows nothing but the rules would.
func naiveBlocks(l Layout, chunkLen int64) []naiveBlock {
	var bl []naiveBlock
	c := int64(HeaderSize)
	for p := int64(0); p < chunkLen; {
		n := min(int64(l.BlockSize), chunkLen-p)
		bl = append(bl, naiveBlock{p, p + n, c, c + n + TagSize})
		p += n
		c += n + TagSize
	}
	return bl
}

func naiveFind(bl []naiveBlock, off int64) int64 {
	for i, b := range bl {
		if off >= b.pStart && off < b.pEnd {
			return int64(i)
		}
	}
	return -1
}

func testLayouts() []Layout {
	return []Layout{
		{4096, 4096}, {4096, 16384}, {4096, 12288}, {8192, 65536}, DefaultLayout,
		{1 << 20, 64 << 20}, {4096, 64 << 20},
	}
}

// interesting returns chunk lengths around every block boundary of l plus
// random ones.
func interesting(r *rand.Rand, l Layout) []int64 {
	var out []int64
	bs := int64(l.BlockSize)
	for k := int64(1); k <= min(l.BlocksPerChunk(), 5); k++ {
		out = append(out, k*bs-1, k*bs, k*bs+1)
	}
	out = append(out, 1, 2, l.ChunkSize-1, l.ChunkSize)
	for range 50 {
		out = append(out, 1+r.Int64N(l.ChunkSize))
	}
	var ok []int64
	for _, n := range out {
		if n >= 1 && n <= l.ChunkSize {
			ok = append(ok, n)
		}
	}
	return ok
}

func TestLayoutMatchesNaiveModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	// Exhaustive over every chunk length of the small layouts.
	for _, l := range []Layout{{4096, 4096}, {4096, 16384}} {
		for n := int64(1); n <= l.ChunkSize; n++ {
			checkChunkModel(t, r, l, n, 0)
		}
	}
	for _, l := range testLayouts() {
		for _, n := range interesting(r, l) {
			checkChunkModel(t, r, l, n, 30)
		}
	}
}

func checkChunkModel(t *testing.T, r *rand.Rand, l Layout, n int64, spans int) {
	t.Helper()
	bl := naiveBlocks(l, n)
	nb, _ := l.Blocks(n)
	last, _ := l.LastBlock(n)
	size, _ := l.ObjectSize(n)
	if nb != int64(len(bl)) || last != nb-1 || size != bl[len(bl)-1].cEnd {
		t.Fatalf("%+v chunkLen %d: blocks %d last %d size %d; model %d blocks, size %d", l, n, nb, last, size, len(bl), bl[len(bl)-1].cEnd)
	}
	for i, b := range bl {
		if got, _ := l.BlockLen(n, int64(i)); int64(got) != b.pEnd-b.pStart {
			t.Fatalf("%+v chunkLen %d: BlockLen(%d) = %d, model %d", l, n, i, got, b.pEnd-b.pStart)
		}
	}
	// Ranges: all single blocks, all block pairs ending at the last, random.
	for i := range bl {
		for _, j := range []int{i, len(bl) - 1} {
			off, ln, err := l.CiphertextRange(n, int64(i), int64(j))
			if err != nil || off != bl[i].cStart || off+ln != bl[j].cEnd {
				t.Fatalf("%+v chunkLen %d: CiphertextRange(%d, %d) = %d+%d, %v; model [%d, %d)", l, n, i, j, off, ln, err, bl[i].cStart, bl[j].cEnd)
			}
		}
	}
	for range spans {
		off := r.Int64N(n)
		cnt := 1 + r.Int64N(n-off)
		if r.IntN(4) == 0 {
			cnt = 1 + r.Int64N(min(n-off, 8192))
		}
		f, la, err := l.BlockSpan(n, off, cnt)
		if err != nil || f != naiveFind(bl, off) || la != naiveFind(bl, off+cnt-1) {
			t.Fatalf("%+v chunkLen %d: BlockSpan(%d, %d) = %d, %d, %v; model %d, %d", l, n, off, cnt, f, la, err, naiveFind(bl, off), naiveFind(bl, off+cnt-1))
		}
	}
}

// File-level math against a model that walks a file chunk by chunk.
func TestFileMathMatchesNaiveModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, l := range testLayouts() {
		sizes := []int64{0, 1, l.ChunkSize - 1, l.ChunkSize, l.ChunkSize + 1, 5*l.ChunkSize + 3}
		for range 20 {
			sizes = append(sizes, r.Int64N(20*l.ChunkSize))
		}
		for _, size := range sizes {
			var lens []int64
			for p := int64(0); p < size; p += l.ChunkSize {
				lens = append(lens, min(l.ChunkSize, size-p))
			}
			if n, _ := l.Chunks(size); n != int64(len(lens)) {
				t.Fatalf("%+v Chunks(%d) = %d, model %d", l, size, n, len(lens))
			}
			for i := range int64(len(lens)) + 2 {
				want := int64(0)
				if i < int64(len(lens)) {
					want = lens[i]
				}
				if got, _ := l.ChunkLen(size, i); got != want {
					t.Fatalf("%+v ChunkLen(%d, %d) = %d, model %d", l, size, i, got, want)
				}
			}
			for range 20 {
				if size == 0 {
					break
				}
				off := r.Int64N(size)
				ch, in, _ := l.Locate(off)
				// model: subtract chunk lengths until off falls inside one
				mc, mo := int64(0), off
				for mo >= lens[mc] {
					mo -= lens[mc]
					mc++
				}
				if ch != mc || in != mo {
					t.Fatalf("%+v Locate(%d) = %d, %d; model %d, %d", l, off, ch, in, mc, mo)
				}
			}
		}
	}
}

// ObjectSize and CiphertextRange agree with real sealed objects.
func TestLayoutMatchesSealedObjects(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	b := testBinding(1)
	for _, l := range []Layout{{4096, 16384}, {8192, 65536}, DefaultLayout} {
		c, err := NewCipher(testDEK(1), b, l)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range interesting(r, l)[:12] {
			plain := pattern(int(n))
			obj, err := c.SealChunk(nil, plain)
			if err != nil {
				t.Fatal(err)
			}
			size, _ := l.ObjectSize(n)
			if int64(len(obj)) != size {
				t.Fatalf("%+v chunkLen %d: sealed %d bytes, ObjectSize %d", l, n, len(obj), size)
			}
			nb, _ := l.Blocks(n)
			first := r.Int64N(nb)
			last := first + r.Int64N(nb-first)
			off, ln, _ := l.CiphertextRange(n, first, last)
			got, err := c.OpenRange(nil, obj[off:off+ln], n, first, last)
			if err != nil {
				t.Fatalf("%+v chunkLen %d: OpenRange(%d, %d): %v", l, n, first, last, err)
			}
			start := first * int64(l.BlockSize)
			if string(got) != string(plain[start:start+int64(len(got))]) || start+int64(len(got)) != min(n, (last+1)*int64(l.BlockSize)) {
				t.Fatalf("%+v chunkLen %d: OpenRange(%d, %d) returned the wrong plaintext", l, n, first, last)
			}
		}
		c.Wipe()
	}
}
