package e2e

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"coffer/test/softhsm"
)

// recorder is a testing.TB that collects errors instead of failing, to test the harness.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Helper() {}

func (r *recorder) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

// TestLeakScanner plants every kind of leak the harness must catch where it must catch it
// (and allowed things where they are allowed), so that a clean scan of a real volume means
// something. It needs no mount.
func TestLeakScanner(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{TB: t}
	v := &Volume{t: rec, names: map[string]bool{"a-tree-name-from-git": true}, Token: &softhsm.Token{PIN: []byte("5eCr3tP1n0")}}
	v.RemoteDir, v.State, v.TmpDir = filepath.Join(dir, "remote"), filepath.Join(dir, "state"), filepath.Join(dir, "tmp")
	v.HomeDir, v.LogDir, v.SealLog = filepath.Join(dir, "home"), filepath.Join(dir, "logs"), filepath.Join(dir, "seal.log")
	for _, d := range []string{v.RemoteDir, v.State + "/staging", v.TmpDir, v.HomeDir, v.LogDir} {
		must(t, "mkdir", os.MkdirAll(d, 0o700))
	}
	name, mk := uniqueName(), marker()
	put := func(p string, chunks ...any) {
		t.Helper()
		f, err := os.Create(p)
		must(t, "create", err)
		defer f.Close()
		for _, c := range chunks {
			switch c := c.(type) {
			case int64: // a hole
				_, err = f.Seek(c, 1)
			case int: // random bytes
				_, err = f.Write(markedDataNoMarkers(c))
			case string:
				_, err = f.WriteString(c)
			}
			must(t, "write", err)
		}
	}
	// Must be found:
	put(filepath.Join(v.RemoteDir, "obj-across-buffers"), 4<<20-5, mk, 1000)        // spans the 4 MiB read buffer
	put(filepath.Join(v.RemoteDir, "obj-"+name), 100)                               // a name in an object's path
	put(filepath.Join(v.RemoteDir, "obj-treename"), 10, "a-tree-name-from-git", 10) // a tree name in an object
	put(filepath.Join(v.State, "catalog.db"), 50, name, 50, mk, 50)                 // the name is fine, the marker is not
	put(filepath.Join(v.State, "staging", "sparse"), int64(1<<30), name, 10)        // behind a 1 GiB hole
	put(filepath.Join(v.State, daemonLogName), "opened "+name+"\n", "pin=5eCr3tP1n0\n")
	put(filepath.Join(v.TmpDir, "t"), hex.EncodeToString([]byte(mk)))
	put(filepath.Join(v.LogDir, "01-mount.err"), "file "+name+" written\n") // names may be logged
	put(v.SealLog, "object aaaa\nbox s1 n1\nobject bbbb\nobject aaaa\nobject lologgedloggedloggedlogged\n")
	for _, id := range []string{"loggedloggedloggedlogged", "unloggedunloggedunlogged"} {
		id = id[:2] + id // 26 characters, as object ids are
		must(t, "mkdir", os.MkdirAll(filepath.Join(v.RemoteDir, "c", id[:2]), 0o700))
		put(filepath.Join(v.RemoteDir, "c", id[:2], id), 100)
	}
	// Clean:
	put(filepath.Join(v.RemoteDir, "clean"), 3<<20)

	v.scanLeaks()
	v.checkSealLog()
	all := rec.text()
	for _, want := range []string{
		"remote object obj-across-buffers leaks a plaintext content marker at offset 4194299",
		"remote object obj-" + name + " (its path) leaks a file name",
		"remote object obj-treename leaks a file name at offset 10",
		"state file catalog.db leaks a plaintext content marker at offset 122",
		"state file staging/sparse leaks a file name at offset 1073741824",
		"state file " + daemonLogName + " leaks a HSM PIN",
		"daemon TMPDIR file t leaks a plaintext content marker at offset 0",
		"line 4 repeats line 1: object aaaa",
		"misses content objects found on the remote (of 2), e.g. ununloggedunloggedunlogged",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the scan missed: %s", want)
		}
	}
	for _, unwanted := range []string{"catalog.db leaks a file name", daemonLogName + " leaks a file name", "01-mount.err", "clean"} {
		if strings.Contains(all, unwanted) {
			t.Errorf("the scan reported an allowed case (%s)", unwanted)
		}
	}
	if t.Failed() {
		t.Logf("scan output:\n%s", all)
	}
}

// waitStopped waits until every thread of pid is stopped (state T): SIGSTOP is delivered
// asynchronously, and a thread that is still running could answer the probe.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		stopped := len(tasks) > 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			// The state follows the ")" that closes the command name.
			if i := strings.LastIndexByte(string(b), ')'); err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("daemon %d did not stop within 5 s of SIGSTOP", pid)
}

// markedDataNoMarkers is random filler that holds no marker.
func markedDataNoMarkers(n int) []byte {
	b := markedData(n)
	for i := range b {
		if b[i] == markerPrefix[0] {
			b[i] = 0
		}
	}
	return b
}

// TestHarnessStuckMount freezes the daemon (SIGSTOP) while the test process waits on the
// mount: the watchdog must fail the test, kill the daemon and free the blocked call, so
// that a stuck mount can never hang the suite.
func TestHarnessStuckMount(t *testing.T) {
	if plainMode {
		return
	}
	v := newVolume(t, localRemote)
	rec := &recorder{TB: t}
	v.t = rec // the failures below are expected: collect them
	d := v.Daemon()
	must(t, "SIGSTOP the daemon", d.proc.Signal(syscall.SIGSTOP))
	waitStopped(t, d.proc.Pid)
	v.arm(2*time.Second, "the stuck-mount self-test")
	start := time.Now()
	_, err := os.Stat(v.P(uniqueName()))
	took := time.Since(start)
	if err == nil {
		t.Fatal("stat on a frozen mount succeeded")
	}
	if took < time.Second || took > 30*time.Second {
		t.Errorf("the blocked stat returned after %v (%v), want about 2 s (the watchdog)", took, err)
	}
	if !strings.Contains(rec.text(), "watchdog:") {
		t.Errorf("the watchdog reported nothing; recorded: %q", rec.text())
	}
	if _, ok := v.waitDaemonExit(d, 10*time.Second); !ok {
		t.Error("the frozen daemon is still alive after the watchdog fired")
	}
	// The watchdog unmounts lazily right after the daemon is gone.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m, _ := isMounted(v.Mnt); !m {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s is still mounted 10 s after the watchdog fired", v.Mnt)
			break
		}
	}
}
