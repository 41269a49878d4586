package hsm

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"coffer/keys"
	"coffer/test/softhsm"
)

// copyModule copies SoftHSM's module into dir/name with the given mode.
func copyModule(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	src, err := os.Open(softhsm.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	p := filepath.Join(dir, name)
	dst, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func mkdir(t *testing.T, p string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUnsafeModuleRefused: a module that someone other than root or the user running coffer
// could replace (the file, a directory on its path, or a link followed, owned by another
// user or writable by group or others) is refused before it is loaded, with a message that
// names the path, the owner or mode and what to do. The system module, and a safe copy, pass.
func TestUnsafeModuleRefused(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	const nobody = 65534
	dir := t.TempDir()

	safeDir := mkdir(t, filepath.Join(dir, "safe"), 0o755)
	safe := copyModule(t, safeDir, "libsofthsm2.so", 0o755)

	type tc struct {
		name, module string
		want         []string // each in the message
		needRoot     bool
	}
	cases := []tc{
		{name: "group-writable file", module: copyModule(t, safeDir, "gw.so", 0o775),
			want: []string{"the module file " + filepath.Join(safeDir, "gw.so") + " is writable by its group", "mode 0775", "chmod go-w"}},
		{name: "other-writable file", module: copyModule(t, safeDir, "ow.so", 0o757),
			want: []string{"is writable by others", "mode 0757", "chmod go-w"}},
		{name: "group- and other-writable file", module: copyModule(t, safeDir, "gow.so", 0o777),
			want: []string{"is writable by group and others", "mode 0777"}},
	}
	// A directory on the path that group or others can write.
	gwDir := mkdir(t, filepath.Join(dir, "gwdir"), 0o775)
	cases = append(cases, tc{name: "group-writable directory", module: copyModule(t, gwDir, "m.so", 0o755),
		want: []string{"directory " + gwDir + " is writable by its group", "mode 0775", "chmod go-w " + gwDir}})
	owParent := mkdir(t, filepath.Join(dir, "owparent"), 0o777)
	owChild := mkdir(t, filepath.Join(owParent, "child"), 0o755)
	cases = append(cases, tc{name: "other-writable grandparent", module: copyModule(t, owChild, "m.so", 0o755),
		want: []string{"directory " + owParent + " is writable by group and others", "mode 0777"}})
	// Symbolic links: the real file is checked, and so is the directory holding the link.
	linkToBad := filepath.Join(safeDir, "link-to-gw.so")
	if err := os.Symlink("gw.so", linkToBad); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, tc{name: "safe link to a group-writable file", module: linkToBad,
		want: []string{"the module file " + filepath.Join(safeDir, "gw.so") + " is writable by its group"}})
	linkInBad := filepath.Join(gwDir, "link.so")
	if err := os.Symlink(safe, linkInBad); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, tc{name: "link to a safe file in a group-writable directory", module: linkInBad,
		want: []string{"directory " + gwDir + " is writable by its group"}})
	// A link through a writable directory in the middle of a chain.
	hop := filepath.Join(gwDir, "hop.so")
	if err := os.Symlink(safe, hop); err != nil {
		t.Fatal(err)
	}
	chain := filepath.Join(safeDir, "chain.so")
	if err := os.Symlink(hop, chain); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, tc{name: "chain of links through a group-writable directory", module: chain,
		want: []string{"directory " + gwDir + " is writable by its group"}})
	cases = append(cases, tc{name: "relative path", module: "libsofthsm2.so", want: []string{"the path is not absolute"}})

	// Another owner (needs root to chown).
	nobodyFile := copyModule(t, safeDir, "nobody.so", 0o755)
	nobodyDir := mkdir(t, filepath.Join(dir, "nobodydir"), 0o755)
	inNobodyDir := copyModule(t, nobodyDir, "m.so", 0o755)
	sticky := mkdir(t, filepath.Join(dir, "sticky"), 0o777|os.ModeSticky)
	nobodyLink := filepath.Join(sticky, "nobody-link.so")
	if err := os.Symlink(safe, nobodyLink); err != nil {
		t.Fatal(err)
	}
	if root {
		for _, p := range []string{nobodyFile, nobodyDir} {
			if err := os.Chown(p, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Lchown(nobodyLink, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	cases = append(cases,
		tc{name: "file owned by uid 65534", module: nobodyFile, needRoot: true,
			want: []string{"the module file " + nobodyFile + " is owned by uid 65534, not by root or by the user running coffer (uid 0)", "chown root " + nobodyFile}},
		tc{name: "directory owned by uid 65534", module: inNobodyDir, needRoot: true,
			want: []string{"directory " + nobodyDir + " is owned by uid 65534"}},
		tc{name: "link owned by uid 65534 in a sticky directory", module: nobodyLink, needRoot: true,
			want: []string{"symbolic link " + nobodyLink + " is owned by uid 65534"}},
	)

	for _, c := range cases {
		if c.needRoot && !root {
			t.Logf("%s: skipped (chown needs root)", c.name)
			continue
		}
		_, err := New(Config{Module: c.module, Token: "no-such-token", PIN: []byte("1234"), Volume: randomVolume()})
		if !errors.Is(err, keys.ErrModule) {
			t.Errorf("%s: got %v, want ErrModule", c.name, err)
			continue
		}
		msg := err.Error()
		t.Logf("%s: %s", c.name, msg)
		if !strings.HasPrefix(msg, "cannot load PKCS#11 module "+c.module+": ") {
			t.Errorf("%s: message does not start with the module's path: %s", c.name, msg)
		}
		if c.module != "libsofthsm2.so" && !strings.Contains(msg, "refusing to load it") {
			t.Errorf("%s: message does not say it refuses: %s", c.name, msg)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message does not say %q", c.name, w)
			}
		}
		if strings.ContainsRune(msg, '\n') {
			t.Errorf("%s: message spans lines", c.name)
		}
	}

	// Accepted: the system module (through its own symbolic link), a safe copy, a safe copy
	// in a sticky directory, a root- or self-owned link in a sticky directory.
	inSticky := copyModule(t, sticky, "m.so", 0o755)
	ownLink := filepath.Join(sticky, "own-link.so")
	if err := os.Symlink(safe, ownLink); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{softhsm.Module, safe, inSticky, ownLink} {
		real, release, err := checkModule(m)
		if err != nil {
			t.Errorf("%s refused: %v", m, err)
			continue
		}
		release()
		if r, _ := filepath.EvalSymlinks(m); r != real {
			t.Errorf("%s: real path %s, want %s", m, real, r)
		}
	}
	// The system module still opens a token.
	openP(t, shared(t), randomVolume())
}

// TestBrokenFunctionList builds modules with gcc whose C_GetFunctionList is missing, not a
// function, fails, returns no list, or a list without C_Initialize: each must be a clear
// error (the binding calls C_GetFunctionList without looking at its result and then calls
// through the list, so before the probe these crashed the process with SIGSEGV).
func TestBrokenFunctionList(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc not installed: run make test (it installs it)")
	}
	dir := t.TempDir()
	build := func(name, src string) string {
		t.Helper()
		c := filepath.Join(dir, name+".c")
		if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		so := filepath.Join(dir, name+".so")
		if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", so, c).CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", name, err, out)
		}
		return so
	}
	const list = `
typedef unsigned long CK_RV;
struct fl { unsigned char major, minor; void *fn[68]; };
static struct fl list;
static CK_RV unsupported(void) { return 0x54; }
static void fill(void) {
	list.major = 2; list.minor = 40;
	for (int i = 0; i < 68; i++) list.fn[i] = (void *)unsupported;
}
`
	for _, c := range []struct{ name, src, want string }{
		{"nosym", "int coffer_something_else(void) { return 0; }\n",
			"it has no C_GetFunctionList (not a PKCS#11 module)"},
		{"datasym", "unsigned long C_GetFunctionList[4] = {1, 2, 3, 4};\n",
			"its C_GetFunctionList is not a function (not a PKCS#11 module)"},
		{"generalerror", list + "CK_RV C_GetFunctionList(struct fl **pp) { return 0x5; }\n",
			"its C_GetFunctionList failed (pkcs11: 0x5: CKR_GENERAL_ERROR)"},
		{"nolist", list + "CK_RV C_GetFunctionList(struct fl **pp) { *pp = 0; return 0; }\n",
			"its C_GetFunctionList returned no function list"},
		{"noinit", list + "CK_RV C_GetFunctionList(struct fl **pp) { fill(); list.fn[0] = 0; *pp = &list; return 0; }\n",
			"its function list has no C_Initialize (a NULL entry)"},
		{"nosign", list + "CK_RV C_GetFunctionList(struct fl **pp) { fill(); list.fn[42] = 0; *pp = &list; return 0; }\n",
			"its function list has no C_SignInit (a NULL entry)"},
		{"version1", list + "CK_RV C_GetFunctionList(struct fl **pp) { fill(); list.major = 1; *pp = &list; return 0; }\n",
			"its function list is for PKCS#11 version 1, want 2 or later"},
	} {
		t.Run(c.name, func(t *testing.T) {
			so := build(c.name, c.src)
			_, err := New(Config{Module: so, Token: "t", PIN: []byte("1234"), Volume: randomVolume()})
			if !errors.Is(err, keys.ErrModule) {
				t.Fatalf("got %v, want ErrModule", err)
			}
			t.Logf("message: %s", err)
			if want := "cannot load PKCS#11 module " + so + ": " + c.want; err.Error() != want {
				t.Errorf("message %q, want %q", err, want)
			}
		})
	}
}
