package content

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
	"coffer/remote"
	"coffer/remote/faulty"
	"coffer/test/s3server"
	"coffer/test/softhsm"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild() // the process the crash test kills
		return
	}
	softhsm.Main(m)
}

// cheap keeps Argon2id fast in tests.
var cheap = passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

// smallLayout has 4 blocks per chunk, so small files span many chunks.
var smallLayout = format.Layout{BlockSize: 4096, ChunkSize: 16 << 10}

// countingStore counts what the data path asks of the remote.
type countingStore struct {
	remote.Store
	mu       sync.Mutex
	gets     int
	getBytes int64
	puts     []string
	deletes  []string
}

func (c *countingStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	b, err := c.Store.GetRange(ctx, name, off, n)
	c.mu.Lock()
	c.gets++
	c.getBytes += int64(len(b))
	c.mu.Unlock()
	return b, err
}

func (c *countingStore) Put(ctx context.Context, name string, data []byte) error {
	err := c.Store.Put(ctx, name, data)
	if err == nil {
		c.mu.Lock()
		c.puts = append(c.puts, name)
		c.mu.Unlock()
	}
	return err
}

func (c *countingStore) Delete(ctx context.Context, name string) error {
	err := c.Store.Delete(ctx, name)
	if err == nil {
		c.mu.Lock()
		c.deletes = append(c.deletes, name)
		c.mu.Unlock()
	}
	return err
}

func (c *countingStore) reset() {
	c.mu.Lock()
	c.gets, c.getBytes, c.puts, c.deletes = 0, 0, nil, nil
	c.mu.Unlock()
}

func (c *countingStore) snapshot() (gets int, getBytes int64, puts, deletes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets, c.getBytes, append([]string(nil), c.puts...), append([]string(nil), c.deletes...)
}

// logBuf collects log output for assertions (and echoes it with -v).
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuf) reset() {
	l.mu.Lock()
	l.buf.Reset()
	l.mu.Unlock()
}

// env is a real volume (passphrase provider, real SQLite catalog) on a
// local-folder or S3 remote, with the data path on top.
type env struct {
	t      testing.TB
	ctx    context.Context
	dir    string
	state  string
	stage  string
	kind   string // "local" or "s3"
	remote string
	srv    *s3server.Server
	pass   []byte
	opt    Options
	ropt   remote.Options
	logs   *logBuf
	log    *slog.Logger

	v     *volume.Volume
	s     *DataPath
	fault *faulty.Store
	count *countingStore
}

func newEnv(t testing.TB, kind string, layout format.Layout, opt Options) *env {
	t.Helper()
	return newEnvConfig(t, kind, layout, opt, nil)
}

// newEnvConfig is newEnv with a hook that adjusts the volume's config
// (another key provider or key mode); cfg.Secret is what opens it.
func newEnvConfig(t testing.TB, kind string, layout format.Layout, opt Options, mut func(*volume.Config)) *env {
	t.Helper()
	e := &env{t: t, ctx: context.Background(), dir: t.TempDir(), kind: kind, pass: []byte("content test passphrase"),
		logs: &logBuf{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e.state = filepath.Join(e.dir, "state")
	e.stage = filepath.Join(e.dir, "staging")
	switch kind {
	case "local":
		e.remote = filepath.Join(e.dir, "remote")
	case "s3":
		e.srv = s3server.Start(t)
		e.remote = e.srv.Remote("bkt/vol")
	default:
		t.Fatalf("unknown remote kind %q", kind)
	}
	cfg := volume.Config{StateDir: e.state, Remote: e.remote, Provider: meta.ProviderPassphrase,
		Secret: e.pass, KeyMode: keys.ModeWrap, Layout: layout, KDFCost: cheap, Logger: e.log}
	if mut != nil {
		mut(&cfg)
		e.pass = cfg.Secret
	}
	_, err := volume.Create(e.ctx, cfg)
	if err != nil {
		t.Fatalf("create volume: %v", err)
	}
	e.ropt = remote.Options{Retries: 1, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, NoSync: true}
	opt.StagingDir = e.stage
	opt.Logger = e.log
	e.opt = opt
	e.open()
	t.Cleanup(func() {
		if e.s != nil {
			e.crash()
		}
	})
	return e
}

// open opens the volume and the data path and runs Recover.
func (e *env) open() {
	e.t.Helper()
	v, err := volume.Open(e.ctx, e.state, e.pass, volume.OpenOptions{Logger: e.log, Remote: e.ropt,
		WrapStore: func(s remote.Store) (remote.Store, error) {
			e.fault = faulty.New(s, 1)
			e.count = &countingStore{Store: e.fault}
			return e.count, nil
		}})
	if err != nil {
		e.t.Fatalf("open volume: %v", err)
	}
	e.v = v
	s, err := New(v, e.opt)
	if err != nil {
		e.t.Fatalf("new data path: %v", err)
	}
	e.s = s
	if err := s.Recover(e.ctx); err != nil {
		e.t.Fatalf("recover: %v", err)
	}
}

// close is a clean unmount: Close (SyncAll), then the volume.
func (e *env) close() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	left, err := e.s.Close(ctx)
	if err != nil || left != 0 {
		e.t.Fatalf("close data path: %d bytes left staged, err %v", left, err)
	}
	if err := e.v.Close(e.ctx); err != nil {
		e.t.Fatalf("close volume: %v", err)
	}
	e.s, e.v = nil, nil
}

// crash abandons the data path as a killed process would: no sync, no
// flush of sizes, staging files left as they are.
func (e *env) crash() {
	e.s.mu.Lock()
	e.s.closed = true
	e.s.mu.Unlock()
	e.s.shutdown()
	_ = e.v.Close(e.ctx)
	e.s, e.v = nil, nil
}

func (e *env) reopen() {
	e.close()
	e.open()
}

// createFile makes a regular file with a fresh key record in the root.
func (e *env) createFile(name string) uint64 {
	e.t.Helper()
	var fid [16]byte
	rand.Read(fid[:])
	rec, dek, err := e.v.Keys().NewFileKey(e.ctx, e.v.KeyMode, e.v.KEK(), fid)
	if err != nil {
		e.t.Fatalf("new file key: %v", err)
	}
	dek.Wipe()
	kr := meta.KeyRecord{Mode: string(rec.Mode), Chain: rec.KEK.Chain, Version: rec.KEK.Version,
		IV: rec.IV, Wrapped: rec.Wrapped, Salt: rec.Salt}
	in, err := e.v.Catalog().CreateFile(e.ctx, meta.RootIno, []byte(name),
		meta.Inode{Mode: 0o644, Ctime: time.Now().UnixNano(), FileID: fid}, &kr)
	if err != nil {
		e.t.Fatalf("create file: %v", err)
	}
	return in.Ino
}

func (e *env) openFile(ino uint64) *File {
	e.t.Helper()
	f, err := e.s.Open(e.ctx, ino)
	if err != nil {
		e.t.Fatalf("open inode %d: %v", ino, err)
	}
	return f
}

func (e *env) write(f *File, off int64, p []byte) {
	e.t.Helper()
	n, err := f.WriteAt(e.ctx, p, off)
	if err != nil || n != len(p) {
		e.t.Fatalf("write inode %d at %d (+%d): n=%d err=%v", f.ino, off, len(p), n, err)
	}
}

func (e *env) read(f *File, off int64, n int) []byte {
	e.t.Helper()
	buf := make([]byte, n)
	got, err := f.ReadAt(e.ctx, buf, off)
	if err != nil {
		e.t.Fatalf("read inode %d at %d (+%d): %v", f.ino, off, n, err)
	}
	return buf[:got]
}

func (e *env) sync(f *File) {
	e.t.Helper()
	if err := f.Sync(e.ctx); err != nil {
		e.t.Fatalf("fsync inode %d: %v", f.ino, err)
	}
}

func (e *env) release(f *File) {
	e.t.Helper()
	if err := f.Flush(e.ctx); err != nil {
		e.t.Fatalf("flush inode %d: %v", f.ino, err)
	}
	if err := f.Release(e.ctx); err != nil {
		e.t.Fatalf("release inode %d: %v", f.ino, err)
	}
}

func (e *env) chunks(ino uint64) []meta.Chunk {
	e.t.Helper()
	cs, err := e.v.Catalog().Chunks(e.ctx, ino, 0, -1)
	if err != nil {
		e.t.Fatal(err)
	}
	return cs
}

// objectPath is where an object lives on disk, for tampering.
func (e *env) objectPath(id [16]byte) string {
	name := format.ObjectName(format.ID(id))
	if e.kind == "s3" {
		return e.srv.ObjectPath("bkt/vol", name)
	}
	return filepath.Join(e.remote, filepath.FromSlash(name))
}

func (e *env) settle() {
	if e.srv != nil {
		e.srv.Settle()
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wantErrno(t testing.TB, err error, want syscall.Errno, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %v", what, want)
	}
	var got syscall.Errno
	if !errors.As(err, &got) || got != want {
		t.Fatalf("%s: error %v (errno %v), want %v", what, err, Errno(err), want)
	}
}

// pattern is deterministic content that differs per (seed, offset).
func pattern(seed byte, off int64, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		x := uint64(off+int64(i))*0x9e3779b97f4a7c15 + uint64(seed)*0x632be59bd9b4e019
		p[i] = byte(x>>56) | 1 // never 0, so holes are distinguishable
	}
	return p
}

func mustEqual(t testing.TB, got, want []byte, what string) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: content differs at byte %d (got %d bytes, want %d)", what, i, len(got), len(want))
	}
}

func stagingFiles(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.HasSuffix(e.Name(), stagingSuffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

var _ = fmt.Sprintf
