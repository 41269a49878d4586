package main

import (
	"os"
	"path/filepath"
	"testing"

	"coffer/test/softhsm"
)

// TestSecretEnvAndFileConflict: a PIN or passphrase given both in the environment and as a
// file is refused, before anything is created, whichever way it would have gone (before,
// the environment won silently and the file was not even opened).
func TestSecretEnvAndFileConflict(t *testing.T) {
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	os.WriteFile(passFile, []byte("the passphrase the user picked\n"), 0o600)

	state := filepath.Join(dir, "state-pass")
	r := coffer(t, []string{"COFFER_PASSPHRASE=another passphrase"}, "init", "--state", state,
		"--remote", filepath.Join(dir, "remote-pass"), "--passphrase", "--passphrase-file", passFile)
	r.oneErrorLine(t, "both COFFER_PASSPHRASE and --passphrase-file give the")
	if fileExists(state) {
		t.Fatalf("a refused init created %s", state)
	}
	// A missing file too: the conflict is said before anything is read.
	r = coffer(t, []string{"COFFER_PASSPHRASE=another passphrase"}, "init", "--state", state,
		"--remote", filepath.Join(dir, "remote-pass"), "--passphrase", "--passphrase-file", filepath.Join(dir, "missing"))
	r.oneErrorLine(t, "both COFFER_PASSPHRASE and --passphrase-file")

	tok := softhsm.NewToken(t, "")
	pinFile := tok.PINFile(t)
	hstate := filepath.Join(dir, "state-hsm")
	args := append(hsmArgs(tok, hstate, filepath.Join(dir, "remote-hsm")), "--hsm-pin-file", pinFile)
	r = coffer(t, hsmEnv(tok, []byte("not-the-pin")), args...)
	r.oneErrorLine(t, "both COFFER_HSM_PIN and --hsm-pin-file give the PIN")
	if fileExists(hstate) {
		t.Fatalf("a refused init created %s", hstate)
	}

	// Each alone works, and mount refuses both as init does.
	if r := coffer(t, nil, "init", "--state", state, "--remote", filepath.Join(dir, "remote-pass"),
		"--passphrase", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("init with the file alone: %s", r.stderr)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	r = coffer(t, []string{"COFFER_PASSPHRASE=the passphrase the user picked"}, "mount", "--state", state,
		"--passphrase-file", passFile, mnt)
	r.oneErrorLine(t, "both COFFER_PASSPHRASE and --passphrase-file")
	if len(daemonPIDs(state)) != 0 {
		t.Fatal("a refused mount started a daemon")
	}
}
