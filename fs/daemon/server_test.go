package daemon

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"coffer/fs/control"
)

// TestListenRefusesUnsafeRuntimeDir: the daemon makes no control socket in a runtime
// folder of another uid, one that group or others may write, or a symlink in place of the
// folder (someone else's socket could stand in for it); it creates a missing folder 0700.
func TestListenRefusesUnsafeRuntimeDir(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: makes a folder of uid 65534")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const mnt = "/mnt/coffer-listen-test"
	base := t.TempDir()
	mkdir := func(name string, mode os.FileMode, uid int) string {
		dir := filepath.Join(base, name)
		if err := os.Mkdir(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, uid); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	useDir := func(dir string) {
		old := runtimeDir
		t.Cleanup(func() { runtimeDir = old })
		runtimeDir = func() string { return dir }
	}
	empty := func(dir string) {
		t.Helper()
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("%s holds %v (%v), want nothing", dir, ents, err)
		}
	}

	target := mkdir("target", 0o700, 0)
	if err := os.Symlink(target, filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, dir, holds string }{
		{"other owner", mkdir("nobody", 0o700, 65534), ""},
		{"world-writable", mkdir("world", 0o777, 0), ""},
		{"group-writable", mkdir("group", 0o770, 0), ""},
		{"symlink", filepath.Join(base, "link"), target},
	} {
		t.Run(tc.name, func(t *testing.T) {
			useDir(tc.dir)
			s, err := listen(mnt, log)
			if err == nil {
				s.close()
				t.Fatalf("listen in %s: no error", tc.dir)
			}
			if !errors.Is(err, control.ErrUnsafeRuntimeDir) || !strings.Contains(err.Error(), tc.dir+" (owner uid ") {
				t.Errorf("got %v, want the unsafe-folder refusal naming %s", err, tc.dir)
			}
			if tc.holds == "" {
				tc.holds = tc.dir
			}
			empty(tc.holds)
		})
	}

	t.Run("missing", func(t *testing.T) {
		dir := filepath.Join(base, "new", "coffer")
		useDir(dir)
		s, err := listen(mnt, log)
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		st, err := os.Lstat(dir)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 folder", dir, st.Mode(), err)
		}
		if _, err := os.Stat(filepath.Join(dir, control.SocketName(mnt))); err != nil {
			t.Error(err)
		}
	})
}
