package remote_test

import (
	"context"
	"testing"
	"time"

	"coffer/remote"
	"coffer/remote/remotetest"
	"coffer/test/s3server"
	"coffer/test/sftpserver"
)

func open(t *testing.T, r string, opt remote.Options) remote.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := remote.Open(ctx, r, opt)
	if err != nil {
		t.Fatalf("Open(%s): %v", remote.Redact(r), err)
	}
	t.Cleanup(func() {
		start := time.Now()
		if err := st.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("Close took %v", el)
		}
	})
	return st
}

func TestConformanceLocal(t *testing.T) {
	st := open(t, t.TempDir()+"/objects", remote.Options{})
	remotetest.Run(t, st, remotetest.Config{})
}

func TestConformanceS3(t *testing.T) {
	srv := s3server.Start(t)
	// upload_cutoff below the large object's 12 MiB makes it multipart
	// (5 MiB parts), so both upload paths are exercised.
	st := open(t, srv.Remote("bkt/vol", "upload_cutoff=5Mi"), remote.Options{})
	remotetest.Run(t, st, remotetest.Config{})
}

func TestConformanceSFTP(t *testing.T) {
	srv := sftpserver.Start(t)
	st := open(t, srv.Remote("vol"), remote.Options{})
	remotetest.Run(t, st, remotetest.Config{LargeSize: 6 << 20})
}
