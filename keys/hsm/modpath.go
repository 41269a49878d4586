package hsm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A PKCS#11 module is a shared library: loading it runs its code as whoever runs coffer
// (often root), and its path comes from the catalog. So before anything loads it,
// resolveModule follows the path the way the kernel would and refuses it unless every
// directory it is looked up in, every symbolic link on the way and the file itself are owned
// by root or by this process's effective user and are not writable by group or others.
// Nobody else can then replace the file between the check and the load. A directory with the
// sticky bit (such as /tmp) may be writable by others: they cannot rename or delete entries
// they do not own, and every entry used is checked to be root's or ours.

// maxSymlinks is the kernel's limit (ELOOP) on links followed while resolving one path.
const maxSymlinks = 40

// unsafeModuleError is why the module at path must not be loaded: what (a file, directory
// or link on its path) is owned or writable by someone else.
type unsafeModuleError struct {
	what, path string // what: "the module file", "directory", "symbolic link"
	uid        uint32
	mode       fs.FileMode
	owner      bool // the owner is wrong (else the mode is)
}

func (e *unsafeModuleError) Error() string {
	if e.owner {
		return fmt.Sprintf("refusing to load it: %s %s is owned by uid %d, not by root or by the user running coffer (uid %d): "+
			"whoever owns it can replace the module and run code as that user; have root own it (chown root %s), "+
			"or use a module installed by the system's package manager",
			e.what, e.path, e.uid, os.Geteuid(), e.path)
	}
	who := "group and others"
	switch {
	case e.mode&0o020 == 0:
		who = "others"
	case e.mode&0o002 == 0:
		who = "its group"
	}
	return fmt.Sprintf("refusing to load it: %s %s is writable by %s (mode %04o, owner uid %d): "+
		"whoever can write it can replace the module and run code as the user running coffer; "+
		"make it writable only by its owner (chmod go-w %s), or use a module installed by the system's package manager",
		e.what, e.path, who, e.mode.Perm(), e.uid, e.path)
}

// checkEntry refuses fi (at path) unless root or euid owns it and, unless it is a symbolic
// link (whose own mode means nothing) or a sticky directory, neither group nor others may
// write it.
func checkEntry(what, path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("cannot check the owner of %s", path)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return &unsafeModuleError{what: what, path: path, uid: st.Uid, mode: fi.Mode(), owner: true}
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	if fi.Mode().Perm()&0o022 != 0 && !(fi.IsDir() && fi.Mode()&fs.ModeSticky != 0) {
		return &unsafeModuleError{what: what, path: path, uid: st.Uid, mode: fi.Mode()}
	}
	return nil
}

// resolveModule returns the real path of the module at path (no symbolic links left) after
// checking, as described above, every directory looked up, every link followed and the file
// itself. The file must be a regular file; path must be absolute (a bare name or relative
// path would be looked up in the current directory or the loader's search path, which can
// differ from one run to the next).
func resolveModule(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("the path is not absolute: a relative path or bare name is looked up in the current " +
			"directory or the dynamic loader's search path; give the module's full path (e.g. /usr/lib/softhsm/libsofthsm2.so)")
	}
	checked := map[string]bool{}
	checkDir := func(dir string) error {
		if checked[dir] {
			return nil
		}
		fi, err := os.Lstat(dir) // dir never contains a symbolic link
		if err != nil {
			return lookupError(err)
		}
		if err := checkEntry("directory", dir, fi); err != nil {
			return err
		}
		checked[dir] = true
		return nil
	}
	rest := splitPath(path)
	cur, links := "/", 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		// c is looked up in cur: whoever can write cur decides what c is.
		if err := checkDir(cur); err != nil {
			return "", err
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", lookupError(err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if err := checkEntry("symbolic link", next, fi); err != nil {
				return "", err
			}
			if links++; links > maxSymlinks {
				return "", errors.New("too many levels of symbolic links")
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", lookupError(err)
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			rest = append(splitPath(target), rest...)
			continue // a relative target is resolved in cur, the link's own directory
		}
		if len(rest) > 0 && !fi.IsDir() {
			return "", fmt.Errorf("%s is not a directory", next)
		}
		cur = next
	}
	fi, err := os.Lstat(cur)
	if err != nil {
		return "", lookupError(err)
	}
	switch {
	case fi.IsDir():
		return "", errors.New("is a directory")
	case !fi.Mode().IsRegular():
		return "", errors.New("not a regular file")
	}
	if err := checkEntry("the module file", cur, fi); err != nil {
		return "", err
	}
	return cur, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

func lookupError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errors.New("no such file (is the HSM's package installed? for SoftHSM2: apt-get install softhsm2)")
	case errors.Is(err, fs.ErrPermission):
		return errors.New("permission denied")
	case errors.Is(err, syscall.ENOTDIR):
		return errors.New("a component of the path is not a directory")
	}
	return err
}
