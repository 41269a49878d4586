package content

import (
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/fs/volume"
)

// dirState is what a refused New must leave as it was: the directory's mode and its files
// with their contents.
func dirState(t *testing.T, dir string) (os.FileMode, map[string]string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		files[e.Name()] = string(b)
	}
	return fi.Mode(), files
}

// newDataPathIn runs New on dir (and closes what it made).
func (e *env) newDataPathIn(dir string) error {
	e.t.Helper()
	opt := e.opt
	opt.StagingDir = dir
	s, err := New(e.v, opt)
	if err != nil {
		return err
	}
	if err := s.Recover(e.ctx); err != nil {
		e.t.Fatalf("recover in %s: %v", dir, err)
	}
	if left, err := s.Close(e.ctx); err != nil || left != 0 {
		e.t.Fatalf("close the data path on %s: %d %v", dir, left, err)
	}
	return nil
}

func mustMarker(t *testing.T, dir, id string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StagingMarker))
	if err != nil || string(b) != id+"\n" {
		t.Fatalf("marker in %s: %q %v, want %q", dir, b, err, id+"\n")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("staging directory %s: %v %v, want mode 0700", dir, fi.Mode(), err)
	}
}

// TestStagingDirAccepted: New takes a directory it may own — a new one (created 0700 with a
// marker), one with its own marker, an empty one and the volume's default directory made by
// an earlier version without a marker (both adopted: 0700, marker) — and Recover never takes
// the marker for a staging file.
func TestStagingDirAccepted(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	id := e.v.IDString()
	mustMarker(t, e.stage, id) // newEnv's staging directory did not exist

	// New (nested): created.
	fresh := filepath.Join(e.dir, "new", "staging")
	if err := e.newDataPathIn(fresh); err != nil {
		t.Fatal(err)
	}
	mustMarker(t, fresh, id)
	// Ours (its marker), a stray staging file in it, mode loosened: reused, the stray file
	// removed by Recover (it is ours), the marker kept.
	stray := filepath.Join(fresh, "0123456789abcdefghjkmnpqrs"+stagingSuffix)
	os.WriteFile(stray, []byte("x"), 0o600)
	os.Chmod(fresh, 0o755)
	if err := e.newDataPathIn(fresh); err != nil {
		t.Fatal(err)
	}
	mustMarker(t, fresh, id)
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("Recover left a stray staging file in its own directory: %v", err)
	}
	// Empty, 0755: adopted.
	empty := filepath.Join(e.dir, "empty")
	os.Mkdir(empty, 0o755)
	if err := e.newDataPathIn(empty); err != nil {
		t.Fatal(err)
	}
	mustMarker(t, empty, id)
	// The volume's default directory, made by an earlier version (no marker, a staging file
	// in it): adopted.
	def := volume.StagingDir(e.v.StateDir)
	os.Mkdir(def, 0o755)
	os.WriteFile(filepath.Join(def, "0123456789abcdefghjkmnpqrs"+stagingSuffix), []byte("x"), 0o600)
	if err := e.newDataPathIn(def); err != nil {
		t.Fatal(err)
	}
	mustMarker(t, def, id)
	// A reopen of the volume's own staging keeps working (marker, staged data).
	e.reopen()
	mustMarker(t, e.stage, id)
}

// TestStagingDirRefused: New refuses a directory that may hold someone else's files —
// files it did not put there, another volume's marker, a marker it cannot read, a plain
// file — and changes nothing in it: mode, files and contents stay (the old code made any
// directory 0700, and Recover deleted its *.stg files).
func TestStagingDirRefused(t *testing.T) {
	e := newEnv(t, "local", smallLayout, Options{DirtyDelay: time.Hour})
	other := hex.EncodeToString(make([]byte, 16))
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"someone's files", map[string]string{"notes.txt": "mine", "0123456789abcdefghjkmnpqrs.stg": "not coffer's"},
			"holds files coffer did not put there"},
		{"a hidden file only", map[string]string{".profile": "x"}, "holds files coffer did not put there"},
		{"another volume's marker", map[string]string{StagingMarker: other + "\n", "0123456789abcdefghjkmnpqrs.stg": "theirs"},
			"belongs to volume " + other + " (its .coffer-staging says so), not to this volume " + e.v.IDString()},
		{"a marker coffer did not write", map[string]string{StagingMarker: "hello\n"}, "does not name a volume"},
	}
	for i, c := range cases {
		dir := filepath.Join(e.dir, "refused"+string(rune('a'+i)))
		os.Mkdir(dir, 0o755)
		for n, b := range c.files {
			os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644)
		}
		mode, files := dirState(t, dir)
		err := e.newDataPathIn(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: New: %v, want an error naming %s and saying %q", c.name, err, dir, c.want)
		}
		mode2, files2 := dirState(t, dir)
		if mode2 != mode {
			t.Errorf("%s: mode changed %v -> %v", c.name, mode, mode2)
		}
		if !maps.Equal(files, files2) {
			t.Errorf("%s: files changed: %v -> %v", c.name, files, files2)
		}
	}
	// A plain file.
	f := filepath.Join(e.dir, "plain")
	os.WriteFile(f, []byte("x"), 0o644)
	if err := e.newDataPathIn(f); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a plain file as staging directory: %v", err)
	}
	// The volume's default directory holding another volume's marker: refused too.
	def := volume.StagingDir(e.v.StateDir)
	os.Mkdir(def, 0o700)
	os.WriteFile(filepath.Join(def, StagingMarker), []byte(other+"\n"), 0o600)
	if err := e.newDataPathIn(def); err == nil || !strings.Contains(err.Error(), "belongs to volume "+other) {
		t.Errorf("default directory with another volume's marker: %v", err)
	}
}
