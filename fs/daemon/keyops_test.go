package daemon

import (
	"context"
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
		return newLiveKeyOps(v, nil, "/mnt/x", nil)
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
