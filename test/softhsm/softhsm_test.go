package softhsm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewToken(t *testing.T) {
	a := NewToken(t, "")
	b := NewToken(t, "softhsm-selftest")
	if a.Label == b.Label || a.Label == "" {
		t.Fatalf("labels %q %q", a.Label, b.Label)
	}
	if a.ConfPath != b.ConfPath || os.Getenv("SOFTHSM2_CONF") != a.ConfPath {
		t.Fatal("tokens of one process must share one conf, set in SOFTHSM2_CONF")
	}
	for _, p := range []string{filepath.Dir(a.ConfPath), a.Dir} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s has mode %v, want 0700", p, st.Mode().Perm())
		}
	}
	conf, err := os.ReadFile(a.ConfPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "directories.tokendir = "+a.Dir+"\n") {
		t.Fatalf("conf does not point at the token dir:\n%s", conf)
	}
	if env := a.Env(); len(env) != 1 || env[0] != "SOFTHSM2_CONF="+a.ConfPath {
		t.Fatalf("Env %q", env)
	}
	// A subprocess given Env sees both tokens.
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), a.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	for _, l := range []string{a.Label, b.Label} {
		if !strings.Contains(string(out), "Label:            "+l) {
			t.Errorf("subprocess does not see token %q:\n%s", l, out)
		}
	}
	pf := a.PINFile(t)
	st, err := os.Stat(pf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("PIN file %v %v", st, err)
	}
	if got, _ := os.ReadFile(pf); string(got) != string(a.PIN) {
		t.Fatal("PIN file content")
	}
}

func TestImportAndList(t *testing.T) {
	tok := NewToken(t, "softhsm-import")
	tok.ImportSecretKey(t, "known-aes", pkcs11.CKK_AES, make([]byte, 32), true)
	tok.ImportSecretKey(t, "known-hmac", pkcs11.CKK_GENERIC_SECRET, make([]byte, 32), false)
	labels := tok.ObjectLabels(t)
	for _, l := range []string{"known-aes", "known-hmac"} {
		if !slices.Contains(labels, l) {
			t.Errorf("pkcs11-tool -O does not list %q: %q", l, labels)
		}
	}
}
