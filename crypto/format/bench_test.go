package format

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"math/rand/v2"
	"testing"
)

var benchSizes = []int{4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkSealBlock and BenchmarkOpenBlock measure the object scheme
// (pooled nonce/AAD, 132-byte AAD); BenchmarkRawGCM* measure plain
// AES-256-GCM on the same sizes with no AAD, for comparison.
func BenchmarkSealBlock(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			c, _ := NewCipher(testDEK(1), testBinding(1), Layout{BlockSize: n, ChunkSize: int64(n) * 4})
			plain := pattern(n)
			dst := make([]byte, 0, n+TagSize)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.SealBlock(dst, plain, 1, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpenBlock(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			c, _ := NewCipher(testDEK(1), testBinding(1), Layout{BlockSize: n, ChunkSize: int64(n) * 4})
			sealed, _ := c.SealBlock(nil, pattern(n), 1, false)
			dst := make([]byte, 0, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.OpenBlock(dst, sealed, 1, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func rawGCM(b *testing.B) cipher.AEAD {
	blk, err := aes.NewCipher(testDEK(1))
	if err != nil {
		b.Fatal(err)
	}
	a, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func BenchmarkRawGCMSeal(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			a := rawGCM(b)
			nonce := make([]byte, NonceSize)
			plain := pattern(n)
			dst := make([]byte, 0, n+TagSize)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				a.Seal(dst, nonce, plain, nil)
			}
		})
	}
}

func BenchmarkRawGCMOpen(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			a := rawGCM(b)
			nonce := make([]byte, NonceSize)
			sealed := a.Seal(nil, nonce, pattern(n), nil)
			dst := make([]byte, 0, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Open(dst, nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewCipher is the per-object setup cost (HKDF + AES key schedule).
func BenchmarkNewCipher(b *testing.B) {
	dek, bind := testDEK(1), testBinding(1)
	b.ReportAllocs()
	for b.Loop() {
		c, err := NewCipher(dek, bind, DefaultLayout)
		if err != nil {
			b.Fatal(err)
		}
		c.Wipe()
	}
}

// BenchmarkReadPath models what a read costs the daemon apart from FUSE and
// the remote: locate the blocks, copy the ciphertext range out of a 64 MiB
// store of sealed objects (like a page-cached read), open the blocks. It
// compares block sizes for page-aligned random 4 KiB reads and for 128 KiB
// sequential-style reads (the kernel's readahead size); MB/s counts the
// bytes asked for, so read amplification shows.
func BenchmarkReadPath(b *testing.B) {
	const chunk, nobj = 4 << 20, 16
	for _, rd := range []int64{4 << 10, 128 << 10} {
		for _, bs := range []int{4 << 10, 16 << 10, 64 << 10, 256 << 10} {
			b.Run(fmt.Sprintf("read%s/block%s", sizeName(int(rd)), sizeName(bs)), func(b *testing.B) {
				l := Layout{BlockSize: bs, ChunkSize: chunk}
				c, _ := NewCipher(testDEK(1), testBinding(1), l)
				obj, _ := c.SealChunk(nil, pattern(chunk))
				store := make([]byte, 0, nobj*len(obj))
				for range nobj {
					store = append(store, obj...)
				}
				r := rand.New(rand.NewPCG(1, 1))
				buf := make([]byte, int64(bs)+rd+64*TagSize)
				out := make([]byte, 0, int64(bs)+rd)
				b.SetBytes(rd)
				for b.Loop() {
					o := r.Int64N(nobj) * int64(len(obj))
					off := r.Int64N(chunk/rd) * rd
					first, last, _ := l.BlockSpan(chunk, off, rd)
					co, n, _ := l.CiphertextRange(chunk, first, last)
					copy(buf[:n], store[o+co:])
					if _, err := c.OpenRange(out[:0], buf[:n], chunk, first, last); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
