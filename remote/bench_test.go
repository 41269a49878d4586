package remote_test

import (
	"context"
	"fmt"
	"testing"

	"coffer/remote"
	"coffer/remote/remotetest"
	"coffer/test/s3server"
	"coffer/test/sftpserver"
)

// BenchmarkStore measures one Store call at a time on each backend over
// loopback: whole-object puts, ranged block reads and stats.
//
//	go test -run '^$' -bench Store -benchtime 2s ./remote/
func BenchmarkStore(b *testing.B) {
	targets := []struct {
		name   string
		remote func(b *testing.B) string
		opt    remote.Options
	}{
		{"local", func(b *testing.B) string { return b.TempDir() }, remote.Options{}},
		{"local-nosync", func(b *testing.B) string { return b.TempDir() }, remote.Options{NoSync: true}},
		{"s3", func(b *testing.B) string { return s3server.Start(b).Remote("bkt/bench") }, remote.Options{}},
		{"sftp", func(b *testing.B) string { return sftpserver.Start(b).Remote("bench") }, remote.Options{}},
	}
	ctx := context.Background()
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			st, err := remote.Open(ctx, tg.remote(b), tg.opt)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close(ctx)
			for _, size := range []int{64 << 10, 4 << 20} {
				data := remotetest.RandBytes(size)
				b.Run(fmt.Sprintf("Put%dKiB", size>>10), func(b *testing.B) {
					b.SetBytes(int64(size))
					for i := 0; b.Loop(); i++ {
						if err := st.Put(ctx, fmt.Sprintf("p/%d/%d", size, i), data); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			obj := remotetest.RandBytes(4 << 20)
			if err := st.Put(ctx, "g/obj", obj); err != nil {
				b.Fatal(err)
			}
			b.Run("GetRange64KiB", func(b *testing.B) {
				b.SetBytes(64 << 10)
				for i := 0; b.Loop(); i++ {
					off := int64(i%60) * (64 << 10)
					if _, err := st.GetRange(ctx, "g/obj", off, 64<<10); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("GetRange4MiB", func(b *testing.B) {
				b.SetBytes(4 << 20)
				for b.Loop() {
					if _, err := st.GetRange(ctx, "g/obj", 0, -1); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Stat", func(b *testing.B) {
				for b.Loop() {
					if _, err := st.Stat(ctx, "g/obj"); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
