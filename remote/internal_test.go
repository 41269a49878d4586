package remote

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rclone/rclone/fs"

	"coffer/test/s3server"
	"coffer/test/sftpserver"
)

// TestS3SendsContentMD5 checks that uploads to S3 carry Content-MD5, which
// the server verifies, so corruption on the way up fails the Put (and is
// retried) instead of landing.
func TestS3SendsContentMD5(t *testing.T) {
	srv := s3server.Start(t)
	ctx := context.Background()
	s3, err := openRclone(ctx, srv.Remote("bkt/md5"), Options{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close(ctx)
	if !s3.md5 {
		t.Error("S3 uploads do not send Content-MD5")
	}
	local, err := openRclone(ctx, t.TempDir(), Options{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close(ctx)
	if local.md5 || local.localDir == "" {
		t.Errorf("local: md5 %v, localDir %q; want no MD5 and a folder to fsync", local.md5, local.localDir)
	}
}

// TestSFTPDefaults checks that coffer turns sftp's concurrent reads off,
// unless the user chose.
func TestSFTPDefaults(t *testing.T) {
	srv := sftpserver.Start(t)
	ctx := context.Background()
	for _, c := range []struct {
		remote, want string
	}{
		{srv.Remote("a"), "disable_concurrent_reads='true'"},
		{strings.Replace(srv.Remote("b"), ",shell_type=none", ",shell_type=none,disable_concurrent_reads=false", 1), "disable_concurrent_reads='false'"},
	} {
		s, err := openRclone(ctx, c.remote, Options{}.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		cs := fs.ConfigStringFull(s.f)
		if !strings.Contains(cs, c.want) || strings.Count(cs, "disable_concurrent_reads") != 1 {
			t.Errorf("rclone config %q; want %s once", cs, c.want)
		}
		if s.String() != Redact(c.remote) {
			t.Errorf("String() = %q shows coffer's tuning", s.String())
		}
		_ = s.Close(ctx)
	}
}

// A local Put fsyncs the folders above the object only until one already known durable.
func TestSyncLocalRemembersDurableFolders(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := openRclone(ctx, root, Options{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(ctx)
	durable := func() []string {
		var out []string
		st.durableDirs.Range(func(k, _ any) bool { out = append(out, k.(string)); return true })
		slices.Sort(out)
		return out
	}
	if err := st.Put(ctx, "c/ab/one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "c"), filepath.Join(root, "c", "ab")}
	if got := durable(); !slices.Equal(got, want) {
		t.Fatalf("durable folders after the first put: %v, want %v", got, want)
	}
	if err := st.Put(ctx, "c/cd/two", []byte("2")); err != nil {
		t.Fatal(err)
	}
	want = append(want, filepath.Join(root, "c", "cd"))
	slices.Sort(want)
	if got := durable(); !slices.Equal(got, want) {
		t.Fatalf("durable folders after a put into a new folder: %v, want %v", got, want)
	}
	if b, err := st.GetRange(ctx, "c/cd/two", 0, -1); err != nil || string(b) != "2" {
		t.Fatalf("read back: %q %v", b, err)
	}
}

// TestS3Defaults checks that coffer turns off rclone's HEAD after each S3 upload, unless
// the user chose.
func TestS3Defaults(t *testing.T) {
	srv := s3server.Start(t)
	ctx := context.Background()
	for _, c := range []struct {
		remote, want string
	}{
		{srv.Remote("bkt/a"), "no_head='true'"},
		{srv.Remote("bkt/b", "no_head=false"), "no_head='false'"},
	} {
		s, err := openRclone(ctx, c.remote, Options{}.withDefaults())
		if err != nil {
			t.Fatal(err)
		}
		cs := fs.ConfigStringFull(s.f)
		if !strings.Contains(cs, c.want) || strings.Count(cs, "no_head=") != 1 {
			t.Errorf("rclone config %q; want %s once", cs, c.want)
		}
		_ = s.Close(ctx)
	}
}
