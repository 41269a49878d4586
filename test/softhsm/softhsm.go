// Package softhsm gives tests a private SoftHSM2 token store.
//
// SoftHSM reads SOFTHSM2_CONF when the module is initialized (C_Initialize), so a process that
// uses the module in-process can see only one token directory. This package therefore keeps
// ONE private directory per test process (mode 0700, created on first use) with its own
// softhsm2.conf, points SOFTHSM2_CONF at it with os.Setenv before any module is loaded, and
// initializes as many tokens in it as the tests ask for with NewToken. Subprocesses (the coffer
// binary in end-to-end tests, pkcs11-tool) get the same store through Token.Env().
//
// Use it from TestMain so the directory is removed when the tests end:
//
//	func TestMain(m *testing.M) { softhsm.Main(m) }
//
// Without Main the directory is left behind in $TMPDIR (named coffer-softhsm-*).
package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
)

// Module is the SoftHSM2 PKCS#11 module installed by Debian's softhsm2 package.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// notInstalled is the message a test fails with when SoftHSM2 is missing.
const notInstalled = "softhsm2 not installed: run make test (it installs it)"

var (
	once     sync.Once
	storeDir string // per-process directory holding softhsm2.conf and tokens/
	confPath string
	setupErr error

	mu     sync.Mutex
	labels = map[string]bool{}
	serial int
)

// Token is one initialized SoftHSM2 token in the process's private store.
type Token struct {
	Module   string // path of the PKCS#11 module
	Label    string // token label
	PIN      []byte // user PIN
	SOPIN    []byte // security officer PIN
	ConfPath string // softhsm2.conf of this process's store
	Dir      string // token directory (directories.tokendir)
}

// Main sets up nothing eagerly; it runs the tests and then removes the process's token
// store, if one was created. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if storeDir != "" {
		_ = os.RemoveAll(storeDir)
	}
	os.Exit(code)
}

// Available reports whether the SoftHSM2 module and softhsm2-util are installed, with the
// message to fail with when they are not.
func Available() error {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("%s (softhsm2-util not found on PATH)", notInstalled)
	}
	if _, err := os.Stat(Module); err != nil {
		return fmt.Errorf("%s (%s missing)", notInstalled, Module)
	}
	return nil
}

// ConfPath returns the softhsm2.conf of this process's private store, creating the store and
// setting SOFTHSM2_CONF in this process if needed. It fails the test when SoftHSM2 is missing.
func ConfPath(t testing.TB) string {
	t.Helper()
	setup(t)
	return confPath
}

func setup(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		t.Fatal(err)
	}
	once.Do(func() {
		dir, err := os.MkdirTemp("", "coffer-softhsm-")
		if err != nil {
			setupErr = fmt.Errorf("softhsm: create token store: %w", err)
			return
		}
		// A token folder is key material.
		if err := os.Chmod(dir, 0o700); err != nil {
			setupErr = fmt.Errorf("softhsm: chmod token store: %w", err)
			return
		}
		tokens := filepath.Join(dir, "tokens")
		if err := os.Mkdir(tokens, 0o700); err != nil {
			setupErr = fmt.Errorf("softhsm: create token dir: %w", err)
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := "directories.tokendir = " + tokens + "\n" +
			"objectstore.backend = file\n" +
			"log.level = ERROR\n" +
			"slots.removable = false\n" +
			"slots.mechanisms = ALL\n" +
			"library.reset_on_fork = false\n"
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			setupErr = fmt.Errorf("softhsm: write %s: %w", conf, err)
			return
		}
		storeDir, confPath = dir, conf
		// Must happen before the first C_Initialize in this process.
		setupErr = os.Setenv("SOFTHSM2_CONF", conf)
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// NewToken initializes a new token in the process's private store and returns it. An empty
// label picks a unique one. Labels must be unique within the process. The token lives until
// the process ends (deleting it under a loaded module would confuse the module's slot list).
func NewToken(t testing.TB, label string) *Token {
	t.Helper()
	setup(t)
	mu.Lock()
	if label == "" {
		serial++
		label = fmt.Sprintf("coffer-test-%d", serial)
	}
	if labels[label] {
		mu.Unlock()
		t.Fatalf("softhsm: token label %q already used in this test process", label)
	}
	labels[label] = true
	mu.Unlock()

	if len(label) > 32 {
		t.Fatalf("softhsm: token label %q longer than 32 bytes", label)
	}
	tok := &Token{
		Module:   Module,
		Label:    label,
		PIN:      []byte(randomPIN()),
		SOPIN:    []byte(randomPIN()),
		ConfPath: confPath,
		Dir:      filepath.Join(storeDir, "tokens"),
	}
	out, err := tok.util("--init-token", "--free", "--label", label,
		"--pin", string(tok.PIN), "--so-pin", string(tok.SOPIN))
	if err != nil {
		t.Fatalf("softhsm: init token %q: %v\n%s", label, err, out)
	}
	return tok
}

func randomPIN() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Env returns the environment entries a subprocess needs to see this token store
// (SOFTHSM2_CONF=...). Append it to os.Environ() for exec.Cmd.Env.
func (tok *Token) Env() []string {
	return []string{"SOFTHSM2_CONF=" + tok.ConfPath}
}

// PINFile writes the user PIN to a 0600 file in a test temp dir (for --hsm-pin-file) and
// returns its path.
func (tok *Token) PINFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(p, tok.PIN, 0o600); err != nil {
		t.Fatalf("softhsm: write PIN file: %v", err)
	}
	return p
}

func (tok *Token) util(args ...string) ([]byte, error) {
	cmd := exec.Command("softhsm2-util", args...)
	cmd.Env = append(os.Environ(), tok.Env()...)
	return cmd.CombinedOutput()
}

// Tool runs pkcs11-tool (opensc) against this token, logged in as the user, with the given
// extra arguments, and returns its standard output (its warnings go to stderr and are only
// shown on failure). It fails the test if pkcs11-tool fails.
func (tok *Token) Tool(t testing.TB, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		t.Fatal("pkcs11-tool not installed (package opensc): run make test (it installs it)")
	}
	base := []string{"--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", string(tok.PIN)}
	cmd := exec.Command("pkcs11-tool", append(base, args...)...)
	cmd.Env = append(os.Environ(), tok.Env()...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("softhsm: pkcs11-tool %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// ObjectLabels lists the labels of all objects on the token (pkcs11-tool -O, logged in), as
// seen by a separate process.
func (tok *Token) ObjectLabels(t testing.TB) []string {
	t.Helper()
	out := tok.Tool(t, "-O")
	var labels []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if l, ok := strings.CutPrefix(line, "label:"); ok {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	return labels
}

// ImportSecretKey creates a secret key with a KNOWN value on the token, for tests that must
// compare the token's results with a software computation over the same key. keyType is
// pkcs11.CKK_AES or pkcs11.CKK_GENERIC_SECRET; encrypt selects ENCRYPT/DECRYPT usage, else
// SIGN/VERIFY. The key is private, sensitive and non-extractable, labelled label (also its
// CKA_ID). Real keys are generated inside the token and never imported.
//
// It talks to the module in-process (pkcs11-tool cannot write generic secrets). Do not call it
// while another goroutine opens or closes a provider: if nothing in the process has the
// module initialized, it initializes and finalizes it itself.
func (tok *Token) ImportSecretKey(t testing.TB, label string, keyType uint, value []byte, encrypt bool) {
	t.Helper()
	if err := tok.importSecretKey(label, keyType, value, encrypt); err != nil {
		t.Fatalf("softhsm: import key %q into token %q: %v", label, tok.Label, err)
	}
}

func (tok *Token) importSecretKey(label string, keyType uint, value []byte, encrypt bool) (err error) {
	ctx := pkcs11.New(tok.Module)
	if ctx == nil {
		return fmt.Errorf("cannot load %s", tok.Module)
	}
	defer ctx.Destroy()
	switch ierr := ctx.Initialize(); {
	case ierr == nil:
		defer func() {
			if ferr := ctx.Finalize(); err == nil && ferr != nil {
				err = ferr
			}
		}()
	case errors.Is(ierr, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
		// Someone in this process (crypto11) has it open: share it, never finalize it.
	default:
		return fmt.Errorf("C_Initialize: %w", ierr)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	slot, found := uint(0), false
	for _, s := range slots {
		if info, err := ctx.GetTokenInfo(s); err == nil && info.Label == tok.Label {
			slot, found = s, true
			break
		}
	}
	if !found {
		return errors.New("token not found")
	}
	sess, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	// Closing our session does not log out other sessions of the process; never C_Logout.
	defer ctx.CloseSession(sess)
	if err := ctx.Login(sess, pkcs11.CKU_USER, string(tok.PIN)); err != nil &&
		!errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		return fmt.Errorf("C_Login: %w", err)
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, !encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, !encrypt),
	}
	if _, err := ctx.CreateObject(sess, tmpl); err != nil {
		return fmt.Errorf("C_CreateObject: %w", err)
	}
	return nil
}
