package s3server_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"coffer/remote"
	"coffer/test/s3server"
)

func put(t *testing.T, url string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestStartStopRestart(t *testing.T) {
	start := time.Now()
	srv := s3server.Start(t)
	if el := time.Since(start); el > time.Second {
		t.Errorf("Start took %v; want well under a second", el)
	}
	t.Logf("Start took %v", time.Since(start))
	if !strings.HasPrefix(srv.Addr, "127.0.0.1:") {
		t.Errorf("Addr = %q; want loopback", srv.Addr)
	}
	if err := srv.MkdirBucket("bkt"); err != nil {
		t.Fatal(err)
	}
	// Anonymous S3: a plain PUT lands as a file under Dir.
	if resp := put(t, srv.Endpoint()+"/bkt/p/c/ab/obj", []byte("hello")); resp.StatusCode != 200 {
		t.Fatalf("PUT: HTTP %d", resp.StatusCode)
	}
	if b, err := os.ReadFile(srv.ObjectPath("bkt/p", "c/ab/obj")); err != nil || string(b) != "hello" {
		t.Fatalf("object file: %q, %v", b, err)
	}
	// A range GET is honoured.
	req, _ := http.NewRequest(http.MethodGet, srv.Endpoint()+"/bkt/p/c/ab/obj", nil)
	req.Header.Set("Range", "bytes=1-3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(b) != "ell" {
		t.Errorf("range GET: HTTP %d %q", resp.StatusCode, b)
	}

	addr := srv.Addr
	open, err := net.Dial("tcp", addr) // a client mid-request when the server dies
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if _, err := open.Write([]byte("GET /bkt/p/c/ab/obj HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	srv.Stop()
	_ = open.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := open.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a connection open across Stop: read %d bytes, %v; want it cut", n, err)
	}
	if srv.Running() {
		t.Error("Running after Stop")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("a stopped server still accepts connections")
	}
	srv.Stop() // idempotent
	start = time.Now()
	srv.Restart()
	t.Logf("Restart took %v", time.Since(start))
	if srv.Addr != addr || !srv.Running() {
		t.Fatalf("restarted on %s (running %v); want %s", srv.Addr, srv.Running(), addr)
	}
	resp, err = http.Get(srv.Endpoint() + "/bkt/p/c/ab/obj")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" {
		t.Errorf("after restart: HTTP %d %q", resp.StatusCode, b)
	}
}

func TestRemoteHasNoCredentials(t *testing.T) {
	srv := s3server.Start(t)
	r := srv.Remote("bkt/p", "upload_cutoff=5Mi")
	if err := remote.CheckRemote(r); err != nil {
		t.Errorf("CheckRemote(%q) = %v", r, err)
	}
	if !strings.Contains(r, srv.Endpoint()) || !strings.HasSuffix(r, ":bkt/p") || !strings.Contains(r, ",upload_cutoff=5Mi") {
		t.Errorf("Remote = %q", r)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := s3server.Start(t), s3server.Start(t)
	if a.Addr == b.Addr || a.Dir == b.Dir {
		t.Fatalf("two servers share %s / %s", a.Addr, a.Dir)
	}
	a.Stop()
	if err := b.WaitReachable(time.Second); err != nil {
		t.Errorf("stopping one server stopped the other: %v", err)
	}
}
