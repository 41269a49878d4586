package hsm

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ThalesIgnite/crypto11"
	"github.com/miekg/pkcs11"

	"coffer/keys"
	"coffer/keys/keystest"
	"coffer/test/softhsm"
)

func TestMain(m *testing.M) { softhsm.Main(m) }

func randomVolume() [16]byte {
	var v [16]byte
	_, _ = rand.Read(v[:])
	return v
}

// open opens a provider on tok for vol and wipes it when the test ends.
func openP(t testing.TB, tok *softhsm.Token, vol [16]byte) *Provider {
	t.Helper()
	p, err := New(Config{Module: tok.Module, Token: tok.Label, PIN: tok.PIN, Volume: vol})
	if err != nil {
		t.Fatalf("hsm.New: %v", err)
	}
	t.Cleanup(func() { _ = p.Wipe() })
	return p
}

var (
	sharedOnce sync.Once
	sharedTok  *softhsm.Token
)

// shared is one token for the tests that do not care which token they use (labels carry a
// random volume id, so they never collide).
func shared(t testing.TB) *softhsm.Token {
	sharedOnce.Do(func() { sharedTok = softhsm.NewToken(t, "coffer-shared") })
	if sharedTok == nil {
		t.Fatal("shared token setup failed")
	}
	return sharedTok
}

func TestConformance(t *testing.T) {
	tok := shared(t)
	keystest.Run(t, func(t *testing.T) keystest.Fixture {
		vol := randomVolume()
		return keystest.Fixture{
			P:      openP(t, tok, vol),
			Volume: vol,
			Reopen: func(t *testing.T) keys.Provider { return openP(t, tok, vol) },
		}
	})
}

func TestKeyAttributes(t *testing.T) {
	tok := shared(t)
	p := openP(t, tok, randomVolume())
	ref := keys.KEKRef{Chain: "u42", Version: 3}
	mat, err := p.CreateKEK(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if mat != nil {
		t.Fatalf("HSM CreateKEK returned material %x, want nil", mat)
	}
	k := p.keks[ref]
	check := func(name string, key *crypto11.SecretKey, want map[crypto11.AttributeType]bool) {
		t.Helper()
		var types []crypto11.AttributeType
		for a := range want {
			types = append(types, a)
		}
		got, err := p.c11.GetAttributes(key, types)
		if err != nil {
			t.Fatalf("%s: GetAttributes: %v", name, err)
		}
		for a, w := range want {
			v := got[a]
			if v == nil || len(v.Value) != 1 || (v.Value[0] != 0) != w {
				t.Errorf("%s: attribute %#x = %v, want %v", name, uint(a), v, w)
			}
		}
		// The key value cannot be read.
		if _, err := p.c11.GetAttribute(key, crypto11.CkaValue); err == nil {
			t.Errorf("%s: CKA_VALUE readable", name)
		}
	}
	common := map[crypto11.AttributeType]bool{
		crypto11.CkaToken: true, crypto11.CkaPrivate: true, crypto11.CkaSensitive: true,
		crypto11.CkaExtractable: false, crypto11.CkaNeverExtractable: true,
		crypto11.CkaAlwaysSensitive: true, crypto11.CkaLocal: true,
		crypto11.CkaWrap: false, crypto11.CkaUnwrap: false, crypto11.CkaDerive: false,
	}
	aes := map[crypto11.AttributeType]bool{crypto11.CkaEncrypt: true, crypto11.CkaDecrypt: true, crypto11.CkaSign: false, crypto11.CkaVerify: false}
	hm := map[crypto11.AttributeType]bool{crypto11.CkaEncrypt: false, crypto11.CkaDecrypt: false, crypto11.CkaSign: true, crypto11.CkaVerify: true}
	for a, v := range common {
		aes[a], hm[a] = v, v
	}
	check("aes", k.aes, aes)
	check("hmac", k.hmac, hm)

	// Labels as specified, and visible to another process.
	labels := tok.ObjectLabels(t)
	for _, kind := range []string{KindAES, KindHMAC} {
		want := keys.HSMLabel(p.volume, ref, kind)
		if !strings.HasPrefix(want, "coffer:") || !strings.HasSuffix(want, ":u42:v3:"+kind) {
			t.Fatalf("label %q not in the specified form", want)
		}
		if !slices.Contains(labels, want) {
			t.Errorf("pkcs11-tool -O does not list %q (got %q)", want, labels)
		}
	}
}

// TestTokenMatchesSpec imports keys with known values and checks that the token's AES-GCM
// and HMAC results are byte-identical to the spec's test vector and to Go's crypto: the spec
// describes what the HSM really computes.
func TestTokenMatchesSpec(t *testing.T) {
	tok := softhsm.NewToken(t, "coffer-vectors")
	v := keystest.Vector
	ref := keys.KEKRef{Chain: v.Chain, Version: v.Version}
	tok.ImportSecretKey(t, keys.HSMLabel(v.Volume, ref, KindAES), pkcs11.CKK_AES, v.KEKAES, true)
	tok.ImportSecretKey(t, keys.HSMLabel(v.Volume, ref, KindHMAC), pkcs11.CKK_GENERIC_SECRET, v.KEKHMAC, false)
	p := openP(t, tok, v.Volume)
	if err := p.Load(ref, nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := keys.FileIdentity{Volume: v.Volume, File: v.File}

	wrapped, err := p.Seal(ctx, ref, v.IV, v.DEK, keys.WrapAAD(id, ref))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(wrapped, v.Wrapped) {
		t.Fatalf("token wrap = %x\nspec vector  %x", wrapped, v.Wrapped)
	}
	dek, err := keys.OpenFileKey(ctx, p, keys.Record{Mode: keys.ModeWrap, KEK: ref, IV: v.IV, Wrapped: v.Wrapped}, id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dek.Bytes(), v.DEK) {
		t.Fatal("token unwrap of the vector gave another DEK")
	}
	derived, err := keys.OpenFileKey(ctx, p, keys.Record{Mode: keys.ModeDerive, KEK: ref, Salt: v.Salt}, id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(derived.Bytes(), v.DerivedDEK) {
		t.Fatalf("token derive = %x\nspec vector    %x", derived.Bytes(), v.DerivedDEK)
	}

	// And against Go's crypto/hmac over random messages of many lengths.
	for n := 0; n < 300; n += 37 {
		msg := make([]byte, n)
		_, _ = rand.Read(msg)
		got, err := p.MAC(ctx, ref, msg)
		if err != nil {
			t.Fatal(err)
		}
		m := hmac.New(sha256.New, v.KEKHMAC)
		m.Write(msg)
		if want := m.Sum(nil); !bytes.Equal(got, want) {
			t.Fatalf("len %d: token HMAC %x != Go HMAC %x", n, got, want)
		}
	}
}

func TestDestroyedKEK(t *testing.T) {
	tok := shared(t)
	vol := randomVolume()
	ctx := context.Background()
	p := openP(t, tok, vol)
	other := openP(t, tok, vol) // a second instance that has the handles cached
	v1 := keys.KEKRef{Version: 1}
	if _, err := p.CreateKEK(ctx, v1); err != nil {
		t.Fatal(err)
	}
	id := keys.FileIdentity{Volume: vol}
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeWrap, v1, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.OpenFileKey(ctx, other, rec, id); err != nil {
		t.Fatalf("second instance cannot unwrap before destroy: %v", err)
	}

	if err := p.DestroyKEK(ctx, v1); err != nil {
		t.Fatal(err)
	}
	for name, prov := range map[string]*Provider{"destroyer": p, "cached handles": other} {
		if _, err := keys.OpenFileKey(ctx, prov, rec, id); !errors.Is(err, keys.ErrKEKMissing) {
			t.Errorf("%s: unwrap after destroy: got %v, want ErrKEKMissing", name, err)
		}
		// Seal goes through crypto11's panicking path: must come back as ErrKEKMissing too.
		if _, _, err := keys.NewFileKey(ctx, prov, keys.ModeWrap, v1, id); !errors.Is(err, keys.ErrKEKMissing) {
			t.Errorf("%s: wrap after destroy: got %v, want ErrKEKMissing", name, err)
		}
	}
	// A fresh session finds nothing, and neither does another process.
	fresh := openP(t, tok, vol)
	if err := fresh.Load(v1, nil); !errors.Is(err, keys.ErrKEKMissing) {
		t.Fatalf("Load after destroy: got %v, want ErrKEKMissing", err)
	} else if !strings.Contains(err.Error(), tok.Label) {
		t.Errorf("message %q does not name the token", err)
	}
	for _, l := range tok.ObjectLabels(t) {
		if strings.Contains(l, keys.HSMLabel(vol, v1, "")) {
			t.Errorf("pkcs11-tool -O still lists %q", l)
		}
	}
	if err := p.DestroyKEK(ctx, v1); !errors.Is(err, keys.ErrKEKMissing) {
		t.Errorf("second destroy: got %v, want ErrKEKMissing", err)
	}
}

// The failure tests below each run on a token no provider is logged into: PKCS#11 login is
// per process and token, and crypto11 finalizes the module when New fails.

func TestWrongPIN(t *testing.T) {
	tok := softhsm.NewToken(t, "coffer-wrongpin")
	wrong := []byte("wrong-" + string(tok.PIN))
	_, err := New(Config{Module: tok.Module, Token: tok.Label, PIN: wrong, Volume: randomVolume()})
	if !errors.Is(err, keys.ErrWrongPIN) {
		t.Fatalf("got %v, want ErrWrongPIN", err)
	}
	msg := err.Error()
	t.Logf("message: %s", msg)
	if want := `wrong PIN for token "coffer-wrongpin"`; msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
	if strings.Contains(msg, string(wrong)) || strings.Contains(msg, string(tok.PIN)) {
		t.Fatal("error message contains a PIN")
	}
	if string(wrong) != "wrong-"+string(tok.PIN) {
		t.Fatal("New modified the caller's PIN slice")
	}
	// The right PIN still works afterwards.
	openP(t, tok, randomVolume())
}

func TestEmptyPIN(t *testing.T) {
	_, err := New(Config{Module: softhsm.Module, Token: "x", Volume: randomVolume()})
	if err == nil || !strings.Contains(err.Error(), "empty PIN") {
		t.Fatalf("got %v, want an empty-PIN error", err)
	}
}

func TestTokenNotFound(t *testing.T) {
	softhsm.ConfPath(t)
	_, err := New(Config{Module: softhsm.Module, Token: "no-such-token", PIN: []byte("1234"), Volume: randomVolume()})
	if !errors.Is(err, keys.ErrTokenNotFound) {
		t.Fatalf("got %v, want ErrTokenNotFound", err)
	}
	t.Logf("message: %s", err)
	if !strings.Contains(err.Error(), `token "no-such-token" not found`) {
		t.Errorf("unclear message %q", err)
	}
	if strings.Contains(err.Error(), "1234") {
		t.Error("message contains the PIN")
	}
}

func TestModuleErrors(t *testing.T) {
	dir := t.TempDir()
	notSO := filepath.Join(dir, "notes.so")
	if err := os.WriteFile(notSO, []byte("this is not a shared library\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	libc := "/lib/x86_64-linux-gnu/libc.so.6"
	if _, err := os.Stat(libc); err != nil {
		libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
	}
	for _, tc := range []struct{ module, want string }{
		{"", "cannot load PKCS#11 module: no module path given"},
		{filepath.Join(dir, "missing.so"), "cannot load PKCS#11 module " + filepath.Join(dir, "missing.so") + ": no such file"},
		{dir, "cannot load PKCS#11 module " + dir + ": is a directory"},
		{notSO, "cannot load PKCS#11 module " + notSO + ": not an ELF shared library"},
		{libc, "cannot load PKCS#11 module " + libc + ": it has no C_GetFunctionList (not a PKCS#11 module)"},
	} {
		_, err := New(Config{Module: tc.module, Token: "t", PIN: []byte("1234"), Volume: randomVolume()})
		if !errors.Is(err, keys.ErrModule) {
			t.Errorf("%q: got %v, want ErrModule", tc.module, err)
			continue
		}
		t.Logf("message: %s", err)
		if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: message %q, want prefix %q", tc.module, err, tc.want)
		}
	}
}

// TestBrokenModules builds two fake modules with gcc: one that the dynamic loader refuses (a
// missing dependency) and one whose C_Initialize fails.
func TestBrokenModules(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc not installed: run make test (it installs it)")
	}
	dir := t.TempDir()
	write := func(name, src string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gcc := func(args ...string) {
		t.Helper()
		cmd := exec.Command("gcc", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", args, err, out)
		}
	}
	// A module that needs libcoffermissing.so, which is deleted after linking.
	write("dep.c", "int coffer_dep(void) { return 1; }\n")
	gcc("-shared", "-fPIC", "-o", "libcoffermissing.so", "dep.c")
	write("needs.c", "int coffer_dep(void);\nunsigned long C_GetFunctionList(void **p) { return coffer_dep(); }\n")
	gcc("-shared", "-fPIC", "-o", "needs.so", "needs.c", "-L.", "-lcoffermissing")
	if err := os.Remove(filepath.Join(dir, "libcoffermissing.so")); err != nil {
		t.Fatal(err)
	}
	// A module whose C_Initialize returns CKR_GENERAL_ERROR; every other function returns
	// CKR_FUNCTION_NOT_SUPPORTED.
	write("badinit.c", `
typedef unsigned long CK_RV;
struct fl { unsigned char major, minor; void *fn[68]; };
static struct fl list;
static CK_RV fail_init(void *a) { return 0x5; }
static CK_RV unsupported(void) { return 0x54; }
CK_RV C_GetFunctionList(struct fl **pp) {
	list.major = 2; list.minor = 40;
	for (int i = 0; i < 68; i++) list.fn[i] = (void *)unsupported;
	list.fn[0] = (void *)fail_init;
	*pp = &list;
	return 0;
}
`)
	gcc("-shared", "-fPIC", "-o", "badinit.so", "badinit.c")

	for _, tc := range []struct{ module, want string }{
		{filepath.Join(dir, "needs.so"), "libcoffermissing.so: cannot open shared object file"},
		{filepath.Join(dir, "badinit.so"), "C_Initialize failed"},
	} {
		_, err := New(Config{Module: tc.module, Token: "t", PIN: []byte("1234"), Volume: randomVolume()})
		if !errors.Is(err, keys.ErrModule) {
			t.Errorf("%s: got %v, want ErrModule", tc.module, err)
			continue
		}
		t.Logf("message: %s", err)
		if !strings.HasPrefix(err.Error(), "cannot load PKCS#11 module "+tc.module+": ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: message %q does not say %q", tc.module, err, tc.want)
		}
	}
}

// TestPanicsBecomeErrors closes crypto11's context under the provider: crypto11's Seal and
// Sum panic then, and the provider must return errors instead of crashing.
func TestPanicsBecomeErrors(t *testing.T) {
	tok := softhsm.NewToken(t, "coffer-panics")
	vol := randomVolume()
	p := openP(t, tok, vol)
	ctx := context.Background()
	ref := keys.KEKRef{Version: 1}
	if _, err := p.CreateKEK(ctx, ref); err != nil {
		t.Fatal(err)
	}
	id := keys.FileIdentity{Volume: vol}
	rec, _, err := keys.NewFileKey(ctx, p, keys.ModeWrap, ref, id)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	if err := p.c11.Close(); err != nil {
		t.Fatal(err)
	}
	p.c11Closed = true
	p.mu.Unlock()

	if _, err := p.Seal(ctx, ref, make([]byte, 12), make([]byte, 32), nil); err == nil {
		t.Error("Seal on a closed context succeeded")
	}
	if _, err := p.MAC(ctx, ref, []byte("m")); err == nil {
		t.Error("MAC on a closed context succeeded")
	}
	if _, err := keys.OpenFileKey(ctx, p, rec, id); err == nil {
		t.Error("unwrap on a closed context succeeded")
	}
	// The recovered panic paths themselves.
	if _, err := seal(panicky{}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("seal recover: %v", err)
	}
	if _, err := open(panicky{}, nil, nil, nil); err == nil {
		t.Error("open recover: no error")
	}
}

// panicky is an AEAD that panics like crypto11's does on PKCS#11 errors.
type panicky struct{}

func (panicky) Seal(dst, nonce, plaintext, ad []byte) []byte   { panic("boom") }
func (panicky) Open(dst, nonce, ct, ad []byte) ([]byte, error) { panic(errors.New("boom")) }
func (panicky) NonceSize() int                                 { return 12 }
func (panicky) Overhead() int                                  { return 16 }

func TestConcurrentUseAndWipe(t *testing.T) {
	tok := shared(t)
	vol := randomVolume()
	p := openP(t, tok, vol)
	ctx := context.Background()
	ref := keys.KEKRef{Version: 1}
	if _, err := p.CreateKEK(ctx, ref); err != nil {
		t.Fatal(err)
	}
	var wg, warm sync.WaitGroup
	errs := make(chan error, 8)
	var ops [4]int
	for g := 0; g < 4; g++ {
		wg.Add(1)
		warm.Add(1)
		go func() {
			defer wg.Done()
			warmed := false
			defer func() {
				if !warmed {
					warm.Done()
				}
			}()
			for i := 0; i < 100000; i++ {
				if i == 20 {
					warmed = true
					warm.Done()
				}
				var fid keys.FileIdentity
				fid.Volume = vol
				fid.File[0] = byte(i)
				mode := keys.ModeWrap
				if i%3 == 0 {
					mode = keys.ModeDerive
				}
				rec, dek, err := keys.NewFileKey(ctx, p, mode, ref, fid)
				if errors.Is(err, keys.ErrWiped) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				got, err := keys.OpenFileKey(ctx, p, rec, fid)
				if errors.Is(err, keys.ErrWiped) {
					return
				}
				if err != nil || !bytes.Equal(got.Bytes(), dek.Bytes()) {
					errs <- errors.Join(errors.New("concurrent round trip failed"), err)
					return
				}
				ops[g]++
			}
			errs <- errors.New("goroutine never saw the wipe")
		}()
	}
	// Wipe while the goroutines run: they must stop with ErrWiped, not crash or hang.
	warm.Wait()
	if err := p.Wipe(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for g, n := range ops {
		if n < 20 {
			t.Errorf("goroutine %d did only %d round trips before the wipe", g, n)
		}
	}
}
