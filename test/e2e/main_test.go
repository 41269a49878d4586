package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	// plainMode makes the harness test itself: "mount" is a plain directory, no FUSE.
	plainMode = os.Getenv("COFFER_E2E_MOUNT") == "plain"
	// keepDirs keeps every volume's folders after the test (COFFER_E2E_KEEP=1).
	keepDirs = os.Getenv("COFFER_E2E_KEEP") == "1"

	// baseDir holds every volume of this process. It is world-traversable (0755), unlike
	// t.TempDir, so that another uid can reach a mount point under --allow-other.
	baseDir string
	// cofferBin is the coffer binary built from ./cmd/coffer for this run.
	cofferBin string
	buildErr  error

	// Every content marker and every distinctive name of this process starts with one of
	// these random prefixes, so the leak scans look for two short strings instead of
	// thousands (a prefix found anywhere it must not be is a leak, whatever follows it).
	markerPrefix string // in file CONTENTS only: never in a name, xattr or symlink target
	namePrefix   string // in file NAMES only (lowercase hex, valid in any name)
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	markerPrefix = "CoFfErMk" + randHex(4)
	namePrefix = "zq" + randHex(4)
	baseDir, err = os.MkdirTemp("", "coffer-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: create base dir:", err)
		return 1
	}
	if !keepDirs {
		defer os.RemoveAll(baseDir)
	} else {
		fmt.Fprintln(os.Stderr, "e2e: keeping", baseDir)
	}
	if err := os.Chmod(baseDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cofferBin = filepath.Join(baseDir, "bin", "coffer")
	if prebuilt := os.Getenv("COFFER_E2E_BIN"); prebuilt != "" {
		buildErr = copyFile(prebuilt, cofferBin, 0o755)
	} else {
		buildErr = buildCoffer(cofferBin)
	}
	// The daemon that `coffer mount` leaves behind is re-parented to us instead of init,
	// so the harness can wait for it and check its exit status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: PR_SET_CHILD_SUBREAPER:", err)
		return 1
	}
	code := m.Run()
	// softhsm.Main would exit before our deferred cleanup ran; remove its store here.
	if conf := os.Getenv("SOFTHSM2_CONF"); conf != "" && strings.Contains(filepath.Base(filepath.Dir(conf)), "coffer-softhsm-") {
		os.RemoveAll(filepath.Dir(conf))
	}
	return code
}

// buildCoffer builds ./cmd/coffer of this module into out.
func buildCoffer(out string) error {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	modRoot, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/coffer")
	cmd.Dir = modRoot
	cmd.Env = append(os.Environ(), "GOEXPERIMENT=runtimesecret") // as `make build`
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/coffer: %v\n%s", err, b)
	}
	return nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

// requireCoffer fails the test unless the binary built and the machine can mount FUSE.
func requireCoffer(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("coffer does not build: %v", buildErr)
	}
	if plainMode {
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end tests mount FUSE filesystems and run as root (uid 0)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse missing (%v): load the fuse module; make test installs fuse3", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatal("fusermount3 not found: run make test (it installs fuse3)")
	}
	mountCmdOnce.Do(func() {
		out, err := exec.Command(cofferBin, "help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "coffer mount") || !strings.Contains(string(out), "coffer unmount") {
			mountCmdErr = fmt.Errorf("coffer has no mount/unmount command yet (coffer help: %v)\n%s", err, out)
		}
	})
	if mountCmdErr != nil {
		t.Fatal(mountCmdErr)
	}
}

var (
	mountCmdOnce sync.Once
	mountCmdErr  error
)

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// marker returns a fresh content marker: write it into file contents only.
func marker() string { return markerPrefix + randHex(8) }

// uniqueName returns a fresh distinctive file name.
func uniqueName() string { return namePrefix + randHex(6) }
