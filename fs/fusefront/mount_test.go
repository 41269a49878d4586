package fusefront

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const deadMountEnv = "COFFER_FS_TEST_DEAD_MOUNT"

func TestMain(m *testing.M) {
	if mp := os.Getenv(deadMountEnv); mp != "" {
		serveUntilKilled(mp)
	}
	os.Exit(m.Run())
}

// serveUntilKilled is the child of TestClearDeadMount: it mounts an empty
// go-fuse file system on mp, says so, and serves until it is killed.
func serveUntilKilled(mp string) {
	srv, err := gofs.Mount(mp, &gofs.Inode{}, &gofs.Options{MountOptions: fuse.MountOptions{DirectMount: true}})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv.Wait()
	os.Exit(0)
}

// mountLine is this mount's line of /proc/self/mountinfo.
func mountLine(t *testing.T, mp string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	line := ""
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == mp {
			line = l
		}
	}
	return line
}

func TestMountOptions(t *testing.T) {
	m := mountFS(t, mountConfig{opt: Options{AllowOther: true, FsName: "coffer:test"}})
	line := mountLine(t, m.dir)
	for _, want := range []string{"default_permissions", "allow_other", "coffer:test", "fuse"} {
		if !strings.Contains(line, want) {
			t.Errorf("mountinfo lacks %q: %s", want, line)
		}
	}
	dev := strings.Fields(line)[2]
	b, err := os.ReadFile("/sys/class/bdi/" + dev + "/read_ahead_kb")
	if err != nil || strings.TrimSpace(string(b)) != "1024" {
		t.Errorf("read_ahead_kb %q (%v)", b, err)
	}
	ro := mountFS(t, mountConfig{opt: Options{ReadOnly: true}})
	line = mountLine(t, ro.dir)
	if !strings.Contains(strings.Fields(line)[5], "ro") || strings.Contains(line, "allow_other") {
		t.Errorf("read-only mount line: %s", line)
	}
	var st syscall.Statfs_t
	syscall.Statfs(ro.dir, &st)
	if st.Flags&0x1 == 0 { // ST_RDONLY
		t.Errorf("statfs flags %#x lack ST_RDONLY", st.Flags)
	}
}

// counting wraps the data path: it counts calls and injects errors.
type counting struct {
	dataPath
	reads, writes atomic.Int64
	maxWrite      atomic.Int64
	flushErr      atomic.Pointer[error]
	syncErr       atomic.Pointer[error]
	writeErr      atomic.Pointer[error]
	truncates     atomic.Int64
}

func (c *counting) Open(ctx context.Context, ino uint64) (dataFile, error) {
	f, err := c.dataPath.Open(ctx, ino)
	if err != nil {
		return nil, err
	}
	return &countingFile{dataFile: f, c: c}, nil
}

func (c *counting) Truncate(ctx context.Context, ino uint64, size int64) error {
	c.truncates.Add(1)
	return c.dataPath.Truncate(ctx, ino, size)
}

// SetMtime forwards to the wrapped store if it has it.
func (c *counting) SetMtime(ino uint64, m int64) {
	if s, ok := c.dataPath.(mtimeSetter); ok {
		s.SetMtime(ino, m)
	}
}

type countingFile struct {
	dataFile
	c *counting
}

func (f *countingFile) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	f.c.reads.Add(1)
	return f.dataFile.ReadAt(ctx, dst, off)
}

func (f *countingFile) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if e := f.c.writeErr.Load(); e != nil {
		return 0, *e
	}
	f.c.writes.Add(1)
	for {
		cur := f.c.maxWrite.Load()
		if int64(len(p)) <= cur || f.c.maxWrite.CompareAndSwap(cur, int64(len(p))) {
			break
		}
	}
	return f.dataFile.WriteAt(ctx, p, off)
}

func (f *countingFile) Flush(ctx context.Context) error {
	if e := f.c.flushErr.Load(); e != nil {
		return *e
	}
	return f.dataFile.Flush(ctx)
}

func (f *countingFile) Sync(ctx context.Context) error {
	if e := f.c.syncErr.Load(); e != nil {
		return *e
	}
	return f.dataFile.Sync(ctx)
}

func TestMaxWriteKeepCacheAndErrors(t *testing.T) {
	var c *counting
	m := mountFS(t, mountConfig{wrap: func(d dataPath) dataPath { c = &counting{dataPath: d}; return c }})
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16) // 4 MiB
	fh, err := os.Create(m.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.Write(data); err != nil { // one write(2)
		t.Fatal(err)
	}
	fh.Close()
	if c.maxWrite.Load() != 1<<20 || c.writes.Load() != 4 {
		t.Errorf("a 4 MiB write(2) arrived as %d WRITEs, largest %d bytes; want 4 of 1 MiB", c.writes.Load(), c.maxWrite.Load())
	}
	// First read reaches the data path; a second open reads from the page
	// cache (FOPEN_KEEP_CACHE).
	if got := m.read("big"); got != string(data) {
		t.Fatal("read back differs")
	}
	before := c.reads.Load()
	if got := m.read("big"); got != string(data) {
		t.Fatal("second read differs")
	}
	if n := c.reads.Load() - before; n != 0 {
		t.Errorf("second read of an unchanged file made %d READs; want 0 (page cache kept)", n)
	}

	// InvalidateCaches (coffer lock) drops the pages of open files: the
	// next read through the same handle reaches the data path again.
	rh, err := os.Open(m.path("big"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	rh.ReadAt(buf, 0)
	before = c.reads.Load()
	rh.ReadAt(buf, 0)
	if c.reads.Load() != before {
		t.Fatal("cached page was read again")
	}
	done := make(chan struct{})
	go func() { m.fs.InvalidateCaches(); close(done) }()
	<-done
	rh.ReadAt(buf, 0)
	if c.reads.Load() == before {
		t.Error("after InvalidateCaches a read was served from the page cache")
	}
	rh.Close()

	// open(O_TRUNC) reaches the data path as a truncate.
	tr := c.truncates.Load()
	fh, err = os.OpenFile(m.path("big"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.truncates.Load() != tr+1 {
		t.Errorf("O_TRUNC made %d truncates", c.truncates.Load()-tr)
	}
	// Errors of the data path reach the caller: close(2) gets Flush's,
	// fsync(2) Sync's, write(2) WriteAt's.
	eio := error(syscall.EIO)
	c.syncErr.Store(&eio)
	wantErrno(t, "fsync with a failing data path", fh.Sync(), syscall.EIO)
	c.syncErr.Store(nil)
	enospc := error(fmt.Errorf("staging full: %w", syscall.ENOSPC))
	c.writeErr.Store(&enospc)
	_, err = fh.Write([]byte("x"))
	wantErrno(t, "write with staging full", err, syscall.ENOSPC)
	c.writeErr.Store(nil)
	c.flushErr.Store(&eio)
	wantErrno(t, "close with a failing flush", fh.Close(), syscall.EIO)
	c.flushErr.Store(nil)
	if !strings.Contains(m.log.String(), "flush failed") {
		t.Errorf("the flush failure was not logged")
	}
}

func TestUnmountBusyAndDeadMount(t *testing.T) {
	m := mountFS(t, mountConfig{})
	m.write("f", "x")
	fh, err := os.Open(m.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	m.fs.mu.Lock()
	srv := m.fs.srv
	m.fs.mu.Unlock()
	if err := m.fs.Unmount(); !errors.Is(err, ErrDetached) {
		t.Fatalf("unmount with an open file: %v", err)
	}
	if line := mountLine(t, m.dir); line != "" {
		t.Errorf("still in the namespace after a lazy unmount: %s", line)
	}
	// The open file keeps working until closed; then the server stops.
	b := make([]byte, 1)
	if _, err := fh.ReadAt(b, 0); err != nil || b[0] != 'x' {
		t.Errorf("read through a lazily unmounted file: %v", err)
	}
	fh.Close()
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server still running after the last file closed")
	}
	if err := m.fs.Unmount(); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}

func TestClearDeadMount(t *testing.T) {
	mp := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mp, 0o755)
	if err := ClearDeadMount(mp); err != nil {
		t.Fatalf("on a plain directory: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), deadMountEnv+"="+mp)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q", line)
	}
	cmd.Process.Kill() // SIGKILL: the mount stays, dead
	cmd.Wait()
	_, err = os.Stat(mp)
	if !errors.Is(err, syscall.ENOTCONN) {
		syscall.Unmount(mp, syscall.MNT_DETACH)
		t.Fatalf("stat of a dead mount: %v, want ENOTCONN", err)
	}
	if err := ClearDeadMount(mp); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mp); err != nil {
		t.Fatalf("after ClearDeadMount: %v", err)
	}
	if line := mountLine(t, mp); line != "" {
		t.Fatalf("still mounted: %s", line)
	}
}

func TestConcurrentClients(t *testing.T) {
	m := mountFS(t, mountConfig{})
	os.Mkdir(m.path("shared"), 0o755)
	const workers, files = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			dir := m.path(fmt.Sprintf("w%d", w))
			if err := os.Mkdir(dir, 0o755); err != nil {
				errs <- err
				return
			}
			for i := 0; i < files; i++ {
				name := fmt.Sprintf("%s/f%d", dir, i)
				body := bytes.Repeat([]byte{byte(w), byte(i)}, 3000+i*100)
				if err := os.WriteFile(name, body, 0o644); err != nil {
					errs <- err
					return
				}
				shared := fmt.Sprintf("%s/w%d-%d", m.path("shared"), w, i)
				if err := os.Rename(name, shared); err != nil {
					errs <- err
					return
				}
				got, err := os.ReadFile(shared)
				if err != nil || !bytes.Equal(got, body) {
					errs <- fmt.Errorf("worker %d file %d: read back differs (%v)", w, i, err)
					return
				}
				if i%3 == 0 {
					if err := os.Remove(shared); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(m.path("shared"))
	if err != nil {
		t.Fatal(err)
	}
	want := workers * (files - (files+2)/3)
	if len(ents) != want {
		t.Fatalf("shared has %d entries, want %d", len(ents), want)
	}
	if problems, err := m.vol.Catalog().Check(context.Background()); err != nil || len(problems) != 0 {
		t.Fatalf("catalog check: %v %v", problems, err)
	}
}
