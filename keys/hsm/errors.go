package hsm

import (
	"debug/elf"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/miekg/pkcs11"

	"coffer/keys"
)

// checkModule makes sure path is a PKCS#11 module that is safe and able to load, before
// crypto11 dlopens it: loading runs the module's code as whoever runs coffer, a failed dlopen
// comes back from the binding with no reason at all, and a module whose C_GetFunctionList is
// missing or fails would crash the binding. In order, and before any of the module's code
// runs: the path, every directory and link on it and the file must be safe (modpath.go); the
// file must be an ELF shared library for this machine exporting a function
// C_GetFunctionList. Then the module is loaded and C_GetFunctionList called (probeModule).
// It returns the module's real path, which is what must be loaded, and a release func to
// call once the binding has loaded it.
func checkModule(path string) (real string, release func(), err error) {
	if path == "" {
		return "", nil, keys.Errorf(keys.ErrModule, "cannot load PKCS#11 module: no module path given")
	}
	fail := func(why string) error {
		if real != "" && real != path {
			why = fmt.Sprintf("%s (the path resolves to %s)", why, real)
		}
		return keys.Errorf(keys.ErrModule, "cannot load PKCS#11 module %s: %s", path, why)
	}
	real, err = resolveModule(path)
	if err != nil {
		return "", nil, fail(err.Error())
	}
	f, err := elf.Open(real)
	if err != nil {
		return "", nil, fail("not an ELF shared library")
	}
	defer f.Close()
	if f.Type != elf.ET_DYN {
		return "", nil, fail("not a shared library")
	}
	if want, ok := elfMachine[runtime.GOARCH]; ok && f.Machine != want {
		return "", nil, fail(fmt.Sprintf("built for %s, this is %s", strings.TrimPrefix(f.Machine.String(), "EM_"), runtime.GOARCH))
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return "", nil, fail("cannot read its symbols: " + err.Error())
	}
	found := false
	for _, s := range syms {
		if s.Name != "C_GetFunctionList" || s.Section == elf.SHN_UNDEF {
			continue
		}
		if t := elf.ST_TYPE(s.Info); t != elf.STT_FUNC && t != elf.STT_GNU_IFUNC {
			return "", nil, fail("its C_GetFunctionList is not a function (not a PKCS#11 module)")
		}
		found = true
	}
	if !found {
		return "", nil, fail("it has no C_GetFunctionList (not a PKCS#11 module)")
	}
	release, why := probeModule(real)
	if why != "" {
		return "", nil, fail(why)
	}
	return real, release, nil
}

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM,
	"riscv64": elf.EM_RISCV, "ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390,
}

// p11Code extracts the PKCS#11 return value from an error. crypto11 sometimes wraps the
// binding's pkcs11.Error and sometimes only formats it ("C_Decrypt: pkcs11: 0x5: ..."), so
// the text is parsed as a fallback.
func p11Code(err error) (pkcs11.Error, bool) {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return pe, true
	}
	if m := codeRE.FindStringSubmatch(err.Error()); m != nil {
		if v, perr := strconv.ParseUint(m[1], 16, 64); perr == nil {
			return pkcs11.Error(v), true
		}
	}
	return 0, false
}

var codeRE = regexp.MustCompile(`pkcs11: 0x([0-9A-Fa-f]+)`)

// configureError turns a crypto11.Configure failure into a clear, PIN-free error.
func configureError(module, token string, err error) error {
	msg := err.Error()
	if code, ok := p11Code(err); ok {
		switch code {
		case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
			return keys.Errorf(keys.ErrWrongPIN, "wrong PIN for token %q", token)
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("hsm: the PIN of token %q is locked (too many wrong PINs): the security officer must unlock it", token)
		case pkcs11.CKR_PIN_EXPIRED:
			return fmt.Errorf("hsm: the PIN of token %q has expired: set a new one", token)
		case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
			return fmt.Errorf("hsm: token %q has no user PIN yet: initialize it first", token)
		}
		if strings.Contains(msg, "initialize") {
			return keys.Errorf(keys.ErrModule, "cannot load PKCS#11 module %s: C_Initialize failed: %s", module, code)
		}
		return fmt.Errorf("hsm: open token %q: %s", token, code)
	}
	switch {
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return keys.Errorf(keys.ErrTokenNotFound, "token %q not found by PKCS#11 module %s (no initialized token has that label)", token, module)
	case strings.Contains(msg, "could not open PKCS#11"):
		// checkModule's probe has loaded it already and reported any loader error; this
		// is the binding failing after that.
		return keys.Errorf(keys.ErrModule, "cannot load PKCS#11 module %s: the module did not load", module)
	}
	return fmt.Errorf("hsm: open token %q: %s", token, msg)
}

// opError classifies an error from a key operation on ref.
func (p *Provider) opError(op string, ref keys.KEKRef, err error) error {
	code, ok := p11Code(err)
	if !ok {
		return fmt.Errorf("hsm: %s with KEK %s on token %q: %v", op, ref, p.token, err)
	}
	switch code {
	case pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID:
		return keys.Errorf(keys.ErrKEKMissing, "hsm: KEK %s is gone from token %q (destroyed)", ref, p.token)
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		if op == "open" {
			// SoftHSM reports a GCM tag mismatch as CKR_GENERAL_ERROR.
			return keys.Errorf(keys.ErrUnwrap, "hsm: KEK %s: authentication failed (wrong key or tampered record)", ref)
		}
	case pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED:
		return fmt.Errorf("hsm: %s with KEK %s: token %q is not available (%s)", op, ref, p.token, code)
	}
	return fmt.Errorf("hsm: %s with KEK %s on token %q: %s", op, ref, p.token, code)
}
