package content

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/volume"
	"coffer/remote"
)

const crashChildEnv = "COFFER_CONTENT_CRASH_CHILD"

var marker = []byte("COFFER-PLAINTEXT-MARKER;")

// markerData is content full of a recognisable marker, to look for in
// places where plaintext must never be.
func markerData(n int, tag byte) []byte {
	p := bytes.Repeat(marker, n/len(marker)+1)[:n]
	for i := 0; i < n; i += 97 {
		p[i] = tag
	}
	return p
}

// crashWrites is what the child does before it is killed, applied to want.
func crashWrites(want []byte) []byte {
	// overwrite across chunks 0..3, extend to 80000, then cut back to 70000
	copy(want[10000:], markerData(40000, 'b'))
	want = append(want, make([]byte, 80000-len(want))...)
	copy(want[60000:], markerData(20000, 'c'))
	return want[:70000]
}

// crashChild runs in a subprocess: open the volume, write without syncing
// (uploads are held back), say "ready", and wait to be killed.
func crashChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	ino, _ := strconv.ParseUint(os.Getenv("CRASH_INO"), 10, 64)
	v, err := volume.Open(ctx, os.Getenv("CRASH_STATE"), []byte(os.Getenv("CRASH_PASS")),
		volume.OpenOptions{Remote: remote.Options{NoSync: true}})
	if err != nil {
		fail(err)
	}
	s, err := New(v, Options{StagingDir: os.Getenv("CRASH_STAGE"), DirtyDelay: time.Hour})
	if err != nil {
		fail(err)
	}
	f, err := s.Open(ctx, ino)
	if err != nil {
		fail(err)
	}
	if _, err := f.WriteAt(ctx, markerData(40000, 'b'), 10000); err != nil {
		fail(err)
	}
	if _, err := f.WriteAt(ctx, markerData(20000, 'c'), 60000); err != nil {
		fail(err)
	}
	if err := f.truncate(ctx, 70000); err != nil {
		fail(err)
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
}

// TestCrashRecovery kills a process that wrote without syncing, then
// mounts again: the staged data is recovered, readable and uploaded, and
// neither the staging area nor the remote ever held plaintext.
func TestCrashRecovery(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	ino := e.createFile("crash")
	f := e.openFile(ino)
	want := markerData(50000, 'a')
	e.write(f, 0, want)
	e.sync(f)
	e.release(f)
	committed := e.chunks(ino)
	e.close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", "CRASH_STATE="+e.state, "CRASH_STAGE="+e.stage,
		"CRASH_PASS="+string(e.pass), "CRASH_INO="+strconv.FormatUint(ino, 10))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child did not get ready: %q %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// The child staged its writes and died: ciphertext only on disk.
	files := stagingFiles(t, e.stage)
	if len(files) == 0 {
		t.Fatal("the killed process left no staging files")
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, marker) || bytes.Contains(b, marker[:12]) {
			t.Fatalf("staging file %s holds plaintext", p)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Fatalf("staging file %s has mode %v", p, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(e.stage); st.Mode().Perm() != 0o700 {
		t.Fatalf("staging directory has mode %v", st.Mode().Perm())
	}

	e.open() // runs Recover
	want = crashWrites(want)
	f = e.openFile(ino)
	if f.Size() != int64(len(want)) {
		t.Fatalf("recovered size %d, want %d", f.Size(), len(want))
	}
	mustEqual(t, e.read(f, 0, 100000), want, "recovered content")
	if err := e.s.SyncAll(e.ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.s.Stats(); st.StagedBytes != 0 || st.DirtyChunks != 0 {
		t.Fatalf("after SyncAll: %+v", st)
	}
	if left := stagingFiles(t, e.stage); len(left) != 0 {
		t.Fatalf("staging files left after upload: %v", left)
	}
	if ups, _ := e.v.Catalog().ListUploads(e.ctx, "", 0, 0); len(ups) != 0 {
		t.Fatalf("upload queue not empty: %+v", ups)
	}
	after := e.chunks(ino)
	if len(after) != 5 {
		t.Fatalf("want 5 chunks after recovery, got %+v", after)
	}
	for _, c := range after[:4] {
		for _, old := range committed {
			if c.Object == old.Object && c.Index >= 0 && c.Index <= 3 {
				t.Fatalf("chunk %d still has its pre-crash object", c.Index)
			}
		}
	}
	e.release(f)
	e.reopen()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, 100000), want, "content after recovery and remount")
	e.release(f)

	// Nothing on the remote is plaintext either.
	err = filepath.WalkDir(e.remote, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, marker[:12]) {
			t.Errorf("remote object %s holds plaintext", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
