package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"coffer/fs/meta"
	"coffer/test/s3server"
	"coffer/test/softhsm"
)

var binary string // the coffer binary built once for these tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "coffer-cli-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "coffer")
	// As `make build` does: runtime/secret erases key schedules (TestWipeLeavesNoKeyInMemory).
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Env = append(os.Environ(), "GOEXPERIMENT=runtimesecret")
	if out, err := build.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	defer os.RemoveAll(dir)
	softhsm.Main(m)
}

type result struct {
	code           int
	stdout, stderr string
}

// coffer runs the binary with env added to a clean environment (no COFFER_* leaks in).
func coffer(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "COFFER_") && !strings.HasPrefix(e, "SOFTHSM2_CONF=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run coffer %v: %v", args, err)
	}
	return r
}

func (r result) oneErrorLine(t *testing.T, want string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("exit 0, want failure; stdout:\n%s", r.stdout)
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "coffer ") {
		t.Fatalf("stderr is not one 'coffer ...' line:\n%s", r.stderr)
	}
	if !strings.Contains(lines[0], want) {
		t.Fatalf("stderr %q does not mention %q", lines[0], want)
	}
}

func hsmEnv(tok *softhsm.Token, pin []byte) []string {
	return append(tok.Env(), "COFFER_HSM_PIN="+string(pin))
}

func hsmArgs(tok *softhsm.Token, state, rem string) []string {
	return []string{"init", "--state", state, "--remote", rem, "--hsm-module", tok.Module, "--hsm-token", tok.Label}
}

// listFiles returns every regular file under dir, relative.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// assertNothingCreated checks that a failed init left neither the state dir nor the remote
// folder behind (neither existed before).
func assertNothingCreated(t *testing.T, state, remoteDir string) {
	t.Helper()
	for _, d := range []string{state, remoteDir} {
		if _, err := os.Lstat(d); !os.IsNotExist(err) {
			t.Errorf("failed init left %s behind (files: %v)", d, listFiles(t, d))
		}
	}
}

// assertNoSecret fails if secret appears in any file under dirs.
func assertNoSecret(t *testing.T, secret []byte, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		for _, f := range listFiles(t, d) {
			b, err := os.ReadFile(filepath.Join(d, f))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, secret) {
				t.Errorf("secret found in %s", filepath.Join(d, f))
			}
		}
	}
}

func TestInitHSMLocal(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	state, rem := filepath.Join(dir, "state"), filepath.Join(dir, "remote")

	r := coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, state, rem)...)
	if r.code != 0 {
		t.Fatalf("init failed (%d): %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "created coffer volume") || !strings.Contains(r.stdout, "KEK volume/v1") {
		t.Fatalf("init output lacks the summary:\n%s", r.stdout)
	}
	st, err := os.Stat(filepath.Join(state, meta.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("catalog mode %v, want 0600", st.Mode().Perm())
	}
	if sd, _ := os.Stat(state); sd.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", sd.Mode().Perm())
	}
	// The marker and the first snapshot of the catalog's replica (an HSM volume has no r/keys).
	if got := listFiles(t, rem); !slices.Equal(got, []string{"coffer-volume", "r/00000001/0000000000000001.s.0000"}) {
		t.Fatalf("remote holds %v, want only the volume marker and the first replica snapshot", got)
	}
	// Exactly one KEK version (an AES and an HMAC key) was made inside the token.
	labels := tok.ObjectLabels(t)
	if len(labels) != 2 {
		t.Fatalf("token holds %v, want the AES and HMAC keys of KEK v1", labels)
	}
	assertNoSecret(t, tok.PIN, state, rem)

	// The state dir and the remote are each refused a second time.
	r = coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, state, filepath.Join(dir, "other"))...)
	r.oneErrorLine(t, "already holds a volume")
	r = coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, filepath.Join(dir, "state2"), rem)...)
	r.oneErrorLine(t, "already holds a coffer volume")
	if _, err := os.Lstat(filepath.Join(dir, "state2")); !os.IsNotExist(err) {
		t.Error("refused init left its state dir behind")
	}
	if n := len(tok.ObjectLabels(t)); n != 2 {
		t.Errorf("refused inits left %d objects on the token, want 2", n)
	}

	// status and audit read the new volume.
	r = coffer(t, nil, "status", "--state", state, "--json")
	if r.code != 0 {
		t.Fatalf("status: %s", r.stderr)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if rep.Provider != "pkcs11" || rep.KeyMode != "wrap" || rep.HSMToken != tok.Label || len(rep.KEKs) != 1 ||
		rep.KEKs[0].State != "active" || rep.Inodes != 1 || rep.BlockSize != 16<<10 || rep.Remote != rem {
		t.Errorf("status: %+v", rep)
	}
	r = coffer(t, nil, "audit", "--state", state)
	if r.code != 0 || !strings.Contains(r.stdout, "volume.create") || !strings.Contains(r.stdout, "kek.add") {
		t.Errorf("audit (%d): %s %s", r.code, r.stdout, r.stderr)
	}
	r = coffer(t, nil, "audit", "--state", state, "--verify")
	if r.code != 0 || !strings.Contains(r.stdout, "2 entries, hash chain intact") {
		t.Errorf("audit --verify (%d): %s %s", r.code, r.stdout, r.stderr)
	}
}

func TestInitWrongPIN(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	state, rem := filepath.Join(dir, "state"), filepath.Join(dir, "remote")
	wrong := []byte("999999999999")
	r := coffer(t, hsmEnv(tok, wrong), hsmArgs(tok, state, rem)...)
	r.oneErrorLine(t, "wrong PIN")
	if strings.Contains(r.stderr, string(wrong)) {
		t.Error("the PIN appears in the error")
	}
	assertNothingCreated(t, state, rem)
	if n := len(tok.ObjectLabels(t)); n != 0 {
		t.Errorf("wrong PIN left %d objects on the token", n)
	}
}

func TestInitHSMErrors(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	state, rem := filepath.Join(dir, "state"), filepath.Join(dir, "remote")
	env := hsmEnv(tok, tok.PIN)

	// A module that does not exist, and a file that is no module.
	r := coffer(t, env, "init", "--state", state, "--remote", rem, "--hsm-module", "/nonexistent/libpkcs11.so", "--hsm-token", tok.Label)
	r.oneErrorLine(t, "/nonexistent/libpkcs11.so")
	bogus := filepath.Join(dir, "bogus.so")
	os.WriteFile(bogus, []byte("not a shared library"), 0o644)
	r = coffer(t, env, "init", "--state", state, "--remote", rem, "--hsm-module", bogus, "--hsm-token", tok.Label)
	r.oneErrorLine(t, "bogus.so")
	// A token that does not exist.
	r = coffer(t, env, "init", "--state", state, "--remote", rem, "--hsm-module", tok.Module, "--hsm-token", "no-such-token")
	r.oneErrorLine(t, "no-such-token")
	// No PIN anywhere, and not on a terminal.
	r = coffer(t, tok.Env(), hsmArgs(tok, state, rem)...)
	r.oneErrorLine(t, "COFFER_HSM_PIN")
	// A PIN on the command line is not a thing.
	r = coffer(t, tok.Env(), append(hsmArgs(tok, state, rem), "--hsm-pin", string(tok.PIN))...)
	if r.code != 2 || strings.Contains(r.stderr, string(tok.PIN)) {
		t.Errorf("--hsm-pin: exit %d, stderr %q", r.code, r.stderr)
	}
	assertNothingCreated(t, state, rem)
}

func TestInitRefusesCredentials(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	secret := "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
	rem := ":s3,provider=AWS,access_key_id=AKIAEXAMPLE,secret_access_key=" + secret + ":bucket/x"
	r := coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, state, rem)...)
	r.oneErrorLine(t, "rclone")
	if strings.Contains(r.stderr, secret) {
		t.Error("the secret access key appears in the error")
	}
	if _, err := os.Stat(state); err == nil {
		t.Error("refused init created the state dir")
	}
	if n := len(tok.ObjectLabels(t)); n != 0 {
		t.Errorf("refused init left %d objects on the token", n)
	}
}

func TestInitPassphrase(t *testing.T) {
	dir := t.TempDir()
	state, rem := filepath.Join(dir, "state"), filepath.Join(dir, "remote")
	pass := []byte("correct horse battery staple 4711")
	passFile := filepath.Join(dir, "pass")
	os.WriteFile(passFile, append(pass, '\n'), 0o600)
	r := coffer(t, nil, "init", "--state", state, "--remote", rem, "--passphrase", "--passphrase-file", passFile, "--key-mode", "derive", "--block-size", "64K", "--chunk-size", "1M")
	if r.code != 0 {
		t.Fatalf("init --passphrase failed: %s", r.stderr)
	}
	if !strings.Contains(r.stdout, "passphrase (Argon2id)") || !strings.Contains(r.stdout, "key mode derive") || !strings.Contains(r.stdout, "64 KiB blocks in 1 MiB chunks") {
		t.Errorf("init output:\n%s", r.stdout)
	}
	assertNoSecret(t, pass, state, rem)

	// COFFER_PASSPHRASE works too, and bad sizes are usage errors.
	r = coffer(t, []string{"COFFER_PASSPHRASE=" + string(pass)}, "init", "--state", filepath.Join(dir, "s2"), "--remote", filepath.Join(dir, "r2"), "--passphrase")
	if r.code != 0 {
		t.Fatalf("init with COFFER_PASSPHRASE failed: %s", r.stderr)
	}
	r = coffer(t, []string{"COFFER_PASSPHRASE=x"}, "init", "--state", filepath.Join(dir, "s3"), "--passphrase", "--block-size", "3000")
	if r.code != 2 || !strings.Contains(r.stderr, "block size") {
		t.Errorf("--block-size 3000: exit %d, %q", r.code, r.stderr)
	}
}

func TestInitS3(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	srv := s3server.Start(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	rem := srv.Remote("vols/one")
	r := coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, state, rem)...)
	if r.code != 0 {
		t.Fatalf("init on S3 failed: %s", r.stderr)
	}
	if _, err := os.Stat(srv.ObjectPath("vols/one", "coffer-volume")); err != nil {
		t.Fatalf("no marker on the S3 server: %v", err)
	}
	// A second volume on the same bucket and prefix is refused.
	r = coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, filepath.Join(dir, "state2"), rem)...)
	r.oneErrorLine(t, "already holds a coffer volume")

	// An unreachable S3 server: a clear error, nothing created, no KEK left in the token.
	srv.Stop()
	before := len(tok.ObjectLabels(t))
	state3 := filepath.Join(dir, "state3")
	r = coffer(t, hsmEnv(tok, tok.PIN), hsmArgs(tok, state3, srv.Remote("vols/two"))...)
	if r.code == 0 {
		t.Fatal("init against a stopped S3 server succeeded")
	}
	if _, err := os.Lstat(state3); !os.IsNotExist(err) {
		t.Error("failed init left its state dir")
	}
	if after := len(tok.ObjectLabels(t)); after != before {
		t.Errorf("failed init changed the token: %d objects before, %d after", before, after)
	}
}

func TestUsage(t *testing.T) {
	r := coffer(t, nil, "frobnicate")
	if r.code != 2 || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("unknown command: %d %q", r.code, r.stderr)
	}
	r = coffer(t, nil, "help")
	if r.code != 0 || !strings.Contains(r.stdout, "coffer init") {
		t.Errorf("help: %d %q", r.code, r.stdout)
	}
	r = coffer(t, nil, "init")
	if r.code != 2 || !strings.Contains(r.stderr, "--state") {
		t.Errorf("init without --state: %d %q", r.code, r.stderr)
	}
	r = coffer(t, nil, "status", "--state", t.TempDir())
	r.oneErrorLine(t, "open volume")
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64K": 64 << 10, "64KiB": 64 << 10, "4M": 4 << 20, "4mib": 4 << 20, "1G": 1 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "0", "4T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}
