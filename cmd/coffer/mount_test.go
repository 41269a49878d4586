package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/fs/control"
	"coffer/fs/meta"
)

// passVolume makes a passphrase volume on a local-folder remote and returns its state dir,
// a fresh mountpoint and the environment carrying the passphrase.
func passVolume(t *testing.T) (state, mnt string, env []string) {
	t.Helper()
	dir := t.TempDir()
	state, mnt = filepath.Join(dir, "state"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	env = []string{"COFFER_PASSPHRASE=mount test passphrase"}
	if r := coffer(t, env, "init", "--state", state, "--passphrase"); r.code != 0 {
		t.Fatalf("init: %s", r.stderr)
	}
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
		for _, pid := range daemonPIDs(state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return state, mnt, env
}

// daemonPIDs lists coffer daemons serving state.
func daemonPIDs(state string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && args[1] == "mount" && args[2] == "--daemon-child" && strings.Contains(string(b), state) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon %d still running", pid)
}

func mounted(mnt string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(b), " "+mnt+" ")
}

func TestMountLifecycle(t *testing.T) {
	state, mnt, env := passVolume(t)
	r := coffer(t, env, "mount", "--state", state, mnt)
	if r.code != 0 || !strings.Contains(r.stdout, "mounted "+mnt) {
		t.Fatalf("mount (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	pids := daemonPIDs(state)
	if len(pids) != 1 {
		t.Fatalf("daemons: %v", pids)
	}
	// The passphrase is neither in the daemon's environment nor in its argv.
	for _, f := range []string{"environ", "cmdline"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pids[0]), f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "mount test passphrase") || strings.Contains(string(b), "COFFER_PASSPHRASE") {
			t.Errorf("the passphrase is in the daemon's %s", f)
		}
	}
	want := []byte("hello from a legacy program\n")
	if err := os.WriteFile(filepath.Join(mnt, "hello.txt"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	// A second mount of the same state, or of the same mountpoint, is refused.
	mnt2 := filepath.Join(filepath.Dir(mnt), "mnt2")
	os.Mkdir(mnt2, 0o755)
	r = coffer(t, env, "mount", "--state", state, mnt2)
	r.oneErrorLine(t, "in use by another coffer process")
	r = coffer(t, env, "mount", "--state", state, mnt)
	r.oneErrorLine(t, "already mounted")

	r = coffer(t, nil, "status", mnt, "--json")
	if r.code != 0 {
		t.Fatalf("status: %s", r.stderr)
	}
	var ms map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &ms); err != nil || ms["mountpoint"] != mnt || ms["key_mode"] != "wrap" || ms["locked"] != false {
		t.Errorf("status: %v %s", err, r.stdout)
	}

	r = coffer(t, nil, "unmount", mnt)
	if r.code != 0 || !strings.Contains(r.stdout, "keys wiped") {
		t.Fatalf("unmount (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	waitGone(t, pids[0])
	if mounted(mnt) {
		t.Fatal("still mounted after unmount")
	}
	r = coffer(t, nil, "unmount", mnt)
	r.oneErrorLine(t, "no coffer daemon serves")

	// Remount: same content. Then SIGTERM unmounts cleanly too.
	if r = coffer(t, env, "mount", "--state", state, mnt); r.code != 0 {
		t.Fatalf("remount: %s", r.stderr)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "hello.txt"))
	if err != nil || string(got) != string(want) {
		t.Fatalf("after remount: %q, %v", got, err)
	}
	pids = daemonPIDs(state)
	syscall.Kill(pids[0], syscall.SIGTERM)
	waitGone(t, pids[0])
	if mounted(mnt) {
		t.Fatal("still mounted after SIGTERM")
	}
}

func TestMountAfterKill(t *testing.T) {
	state, mnt, env := passVolume(t)
	for i := 0; i < 3; i++ {
		if r := coffer(t, env, "mount", "--state", state, mnt); r.code != 0 {
			t.Fatalf("mount %d: %s", i, r.stderr)
		}
		if i == 0 {
			os.WriteFile(filepath.Join(mnt, "f"), []byte("survives"), 0o644)
			f, _ := os.Open(filepath.Join(mnt, "f"))
			f.Sync()
			f.Close()
		}
		for _, pid := range daemonPIDs(state) {
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(t, pid)
		}
	}
	// The dead mount is cleared and the volume mounts again.
	r := coffer(t, env, "mount", "--state", state, mnt)
	if r.code != 0 {
		t.Fatalf("mount after kill -9: %s", r.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || string(b) != "survives" {
		t.Fatalf("fsynced file after kill -9: %q, %v", b, err)
	}
	if r := coffer(t, nil, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: %s", r.stderr)
	}
}

func TestMountErrors(t *testing.T) {
	state, mnt, _ := passVolume(t)
	r := coffer(t, []string{"COFFER_PASSPHRASE=not the passphrase"}, "mount", "--state", state, mnt)
	r.oneErrorLine(t, "wrong passphrase")
	if mounted(mnt) || len(daemonPIDs(state)) != 0 {
		t.Fatal("a failed mount left a mount or a daemon")
	}
	r = coffer(t, []string{"COFFER_PASSPHRASE=x"}, "mount", "--state", state, filepath.Join(mnt, "missing"))
	r.oneErrorLine(t, "mountpoint")
	r = coffer(t, []string{"COFFER_PASSPHRASE=x"}, "mount", "--state", filepath.Join(mnt, "nostate"), mnt)
	r.oneErrorLine(t, "open volume")
	r = coffer(t, nil, "mount", "--state", state, mnt)
	r.oneErrorLine(t, "COFFER_PASSPHRASE")

	// The remote holds another volume's marker (the catalog or rclone.conf points at the
	// wrong remote): refused, naming both volumes, nothing mounted or written there.
	other, _, env := passVolume(t)
	theirs, err := os.ReadFile(filepath.Join(other, "remote", "coffer-volume"))
	if err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(state, "remote", "coffer-volume")
	if err := os.WriteFile(mine, theirs, 0o600); err != nil {
		t.Fatal(err)
	}
	before := listFiles(t, filepath.Join(state, "remote"))
	r = coffer(t, env, "mount", "--state", state, mnt)
	r.oneErrorLine(t, "holds volume "+volumeID(t, other)+" (its marker \"coffer-volume\"), not this catalog's volume "+volumeID(t, state))
	if mounted(mnt) || len(daemonPIDs(state)) != 0 {
		t.Fatal("a refused mount left a mount or a daemon")
	}
	if got := listFiles(t, filepath.Join(state, "remote")); !slices.Equal(got, before) {
		t.Fatalf("the refused mount wrote to the remote: %v, before %v", got, before)
	}
}

// volumeID reads the id of the volume in state from its catalog.
func volumeID(t *testing.T, state string) string {
	t.Helper()
	c, err := meta.OpenReadOnly(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mv, err := c.Volume(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(mv.ID[:])
}

func TestLockUnlock(t *testing.T) {
	state, mnt, env := passVolume(t)
	if r := coffer(t, env, "mount", "--state", state, mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	p := filepath.Join(mnt, "secret.txt")
	want := "contents that must become unreadable\n"
	if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p) // opened before the lock
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if b, _ := os.ReadFile(p); string(b) != want { // now in the page cache too
		t.Fatalf("read %q", b)
	}

	r := coffer(t, nil, "lock", mnt)
	if r.code != 0 || !strings.Contains(r.stdout, "every key wiped") {
		t.Fatalf("lock (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.ReadFile(p); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("read after lock: %v, want EKEYREVOKED", err)
	}
	buf := make([]byte, 16)
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("read through a descriptor opened before the lock: %v, want EKEYREVOKED", err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("stat while locked: %v", err)
	}
	r = coffer(t, nil, "status", mnt, "--json")
	if !strings.Contains(r.stdout, `"locked": true`) {
		t.Errorf("status while locked: %s", r.stdout)
	}
	r = coffer(t, []string{"COFFER_PASSPHRASE=wrong"}, "unlock", mnt)
	r.oneErrorLine(t, "wrong passphrase")
	if _, err := os.ReadFile(p); !errors.Is(err, syscall.EKEYREVOKED) {
		t.Errorf("read after a failed unlock: %v", err)
	}
	if r = coffer(t, env, "unlock", mnt); r.code != 0 {
		t.Fatalf("unlock: %s", r.stderr)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != want {
		t.Fatalf("read after unlock: %q, %v", b, err)
	}
	f.Close()
	if r = coffer(t, nil, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: %s", r.stderr)
	}
	r = coffer(t, nil, "audit", "--state", state)
	for _, ev := range []string{" lock ", " unlock.failed ", " unlock ", " keys.wipe "} {
		if !strings.Contains(r.stdout, ev) {
			t.Errorf("audit lacks %q:\n%s", ev, r.stdout)
		}
	}
	r = coffer(t, env, "audit", "--state", state, "--verify")
	if r.code != 0 || !strings.Contains(r.stdout, "MACs verified") {
		t.Errorf("audit --verify: %s %s", r.stdout, r.stderr)
	}
}

// TestDeadSocketsSwept: a mount removes control sockets that nothing listens on any more
// (left by a killed daemon), and leaves live ones alone.
func TestDeadSocketsSwept(t *testing.T) {
	os.MkdirAll(control.RuntimeDir(), 0o700)
	dead := filepath.Join(control.RuntimeDir(), "dead-"+strconv.Itoa(os.Getpid())+".sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: dead, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: a killed daemon's socket
	live := filepath.Join(control.RuntimeDir(), "live-"+strconv.Itoa(os.Getpid())+".sock")
	ln2, err := net.ListenUnix("unix", &net.UnixAddr{Name: live, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()

	state, mnt, env := passVolume(t)
	if r := coffer(t, env, "mount", "--state", state, mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	defer coffer(t, nil, "unmount", mnt)
	deadline := time.Now().Add(5 * time.Second)
	for fileExists(dead) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if fileExists(dead) {
		t.Errorf("the dead socket %s is still there after a mount", dead)
	}
	if !fileExists(live) {
		t.Errorf("the mount removed a socket someone listens on")
	}
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }
