package volume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/keys/passphrase"
	"coffer/remote"
	"coffer/test/softhsm"
)

func TestMain(m *testing.M) { softhsm.Main(m) }

// cheap keeps Argon2id fast in tests; the cost is stored, so Open uses the same.
var cheap = passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

func passConfig(dir string, pass []byte) Config {
	return Config{StateDir: filepath.Join(dir, "state"), Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPassphrase, Secret: pass, KeyMode: keys.ModeWrap,
		Layout: format.DefaultLayout, KDFCost: cheap}
}

func TestCreateOpenPassphrase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("a passphrase for tests")
	sum, err := Create(ctx, passConfig(dir, pass))
	if err != nil {
		t.Fatal(err)
	}
	if sum.KEK != (keys.KEKRef{Version: 1}) || sum.Kind != meta.ProviderPassphrase {
		t.Fatalf("summary %+v", sum)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "state", ".init-*")); len(leftovers) != 0 {
		t.Errorf("init left %v", leftovers)
	}

	if _, err := Open(ctx, filepath.Join(dir, "state"), []byte("wrong passphrase"), OpenOptions{}); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	v, err := Open(ctx, filepath.Join(dir, "state"), pass, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != sum.ID || v.KEK() != sum.KEK || v.Layout != format.DefaultLayout {
		t.Fatalf("opened %+v, created %+v", v.Summary(), sum)
	}
	// A second owner of the same catalog is refused while the first is open.
	if _, err := Open(ctx, filepath.Join(dir, "state"), pass, OpenOptions{}); err == nil {
		t.Fatal("second Open of the same state succeeded")
	}
	// The keyring works end to end: a file key made now opens after a reopen.
	var file [16]byte
	file[0] = 7
	rec, dek, err := v.Keys().NewFileKey(ctx, v.KeyMode, v.KEK(), file)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(dek.Bytes())
	dek.Wipe()
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v, err = Open(ctx, filepath.Join(dir, "state"), pass, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	got, err := v.Keys().FileKey(ctx, rec, file)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Wipe()
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatal("file key changed across a reopen")
	}
	if _, err := v.Store().Stat(ctx, MarkerName); err != nil {
		t.Fatalf("marker: %v", err)
	}
}

func TestCreateOpenHSM(t *testing.T) {
	ctx := context.Background()
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	cfg := Config{StateDir: filepath.Join(dir, "state"), Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPKCS11, HSMModule: tok.Module, HSMToken: tok.Label, Secret: tok.PIN,
		KeyMode: keys.ModeDerive, Layout: format.Layout{BlockSize: 4096, ChunkSize: 1 << 20}}
	if _, err := Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, cfg.StateDir, tok.PIN, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	if v.KeyMode != keys.ModeDerive || v.Layout.BlockSize != 4096 {
		t.Fatalf("opened %+v", v.Summary())
	}
	if err := SelfTest(ctx, v.Provider(), v.KeyMode, v.KEK(), v.ID); err != nil {
		t.Fatal(err)
	}
}

// failingPut is a real store whose Put of the volume marker fails.
type failingPut struct{ remote.Store }

func (f failingPut) Put(ctx context.Context, name string, data []byte) error {
	return errors.New("injected: remote refused the write")
}

func TestCreateUndoesEverything(t *testing.T) {
	ctx := context.Background()
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	openStore = func(ctx context.Context, s string, o remote.Options) (remote.Store, error) {
		st, err := remote.Open(ctx, s, o)
		return failingPut{st}, err
	}
	defer func() { openStore = remote.Open }()
	cfg := Config{StateDir: filepath.Join(dir, "state"), Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPKCS11, HSMModule: tok.Module, HSMToken: tok.Label, Secret: tok.PIN,
		KeyMode: keys.ModeWrap, Layout: format.DefaultLayout}
	_, err := Create(ctx, cfg)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("injected")) {
		t.Fatalf("Create with a failing remote: %v", err)
	}
	for _, p := range []string{cfg.StateDir, cfg.Remote} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("failed Create left %s", p)
		}
	}
	if labels := tok.ObjectLabels(t); len(labels) != 0 {
		t.Errorf("failed Create left HSM objects %v", labels)
	}
}

func TestCreateValidates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bad := []func(*Config){
		func(c *Config) { c.StateDir = "" },
		func(c *Config) { c.Remote = "" },
		func(c *Config) { c.Secret = nil },
		func(c *Config) { c.KeyMode = "plain" },
		func(c *Config) { c.Layout.BlockSize = 1000 },
		func(c *Config) { c.Provider = "keyfile" },
		func(c *Config) { c.Remote = ":s3,secret_access_key=abc:bkt" },
	}
	for i, mut := range bad {
		cfg := passConfig(dir, []byte("x"))
		mut(&cfg)
		if _, err := Create(ctx, cfg); err == nil {
			t.Errorf("case %d: Create accepted a bad config", i)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Error("refused configs created the state dir")
	}
}

// TestOpenChecksMarker: Open refuses a remote that does not hold this volume's marker
// (another volume's remote, an empty one, a corrupt marker) before anything is written
// there; a read-only open (status) does not look. The old code opened all three.
func TestOpenChecksMarker(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("a passphrase for tests")
	a, err := Create(ctx, passConfig(filepath.Join(dir, "a"), pass))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Create(ctx, passConfig(filepath.Join(dir, "b"), pass))
	if err != nil {
		t.Fatal(err)
	}
	stateA, remA, remB := filepath.Join(dir, "a", "state"), filepath.Join(dir, "a", "remote"), filepath.Join(dir, "b", "remote")
	markerA := filepath.Join(remA, MarkerName)
	good, err := os.ReadFile(markerA)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		setup func()
		want  []string
	}{
		{"another volume's marker", func() {
			b, err := os.ReadFile(filepath.Join(remB, MarkerName))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(markerA, b, 0o600)
		}, []string{"holds volume " + b.IDString(), "not this catalog's volume " + a.IDString()}},
		{"empty remote", func() { os.Remove(markerA) },
			[]string{"holds no coffer volume marker", "volume " + a.IDString()}},
		{"corrupt marker", func() { os.WriteFile(markerA, []byte("{\"coffer_volume\":"), 0o600) },
			[]string{"not valid JSON", "volume " + a.IDString()}},
		{"marker without an id", func() { os.WriteFile(markerA, []byte(`{"coffer_volume":"xyz","format":1}`), 0o600) },
			[]string{"names no valid volume id", "volume " + a.IDString()}},
	}
	for _, c := range cases {
		c.setup()
		before := listAll(t, remA)
		v, err := Open(ctx, stateA, pass, OpenOptions{})
		if err == nil {
			v.Close(ctx)
			t.Errorf("%s: Open succeeded", c.name)
			continue
		}
		if !errors.Is(err, ErrWrongRemote) {
			t.Errorf("%s: %v, want ErrWrongRemote", c.name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
		if after := listAll(t, remA); !slices.Equal(before, after) {
			t.Errorf("%s: the refused Open changed the remote: %v -> %v", c.name, before, after)
		}
		// Read-only (status) still opens: it writes nothing.
		v, err = Open(ctx, stateA, pass, OpenOptions{ReadOnly: true})
		if err != nil {
			t.Errorf("%s: read-only Open: %v", c.name, err)
		} else {
			v.Close(ctx)
		}
		os.WriteFile(markerA, good, 0o600)
	}
	v, err := Open(ctx, stateA, pass, OpenOptions{})
	if err != nil {
		t.Fatalf("Open with the marker restored: %v", err)
	}
	v.Close(ctx)
}

// listAll lists the files under dir, relative, sorted.
func listAll(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			r, _ := filepath.Rel(dir, p)
			out = append(out, r)
		}
		return nil
	})
	slices.Sort(out)
	return out
}
