package e2e

import (
	"bytes"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/hsm"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The restore tests lose a host for real: the daemon is SIGKILLed right after an fsync, its
// state folder (catalog, staging) deleted, and `coffer restore` rebuilds a state folder from
// the catalog replica on the remote (objects under r/<epoch>/, FORMAT.md 12). Then the
// restored volume is mounted and checked against what was fsynced, the old host's catalog
// is fenced off, restore's refusals and the replica's tamper evidence are checked, and the
// replica objects are scanned for plaintext.

// restoreTimeout bounds one coffer restore (a few small replica objects).
const restoreTimeout = 60 * time.Second

// restoreOutput is what `coffer restore` printed on success.
type restoreOutput struct {
	volume     string   // "restored coffer volume ID"
	position   uint64   // "restored to: ... (position N)"
	objects    int      // "read: N replica objects"
	inodes     int      // "catalog: N inodes"
	epoch      uint32   // "owner epoch now N"
	dropped    string   // the warning's newest object that was left out ("" if none)
	unuploaded []string // paths listed as never uploaded
}

var (
	reRestoredTo = regexp.MustCompile(`(?m)^  restored to: the catalog as replicated at (\S+) \(position (\d+)\)$`)
	reRead       = regexp.MustCompile(`(?m)^  read:\s+(\d+) replica objects, (\d+) bytes$`)
	reCatalog    = regexp.MustCompile(`(?m)^  catalog:\s+(\d+) inodes; owner epoch now (\d+) `)
	reDropped    = regexp.MustCompile(`(?m)^  warning:\s+the newest replica object (r/\S+) did not open and was left out`)
	reUnuploaded = regexp.MustCompile(`(?m)^  (\d+) files had writes staged on the lost host that never reached the remote`)
)

// restore runs `coffer restore` of this volume's keys from remote into state.
func (v *Volume) restore(state, remote string, keyArgs ...string) result {
	v.t.Helper()
	if keyArgs == nil {
		keyArgs = v.keyArgs()
	}
	return v.run(restoreTimeout, append([]string{"restore", "--state", state, "--remote", remote}, keyArgs...)...)
}

// mustRestore runs a restore that must succeed and parses its summary.
func (v *Volume) mustRestore(t *testing.T, state, remote string) restoreOutput {
	t.Helper()
	r := v.restore(state, remote)
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	return parseRestore(t, r, state)
}

func parseRestore(t *testing.T, r result, state string) restoreOutput {
	t.Helper()
	var o restoreOutput
	out := r.stdout
	bad := func(what string) { t.Fatalf("coffer restore: summary has no %s line:\n%s", what, out) }
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "restored coffer volume ") {
		bad("'restored coffer volume ID'")
	}
	o.volume = strings.TrimPrefix(lines[0], "restored coffer volume ")
	if !strings.Contains(out, "\n  state:     "+state+"\n") {
		bad("'state: " + state + "'")
	}
	if !strings.Contains(out, "\n  remote:    ") {
		bad("remote")
	}
	m := reRestoredTo.FindStringSubmatch(out)
	if m == nil {
		bad("'restored to: ... (position N)'")
	}
	if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
		t.Errorf("coffer restore: 'restored to' time %q is not RFC 3339: %v", m[1], err)
	}
	o.position, _ = strconv.ParseUint(m[2], 10, 64)
	if m = reRead.FindStringSubmatch(out); m == nil {
		bad("'read: N replica objects, N bytes'")
	}
	o.objects, _ = strconv.Atoi(m[1])
	if m = reCatalog.FindStringSubmatch(out); m == nil {
		bad("'catalog: N inodes; owner epoch now N'")
	}
	o.inodes, _ = strconv.Atoi(m[1])
	e, _ := strconv.ParseUint(m[2], 10, 32)
	o.epoch = uint32(e)
	if m = reDropped.FindStringSubmatch(out); m != nil {
		o.dropped = m[1]
	}
	if m = reUnuploaded.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[1])
		rest := out[strings.Index(out, m[0])+len(m[0]):]
		for _, l := range strings.Split(rest, "\n")[1:] {
			if !strings.HasPrefix(l, "    /") {
				break
			}
			o.unuploaded = append(o.unuploaded, strings.TrimPrefix(l, "    "))
		}
		if len(o.unuploaded) != n {
			t.Errorf("coffer restore says %d files were never uploaded but lists %d:\n%s", n, len(o.unuploaded), out)
		}
	}
	if o.volume == "" || o.objects < 1 || o.inodes < 1 {
		t.Errorf("coffer restore: implausible summary:\n%s", out)
	}
	return o
}

// volMarker is the remote's volume marker (coffer-volume).
type volMarker struct {
	Coffer string `json:"coffer_volume"`
	Epoch  uint32 `json:"epoch"`
}

// objDir is the folder that holds this volume's objects (its marker's folder) under
// RemoteDir, whatever the backend.
func (v *Volume) objDir(t testing.TB) string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(v.RemoteDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() == "coffer-volume" {
			found = append(found, filepath.Dir(p))
		}
		return nil
	})
	if len(found) != 1 {
		t.Fatalf("want one volume marker under %s, found %d: %v", v.RemoteDir, len(found), found)
	}
	return found[0]
}

func readMarker(t testing.TB, dir string) volMarker {
	t.Helper()
	var m volMarker
	must(t, "parse the volume marker", json.Unmarshal(mustRead(t, filepath.Join(dir, "coffer-volume")), &m))
	return m
}

// replicaObjects lists the replica objects of epoch e in objects folder dir, by name
// (r/<E>/<P>.d or r/<E>/<P>.s.<k>), sorted.
func replicaObjects(dir string, e uint32) []string {
	var out []string
	ents, _ := os.ReadDir(filepath.Join(dir, "r", fmt.Sprintf("%08x", e)))
	for _, en := range ents {
		if en.Type().IsRegular() {
			out = append(out, fmt.Sprintf("r/%08x/%s", e, en.Name()))
		}
	}
	slices.Sort(out)
	return out
}

// deltas returns the delta objects among names, in position order.
func deltas(names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, ".d") {
			out = append(out, n)
		}
	}
	return out // zero-padded hex positions: name order is position order
}

// copyTree copies the regular files, directories and symlinks under src to dst.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, info.Mode().Perm())
		case d.Type().IsRegular():
			return copyFile(p, to, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		}
		return nil // sockets, FIFOs: nothing coffer keeps in a state folder or remote
	})
	must(t, "copy "+src, err)
}

// writeFile creates p with data, fsyncing it if sync.
func writeFile(t testing.TB, p string, data []byte, sync bool) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	must(t, "create "+p, err)
	_, err = f.Write(data)
	must(t, "write "+p, err)
	if sync {
		must(t, "fsync "+p, f.Sync())
	}
	must(t, "close "+p, f.Close())
}

func fsyncDir(t testing.TB, p string) {
	t.Helper()
	d, err := os.Open(p)
	must(t, "open directory "+p, err)
	defer d.Close()
	must(t, "fsync directory "+p, d.Sync())
}

// emptyOrAbsent fails unless dir does not exist or holds nothing.
func emptyOrAbsent(t testing.TB, what, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err == nil && len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s left %s holding %v", what, dir, names)
	}
}

// drillBackends are the remotes the host-loss drill runs on.
var drillBackends = []backend{localRemote, s3Remote, sftpRemote}

// TestHostLossDrill loses the host right after an fsync: files fsynced, a directory
// fsynced, files never synced; SIGKILL to the daemon, the whole state folder deleted,
// `coffer restore` into a new one, and the restored volume mounted. Everything fsynced is
// there byte for byte; each file never synced is absent, intact, or listed by restore as
// never uploaded, and a listed file then reads as restore says (EIO until fsck --repair),
// never as other data without an error. The new host then writes, unmounts and mounts
// again: its own replication works.
func TestHostLossDrill(t *testing.T) {
	forMatrix(t, drillBackends, allProviders, func(t *testing.T, b backend, prov provider) {
		if plainMode {
			t.Skip("needs the coffer daemon")
		}
		v := newVolume(t, b, withProvider(prov), withLogErrorsAllowed()) // reads of lost data log their EIO
		rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		size := func() int { return 1 + rng.IntN(60<<10) } // one FUSE write each
		synced := map[string][]byte{}                      // path -> content promised by fsync
		// path -> content never synced, and the content an earlier fsync promised (nil: none)
		type unsyncedFile struct{ want, old []byte }
		unsynced := map[string]unsyncedFile{}

		// Never synced, written early: most likely uploaded by the time of the loss.
		early := v.P(uniqueName())
		unsynced[early] = unsyncedFile{want: markedData(size())}
		writeFile(t, early, unsynced[early].want, false)
		for range 3 {
			p := v.P(uniqueName())
			synced[p] = markedData(size())
			writeFile(t, p, synced[p], true)
		}
		over := v.P(uniqueName()) // fsynced now, overwritten in place later without a sync
		overOld := markedData(size())
		writeFile(t, over, overOld, true)
		// A directory fsync: a file fsynced, then renamed into a new directory holding an
		// empty file and a subdirectory; the fsync of that directory makes the names durable.
		dir := v.P(uniqueName())
		must(t, "mkdir", os.Mkdir(dir, 0o755))
		moved := v.P(uniqueName())
		movedData := markedData(size())
		writeFile(t, moved, movedData, true)
		movedTo := filepath.Join(dir, uniqueName())
		must(t, "rename", os.Rename(moved, movedTo))
		synced[movedTo] = movedData
		emptyFile := filepath.Join(dir, uniqueName())
		writeFile(t, emptyFile, nil, false)
		subdir := filepath.Join(dir, uniqueName())
		must(t, "mkdir", os.Mkdir(subdir, 0o700))
		fsyncDir(t, dir)
		// Never synced, written just before the last fsync and still open at the loss: a new
		// file, the fsynced file overwritten in place, and a new file written and closed
		// while a second descriptor keeps it open (the close records its size in the
		// catalog). Their names and staged chunks are in the replicated catalog, their data
		// is still staged (a dirty chunk of an open file waits 2 s before it uploads).
		mid, sized := v.P(uniqueName()), v.P(uniqueName())
		unsynced[mid] = unsyncedFile{want: markedData(size())}
		unsynced[over] = unsyncedFile{want: markedData(len(overOld)), old: overOld}
		unsynced[sized] = unsyncedFile{want: markedData(size())}
		for _, p := range []string{mid, over, sized} {
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
			must(t, "open "+p, err)
			defer f.Close() // after the loss: ENOTCONN
			_, err = f.WriteAt(unsynced[p].want, 0)
			must(t, "write "+p, err)
			if p == sized {
				keep, err := os.Open(p)
				must(t, "open "+p, err)
				defer keep.Close()
				must(t, "close "+p, f.Close())
			}
		}
		last := v.P(uniqueName())
		synced[last] = markedData(size())
		writeFile(t, last, synced[last], true)
		// Never synced, after the last fsync; then the host is lost at once.
		late := v.P(uniqueName())
		unsynced[late] = unsyncedFile{want: markedData(size())}
		writeFile(t, late, unsynced[late].want, false)
		v.killDaemon(t)

		oldLog := filepath.Join(v.State, daemonLogName)
		if fileExists(oldLog) { // keep the lost host's log with the test's logs
			must(t, "keep the lost host's log", copyFile(oldLog, filepath.Join(v.LogDir, "00-lost-host-daemon.log"), 0o600))
		}
		must(t, "delete the state folder", os.RemoveAll(v.State))
		if m := readMarker(t, v.objDir(t)); m.Epoch != 1 {
			t.Errorf("the volume marker says owner epoch %d before any restore, want 1", m.Epoch)
		}

		newState := filepath.Join(v.Dir, "state-new-host")
		start := time.Now()
		out := v.mustRestore(t, newState, v.Remote)
		t.Logf("restore took %v: position %d, %d replica objects, %d inodes, never uploaded %v, dropped %q",
			time.Since(start).Round(time.Millisecond), out.position, out.objects, out.inodes, out.unuploaded, out.dropped)
		if out.epoch != 2 {
			t.Errorf("restore says owner epoch now %d, want 2", out.epoch)
		}
		if m := readMarker(t, v.objDir(t)); m.Epoch != 2 || m.Coffer != out.volume {
			t.Errorf("after restore the marker says volume %s epoch %d; restore printed volume %s epoch 2", m.Coffer, m.Epoch, out.volume)
		}
		// root, 4 synced files, the directory, its empty file and subdirectory, the file
		// overwritten, and the unsynced files written before the last fsync.
		if want := 1 + len(synced) + 3 + 4; out.inodes < want {
			t.Errorf("restore says the catalog has %d inodes; at least %d were made durable", out.inodes, want)
		}
		for _, u := range out.unuploaded {
			if _, ok := synced[v.P(u)]; ok {
				t.Errorf("restore lists fsynced file %s as never uploaded", u)
			}
		}
		if fileExists(filepath.Join(newState, "staging")) && len(stagedFiles(filepath.Join(newState, "staging"))) > 0 {
			t.Errorf("restore put staging files into %s", newState)
		}

		v.State = newState
		v.Mount()
		for p, want := range synced {
			got, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("fsynced file %s after restore: %v", rel(v, p), err)
				continue
			}
			sameBytes(t, "fsynced file "+rel(v, p), got, want)
		}
		if _, err := os.Lstat(moved); err == nil {
			t.Errorf("the name %s, renamed away before the directory fsync, is back after restore", rel(v, moved))
		}
		if st, err := os.Lstat(emptyFile); err != nil || !st.Mode().IsRegular() || st.Size() != 0 {
			t.Errorf("empty file made durable by the directory fsync, after restore: %v %v", st, err)
		}
		if st, err := os.Lstat(subdir); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Errorf("subdirectory made durable by the directory fsync, after restore: %v %v", st, err)
		}
		for p, u := range unsynced {
			listed := slices.Contains(out.unuploaded, rel(v, p))
			got, err := os.ReadFile(p)
			what := fmt.Sprintf("read %d bytes (the unsynced write: %d bytes), err %v", len(got), len(u.want), err)
			switch {
			case err != nil:
			case u.old != nil && string(got) == string(u.old):
				what = fmt.Sprintf("read the %d bytes its last fsync left, no error", len(got))
			case len(got) > 0 && isZero(got):
				what = fmt.Sprintf("read %d zero bytes, no error", len(got))
			}
			t.Logf("never-synced file %s after restore: listed %v, intact %v, %s", rel(v, p), listed, err == nil && string(got) == string(u.want), what)
			switch {
			case errnoName(err) == "ENOENT":
				if u.old != nil {
					t.Errorf("file %s, fsynced and then overwritten without a sync, is gone after restore", rel(v, p))
				}
				if listed {
					t.Errorf("restore lists %s as never uploaded, but the restored volume has no such file", rel(v, p))
				}
			case err == nil && string(got) == string(u.want):
			case listed && errnoName(err) == "EIO":
				// as restore says: "reads of that data fail with EIO until coffer fsck --repair"
			case listed && err == nil && len(got) == 0:
				// its size never reached the catalog: no lost byte can be read
			case listed:
				t.Errorf("never-synced file %s is listed by restore as never uploaded, and restore says reads of its lost data fail with EIO; but it %s",
					rel(v, p), what)
			default:
				t.Errorf("never-synced file %s after restore is neither absent, intact nor listed as never uploaded: %s", rel(v, p), what)
			}
		}
		// The new host replicates under its own epoch and keeps what it writes.
		fresh := v.P(uniqueName())
		freshData := markedData(size())
		writeFile(t, fresh, freshData, false)
		if !v.Unmount() {
			t.FailNow()
		}
		// fsck names the files with lost data, and --repair truncates them to their uploaded
		// content, after which they read without error.
		if len(out.unuploaded) > 0 {
			fsck := func(args ...string) result {
				return v.run(2*time.Minute, append(append([]string{"fsck", "--state", v.State}, v.secretArgs()...), args...)...)
			}
			r := fsck()
			for _, u := range out.unuploaded {
				if !strings.Contains(r.stdout, "lost: "+u+" ") {
					t.Errorf("fsck after restore does not name %s, listed by restore: %s", u, r)
				}
			}
			if r.code != 1 {
				t.Errorf("fsck with lost data exits %d, want 1", r.code)
			}
			if r := fsck("--repair"); r.code != 0 || !strings.Contains(r.stdout, "repaired: truncated") {
				t.Errorf("fsck --repair of lost data: %s", r)
			}
			v.Mount()
			for _, u := range out.unuploaded {
				if _, err := os.ReadFile(v.P(u)); err != nil {
					t.Errorf("file %s after fsck --repair: %v", u, err)
				}
			}
			if !v.Unmount() {
				t.FailNow()
			}
		}
		if objs := replicaObjects(v.objDir(t), 2); len(objs) == 0 {
			t.Errorf("the new host wrote no replica object under r/00000002/")
		}
		v.Mount()
		sameBytes(t, "file written on the new host, after a remount", mustRead(t, fresh), freshData)
		sameBytes(t, "fsynced file after a second mount on the new host", mustRead(t, last), synced[last])
	})
}

// rel is p's path inside the mount, as restore prints it ("/dir/name").
func rel(v *Volume, p string) string {
	r, err := filepath.Rel(v.Mnt, p)
	if err != nil {
		return p
	}
	return "/" + r
}

// TestOldHostStopsWriting: once the volume is restored elsewhere, the old host's catalog
// (kept from before the restore) no longer mounts: the mount is refused with an error that
// says the volume was restored on another host, and the remote gets nothing from the
// attempt.
func TestOldHostStopsWriting(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote)
	p := v.P(uniqueName())
	data := markedData(30000)
	writeFile(t, p, data, true)
	if !v.Unmount() {
		t.FailNow()
	}
	oldState := filepath.Join(v.Dir, "state-old-host")
	copyTree(t, v.State, oldState)
	newState := filepath.Join(v.Dir, "state-new-host")
	if out := v.mustRestore(t, newState, v.Remote); out.epoch != 2 {
		t.Errorf("restore says owner epoch now %d, want 2", out.epoch)
	}

	before := stateDigest(t, v.RemoteDir)
	r := v.run(mountTimeout, append(append([]string{"mount", "--state", oldState}, v.secretArgs()...), v.Mnt)...)
	if m, _ := isMounted(v.Mnt); m {
		if pid, err := findAdoptedDaemon(v.Mnt); err == nil {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		exec1("fusermount3", "-u", "-z", v.Mnt)
		t.Fatalf("the old host's catalog mounted after the volume was restored elsewhere (%s)", r)
	}
	oneErrorLine(t, r)
	if !strings.Contains(r.stderr, "restored on another host") {
		t.Errorf("the old host's refused mount does not say the volume was restored on another host: %s", strings.TrimSpace(r.stderr))
	}
	sameDigest(t, "the old host's refused mount", before, stateDigest(t, v.RemoteDir))

	// The new host carries on.
	v.State = newState
	v.Mount()
	sameBytes(t, "fsynced file on the new host", mustRead(t, p), data)
}

// TestRestoreRefuses: restore refuses a state folder that is not empty, a wrong PIN, a
// wrong passphrase, the wrong kind of key, and a remote without a volume marker, each with
// one error line, without writing the state folder or taking the volume over.
func TestRestoreRefuses(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote)
	pv := newVolume(t, localRemote, withProvider(passProvider))
	for _, vol := range []*Volume{v, pv} {
		writeFile(t, vol.P(uniqueName()), markedData(5000), true)
	}
	remoteBefore := map[*Volume]map[string]string{v: stateDigest(t, v.RemoteDir), pv: stateDigest(t, pv.RemoteDir)}
	refused := func(t *testing.T, vol *Volume, r result, want, state string) {
		t.Helper()
		oneErrorLine(t, r)
		if !strings.Contains(r.stderr, want) {
			t.Errorf("coffer restore: the error does not say %q: %s", want, strings.TrimSpace(r.stderr))
		}
		if s := string(vol.secret()); strings.Contains(r.stderr+r.stdout, s) {
			t.Errorf("coffer restore repeats the secret in its output")
		}
		if state != "" {
			emptyOrAbsent(t, "a refused restore", state)
		}
	}

	t.Run("non-empty-state", func(t *testing.T) {
		state := filepath.Join(v.Dir, "not-empty")
		must(t, "mkdir", os.Mkdir(state, 0o700))
		mustWrite(t, filepath.Join(state, "keep"), []byte("mine"), 0o600)
		before := stateDigest(t, state)
		r := v.restore(state, v.Remote)
		refused(t, v, r, "not empty", "")
		sameDigest(t, "restore into a non-empty folder", before, stateDigest(t, state))
		// The live volume's own state folder.
		before = stateDigest(t, v.State)
		r = v.restore(v.State, v.Remote)
		refused(t, v, r, "not empty", "")
		sameDigest(t, "restore into the volume's own state folder", before, stateDigest(t, v.State))
	})
	t.Run("wrong-pin", func(t *testing.T) {
		bad := filepath.Join(v.Dir, "bad-pin")
		mustWrite(t, bad, []byte("000000"), 0o600)
		state := filepath.Join(v.Dir, "state-wrong-pin")
		r := v.restore(state, v.Remote, "--hsm-module", v.Token.Module, "--hsm-token", v.Token.Label, "--hsm-pin-file", bad)
		refused(t, v, r, "wrong PIN", state)
	})
	t.Run("wrong-passphrase", func(t *testing.T) {
		bad := filepath.Join(pv.Dir, "bad-passphrase")
		mustWrite(t, bad, []byte("not the passphrase"), 0o600)
		state := filepath.Join(pv.Dir, "state-wrong-passphrase")
		r := pv.restore(state, pv.Remote, "--passphrase", "--passphrase-file", bad)
		refused(t, pv, r, "wrong passphrase", state)
	})
	t.Run("wrong-kind-of-key", func(t *testing.T) {
		// An HSM volume restored as a passphrase volume: nothing to open it with.
		pass := filepath.Join(v.Dir, "some-passphrase")
		mustWrite(t, pass, []byte("some passphrase"), 0o600)
		state := filepath.Join(v.Dir, "state-wrong-kind")
		r := v.restore(state, v.Remote, "--passphrase", "--passphrase-file", pass)
		refused(t, v, r, "r/keys", state)
	})
	t.Run("no-marker", func(t *testing.T) {
		empty := filepath.Join(v.Dir, "empty-remote")
		must(t, "mkdir", os.Mkdir(empty, 0o700))
		state := filepath.Join(v.Dir, "state-no-marker")
		r := v.restore(state, empty)
		refused(t, v, r, "no coffer volume marker", state)
		emptyOrAbsent(t, "a refused restore", empty)
		// A remote holding the volume's objects, but not its marker.
		noMarker := filepath.Join(v.Dir, "remote-no-marker")
		copyTree(t, v.RemoteDir, noMarker)
		must(t, "remove the marker", os.Remove(filepath.Join(noMarker, "coffer-volume")))
		before := stateDigest(t, noMarker)
		r = v.restore(state, noMarker)
		refused(t, v, r, "no coffer volume marker", state)
		sameDigest(t, "a refused restore", before, stateDigest(t, noMarker))
	})
	for _, vol := range []*Volume{v, pv} {
		sameDigest(t, "refused restores", remoteBefore[vol], stateDigest(t, vol.RemoteDir))
		if m := readMarker(t, vol.RemoteDir); m.Epoch != 1 {
			t.Errorf("after refused restores the marker says owner epoch %d, want 1", m.Epoch)
		}
	}
}

// TestReplicaTamper builds a replica with several deltas, then damages a copy of the remote
// folder in every way an attacker or a broken store could and restores from it: each
// restore fails with an error naming the damaged object, writes no state folder and takes
// nothing over. A damaged newest object is the one exception (an upload the lost host cut
// short looks the same): restore leaves it out and warns, naming it.
func TestReplicaTamper(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote)
	other := newVolume(t, localRemote)
	for _, vol := range []*Volume{v, other} {
		for range 6 {
			writeFile(t, vol.P(uniqueName()), markedData(3000), true)
		}
		if !vol.Unmount() {
			t.FailNow()
		}
	}
	objs := replicaObjects(v.RemoteDir, 1)
	ds := deltas(objs)
	otherDs := deltas(replicaObjects(other.RemoteDir, 1))
	t.Logf("replica: %v", objs)
	if len(ds) < 5 || len(otherDs) < 1 {
		t.Fatalf("want at least 5 deltas after 6 fsyncs, have %d (and %d in the other volume's replica): %v", len(ds), len(otherDs), objs)
	}
	snap := objs[0]
	if !strings.HasSuffix(snap, ".s.0000") {
		t.Fatalf("the oldest replica object %s is not a snapshot's part 0", snap)
	}
	mid := len(ds) / 2
	path := func(remote, name string) string { return filepath.Join(remote, filepath.FromSlash(name)) }
	flip := func(t *testing.T, p string, off func(n int) int) {
		b := mustRead(t, p)
		b[off(len(b))] ^= 0x10
		mustWrite(t, p, b, 0o600)
	}
	cases := []struct {
		name   string
		victim string // the object restore must name
		tamper func(t *testing.T, remote string)
	}{
		{"bit-flip", ds[mid], func(t *testing.T, r string) { flip(t, path(r, ds[mid]), func(n int) int { return n / 2 }) }},
		{"bit-flip-in-header", ds[mid], func(t *testing.T, r string) { flip(t, path(r, ds[mid]), func(int) int { return 20 }) }},
		{"truncate", ds[mid], func(t *testing.T, r string) {
			st, err := os.Stat(path(r, ds[mid]))
			must(t, "stat", err)
			must(t, "truncate", os.Truncate(path(r, ds[mid]), st.Size()-17))
		}},
		{"swap", ds[mid], func(t *testing.T, r string) {
			a, b := path(r, ds[mid]), path(r, ds[mid+1])
			must(t, "rename", os.Rename(a, a+".tmp"))
			must(t, "rename", os.Rename(b, a))
			must(t, "rename", os.Rename(a+".tmp", b))
		}},
		{"hole", ds[mid], func(t *testing.T, r string) { must(t, "delete", os.Remove(path(r, ds[mid]))) }},
		// The replicator never puts a position twice (a restart continues after the newest
		// object or starts a new chain at the next position), so no older copy of a delta
		// under its own name exists: the older delta before it stands in for one here, and
		// an authentic object under its own name is same-name-delta-of-another-chain below.
		{"older-delta-in-its-place", ds[mid], func(t *testing.T, r string) {
			must(t, "copy", copyFile(path(r, ds[mid-1]), path(r, ds[mid]), 0o600))
		}},
		{"other-volumes-delta", ds[mid], func(t *testing.T, r string) {
			src := otherDs[min(mid, len(otherDs)-1)]
			if i := slices.Index(otherDs, ds[mid]); i >= 0 {
				src = otherDs[i] // the very same name in the other volume's replica
			}
			must(t, "copy", copyFile(path(other.RemoteDir, src), path(r, ds[mid]), 0o600))
		}},
		{"snapshot-bit-flip", snap, func(t *testing.T, r string) { flip(t, path(r, snap), func(n int) int { return n - 40 }) }},
		{"snapshot-deleted", snap, func(t *testing.T, r string) { must(t, "delete", os.Remove(path(r, snap))) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			remote := filepath.Join(v.Dir, fmt.Sprintf("tamper-%d-remote", i))
			copyTree(t, v.RemoteDir, remote)
			c.tamper(t, remote)
			state := filepath.Join(v.Dir, fmt.Sprintf("tamper-%d-state", i))
			r := v.restore(state, remote)
			if r.code == 0 {
				t.Fatalf("restore from a replica with %s in %s succeeded:\n%s", c.name, c.victim, r)
			}
			if !strings.Contains(r.stderr, c.victim) {
				t.Errorf("restore from a replica with %s does not name %s: %s", c.name, c.victim, strings.TrimSpace(r.stderr))
			}
			if !strings.Contains(r.stderr, "coffer restore: ") {
				t.Errorf("restore failed without its error line: %s", r.stderr)
			}
			emptyOrAbsent(t, "a failed restore", state)
			if m := readMarker(t, remote); m.Epoch != 1 {
				t.Errorf("a failed restore moved the marker to owner epoch %d", m.Epoch)
			}
			if n := len(replicaObjects(remote, 2)); n > 0 {
				t.Errorf("a failed restore wrote %d replica objects of epoch 2", n)
			}
		})
	}

	// An authentic object under its own name, of the same volume, epoch, position and key,
	// but of another chain: two restores of the same remote fork it, each new host writes
	// its own delta 2 of epoch 2. Only the link to the state before it can tell.
	t.Run("same-name-delta-of-another-chain", func(t *testing.T) {
		oldState := v.State
		defer func() { v.State = oldState }()
		var remotes [2]string
		for i := range remotes {
			remotes[i] = filepath.Join(v.Dir, fmt.Sprintf("fork-%d-remote", i))
			copyTree(t, v.RemoteDir, remotes[i])
			v.State = filepath.Join(v.Dir, fmt.Sprintf("fork-%d-state", i))
			v.mustRestore(t, v.State, remotes[i])
			v.Mount()
			for range 2 - i {
				writeFile(t, v.P(uniqueName()), markedData(3000), true)
			}
			if !v.Unmount() {
				t.FailNow()
			}
		}
		ds2 := deltas(replicaObjects(remotes[0], 2))
		if len(ds2) < 2 || !slices.Contains(deltas(replicaObjects(remotes[1], 2)), ds2[0]) {
			t.Fatalf("want two deltas of epoch 2 on the first fork and the first of them on the second: %v, %v",
				replicaObjects(remotes[0], 2), replicaObjects(remotes[1], 2))
		}
		victim := ds2[0]
		must(t, "copy", copyFile(path(remotes[1], victim), path(remotes[0], victim), 0o600))
		state := filepath.Join(v.Dir, "fork-restore-state")
		r := v.restore(state, remotes[0])
		if r.code == 0 {
			t.Fatalf("restore from a replica holding another chain's %s succeeded:\n%s", victim, r)
		}
		if !strings.Contains(r.stderr, victim) {
			t.Errorf("restore from a replica holding another chain's %s does not name it: %s", victim, strings.TrimSpace(r.stderr))
		}
		emptyOrAbsent(t, "a failed restore", state)
	})

	// The newest object damaged: left out, with a warning that names it.
	t.Run("newest-damaged", func(t *testing.T) {
		remote := filepath.Join(v.Dir, "tamper-newest-remote")
		copyTree(t, v.RemoteDir, remote)
		newest := ds[len(ds)-1]
		flip(t, path(remote, newest), func(n int) int { return n / 2 })
		state := filepath.Join(v.Dir, "tamper-newest-state")
		out := v.mustRestore(t, state, remote)
		if out.dropped != newest {
			t.Errorf("restore with a damaged newest object %s: warning names %q", newest, out.dropped)
		}
		if pos, _ := strconv.ParseUint(strings.TrimSuffix(filepath.Base(newest), ".d"), 16, 64); out.position != pos-1 {
			t.Errorf("restore with the newest object (position %d) left out restored to position %d, want %d", pos, out.position, pos-1)
		}
		if m := readMarker(t, remote); m.Epoch != 2 {
			t.Errorf("after the restore the marker says owner epoch %d, want 2", m.Epoch)
		}
	})
}

// TestReplicaLeak writes files whose names, contents, an xattr and a symlink target carry
// known markers, and scans every replica object (r/...) for them and for the volume's
// secret: the catalog's pages travel sealed, never in plaintext. The catalog file on the
// host, which does hold names and xattrs, is the control that the scan finds them.
func TestReplicaLeak(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	for _, p := range allProviders {
		t.Run(string(p), func(t *testing.T) {
			v := newVolume(t, localRemote, withProvider(p))
			dir := v.P(uniqueName())
			must(t, "mkdir", os.Mkdir(dir, 0o755))
			xattrName, xattrValue := "user."+uniqueName(), "XaTtRvAlUe"+randHex(8)
			for i := range 4 {
				f := filepath.Join(dir, uniqueName())
				writeFile(t, f, markedData(5000+i*40000), i%2 == 0)
				if i == 0 {
					must(t, "setxattr", unix.Setxattr(f, xattrName, []byte(xattrValue), 0))
				}
			}
			must(t, "symlink", os.Symlink(uniqueName(), filepath.Join(dir, uniqueName())))
			fsyncDir(t, dir)
			v.collectNames(v.Mnt)
			if !v.Unmount() {
				t.FailNow()
			}
			pats := append(v.leakPatterns(),
				pattern{[]byte(xattrValue), kindName},
				pattern{[]byte(hex.EncodeToString([]byte(xattrValue))), kindName},
				pattern{[]byte(xattrName), kindName})
			m := newMatcher(pats)

			// Control: the plaintext catalog holds the names and the xattr.
			found := map[string]bool{}
			must(t, "scan the catalog", m.scanFile(filepath.Join(v.State, "catalog.db"), func(h hit) { found[string(h.pat.b)] = true }))
			for _, want := range []string{namePrefix, xattrValue, xattrName} {
				if !found[want] {
					t.Errorf("control: the scan does not find %q in the plaintext catalog", want)
				}
			}

			root := filepath.Join(v.objDir(t), "r")
			var leaks, objs []string
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return err
				}
				name, _ := filepath.Rel(filepath.Dir(root), p)
				objs = append(objs, name)
				report := func(h hit) {
					leaks = append(leaks, fmt.Sprintf("%s: a %s at offset %d: %q", name, h.pat.kind, h.off, clip(h.pat.b)))
				}
				m.scanBytes([]byte(name), report)
				return m.scanFile(p, report)
			})
			must(t, "scan the replica", err)
			if len(leaks) > 0 {
				t.Errorf("replica objects leak plaintext:\n  %s", strings.Join(leaks, "\n  "))
			}
			hasKeys := slices.Contains(objs, "r/keys")
			if hasKeys != (p == passProvider) {
				t.Errorf("r/keys on the remote: %v, want it only for a passphrase volume", hasKeys)
			}
			if ds := deltas(objs); len(ds) < 1 || len(objs) < 2 {
				t.Errorf("the replica is too small to mean anything: %v", objs)
			}
			t.Logf("scanned %d replica objects for %d patterns: %v", len(objs), len(m.pats), objs)
		})
	}
}

// TestRestoreAt: `restore --at` a time between two fsynced versions of a file gives the
// older version (its object outlived the commit that replaced it), and a file created after
// that time is not there; once a KEK
// version was destroyed (rotate --retire-old) a time before that is refused, saying why.
func TestRestoreAt(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote)
	early, late := v.P(uniqueName()), v.P(uniqueName())
	earlyData := markedData(40000)
	writeFile(t, early, earlyData, true)
	time.Sleep(20 * time.Millisecond)
	between := time.Now()
	time.Sleep(20 * time.Millisecond)
	// The second version replaces the first's object, which stays on the remote for the
	// point-in-time window (the mount's default, 7 days).
	f, err := os.OpenFile(early, os.O_WRONLY|os.O_TRUNC, 0)
	must(t, "reopen "+early, err)
	_, err = f.Write(markedData(40000))
	must(t, "rewrite "+early, err)
	must(t, "fsync "+early, f.Sync())
	must(t, "close "+early, f.Close())
	writeFile(t, late, markedData(30000), true)
	if !v.Unmount() {
		t.FailNow()
	}
	at := between.UTC().Format(time.RFC3339Nano)

	first := filepath.Join(v.Dir, "state-at")
	r := v.restore(first, v.Remote, append(v.keyArgs(), "--at", at)...)
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	m := regexp.MustCompile(`replicated at (\S+) \(position`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("restore --at does not say when the state it restored was replicated:\n%s", r.stdout)
	}
	if got, err := time.Parse(time.RFC3339Nano, m[1]); err != nil || got.After(between) {
		t.Errorf("restore --at %s restored a state replicated at %s (%v)", at, m[1], err)
	}
	v.State = first
	v.Mount()
	sameBytes(t, "the version fsynced before --at", mustRead(t, early), earlyData)
	if _, err := os.Lstat(late); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file created after --at exists after restore --at: %v", err)
	}
	if !v.Unmount() {
		t.FailNow()
	}

	// A destroyed KEK version is a barrier.
	if r := v.run(time.Minute, append([]string{"rotate", "--state", first, "--retire-old"}, v.secretArgs()...)...); r.code != 0 {
		t.Fatalf("rotate --retire-old: %s", r)
	}
	second := filepath.Join(v.Dir, "state-at-2")
	r = v.restore(second, v.Remote, append(v.keyArgs(), "--at", at)...)
	oneErrorLine(t, r)
	if !strings.Contains(r.stderr, "before the last kek.destroy") {
		t.Errorf("restore --at before a KEK destruction: %s", strings.TrimSpace(r.stderr))
	}
	emptyOrAbsent(t, "a refused restore --at", second)
}

// TestRestoreAfterPasswd: a passphrase change reaches the remote's r/keys with the catalog
// change, so a restore opens with the new passphrase, and the old one is refused as wrong.
func TestRestoreAfterPasswd(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	v := newVolume(t, localRemote, withProvider(passProvider))
	p := v.P(uniqueName())
	data := markedData(20000)
	writeFile(t, p, data, true)
	if !v.Unmount() {
		t.FailNow()
	}
	newPass := filepath.Join(v.Dir, "new-pass")
	mustWrite(t, newPass, []byte("a new passphrase, long enough"), 0o600)
	if r := v.run(time.Minute, "passwd", "--state", v.State, "--passphrase-file", v.PassFile, "--new-passphrase-file", newPass); r.code != 0 {
		t.Fatalf("passwd: %s", r)
	}
	old := v.restore(filepath.Join(v.Dir, "state-old-pass"), v.Remote)
	oneErrorLine(t, old)
	if !strings.Contains(old.stderr, "wrong passphrase") {
		t.Errorf("restore with the passphrase from before passwd: %s", strings.TrimSpace(old.stderr))
	}
	state := filepath.Join(v.Dir, "state-new-pass")
	r := v.restore(state, v.Remote, "--passphrase", "--passphrase-file", newPass)
	if r.code != 0 {
		t.Fatalf("restore with the new passphrase: %s", r)
	}
	v.State, v.PassFile = state, newPass
	v.Mount()
	sameBytes(t, "fsynced file after passwd and restore", mustRead(t, p), data)
}

// TestPythonRebuildWithHSMKey: the independent Python decoder (test/format/restore_replica.py)
// rebuilds the catalog from the remote and K_rep, which this test gets from the HSM the way
// coffer does (keys.VolumeKey, purpose "replica"): byte for byte the catalog the clean
// unmount left.
func TestPythonRebuildWithHSMKey(t *testing.T) {
	if plainMode {
		t.Skip("needs the coffer daemon")
	}
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s: the Python decoder cannot run (make test installs it)", python)
	}
	v := newVolume(t, localRemote)
	for i := range 5 {
		must(t, "mkdir", os.Mkdir(v.P(fmt.Sprintf("d%d", i)), 0o755))
		writeFile(t, v.P(fmt.Sprintf("d%d", i), uniqueName()), markedData(10000+i), i%2 == 0)
	}
	if !v.Unmount() {
		t.FailNow()
	}
	dir := v.objDir(t)
	m := readMarker(t, dir)
	idb, err := hex.DecodeString(m.Coffer)
	must(t, "volume id", err)
	id := [16]byte(idb)
	p, err := hsm.New(hsm.Config{Module: v.Token.Module, Token: v.Token.Label, PIN: v.Token.PIN, Volume: id})
	must(t, "open the HSM", err)
	defer p.Wipe()
	k, err := keys.VolumeKey(context.Background(), p, keys.KEKRef{Version: 1}, id, volume.ReplicaPurpose)
	must(t, "K_rep from the HSM", err)
	defer k.Wipe()
	out := filepath.Join(t.TempDir(), "rebuilt.db")
	cmd := exec.Command(python, filepath.Join("..", "format", "restore_replica.py"), "--dir", dir, "--volume", m.Coffer,
		"--epoch", fmt.Sprint(m.Epoch), "--key", hex.EncodeToString(k.Bytes()), "--out", out)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("restore_replica.py: %v\n%s", err, b)
	}
	got, want := mustRead(t, out), mustRead(t, v.catalogPath())
	if !bytes.Equal(got, want) {
		t.Fatalf("the Python rebuild (%d bytes) differs from the catalog the unmount left (%d bytes)\n%s", len(got), len(want), b)
	}
}
