package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"coffer/crypto/format"
	"coffer/fs/control"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/passphrase"
)

// TestLiveKeyOpsRefusals: the daemon refuses a rotation of a derive-mode volume (it
// re-encrypts: unmounted only), shred --now there, --volume, and anything on a locked mount,
// each with the error the operator sees, before touching anything. (The live operations
// themselves are tested through a real mount in test/e2e/live_keyops_test.go.)
func TestLiveKeyOpsRefusals(t *testing.T) {
	ctx := context.Background()
	open := func(mode keys.Mode) *liveKeyOps {
		dir := t.TempDir()
		secret := []byte("live keyops passphrase")
		state := filepath.Join(dir, "state")
		if _, err := volume.Create(ctx, volume.Config{StateDir: state, Remote: filepath.Join(dir, "remote"),
			Provider: meta.ProviderPassphrase, Secret: secret, KeyMode: mode, Layout: format.DefaultLayout,
			KDFCost: passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}}); err != nil {
			t.Fatal(err)
		}
		v, err := volume.Open(ctx, state, secret, volume.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close(ctx) })
		return newLiveKeyOps(v, nil, nil, "/mnt/x", nil)
	}
	d := open(keys.ModeDerive)
	if _, err := d.rotate(ctx, "uid:0", false, nil); !errors.Is(err, keyops.ErrDeriveLive) {
		t.Fatalf("live rotate of a derive volume: %v, want %v", err, keyops.ErrDeriveLive)
	}
	if _, err := d.shred(ctx, "uid:0", control.Request{Op: "shred", Paths: []string{"/a"}, Now: true}, nil); !errors.Is(err, keyops.ErrDeriveNow) {
		t.Fatalf("live shred --now of a derive volume: %v", err)
	}
	w := open(keys.ModeWrap)
	if _, err := w.shred(ctx, "uid:0", control.Request{Op: "shred", Volume: true}, nil); err == nil {
		t.Fatal("live shred --volume was not refused")
	}
	if err := w.v.Lock(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.rotate(ctx, "uid:0", true, nil); !errors.Is(err, keyops.ErrMountLocked) {
		t.Fatalf("live rotate of a locked mount: %v", err)
	}
	if _, err := w.shred(ctx, "uid:0", control.Request{Op: "shred", Paths: []string{"/a"}}, nil); !errors.Is(err, keyops.ErrMountLocked) {
		t.Fatalf("live shred on a locked mount: %v", err)
	}
	if got, _ := w.v.Catalog().ListKEKs(ctx); len(got) != 1 {
		t.Fatalf("a refused operation changed the KEKs: %v", got)
	}
}

// noLive stands in for the mounted file system (nothing is open on it).
type noLive struct{}

func (noLive) RevokeFiles(context.Context, []uint64) error { return nil }
func (noLive) FilesRemoved([]uint64)                       {}
func (noLive) ReloadKeyRecords(context.Context) error      { return nil }
func (noLive) KEKsChanged()                                {}

// TestLiveShredReplyFinality: the reply a live shred sends carries what coffer shred needs to
// say what is final (keyops.Finality, under "finality"): on a passphrase volume, that an
// older catalog copy plus the passphrase still opens the file even after --now. (The CLI side
// and a real mount: cmd/coffer TestShredPassphraseOldCopy.)
func TestLiveShredReplyFinality(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	secret := []byte("live keyops passphrase")
	state := filepath.Join(dir, "state")
	if _, err := volume.Create(ctx, volume.Config{StateDir: state, Remote: filepath.Join(dir, "remote"),
		Provider: meta.ProviderPassphrase, Secret: secret, KeyMode: keys.ModeWrap, Layout: format.DefaultLayout,
		KDFCost: passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}}); err != nil {
		t.Fatal(err)
	}
	v, err := volume.Open(ctx, state, secret, volume.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	var fid [16]byte
	fid[0] = 1
	rec, dek, err := v.Keys().NewFileKey(ctx, v.KeyMode, v.KEK(), fid)
	if err != nil {
		t.Fatal(err)
	}
	dek.Wipe()
	kr := volume.CatalogRecord(rec)
	if _, err := v.Catalog().CreateFile(ctx, meta.RootIno, []byte("a"), meta.Inode{Mode: 0o100644, Ctime: 1, FileID: fid}, &kr); err != nil {
		t.Fatal(err)
	}
	l := newLiveKeyOps(v, noLive{}, nil, "/mnt/x", nil)
	res, err := l.shred(ctx, "uid:0", control.Request{Op: "shred", Paths: []string{"/mnt/x/a"}, Now: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	var got struct {
		Files    int `json:"files"`
		Now      *keyops.RotateResult
		Finality keyops.Finality `json:"finality"`
	}
	if err := json.Unmarshal(b, &got); err != nil || got.Files != 1 || got.Now == nil || !got.Finality.Passphrase || !got.Now.Passphrase {
		t.Fatalf("live shred reply %s: %+v %v", b, got, err)
	}
}

func TestVolumePath(t *testing.T) {
	for in, want := range map[string]string{
		"/mnt/x/docs/a.txt": "/docs/a.txt",
		"/mnt/x//docs/./a":  "/docs/a",
		"/mnt/x":            "/",
		"/mnt/xy/a":         "/mnt/xy/a",
		"/docs/a.txt":       "/docs/a.txt",
		"docs/a.txt":        "docs/a.txt",
	} {
		if got := volumePath("/mnt/x", in); got != want {
			t.Errorf("volumePath(%q) = %q, want %q", in, got, want)
		}
	}
}
