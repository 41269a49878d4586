package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A child process (a copy of this test binary, started with childEnv set) runs a list of
// file operations as another uid and reports each one's errno. That is how the tests see
// what a second user of an --allow-other mount may and may not do.

const childEnv = "COFFER_E2E_CHILD"

// childOp is one operation for the child: Op on Path (Arg is a second path or a mode).
type childOp struct {
	Op   string `json:"op"`
	Path string `json:"path"`
	Arg  string `json:"arg,omitempty"`
}

func childMain() int {
	var ops []childOp
	if err := json.NewDecoder(os.Stdin).Decode(&ops); err != nil {
		fmt.Fprintln(os.Stderr, "child: decode ops:", err)
		return 2
	}
	res := make([]string, len(ops))
	for i, op := range ops {
		res[i] = errnoName(runChildOp(op))
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 2
	}
	return 0
}

func runChildOp(op childOp) error {
	switch op.Op {
	case "read":
		b, err := os.ReadFile(op.Path)
		if err == nil && len(b) == 0 {
			return errors.New("read returned no bytes")
		}
		return err
	case "write":
		f, err := os.OpenFile(op.Path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString("x")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case "create":
		f, err := os.OpenFile(op.Path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, err = f.WriteString(op.Arg)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case "stat":
		_, err := os.Lstat(op.Path)
		return err
	case "readdir":
		_, err := os.ReadDir(op.Path)
		return err
	case "mkdir":
		return os.Mkdir(op.Path, 0o755)
	case "unlink":
		return unix.Unlink(op.Path)
	case "rename":
		return unix.Rename(op.Path, op.Arg)
	case "chmod":
		return unix.Chmod(op.Path, 0o777)
	case "chown-root":
		return unix.Lchown(op.Path, 0, 0)
	case "truncate":
		return unix.Truncate(op.Path, 0)
	case "setxattr":
		return unix.Setxattr(op.Path, "user.child", []byte("v"), 0)
	case "utimes-set":
		ts := []unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}
		return unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, ts, 0)
	case "utimes-now":
		return unix.UtimesNanoAt(unix.AT_FDCWD, op.Path, nil, 0)
	case "append":
		f, err := os.OpenFile(op.Path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(op.Arg)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return fmt.Errorf("unknown op %q", op.Op)
}

var (
	childBinOnce sync.Once
	childBin     string
	childBinErr  error
)

// runAsUser runs ops in a child process with the given uid and gid and returns one errno
// name per op ("OK", "EACCES", ...).
func runAsUser(t *testing.T, uid, gid uint32, ops []childOp) []string {
	t.Helper()
	// The test binary lives in a 0700 build folder another uid cannot reach: copy it.
	childBinOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			childBinErr = err
			return
		}
		childBin = filepath.Join(baseDir, "bin", "e2e-child")
		childBinErr = copyFile(self, childBin, 0o755)
	})
	if childBinErr != nil {
		t.Fatalf("prepare child binary: %v", childBinErr)
	}
	in, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(childBin)
	cmd.Dir = "/"
	cmd.Env = []string{childEnv + "=1", "PATH=/usr/bin:/bin"}
	cmd.Stdin = bytes.NewReader(in)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.WaitDelay = time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child as uid %d: %v", uid, err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("child as uid %d hung for 60 s on %s", uid, in)
	}
	if err != nil {
		t.Fatalf("child as uid %d: %v\n%s", uid, err, errb.String())
	}
	var res []string
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res) != len(ops) {
		t.Fatalf("child as uid %d: bad output %q (%v)", uid, out.String(), err)
	}
	return res
}

func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// errnoName is "OK" for nil, the errno's symbolic name ("ENOENT") for a syscall error, and
// the error text otherwise.
func errnoName(err error) string {
	if err == nil {
		return "OK"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
		return fmt.Sprintf("errno%d", int(en))
	}
	return "error: " + err.Error()
}
