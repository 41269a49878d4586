package control

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCallFollowsContext: a call whose context is cancelled (^C, SIGTERM) returns at once,
// saying the request was sent, instead of waiting for a daemon that does not answer until
// the call's timeout.
func TestCallFollowsContext(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	setRuntimeDirs(t, dir, "")
	mnt := "/mnt/coffer-call-test"
	ln, err := net.Listen("unix", SocketPath(mnt))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a daemon that reads the request and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { b := make([]byte, 1024); c.Read(b); time.Sleep(time.Minute); c.Close() }()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err = CallSecret(ctx, mnt, "unlock", []byte("secret"), time.Minute)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the call returned %v after its context was cancelled", took)
	}
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err %v, want an interrupted error", err)
	}
}
