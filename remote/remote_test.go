package remote_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/config"

	"coffer/remote"
	"coffer/remote/faulty"
	"coffer/test/s3server"
	"coffer/test/sftpserver"
)

// rcloneConf is the rclone.conf every test of this package sees through
// RCLONE_CONFIG: named remotes whose addresses come from the environment,
// the way an operator keeps credentials out of coffer.
var rcloneConf string

const confText = `# coffer test config
[mys3]
type = s3
provider = Rclone

[mysftp]
type = sftp
`

func TestMain(m *testing.M) {
	if os.Getenv("COFFER_REMOTE_HELPER") == "" {
		dir, err := os.MkdirTemp("", "coffer-remote-test")
		if err != nil {
			panic(err)
		}
		rcloneConf = filepath.Join(dir, "rclone.conf")
		if err := os.WriteFile(rcloneConf, []byte(confText), 0o600); err != nil {
			panic(err)
		}
		os.Setenv("RCLONE_CONFIG", rcloneConf)
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func checkConfUntouched(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(rcloneConf)
	if err != nil || string(b) != confText {
		t.Errorf("rclone.conf was changed (%v):\n%s", err, b)
	}
}

func TestNamedRemoteS3(t *testing.T) {
	srv := s3server.Start(t)
	t.Setenv("RCLONE_CONFIG_MYS3_ENDPOINT", srv.Endpoint())
	st := open(t, "mys3:bkt/named", remote.Options{})
	if err := st.Put(context.Background(), "c/ab/x", []byte("via rclone.conf")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(srv.ObjectPath("bkt/named", "c/ab/x"))
	if err != nil || string(b) != "via rclone.conf" {
		t.Errorf("object on the server: %q, %v", b, err)
	}
	if st.String() != "mys3:bkt/named" {
		t.Errorf("String() = %q", st.String())
	}
	checkConfUntouched(t)
}

func TestNamedRemoteSFTPDoesNotWriteConfig(t *testing.T) {
	srv := sftpserver.Start(t)
	host, port, _ := strings.Cut(srv.Addr, ":")
	for k, v := range map[string]string{
		"HOST": host, "PORT": port, "USER": srv.User,
		"KEY_FILE": srv.KeyFile, "KNOWN_HOSTS_FILE": srv.KnownHosts,
	} {
		t.Setenv("RCLONE_CONFIG_MYSFTP_"+k, v)
	}
	// No shell_type: rclone probes the server's shell and saves the answer
	// into the config, which must stay in memory.
	st := open(t, "mysftp:"+srv.Dir+"/named", remote.Options{})
	if err := st.Put(context.Background(), "x", []byte("sftp")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(srv.ObjectPath("named", "x")); err != nil || string(b) != "sftp" {
		t.Errorf("object on the server: %q, %v", b, err)
	}
	// rclone did try to save what it found (so the check below means
	// something): the value is in its in-memory copy only.
	if v, ok := config.LoadedData().GetValue("mysftp", "shell_type"); !ok || v == "" {
		t.Errorf("rclone did not record shell_type (%q, %v): the test no longer exercises a config write", v, ok)
	}
	checkConfUntouched(t)
}

func TestOpenRefusals(t *testing.T) {
	ctx := context.Background()
	_, err := remote.Open(ctx, ":s3,provider=Rclone,secret_access_key=hunter2:bkt", remote.Options{})
	if !errors.Is(err, remote.ErrCredentials) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Open with a secret = %v", err)
	}
	if _, err := remote.Open(ctx, "relative/dir", remote.Options{}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("Open(relative path) = %v; want a refusal", err)
	}
	if _, err := remote.Open(ctx, "nosuchremote:bkt", remote.Options{}); err == nil || !strings.Contains(err.Error(), "nosuchremote") {
		t.Errorf("Open(unknown remote) = %v; want an error naming it", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := remote.Open(cctx, ":s3,provider=Rclone,endpoint='http://127.0.0.1:9':bkt", remote.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context = %v", err)
	}
}

func TestOpenSFTPDown(t *testing.T) {
	srv := sftpserver.Start(t)
	srv.Stop()
	start := time.Now()
	_, err := remote.Open(context.Background(), srv.Remote("x"), remote.Options{})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Open(sftp, server down) = %v; want connection refused", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Open against a stopped sftp server took %v", el)
	}
}

func TestOpenLocalCreatesPrivateFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	st := open(t, dir, remote.Options{})
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("folder: %v, %v", fi, err)
	}
	if err := st.Put(context.Background(), "c/ab/obj", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "c", "ab", "obj")); err != nil || string(b) != "x" {
		t.Errorf("object file: %q, %v", b, err)
	}
	if st.String() != dir {
		t.Errorf("String() = %q", st.String())
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	st, err := remote.Open(ctx, t.TempDir(), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
	start := time.Now()
	if err := st.Put(ctx, "b", []byte("x")); !errors.Is(err, remote.ErrClosed) {
		t.Errorf("Put after Close = %v; want ErrClosed", err)
	}
	if _, err := st.Stat(ctx, "a"); !errors.Is(err, remote.ErrClosed) {
		t.Errorf("Stat after Close = %v; want ErrClosed", err)
	}
	if time.Since(start) > 50*time.Millisecond {
		t.Errorf("ErrClosed was retried: %v", time.Since(start))
	}
}

// captureHandler records log records.
type captureHandler struct {
	mu   sync.Mutex
	recs []string
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	h.mu.Lock()
	h.recs = append(h.recs, s)
	h.mu.Unlock()
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }
func (h *captureHandler) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.recs, "\n")
}

func TestRcloneLogsGoToOurLogger(t *testing.T) {
	h := &captureHandler{}
	open(t, t.TempDir(), remote.Options{Logger: slog.New(h)})
	fs.Errorf(nil, "an rclone error %d", 42)
	fs.Logf(nil, "an rclone notice")
	fs.Infof(nil, "an rclone info")
	got := h.all()
	if !strings.Contains(got, "an rclone error 42") || !strings.Contains(got, "component=rclone") {
		t.Errorf("rclone's error was not forwarded: %q", got)
	}
	if strings.Contains(got, "notice") || strings.Contains(got, "info") {
		t.Errorf("rclone's lower levels leaked: %q", got)
	}
}

// TestEncryptedConfigIsAnError checks, in a child process, that an rclone
// config that cannot be decrypted gives Open an error instead of rclone's
// os.Exit(1) or a password prompt.
func TestEncryptedConfigIsAnError(t *testing.T) {
	if os.Getenv("COFFER_REMOTE_HELPER") == "encrypted" {
		_, err := remote.Open(context.Background(), os.Getenv("COFFER_REMOTE_DIR"), remote.Options{})
		fmt.Printf("OPEN-RESULT: %v\n", err)
		return
	}
	conf := filepath.Join(t.TempDir(), "rclone.conf")
	enc := "# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\n" +
		"N3JlYWxseSBub3QgYSB2YWxpZCBzZWNyZXRib3ggYnV0IGxvbmcgZW5vdWdoIHRvIHBhc3MgdGhlIGxlbmd0aCBjaGVjaw==\n"
	if err := os.WriteFile(conf, []byte(enc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEncryptedConfigIsAnError$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_REMOTE_HELPER=encrypted", "RCLONE_CONFIG="+conf,
		"COFFER_REMOTE_DIR="+t.TempDir(), "RCLONE_CONFIG_PASS=")
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed (%v); rclone must not exit the process:\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("OPEN-RESULT: remote: load rclone config")) || !bytes.Contains(out, []byte("RCLONE_CONFIG_PASS")) {
		t.Errorf("Open did not fail clearly:\n%s", out)
	}
}

// TestUnreachableS3 stops the server for real: calls fail with a transient
// error in bounded time, and the same Store works again after a restart.
func TestUnreachableS3(t *testing.T) {
	srv := s3server.Start(t)
	st := open(t, srv.Remote("bkt/down"), remote.Options{Retries: 1, MinBackoff: 20 * time.Millisecond, LowLevelRetries: 1})
	testUnreachable(t, st, srv.Stop, srv.Restart)
}

func TestUnreachableSFTP(t *testing.T) {
	srv := sftpserver.Start(t)
	st := open(t, srv.Remote("down"), remote.Options{Retries: 1, MinBackoff: 20 * time.Millisecond, LowLevelRetries: 1})
	testUnreachable(t, st, srv.Stop, srv.Restart)
}

func testUnreachable(t *testing.T, st remote.Store, stop, restart func()) {
	ctx := context.Background()
	if err := st.Put(ctx, "c/aa/before", []byte("before")); err != nil {
		t.Fatal(err)
	}
	stop()
	start := time.Now()
	err := st.Put(ctx, "c/aa/during", []byte("during"))
	el := time.Since(start)
	if err == nil {
		t.Fatal("Put to a stopped server succeeded")
	}
	if !remote.IsTransient(err) || errors.Is(err, remote.ErrNotFound) {
		t.Errorf("Put to a stopped server = %v; want a transient error", err)
	}
	if !strings.Contains(err.Error(), "gave up after 2 attempts") {
		t.Errorf("error does not say it retried: %v", err)
	}
	t.Logf("Put to a stopped server failed after %v: %v", el, err)
	if el > 10*time.Second {
		t.Errorf("failing took %v", el)
	}
	start = time.Now()
	if _, err := st.GetRange(ctx, "c/aa/before", 0, -1); err == nil || errors.Is(err, remote.ErrNotFound) {
		t.Errorf("GetRange from a stopped server = %v; want a transient error, not ErrNotFound", err)
	}
	t.Logf("GetRange while down took %v", time.Since(start))
	// A cancelled wait returns at once even while the remote is down.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = st.Stat(cctx, "c/aa/before")
	if err == nil || time.Since(start) > 500*time.Millisecond {
		t.Errorf("Stat under a 50ms deadline while down = %v after %v", err, time.Since(start))
	}
	t.Logf("down checks done at %v", time.Since(start))
	start = time.Now()
	restart()
	t.Logf("restart took %v", time.Since(start))
	start = time.Now()
	defer func() { t.Logf("after-restart checks took %v", time.Since(start)) }()
	if got, err := st.GetRange(ctx, "c/aa/before", 0, -1); err != nil || string(got) != "before" {
		t.Errorf("after restart: %q, %v", got, err)
	}
	if err := st.Put(ctx, "c/aa/after", []byte("after")); err != nil {
		t.Errorf("Put after restart: %v", err)
	}
}

// TestS3Multipart checks that a Put above upload_cutoff really is a
// multipart upload: S3 reports the part count on a HEAD with partNumber.
func TestS3Multipart(t *testing.T) {
	srv := s3server.Start(t)
	st := open(t, srv.Remote("bkt/mp", "upload_cutoff=5Mi", "chunk_size=5Mi"), remote.Options{})
	data := bytes.Repeat([]byte("0123456789abcdef"), (12<<20)/16)
	if err := st.Put(context.Background(), "big", data); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Head(srv.Endpoint() + "/bkt/mp/big?partNumber=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if parts := resp.Header.Get("x-amz-mp-parts-count"); parts != "3" {
		t.Errorf("parts count %q (HTTP %d): want a 3-part multipart upload", parts, resp.StatusCode)
	}
	small := open(t, srv.Remote("bkt/sp"), remote.Options{})
	if err := small.Put(context.Background(), "big", data); err != nil {
		t.Fatal(err)
	}
	resp, err = http.Head(srv.Endpoint() + "/bkt/sp/big?partNumber=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if parts := resp.Header.Get("x-amz-mp-parts-count"); parts != "" || resp.StatusCode != 200 {
		t.Errorf("parts count %q (HTTP %d): below the default cutoff a Put is a single PUT", parts, resp.StatusCode)
	}
}

// TestS3Tamper checks that a change made directly in the server's folder is
// what the next read returns: the hook for tamper-detection tests.
func TestS3Tamper(t *testing.T) {
	srv := s3server.Start(t)
	st := open(t, srv.Remote("bkt/t"), remote.Options{})
	ctx := context.Background()
	if err := st.Put(ctx, "c/ab/obj", []byte("original content")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, "c/ab/obj"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(srv.ObjectPath("bkt/t", "c/ab/obj"), []byte("evil"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv.Settle()
	if got, err := st.GetRange(ctx, "c/ab/obj", 0, -1); err != nil || string(got) != "evil" {
		t.Errorf("after tampering: %q, %v", got, err)
	}
	if err := os.Remove(srv.ObjectPath("bkt/t", "c/ab/obj")); err != nil {
		t.Fatal(err)
	}
	srv.Settle()
	if _, err := st.Stat(ctx, "c/ab/obj"); !errors.Is(err, remote.ErrNotFound) {
		t.Errorf("after removal on disk: %v", err)
	}
}

// TestRetries drives the retry layer with injected faults.
func TestRetries(t *testing.T) {
	ctx := context.Background()
	base := open(t, t.TempDir(), remote.Options{NoSync: true})
	opt := remote.Options{Retries: 3, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
	setup := func() (*faulty.Store, remote.Store) {
		f := faulty.New(base, 1)
		return f, remote.WithRetries(f, opt)
	}

	t.Run("TransientThenSuccess", func(t *testing.T) {
		f, st := setup()
		f.Inject(faulty.Fault{Ops: faulty.Put, Count: 2})
		if err := st.Put(ctx, "a", []byte("x")); err != nil {
			t.Fatalf("Put = %v", err)
		}
		if f.Calls(faulty.Put) != 3 {
			t.Errorf("calls = %d; want 3", f.Calls(faulty.Put))
		}
	})
	t.Run("GivesUp", func(t *testing.T) {
		f, st := setup()
		f.Inject(faulty.Fault{Ops: faulty.GetRange})
		_, err := st.GetRange(ctx, "a", 0, -1)
		if !errors.Is(err, faulty.ErrInjected) || !strings.Contains(err.Error(), "gave up after 4 attempts") {
			t.Errorf("GetRange = %v", err)
		}
		if f.Calls(faulty.GetRange) != 4 {
			t.Errorf("calls = %d; want 4", f.Calls(faulty.GetRange))
		}
	})
	t.Run("Permanent", func(t *testing.T) {
		for _, perm := range []error{
			remote.ErrNotFound, remote.ErrInvalidName, os.ErrPermission, syscall.ENOSPC,
			remote.Permanent(errors.New("custom")), httpError(403), httpError(404), httpError(416),
		} {
			f, st := setup()
			f.Inject(faulty.Fault{Ops: faulty.Stat, Err: perm})
			_, err := st.Stat(ctx, "a")
			if !errors.Is(err, perm) || f.Calls(faulty.Stat) != 1 {
				t.Errorf("%v: err %v after %d calls; want 1 call", perm, err, f.Calls(faulty.Stat))
			}
		}
		f, st := setup()
		_, err := st.GetRange(ctx, "a", 0, 100) // a real short object
		if f.Calls(faulty.GetRange) != 1 || err == nil {
			t.Errorf("short object: %v after %d calls; want 1 call", err, f.Calls(faulty.GetRange))
		}
	})
	t.Run("TransientHTTP", func(t *testing.T) {
		for _, code := range []int{500, 503, 429, 408} {
			f, st := setup()
			f.Inject(faulty.Fault{Ops: faulty.Stat, Err: httpError(code), Count: 1})
			if _, err := st.Stat(ctx, "a"); err != nil || f.Calls(faulty.Stat) != 2 {
				t.Errorf("HTTP %d: %v after %d calls; want success on the 2nd", code, err, f.Calls(faulty.Stat))
			}
		}
	})
	t.Run("CancelDuringBackoff", func(t *testing.T) {
		f := faulty.New(base, 1)
		st := remote.WithRetries(f, remote.Options{Retries: 5, MinBackoff: 10 * time.Second})
		f.Inject(faulty.Fault{Ops: faulty.Put})
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		err := st.Put(cctx, "b", []byte("x"))
		el := time.Since(start)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, faulty.ErrInjected) {
			t.Errorf("Put = %v; want both the cause and context.Canceled", err)
		}
		if el > 150*time.Millisecond {
			t.Errorf("returned %v after a cancel at 50ms", el)
		}
	})
	t.Run("ListNotRetriedAfterDelivery", func(t *testing.T) {
		f, st := setup()
		if err := base.Put(ctx, "l/1", []byte("x")); err != nil {
			t.Fatal(err)
		}
		f.Inject(faulty.Fault{Ops: faulty.List, Kind: faulty.LostReply, Count: 1})
		seen := 0
		err := st.List(ctx, "l/", func(string, int64) error { seen++; return nil })
		if err == nil || seen != 1 || f.Calls(faulty.List) != 1 {
			t.Errorf("List = %v, %d names, %d calls; want the error, 1 name, 1 call", err, seen, f.Calls(faulty.List))
		}
		f.Inject(faulty.Fault{Ops: faulty.List, Count: 1})
		seen = 0
		err = st.List(ctx, "l/", func(string, int64) error { seen++; return nil })
		if err != nil || seen != 1 || f.Calls(faulty.List) != 3 {
			t.Errorf("List = %v, %d names, %d calls; want success, 1 name, 1 retry", err, seen, f.Calls(faulty.List))
		}
	})
	t.Run("Down", func(t *testing.T) {
		f, st := setup()
		f.SetDown(true)
		err := st.Delete(ctx, "a")
		if !errors.Is(err, syscall.ECONNREFUSED) || f.Calls(faulty.Delete) != 4 {
			t.Errorf("Delete while down = %v after %d calls", err, f.Calls(faulty.Delete))
		}
	})
}

// httpError is an error carrying an HTTP status, like the AWS SDK's.
type httpError int

func (e httpError) Error() string       { return fmt.Sprintf("http status %d", int(e)) }
func (e httpError) HTTPStatusCode() int { return int(e) }

// blackhole accepts TCP connections and never answers, like a server that
// hangs: only cancellation gets a caller out.
func blackhole(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

func TestHangingServer(t *testing.T) {
	addr := blackhole(t)
	ctx := context.Background()
	st, err := remote.Open(ctx, ":s3,provider=Rclone,endpoint='http://"+addr+"':bkt/p", remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A deadline mid-request returns promptly.
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = st.GetRange(dctx, "c/ab/x", 0, 10)
	if el := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || el > 300*time.Millisecond {
		t.Errorf("GetRange under a 100ms deadline = %v after %v", err, el)
	}
	// Close cancels a call in flight, which reports ErrClosed, and
	// returns promptly.
	putErr := make(chan error, 1)
	go func() { putErr <- st.Put(ctx, "c/ab/y", make([]byte, 1<<20)) }()
	time.Sleep(100 * time.Millisecond)
	start = time.Now()
	if err := st.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Close took %v with a call in flight", el)
	}
	select {
	case err := <-putErr:
		if !errors.Is(err, remote.ErrClosed) {
			t.Errorf("the Put in flight = %v; want ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Error("the Put in flight did not return after Close")
	}
}

// TestCloseAbortsMultipart closes a Store in the middle of a multipart
// upload: the Put reports ErrClosed and the server keeps no unfinished
// upload (its parts would otherwise be billed on real S3).
func TestCloseAbortsMultipart(t *testing.T) {
	srv := s3server.Start(t)
	ctx := context.Background()
	st, err := remote.Open(ctx, srv.Remote("bkt/abort", "upload_cutoff=5Mi", "chunk_size=5Mi", "upload_concurrency=1"), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	putErr := make(chan error, 1)
	go func() { putErr <- st.Put(ctx, "huge", make([]byte, 200<<20)) }()
	// Wait until the upload has begun on the server.
	uploads := func() string {
		resp, err := http.Get(srv.Endpoint() + "/bkt?uploads")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return b.String()
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(uploads(), "<UploadId>") {
		if time.Now().After(deadline) {
			t.Fatalf("the multipart upload never showed up: %s", uploads())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-putErr; !errors.Is(err, remote.ErrClosed) {
		t.Fatalf("Put = %v; want ErrClosed (it should still have been running)", err)
	}
	if u := uploads(); strings.Contains(u, "<UploadId>") {
		t.Errorf("an unfinished multipart upload is left on the server: %s", u)
	}
	if _, err := os.Stat(srv.ObjectPath("bkt/abort", "huge")); !os.IsNotExist(err) {
		t.Errorf("the object exists after an aborted upload: %v", err)
	}
}
