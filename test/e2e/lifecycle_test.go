package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildMixedTree makes a tree with every kind of entry and attribute the catalog keeps:
// files across block and chunk boundaries, empty files, nested directories with odd modes
// and owners, symlinks, hard links, a FIFO, xattrs, and nanosecond times set last.
func buildMixedTree(t *testing.T, root string) {
	t.Helper()
	must(t, "mkdir", os.MkdirAll(root, 0o755))
	sizes := []int{0, 1, 4095, 4096, 16383, 16385, 4<<20 - 1, 4<<20 + 1, 9 << 20}
	for i, n := range sizes {
		mustWrite(t, filepath.Join(root, fmt.Sprintf("%s-size%d", uniqueName(), n)), markedData(n), 0o644)
		_ = i
	}
	deep := filepath.Join(root, uniqueName(), uniqueName(), uniqueName())
	must(t, "mkdir", os.MkdirAll(deep, 0o755))
	mustWrite(t, filepath.Join(deep, uniqueName()), markedData(50000), 0o600)
	for _, m := range []uint32{0o700, 0o1777, 0o2750, 0o555} {
		d := filepath.Join(root, fmt.Sprintf("%s-mode%o", uniqueName(), m))
		must(t, "mkdir", unix.Mkdir(d, 0o755))
		mustWrite(t, filepath.Join(d, uniqueName()), markedData(100), 0o644)
		must(t, "chmod", unix.Chmod(d, m))
	}
	owned := filepath.Join(root, uniqueName())
	mustWrite(t, owned, markedData(777), 0o640)
	must(t, "chown", unix.Chown(owned, 1000, 1001))
	must(t, "chmod", unix.Chmod(owned, 0o4750))
	orig := filepath.Join(root, uniqueName())
	mustWrite(t, orig, markedData(20000), 0o644)
	must(t, "link", unix.Link(orig, filepath.Join(root, uniqueName())))
	must(t, "link", unix.Link(orig, filepath.Join(deep, uniqueName())))
	must(t, "symlink", unix.Symlink(filepath.Base(orig), filepath.Join(root, uniqueName())))
	must(t, "symlink", unix.Symlink("/absolute/nowhere", filepath.Join(root, uniqueName())))
	must(t, "mkfifo", unix.Mkfifo(filepath.Join(root, uniqueName()), 0o620))
	must(t, "setxattr", unix.Setxattr(orig, "user.one", []byte("value one"), 0))
	must(t, "setxattr", unix.Setxattr(orig, "user.empty", nil, 0))
	must(t, "setxattr", unix.Setxattr(root, "user.dir", []byte("dir value"), 0))
	// Overwrite the middle of a big file and shorten another: both must persist.
	big := filepath.Join(root, uniqueName())
	mustWrite(t, big, markedData(6<<20), 0o644)
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	must(t, "open", err)
	_, err = f.WriteAt(markedData(4096), 2<<20+100)
	must(t, "overwrite", err)
	must(t, "truncate", f.Truncate(5<<20+3))
	must(t, "close", f.Close())
	// Times last, deepest first, so nothing disturbs them afterwards.
	var paths []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeNamedPipe == 0 {
			paths = append(paths, p)
		}
		return nil
	})
	for i := len(paths) - 1; i >= 0; i-- {
		ts := []unix.Timespec{{Sec: 1500000000 + int64(i), Nsec: int64(i*7919) % 1e9}, {Sec: 1600000000 + int64(i), Nsec: int64(i*104729+1) % 1e9}}
		must(t, "utimensat", unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// TestRemountIdentity: the tree after unmount and mount is exactly the tree before
// (contents, sizes, modes, owners, link counts, inode numbers, xattrs, nanosecond times),
// twice, with changes made in between.
func TestRemountIdentity(t *testing.T) {
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		v := newVolume(t, b)
		// ctime is the time of the last change, never a user-set time: set an old mtime on a
		// file whose upload is still pending, and the ctime must survive the remount.
		early := v.P(uniqueName())
		mustWrite(t, early, markedData(1<<20), 0o644)
		must(t, "utimensat", unix.UtimesNanoAt(unix.AT_FDCWD, early, []unix.Timespec{{Sec: 1e9}, {Sec: 1e9, Nsec: 42}}, 0))
		earlySt := lstat(t, early)

		root := v.P(uniqueName())
		buildMixedTree(t, root)
		before := snapshot(t, v.Mnt)
		v.Remount()
		after := snapshot(t, v.Mnt)
		if st := lstat(t, early); st.Ctim != earlySt.Ctim || st.Mtim != earlySt.Mtim {
			t.Errorf("file given an old mtime before its upload: after remount ctime %d (was %d), mtime %d (was %d)",
				st.Ctim.Nano(), earlySt.Ctim.Nano(), st.Mtim.Nano(), earlySt.Mtim.Nano())
		}
		requireSameTree(t, "tree before unmount vs after mount", before, after, identical)
		if a, b := treeDigest(before), treeDigest(after); a != b {
			t.Fatalf("tree checksum %s before unmount, %s after remount", a, b)
		}
		// Change things, and remount again.
		ents, err := os.ReadDir(root)
		must(t, "readdir", err)
		for i, e := range ents {
			p := filepath.Join(root, e.Name())
			switch {
			case i%5 == 0 && e.Type().IsRegular():
				must(t, "remove", os.Remove(p))
			case i%5 == 1 && e.Type().IsRegular():
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				must(t, "open", err)
				_, err = f.Write(markedData(5000))
				must(t, "append", err)
				f.Close()
			case i%5 == 2:
				must(t, "rename", os.Rename(p, filepath.Join(root, uniqueName())))
			}
		}
		buildMixedTree(t, filepath.Join(root, uniqueName()))
		before = snapshot(t, v.Mnt)
		v.Remount()
		after = snapshot(t, v.Mnt)
		requireSameTree(t, "second cycle: tree before unmount vs after mount", before, after, identical)
	})
}

// TestLargeSparseFile writes at offset 5 GiB and checks sizes, holes and data, before and
// after a remount. Local remote only: the S3 path moves the same (few) objects.
func TestLargeSparseFile(t *testing.T) {
	v := newVolume(t, localRemote)
	p := v.P(uniqueName())
	const off = 5 << 30
	data := markedData(100000)
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_RDWR, 0o644)
	must(t, "create", err)
	n, err := unix.Pwrite(fd, data, off)
	must(t, "pwrite at 5 GiB", err)
	if n != len(data) {
		t.Fatalf("short write at 5 GiB: %d", n)
	}
	head := markedData(1000)
	_, err = unix.Pwrite(fd, head, 0)
	must(t, "pwrite at 0", err)
	check := func(when string, fd int) {
		t.Helper()
		var st unix.Stat_t
		must(t, "fstat", unix.Fstat(fd, &st))
		if st.Size != off+int64(len(data)) {
			t.Fatalf("%s: size %d, want %d", when, st.Size, off+len(data))
		}
		sameBytes(t, when+": data at 5 GiB", preadN(t, fd, off, len(data)+10), data)
		sameBytes(t, when+": data at 0", preadN(t, fd, 0, 1000), head)
		for _, o := range []int64{1000, 4<<30 - 10, 4 << 30, off - 8192} {
			if b := preadN(t, fd, o, 8192); !isZero(b) || len(b) != 8192 {
				t.Errorf("%s: hole at %d does not read as 8192 zeros", when, o)
			}
		}
		if d, err := unix.Seek(fd, 4096, unix.SEEK_DATA); err != nil || d < 4096 || d > off {
			t.Errorf("%s: SEEK_DATA from 4096: %d %v", when, d, err)
		}
		if st.Blocks*512 > 1<<30 {
			t.Errorf("%s: the sparse file occupies %d blocks (%d MiB): holes are materialized", when, st.Blocks, st.Blocks*512>>20)
		}
	}
	check("before remount", fd)
	unix.Close(fd)
	v.Remount()
	fd, err = unix.Open(p, unix.O_RDWR, 0)
	must(t, "open", err)
	check("after remount", fd)
	// Truncate across the 4 GiB line, then grow again: the old data must not come back.
	must(t, "ftruncate", unix.Ftruncate(fd, 4<<30+5))
	must(t, "ftruncate up", unix.Ftruncate(fd, off+int64(len(data))))
	if b := preadN(t, fd, off, len(data)); !isZero(b) {
		t.Error("data past a truncation came back after growing the file again")
	}
	unix.Close(fd)
	must(t, "unlink", unix.Unlink(p))
	// The objects of a 5 GiB sparse file are few: the remote must not hold gigabytes.
	var total int64
	_ = filepath.WalkDir(v.RemoteDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	if total > 256<<20 {
		t.Errorf("the remote holds %d MiB for a sparse file with 100 KiB of data", total>>20)
	}
}

// TestMountLifecycle covers the daemon's life: one daemon per catalog, read-only mounts,
// unmounting by fusermount3 -u, SIGTERM and SIGINT (all exit 0 and keep the data), a wrong
// PIN, the PIN not lingering in the daemon's environment, and --foreground.
func TestMountLifecycle(t *testing.T) {
	v := newVolume(t, localRemote, withLogErrorsAllowed())
	files := map[string][]byte{}
	write := func(what string) {
		t.Helper()
		p := v.P(uniqueName())
		files[p] = markedData(200000)
		mustWrite(t, p, files[p], 0o644) // no fsync: unmounting must flush it
	}
	verify := func(when string) {
		t.Helper()
		for p, want := range files {
			sameBytes(t, when+": "+filepath.Base(p), mustRead(t, p), want)
		}
	}
	write("first")

	t.Run("second-mount-refused", func(t *testing.T) {
		if plainMode {
			return
		}
		other := filepath.Join(v.Dir, "mnt2")
		must(t, "mkdir", os.Mkdir(other, 0o755))
		r := v.run(mountTimeout, "mount", "--state", v.State, "--hsm-pin-file", v.PINFile, other)
		if m, _ := isMounted(other); m {
			exec1("fusermount3", "-u", "-z", other)
			t.Fatalf("a second daemon mounted the same catalog at %s (%s)", other, r)
		}
		oneErrorLine(t, r)
	})

	t.Run("wrong-pin", func(t *testing.T) {
		if plainMode {
			return
		}
		must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
		bad := filepath.Join(v.Dir, "bad-pin")
		mustWrite(t, bad, []byte("000000"), 0o600)
		r := v.run(mountTimeout, "mount", "--state", v.State, "--hsm-pin-file", bad, v.Mnt)
		if m, _ := isMounted(v.Mnt); m {
			exec1("fusermount3", "-u", "-z", v.Mnt)
			t.Fatalf("mounted with a wrong PIN (%s)", r)
		}
		oneErrorLine(t, r)
		if strings.Contains(r.stderr, "000000") {
			t.Errorf("the error repeats the PIN: %s", r.stderr)
		}
		v.Mount()
		verify("after a refused mount")
	})

	t.Run("read-only", func(t *testing.T) {
		if plainMode {
			return
		}
		must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
		v.Mount("--read-only")
		verify("read-only mount")
		_, err := unix.Open(v.P(uniqueName()), unix.O_CREAT|unix.O_WRONLY, 0o644)
		errIs(t, "create on a read-only mount", err, unix.EROFS)
		errIs(t, "mkdir on a read-only mount", unix.Mkdir(v.P(uniqueName()), 0o755), unix.EROFS)
		for p := range files {
			_, err := unix.Open(p, unix.O_WRONLY, 0)
			errIs(t, "open for writing on a read-only mount", err, unix.EROFS)
			errIs(t, "chmod on a read-only mount", unix.Chmod(p, 0o600), unix.EROFS)
			break
		}
		must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
		v.Mount()
	})

	t.Run("fusermount3-u", func(t *testing.T) {
		if plainMode {
			return
		}
		write("before fusermount3 -u")
		d := v.Daemon()
		if out, err := exec1("fusermount3", "-u", v.Mnt); err != nil {
			t.Fatalf("fusermount3 -u: %v %s", err, out)
		}
		expectCleanExit(t, v, d, "fusermount3 -u")
		v.Mount()
		verify("after fusermount3 -u and mount")
	})

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			if plainMode {
				return
			}
			write("before " + sig.String())
			d := v.Daemon()
			must(t, "signal", d.proc.Signal(sig))
			expectCleanExit(t, v, d, sig.String())
			v.Mount()
			verify("after " + sig.String() + " and mount")
		})
	}

	t.Run("pin-not-in-daemon-environment", func(t *testing.T) {
		if plainMode {
			return
		}
		must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
		v.pinInEnv = true
		defer func() { v.pinInEnv = false }()
		v.Mount()
		d := v.Daemon()
		for _, f := range []string{"environ", "cmdline"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", d.pid, f))
			must(t, "read /proc", err)
			if bytes.Contains(b, v.Token.PIN) {
				t.Errorf("the daemon's /proc/%d/%s holds the PIN", d.pid, f)
			}
		}
		verify("mounted with the PIN from the environment")
		write("pin from env")
	})

	t.Run("foreground", func(t *testing.T) {
		if plainMode {
			return
		}
		must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
		v.opts.foreground = true
		defer func() { v.opts.foreground = false }()
		v.Mount()
		write("foreground")
		verify("foreground mount")
		must(t, "unmount", boolErr(v.Unmount(), "unmount of a --foreground mount failed"))
		v.opts.foreground = false
		v.Mount()
		verify("after a foreground mount")
	})
}

// expectCleanExit waits for the daemon to exit on its own after an external unmount or a
// signal, and checks that it exited 0 and the mount is gone.
func expectCleanExit(t *testing.T, v *Volume, d *daemon, why string) {
	t.Helper()
	st, ok := v.waitDaemonExit(d, unmountTimeout)
	if !ok {
		v.forceUnmount()
		t.Fatalf("daemon still running %v after %s", unmountTimeout, why)
	}
	if st == nil || st.ExitCode() != 0 {
		v.forceUnmount()
		t.Fatalf("daemon exit after %s: %v, want 0%s", why, exitText(d), v.logHint())
	}
	if m, _ := isMounted(v.Mnt); m {
		v.forceUnmount()
		t.Fatalf("%s still mounted after the daemon exited (%s)", v.Mnt, why)
	}
}

// oneErrorLine checks the CLI contract for a failure: non-zero exit, one line on stderr.
func oneErrorLine(t *testing.T, r result) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("%s: exit 0, want a failure", strings.Join(r.args, " "))
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "coffer ") {
		t.Errorf("coffer %s: stderr is not one 'coffer ...' line:\n%s", r.args[0], r.stderr)
	}
}

func boolErr(ok bool, msg string) error {
	if ok {
		return nil
	}
	return fmt.Errorf("%s", msg)
}

func exec1(name string, args ...string) (string, error) {
	return shErr("/", nil, 30*time.Second, name, args...)
}
