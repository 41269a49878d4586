package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"coffer/fs/meta"
)

func TestPasswdCommand(t *testing.T) {
	l := newLCVol(t, true, false, false)
	l.populate(t, "f", 3, 0, []byte("data"))
	db := filepath.Join(l.state, meta.FileName)
	before, _ := os.ReadFile(db)

	newPass := "a brand new passphrase"
	r := coffer(t, []string{"COFFER_PASSPHRASE=not it", "COFFER_NEW_PASSPHRASE=" + newPass}, "passwd", "--state", l.state)
	r.oneErrorLine(t, "wrong passphrase")
	if after, _ := os.ReadFile(db); !bytes.Equal(before, after) {
		t.Fatal("a wrong passphrase changed catalog.db")
	}
	// No new passphrase anywhere, not on a terminal.
	r = coffer(t, l.env, "passwd", "--state", l.state)
	r.oneErrorLine(t, "COFFER_NEW_PASSPHRASE")

	newFile := filepath.Join(l.dir, "newpass")
	os.WriteFile(newFile, []byte(newPass+"\n"), 0o600)
	r = coffer(t, l.env, "passwd", "--state", l.state, "--new-passphrase-file", newFile)
	if r.code != 0 || !strings.Contains(r.stdout, "passphrase of volume") {
		t.Fatalf("passwd (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	assertNoSecret(t, []byte(newPass), l.state)
	assertNoSecret(t, l.secret, l.state)
	// The old passphrase no longer opens the volume; the new one does.
	r = coffer(t, l.env, "rotate", "--state", l.state)
	r.oneErrorLine(t, "wrong passphrase")
	r = coffer(t, []string{"COFFER_PASSPHRASE=" + newPass}, "rotate", "--state", l.state)
	if r.code != 0 || !strings.Contains(r.stdout, "3 key records re-wrapped") {
		t.Fatalf("rotate with the new passphrase (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	r = coffer(t, nil, "audit", "--state", l.state)
	if !strings.Contains(r.stdout, "passphrase.change") {
		t.Errorf("audit:\n%s", r.stdout)
	}
	// An HSM volume has no passphrase.
	h := newLCVol(t, false, false, false)
	r = coffer(t, h.env, "passwd", "--state", h.state)
	r.oneErrorLine(t, "change the token's PIN")
}
