package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests here run processes as uid/gid 65534 (root only): the test binary runs itself
// again as that user, with helperEnv naming the part it plays (TestHelperProcess).

const (
	nobody    = 65534
	helperEnv = "COFFER_CONTROL_TEST_HELPER"
)

// scratch makes a folder every uid can traverse (the test's own temp folders are 0700)
// holding a copy of the test binary that uid 65534 can run.
func scratch(t *testing.T) (base, bin string) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: runs processes as uid 65534")
	}
	base, err := os.MkdirTemp("", "coffer-control-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(base, "control.test")
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	return base, bin
}

// mkdir makes dir with exactly mode, owned by uid.
func mkdir(t *testing.T, dir string, mode os.FileMode, uid int) string {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asNobody prepares the test binary bin to play role as uid/gid 65534.
func asNobody(bin, role string, env ...string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Dir = "/"
	cmd.Env = append([]string{helperEnv + "=" + role, "PATH=/usr/bin:/bin", "TMPDIR=" + filepath.Dir(bin)}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	return cmd
}

// setRuntimeDirs points RuntimeDir (own) and root's folder (root, if not "") elsewhere
// for the rest of the test.
func setRuntimeDirs(t *testing.T, own, root string) {
	oldOwn, oldRoot := testRuntimeDir, rootRuntimeDir
	t.Cleanup(func() { testRuntimeDir, rootRuntimeDir = oldOwn, oldRoot })
	testRuntimeDir = own
	if root != "" {
		rootRuntimeDir = root
	}
}

// TestHelperProcess is the part a test's child process plays; on its own it does nothing.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		t.Skip("run by other tests, as uid 65534")
	case "fake-daemon":
		fakeDaemon(t, os.Getenv("HELPER_DIR"))
	case "client":
		nobodyClient(t, os.Getenv("HELPER_DIR"), os.Getenv("HELPER_ROOT"), strings.Split(os.Getenv("HELPER_MNTS"), "\n"))
	default:
		t.Fatalf("unknown helper %q", os.Getenv(helperEnv))
	}
}

// fakeDaemon is another user's impostor: it listens on dir/fake.sock, records every byte
// it is sent and answers every request with success; it prints "served" for each, until
// its stdin closes. It then writes what it received to dir/received.
func fakeDaemon(t *testing.T, dir string) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "fake.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	var (
		mu  sync.Mutex
		got []byte
		wg  sync.WaitGroup
	)
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(2 * time.Second)) // rotate does not half-close
				b, _ := io.ReadAll(c)
				mu.Lock()
				got = append(got, b...)
				fmt.Println("served")
				mu.Unlock()
				// "locked", "unlocked", a status: whatever the client wants to hear.
				c.Write([]byte(`{"ok":true,"took":"1ms","status":{"pid":1,"provider":"passphrase"}}` + "\n"))
			}()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	ln.Close()
	<-accepted
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if err := os.WriteFile(filepath.Join(dir, "received"), got, 0o644); err != nil {
		t.Fatal(err)
	}
}

// nobodyClient is a non-root user's coffer command, its runtime folder dir/rt, root's
// folder root. For each mountpoint it asks for the status with dir/rt missing, then (dir/rt
// made, holding a socket nothing listens on for each mountpoint) for a lock. It writes the
// errors, per mountpoint, to dir/out as JSON.
func nobodyClient(t *testing.T, dir, root string, mnts []string) {
	rt := filepath.Join(dir, "rt")
	testRuntimeDir, rootRuntimeDir = rt, root
	ctx := context.Background()
	errs := map[string][]string{}
	errText := func(err error) string {
		if err == nil {
			return "<nil>"
		}
		return err.Error()
	}
	for _, mnt := range mnts {
		_, err := Call(ctx, mnt, "status", 5*time.Second)
		errs[mnt] = append(errs[mnt], errText(err))
	}
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, mnt := range mnts {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(rt, SocketName(mnt)), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close() // a killed daemon's socket: the connection is refused
		_, err = Call(ctx, mnt, "lock", 5*time.Second)
		errs[mnt] = append(errs[mnt], errText(err))
	}
	b, _ := json.Marshal(errs)
	if err := os.WriteFile(filepath.Join(dir, "out"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestClientRefusesOtherUsersListener: a listener of another uid (65534) on the socket
// path, in a runtime folder that passes every check (the listener was renamed into it), gets
// no request line and no secret: status, lock, unlock and rotate fail before sending
// anything, naming the uid found.
func TestClientRefusesOtherUsersListener(t *testing.T) {
	base, bin := scratch(t)
	fakeDir := mkdir(t, filepath.Join(base, "nobody"), 0o700, nobody)
	rt := mkdir(t, filepath.Join(base, "rt"), 0o700, os.Getuid())

	cmd := asNobody(bin, "fake-daemon", "HELPER_DIR="+fakeDir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("fake daemon: %q %v\n%s", lines.Text(), lines.Err(), stderr.String())
	}
	served := make(chan struct{}, 10)
	go func() {
		for lines.Scan() {
			if lines.Text() == "served" {
				served <- struct{}{}
			}
		}
	}()

	const mnt = "/mnt/coffer-impostor-test"
	// A bound listener keeps listening when its path is renamed.
	if err := os.Rename(filepath.Join(fakeDir, "fake.sock"), filepath.Join(rt, SocketName(mnt))); err != nil {
		t.Fatal(err)
	}
	setRuntimeDirs(t, rt, "")
	if err := CheckRuntimeDir(rt); err != nil {
		t.Fatalf("the runtime folder must pass (only the peer check can catch this): %v", err)
	}

	ctx := context.Background()
	secret := []byte("correct horse battery staple")
	calls := map[string]func() error{
		"status": func() error { _, _, err := GetStatus(ctx, mnt, 5*time.Second); return err },
		"lock":   func() error { _, err := Call(ctx, mnt, "lock", 5*time.Second); return err },
		"unlock": func() error { _, err := CallSecret(ctx, mnt, "unlock", secret, 5*time.Second); return err },
		"rotate": func() error { _, err := Stream(ctx, mnt, Request{Op: "rotate"}, nil); return err },
	}
	for _, op := range []string{"status", "lock", "unlock", "rotate"} {
		err := calls[op]()
		if !errors.Is(err, ErrPeer) || !strings.Contains(err.Error(), "uid 65534") || !strings.Contains(err.Error(), "nothing was sent") {
			t.Errorf("%s answered by uid 65534: got %v, want the peer-uid refusal", op, err)
		}
	}

	for range calls { // the client reached the listener four times (to check it)
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("the fake daemon was not reached four times")
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fake daemon: %v\n%s", err, stderr.String())
	}
	got, err := os.ReadFile(filepath.Join(fakeDir, "received"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > 0 {
		t.Errorf("the listener of uid 65534 received %d bytes (passphrase among them: %v): %q",
			len(got), bytes.Contains(got, secret), got)
	}
}

// TestClientRefusesUnsafeRuntimeDir: a runtime folder of another uid, one that group or
// others may write, or a symlink in its place is refused before dialing (a daemon
// listening in it is never reached), with an error naming the folder, its owner and mode.
func TestClientRefusesUnsafeRuntimeDir(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: makes a folder of uid 65534")
	}
	base := t.TempDir()
	good := mkdir(t, filepath.Join(base, "good"), 0o700, 0)
	cases := []struct {
		name, dir, sockDir string
	}{
		{"other owner", mkdir(t, filepath.Join(base, "nobody"), 0o700, nobody), ""},
		{"world-writable", mkdir(t, filepath.Join(base, "world"), 0o777, 0), ""},
		{"sticky world-writable", mkdir(t, filepath.Join(base, "sticky"), 0o777|os.ModeSticky, 0), ""},
		{"group-writable", mkdir(t, filepath.Join(base, "group"), 0o770, 0), ""},
		{"symlink", filepath.Join(base, "link"), good},
	}
	if err := os.Symlink(good, filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	// os.Chmod in mkdir maps ModeSticky; check it took.
	if st, _ := os.Stat(cases[2].dir); st.Mode()&os.ModeSticky == 0 {
		t.Fatal("sticky bit not set")
	}
	const mnt = "/mnt/coffer-unsafe-dir-test"
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sockDir := tc.dir
			if tc.sockDir != "" {
				sockDir = tc.sockDir
			}
			// A live daemon of root in the folder: only the folder check stops the call.
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(sockDir, SocketName(mnt)), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			accepted := 0
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					accepted++
					io.Copy(io.Discard, c)
					c.Write([]byte(`{"ok":true,"status":{}}` + "\n"))
					c.Close()
				}
			}()
			setRuntimeDirs(t, tc.dir, "")
			_, err = Call(context.Background(), mnt, "status", 5*time.Second)
			ln.Close()
			<-done
			if !errors.Is(err, ErrUnsafeRuntimeDir) || !strings.Contains(err.Error(), tc.dir+" (owner uid ") ||
				!strings.Contains(err.Error(), "mode ") || !strings.Contains(err.Error(), "remove it") && !strings.Contains(err.Error(), "chmod 700") {
				t.Errorf("got %v, want the unsafe-folder refusal naming %s, its owner and mode, and what to do", err, tc.dir)
			}
			if accepted != 0 {
				t.Errorf("the client reached the socket in %s", tc.dir)
			}
		})
	}
	// The good folder passes.
	if err := CheckRuntimeDir(good); err != nil {
		t.Errorf("a 0700 folder of our own: %v", err)
	}
}

// TestNonRootClientToldRootDaemon: a non-root user's command on a mount served by root's
// daemon says permission denied (run it as root), not that no daemon serves it, whether its
// own runtime folder is missing or holds a dead socket of that mountpoint.
func TestNonRootClientToldRootDaemon(t *testing.T) {
	base, bin := scratch(t)
	// Root's runtime folder (traversable here, so the socket can be looked up).
	root := mkdir(t, filepath.Join(base, "root"), 0o711, 0)
	const mnt, unserved = "/mnt/coffer-root-daemon-test", "/mnt/coffer-unserved-test"
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(root, SocketName(mnt)), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(filepath.Join(root, SocketName(mnt)), 0o600)

	errs := runNobodyClient(t, bin, filepath.Join(base, "nobody"), root, mnt, unserved)
	want := "permission denied: the coffer daemon of " + mnt + " runs as root; run this command as root"
	for i, what := range []string{"runtime folder missing", "dead socket"} {
		if got := errs[mnt][i]; got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
		if got := errs[unserved][i]; got != "no coffer daemon serves "+unserved {
			t.Errorf("%s, mountpoint served by nobody: got %q", what, got)
		}
	}
}

// TestNonRootClientToldOtherUsersMount: with root's runtime folder closed to it (0700, as
// /run/coffer is), a non-root user learns who serves a mountpoint from the coffer FUSE mount
// on it (its user_id): root, or another uid.
func TestNonRootClientToldOtherUsersMount(t *testing.T) {
	base, bin := scratch(t)
	root := mkdir(t, filepath.Join(base, "root"), 0o700, 0)
	mnts := map[int]string{0: filepath.Join(base, "mnt-root"), 4242: filepath.Join(base, "mnt 4242")}
	for uid, mnt := range mnts {
		mkdir(t, mnt, 0o755, 0)
		// One FUSE connection per mount, which nothing ever answers: nothing may touch
		// the mount. Closing the fd (after the detach) aborts it, so that removing the
		// folder cannot hang.
		fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Skipf("no FUSE: %v", err)
		}
		t.Cleanup(func() { syscall.Close(fd) })
		opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=0", fd, uid)
		if err := syscall.Mount("coffer-test", mnt, "fuse.coffer", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
			t.Skipf("cannot mount FUSE: %v", err)
		}
		t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
		// Root's socket for it, in root's folder closed to others.
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(root, SocketName(mnt)), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
	}
	errs := runNobodyClient(t, bin, filepath.Join(base, "nobody"), root, mnts[0], mnts[4242])
	for i, what := range []string{"runtime folder missing", "dead socket"} {
		want := "permission denied: the coffer daemon of " + mnts[0] + " runs as root; run this command as root"
		if got := errs[mnts[0]][i]; got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
		want = "permission denied: the coffer daemon of " + mnts[4242] + " runs as uid 4242; run this command as uid 4242"
		if got := errs[mnts[4242]][i]; got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	}
}

// runNobodyClient runs nobodyClient as uid 65534 in dir (made here) and returns its errors.
func runNobodyClient(t *testing.T, bin, dir, root string, mnts ...string) map[string][]string {
	t.Helper()
	mkdir(t, dir, 0o700, nobody)
	cmd := asNobody(bin, "client", "HELPER_DIR="+dir, "HELPER_ROOT="+root, "HELPER_MNTS="+strings.Join(mnts, "\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("client as uid 65534: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	var errs map[string][]string
	if err := json.Unmarshal(b, &errs); err != nil {
		t.Fatal(err)
	}
	return errs
}

func TestFuseMountOwner(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(`22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
45 27 0:40 / /mnt/a rw,nosuid,nodev,relatime - fuse.coffer coffer rw,user_id=0,group_id=0,default_permissions
46 27 0:41 / /mnt/with\040space rw,nosuid,nodev - fuse.coffer coffer rw,user_id=1000,group_id=1000
47 27 0:42 / /mnt/sshfs rw - fuse.sshfs host: rw,user_id=1000,group_id=1000
48 27 0:43 / /mnt/over rw - fuse.coffer coffer rw,user_id=7,group_id=7
49 48 0:44 / /mnt/over rw - tmpfs tmpfs rw
`), 0o644)
	for mp, want := range map[string]int{"/mnt/a": 0, "/mnt/with space": 1000, "/mnt/sshfs": -1, "/mnt/over": -1, "/mnt/none": -1, "/": -1} {
		uid, ok := fuseMountOwner(mi, mp)
		if ok != (want >= 0) || ok && uid != want {
			t.Errorf("%s: got %d %v, want %d", mp, uid, ok, want)
		}
	}
}
