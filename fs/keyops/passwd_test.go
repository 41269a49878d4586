package keyops

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// TestChangePassphrase: a wrong old passphrase changes nothing (catalog bytes identical); the
// right one re-seals the KEKs so that only the new passphrase opens the volume, with every
// file key unchanged, and the change is audited and MACed.
func TestChangePassphrase(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true})
	inos := e.addFiles("f", 5, 0)
	if _, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet}); err != nil { // two live versions
		t.Fatal(err)
	}
	d := e.dekOf(inos[2])
	e.close()
	cat, err := meta.Open(ctx, e.state)
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.PurgeDeleted(ctx); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(e.state, meta.FileName))
	newPass := []byte("a new passphrase, longer")
	err = ChangePassphrase(ctx, cat, []byte("wrong passphrase"), newPass, "test")
	if !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("wrong old passphrase: %v", err)
	}
	if err := ChangePassphrase(ctx, cat, e.secret, e.secret, "test"); err == nil || !strings.Contains(err.Error(), "same") {
		t.Fatalf("same passphrase: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(e.state, meta.FileName))
	if !bytes.Equal(before, after) {
		t.Fatal("a refused passphrase change altered catalog.db")
	}
	if wal, err := os.ReadFile(filepath.Join(e.state, meta.FileName+"-wal")); err == nil && len(wal) > 0 {
		t.Fatalf("a refused passphrase change wrote %d bytes to the WAL", len(wal))
	}
	if err := ChangePassphrase(ctx, cat, e.secret, newPass, "test"); err != nil {
		t.Fatal(err)
	}
	cat.Close()
	if _, err := volume.Open(ctx, e.state, e.secret, volume.OpenOptions{Logger: quiet}); !errors.Is(err, keys.ErrWrongPassphrase) {
		t.Fatalf("old passphrase after the change: %v", err)
	}
	e.secret = newPass
	e.open()
	mustEqualBytes(t, e.dekOf(inos[2]), d, "DEK after passwd")
	ev, ok, err := e.v.Catalog().LastAuditEvent(ctx, "passphrase.change")
	if err != nil || !ok || !strings.Contains(ev.Detail, `"kek_versions":2`) {
		t.Fatalf("audit: %+v %v %v", ev, ok, err)
	}
	if rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID); err != nil || rep.Unsealed != 0 {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	// An HSM volume refuses.
	h := newVol(t, volOpt{})
	h.close()
	hc, err := meta.Open(ctx, h.state)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if err := ChangePassphrase(ctx, hc, []byte("x"), []byte("y"), "t"); err == nil || !strings.Contains(err.Error(), "HSM token") {
		t.Fatalf("passwd on an HSM volume: %v", err)
	}
}
