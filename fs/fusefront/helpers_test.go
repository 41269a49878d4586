package fusefront

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/passphrase"
)

// cheap keeps Argon2id fast in tests; the cost is stored, so Open uses the same.
var cheap = passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

// testLayout is small so that a few KiB span several blocks and chunks.
var testLayout = format.Layout{BlockSize: 4096, ChunkSize: 64 << 10}

// mounted is one test mount: a fresh passphrase volume on a local-folder
// remote, its data path, and the file system mounted in this process. The
// test's syscalls come from its own goroutines (never mmap).
type mounted struct {
	t    *testing.T
	dir  string // the mount point
	fs   *FS
	vol  *volume.Volume
	data dataPath
	log  *logBuffer
}

type mountConfig struct {
	opt     Options
	perUser bool
	derive  bool // key mode derive instead of wrap
	// wrap, if set, wraps the data path (fault injection).
	wrap func(dataPath) dataPath
	// before runs on the open volume before mounting.
	before func(*volume.Volume)
	// dirtyDelay is the data path's idle time before an upload (0: 50 ms).
	dirtyDelay time.Duration
}

// logBuffer collects log lines (to check that errors are logged).
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, string(p))
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "")
}

func newVolume(t *testing.T, perUser bool, mode ...keys.Mode) (*volume.Volume, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("fs test passphrase")
	cfg := volume.Config{StateDir: filepath.Join(dir, "state"), Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPassphrase, Secret: pass, KeyMode: keys.ModeWrap,
		Layout: testLayout, KDFCost: cheap, PerUserKEKs: perUser}
	if len(mode) > 0 {
		cfg.KeyMode = mode[0]
	}
	if _, err := volume.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	v, err := volume.Open(ctx, cfg.StateDir, pass, volume.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v, dir
}

func mountFS(t *testing.T, mc mountConfig) *mounted {
	t.Helper()
	mode := keys.ModeWrap
	if mc.derive {
		mode = keys.ModeDerive
	}
	v, dir := newVolume(t, mc.perUser, mode)
	if mc.before != nil {
		mc.before(v)
	}
	return mountVolume(t, v, dir, mc)
}

func mountVolume(t *testing.T, v *volume.Volume, dir string, mc mountConfig) *mounted {
	t.Helper()
	m := &mounted{t: t, vol: v, log: &logBuffer{}}
	m.data = newTestData(t, v, dir, mc.dirtyDelay)
	if mc.wrap != nil {
		m.data = mc.wrap(m.data)
	}
	opt := mc.opt
	opt.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(m.log, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	m.fs = newFS(v, m.data, opt)
	m.dir = filepath.Join(dir, "mnt")
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.fs.Mount(m.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.fs.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		closeTestData(t, m.data)
		if err := v.Close(context.Background()); err != nil {
			t.Errorf("close volume: %v", err)
		}
	})
	return m
}

// testWriter sends log lines to t.Log (shown for failing tests only).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (m *mounted) path(rel string) string { return filepath.Join(m.dir, rel) }

func (m *mounted) write(rel, content string) {
	m.t.Helper()
	if err := os.WriteFile(m.path(rel), []byte(content), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mounted) read(rel string) string {
	m.t.Helper()
	b, err := os.ReadFile(m.path(rel))
	if err != nil {
		m.t.Fatal(err)
	}
	return string(b)
}

func (m *mounted) lstat(rel string) *syscall.Stat_t {
	m.t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(m.path(rel), &st); err != nil {
		m.t.Fatal(err)
	}
	return &st
}

// wantErrno checks that err carries errno.
func wantErrno(t *testing.T, what string, err error, errno syscall.Errno) {
	t.Helper()
	if !errors.Is(err, errno) {
		t.Errorf("%s: got %v, want %v (%d)", what, err, errno.Error(), int(errno))
	}
}

// eventually polls cond until it holds or 5 s pass (RELEASE and FORGET reach
// the file system after the syscall that caused them returned).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// asNobody runs a shell command as uid/gid 65534 and returns its error and
// output. It checks first that nobody can reach the mount point, so that a
// refusal inside the mount is the file system's doing.
func (m *mounted) asNobody(script string) (string, error) {
	m.t.Helper()
	for d := m.dir; d != "/"; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			m.t.Fatal(err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// chmod is syscall.Chmod: os.Chmod drops the 07000 bits (Go has its own).
func chmod(t *testing.T, path string, mode uint32) {
	t.Helper()
	if err := syscall.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// fsync opens rel and fsyncs it: its data is on the remote afterwards.
func (m *mounted) fsync(rel string) {
	m.t.Helper()
	fh, err := os.OpenFile(m.path(rel), os.O_RDWR, 0)
	if err != nil {
		m.t.Fatal(err)
	}
	defer fh.Close()
	if err := fh.Sync(); err != nil {
		m.t.Fatal(err)
	}
}
