package e2e

import (
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"coffer/fs/meta"

	_ "github.com/mattn/go-sqlite3"
	"golang.org/x/sys/unix"
)

// The durability tests break coffer for real through the mounted filesystem and the coffer
// binary: SIGKILL during writes, a stopped S3 server, a full staging disk, tampered objects
// and catalog rows, HSM trouble at mount. A second mount of a live state folder is refused:
// that is TestMountLifecycle/second-mount-refused.

// catalogPath is the state folder's SQLite catalog.
func (v *Volume) catalogPath() string { return filepath.Join(v.State, meta.FileName) }

// openCatalog opens the catalog with go-sqlite3 while no daemon serves it: read-only, or
// read-write to tamper with it.
func (v *Volume) openCatalog(t testing.TB, write bool) *sql.DB {
	t.Helper()
	mode := "ro"
	if write {
		mode = "rw"
	}
	db, err := sql.Open("sqlite3", "file:"+v.catalogPath()+"?mode="+mode+"&_busy_timeout=5000")
	must(t, "open catalog", err)
	db.SetMaxOpenConns(1)
	return db
}

// checkCatalog runs PRAGMA integrity_check and checks that every object the chunks table
// names exists on the (local) remote. It returns the number of chunk rows.
func (v *Volume) checkCatalog(t testing.TB, when string) int {
	t.Helper()
	db := v.openCatalog(t, false)
	defer db.Close()
	var res string
	must(t, when+": integrity_check", db.QueryRow("PRAGMA integrity_check").Scan(&res))
	if res != "ok" {
		t.Fatalf("%s: PRAGMA integrity_check: %s", when, res)
	}
	rows, err := db.Query("SELECT ino, idx, object FROM chunks")
	must(t, when+": read chunks", err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var ino, idx int64
		var obj []byte
		must(t, "scan chunk", rows.Scan(&ino, &idx, &obj))
		n++
		name := meta.ObjectName([16]byte(obj))
		if _, err := os.Stat(filepath.Join(v.RemoteDir, filepath.FromSlash(name))); err != nil {
			t.Errorf("%s: inode %d chunk %d references object %s, missing from the remote: %v", when, ino, idx, name, err)
		}
	}
	must(t, "chunks rows", rows.Err())
	return n
}

// objectsOf returns the remote names of the objects of inode ino, by chunk index.
func (v *Volume) objectsOf(t testing.TB, ino uint64) []string {
	t.Helper()
	db := v.openCatalog(t, false)
	defer db.Close()
	rows, err := db.Query("SELECT object FROM chunks WHERE ino = ? ORDER BY idx", int64(ino))
	must(t, "read chunks", err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var obj []byte
		must(t, "scan", rows.Scan(&obj))
		out = append(out, meta.ObjectName([16]byte(obj)))
	}
	if len(out) == 0 {
		t.Fatalf("inode %d has no chunk in the catalog", ino)
	}
	return out
}

func (v *Volume) objectPath(name string) string {
	return filepath.Join(v.RemoteDir, filepath.FromSlash(name))
}

// statusJSON runs `coffer status --json MOUNTPOINT`.
func (v *Volume) statusJSON(t testing.TB) (map[string]any, map[string]any) {
	t.Helper()
	r := v.run(30*time.Second, "status", "--json", v.Mnt)
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	var st map[string]any
	must(t, "decode status --json", json.Unmarshal([]byte(r.stdout), &st))
	data, _ := st["data"].(map[string]any)
	if data == nil {
		t.Fatalf("status --json has no data object:\n%s", r.stdout)
	}
	return st, data
}

func num(m map[string]any, k string) int64 {
	f, _ := m[k].(float64)
	return int64(f)
}

// waitDrained waits until the daemon has nothing staged and nothing dirty.
func (v *Volume) waitDrained(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		_, data := v.statusJSON(t)
		if num(data, "StagedBytes") == 0 && num(data, "DirtyChunks") == 0 && num(data, "UploadsInFlight") == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("staged data not uploaded %v after the mount: %v", d, data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killDaemon SIGKILLs the daemon, waits for it, and clears the dead mount.
func (v *Volume) killDaemon(t testing.TB) {
	t.Helper()
	d := v.Daemon()
	if d == nil {
		t.Fatal("no daemon to kill")
	}
	must(t, "kill -9", d.proc.Signal(syscall.SIGKILL))
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon pid %d survived SIGKILL", d.pid)
	}
	v.forceUnmount() // fusermount3 -u -z on the dead mount
}

// onlyErrors fails the test on an ERROR line in the daemon's logs that contains none of
// allowed (for tests that provoke some errors on purpose).
func (v *Volume) onlyErrors(t testing.TB, allowed ...string) {
	t.Helper()
	for _, p := range v.logFiles() {
		for _, line := range strings.Split(readFileString(p), "\n") {
			if !strings.Contains(line, "level=ERROR") {
				continue
			}
			ok := false
			for _, a := range allowed {
				ok = ok || strings.Contains(line, a)
			}
			if !ok {
				t.Errorf("unexpected ERROR in %s: %s", filepath.Base(p), line)
			}
		}
	}
}

// killFile is the model of one file of the kill workload: the bytes acknowledged by a
// successful fsync, and at most one write since then whose fate is unknown.
type killFile struct {
	path    string
	synced  []byte
	pending []byte // synced with the unsynced write applied; nil if none
}

// killSyncs counts the fsyncs the kill workload saw succeed.
var killSyncs atomic.Int64

// killWorker runs a mixed workload on its own files until an error (the daemon died).
// Files are created and fsynced, overwritten in place and fsynced, appended and fsynced,
// or written without fsync (scratch files, whose content is not promised).
func killWorker(dir string, rng *rand.Rand, files *[]*killFile, scratch *[]string) {
	for {
		op := rng.IntN(10)
		switch {
		case op < 3 || len(*files) == 0:
			if len(*files) >= 12 {
				continue
			}
			kf := &killFile{path: filepath.Join(dir, uniqueName())}
			data := markedData(1 + rng.IntN(300<<10))
			kf.pending = data
			*files = append(*files, kf)
			f, err := os.OpenFile(kf.path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
			if err != nil {
				return
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return
			}
			kf.synced, kf.pending = data, nil
			killSyncs.Add(1)
			f.Close()
		case op < 8:
			kf := (*files)[rng.IntN(len(*files))]
			if kf.pending != nil {
				continue // a file whose create never synced
			}
			size := len(kf.synced)
			off := rng.IntN(size + 1)
			if op == 7 {
				off = size // append
			}
			chunk := markedData(1 + rng.IntN(64<<10))
			next := append([]byte(nil), kf.synced...)
			if end := off + len(chunk); end > len(next) {
				next = append(next, make([]byte, end-len(next))...)
			}
			copy(next[off:], chunk)
			kf.pending = next
			f, err := os.OpenFile(kf.path, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			if _, err := f.WriteAt(chunk, int64(off)); err != nil {
				f.Close()
				return
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return
			}
			kf.synced, kf.pending = next, nil
			killSyncs.Add(1)
			f.Close()
		default:
			p := filepath.Join(dir, uniqueName())
			*scratch = append(*scratch, p)
			if err := os.WriteFile(p, markedData(1+rng.IntN(200<<10)), 0o644); err != nil {
				return
			}
		}
	}
}

// checkKillFile checks a file after the crash: every byte acknowledged by fsync reads back
// (or the one unacknowledged write's byte), and nothing past the possible sizes.
func checkKillFile(t *testing.T, kf *killFile) {
	t.Helper()
	got, err := os.ReadFile(kf.path)
	if errors.Is(err, os.ErrNotExist) && kf.synced == nil {
		return // created, killed before its first fsync
	}
	if err != nil {
		t.Errorf("read %s after the kill: %v", filepath.Base(kf.path), err)
		return
	}
	maxLen := len(kf.synced)
	if len(kf.pending) > maxLen {
		maxLen = len(kf.pending)
	}
	if len(got) < len(kf.synced) || len(got) > maxLen {
		t.Errorf("%s: %d bytes after the kill, fsynced %d (unacknowledged write: %d)", filepath.Base(kf.path), len(got), len(kf.synced), len(kf.pending))
		return
	}
	for i := range got {
		okSynced := i < len(kf.synced) && got[i] == kf.synced[i]
		okPending := i < len(kf.pending) && got[i] == kf.pending[i]
		// An unacknowledged write past the fsynced size may have landed in part: a hole.
		okPending = okPending || (i >= len(kf.synced) && got[i] == 0)
		if !okSynced && !okPending {
			t.Errorf("%s: byte %d differs from what was fsynced before the kill", filepath.Base(kf.path), i)
			return
		}
	}
	kf.synced, kf.pending = got, nil // this is the file now
}

// TestKillDuringWrites SIGKILLs the daemon during a mixed write workload COFFER_E2E_KILLS
// times (default 20). After each kill: the catalog passes integrity_check, every object it
// references is on the remote; after each remount every fsynced byte reads back and the
// staged data from before the kill is uploaded.
func TestKillDuringWrites(t *testing.T) {
	kills := 20
	if s := os.Getenv("COFFER_E2E_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("COFFER_E2E_KILLS=%q: want a positive count", s)
		}
		kills = n
	}
	// A block being staged at the kill is torn; the next mount logs an ERROR and drops it
	// (it was never acknowledged by fsync). No other ERROR is expected.
	v := newVolume(t, localRemote, withLogErrorsAllowed(), withBudget(time.Duration(kills)*20*time.Second+time.Minute))
	t.Cleanup(func() { v.onlyErrors(t, "a staged block does not authenticate (write torn by a crash") })
	const workers = 3
	dirs := make([]string, workers)
	models := make([][]*killFile, workers)
	for w := range dirs {
		dirs[w] = v.P(uniqueName())
		must(t, "mkdir", os.Mkdir(dirs[w], 0o755))
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	start := time.Now()
	for k := 1; k <= kills; k++ {
		scratch := make([][]string, workers)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			seed := rng.Uint64()
			go func() {
				defer wg.Done()
				killWorker(dirs[w], rand.New(rand.NewPCG(seed, uint64(w))), &models[w], &scratch[w])
			}()
		}
		time.Sleep(time.Duration(100+rng.IntN(700)) * time.Millisecond)
		v.killDaemon(t)
		wg.Wait()
		when := fmt.Sprintf("kill %d/%d", k, kills)
		chunks := v.checkCatalog(t, when)
		staged := len(stagedFiles(filepath.Join(v.State, "staging")))
		v.Mount()
		for w := range models {
			for _, kf := range models[w] {
				checkKillFile(t, kf)
			}
			for _, p := range scratch[w] {
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: remove scratch file: %v", when, err)
				}
			}
		}
		v.waitDrained(t, 60*time.Second)
		if left := stagedFiles(filepath.Join(v.State, "staging")); len(left) > 0 {
			t.Errorf("%s: %d staged file(s) left after the remount uploaded everything, e.g. %s", when, len(left), left[0])
		}
		t.Logf("%s: %d chunk rows, %d staged files at the kill; drained after remount", when, chunks, staged)
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d kills in %v; %d fsyncs acknowledged", kills, time.Since(start).Round(time.Millisecond), killSyncs.Load())
	if killSyncs.Load() < int64(kills) {
		t.Errorf("only %d fsyncs succeeded across %d kills: the workload did not run", killSyncs.Load(), kills)
	}
	// A last clean unmount: the harness checks that staging is empty, then again from the
	// remote alone.
	v.Remount()
	for w := range models {
		for _, kf := range models[w] {
			checkKillFile(t, kf)
		}
	}
	v.checkCatalog(t, "after the last unmount")
}

// timed runs fn and returns how long it took.
func timed(fn func()) time.Duration {
	start := time.Now()
	fn()
	return time.Since(start)
}

// writeUntilError writes data to a new file in 256 KiB pieces without fsync and returns
// how many bytes write(2) accepted and the first error (from write or close).
func writeUntilError(p string, data []byte) (int, error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	n := 0
	for n < len(data) {
		end := min(n+256<<10, len(data))
		m, err := f.Write(data[n:end])
		n += m
		if err != nil {
			f.Close()
			return n, err
		}
	}
	return n, f.Close()
}

// TestRemoteDown stops the S3 server for real. Reads of data not cached fail with EIO
// within --read-timeout; writes land in staging; status shows the stuck upload; fsync fails
// with EIO after --sync-timeout; writes past --staging-cap fail with ENOSPC; coffer
// unmount keeps what is staged, says how much and exits non-zero within --unmount-timeout.
// When the server is back, the next mount uploads everything and nothing is lost.
func TestRemoteDown(t *testing.T) {
	v := newVolume(t, s3Remote, withLogErrorsAllowed())
	uploaded := v.P(uniqueName())
	upData := markedData(3 << 20)
	mustWrite(t, uploaded, upData, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))

	const syncTimeout, readTimeout, unmountTimeout = 3 * time.Second, 3 * time.Second, 4 * time.Second
	v.Mount("--staging-cap", "6M", "--sync-timeout", syncTimeout.String(),
		"--read-timeout", readTimeout.String(), "--unmount-timeout", unmountTimeout.String())
	v.S3.Stop()

	// Nothing is cached right after the mount: the read must go to the remote and fail.
	var rerr error
	took := timed(func() { _, rerr = os.ReadFile(uploaded) })
	errIs(t, "read of uncached data with the remote down", rerr, unix.EIO)
	t.Logf("read with the remote down: %v after %v", rerr, took.Round(time.Millisecond))
	if took > readTimeout+10*time.Second {
		t.Errorf("read with the remote down took %v (--read-timeout %v)", took, readTimeout)
	}

	// A write lands in staging; its upload fails and status says so.
	staged := v.P(uniqueName())
	stagedData := markedData(1 << 20)
	mustWrite(t, staged, stagedData, 0o644)
	deadline := time.Now().Add(30 * time.Second)
	var st, data map[string]any
	for {
		st, data = v.statusJSON(t)
		if num(data, "UploadsFailing") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status shows no failing upload 30 s after a write with the remote down: %v", data)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if num(data, "StagedBytes") <= 0 || num(data, "DirtyChunks") <= 0 {
		t.Errorf("status with a stuck upload: staged bytes %d, dirty chunks %d; want both > 0", num(data, "StagedBytes"), num(data, "DirtyChunks"))
	}
	if e, _ := data["LastUploadError"].(string); e == "" {
		t.Errorf("status with a stuck upload shows no last upload error: %v", data)
	} else {
		t.Logf("status: last upload error: %s", e)
	}
	for _, k := range []string{"volume", "remote", "key_mode", "kek", "locked"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status --json lacks %q: %v", k, st)
		}
	}
	for _, k := range []string{"OpenFiles", "CachedKeys", "CacheBytes", "UploadsInFlight"} {
		if _, ok := data[k]; !ok {
			t.Errorf("status --json data lacks %q: %v", k, data)
		}
	}
	if r, _ := st["remote"].(string); !strings.Contains(r, "s3") || strings.Contains(r, "secret") {
		t.Errorf("status remote %q: want the redacted S3 remote", r)
	}
	text := v.run(30*time.Second, "status", v.Mnt)
	if text.code != 0 || !strings.Contains(text.stdout, "UploadsFailing") || !strings.Contains(text.stdout, "StagedBytes") {
		t.Errorf("coffer status (text) does not show the stuck upload: %s", text)
	}

	// fsync gives up with EIO after --sync-timeout; the data stays staged.
	f, err := os.OpenFile(staged, os.O_WRONLY, 0)
	must(t, "open", err)
	took = timed(func() { err = f.Sync() })
	f.Close()
	errIs(t, "fsync with the remote down", err, unix.EIO)
	t.Logf("fsync with the remote down: %v after %v (--sync-timeout %v)", err, took.Round(time.Millisecond), syncTimeout)
	if took < syncTimeout-500*time.Millisecond || took > syncTimeout+10*time.Second {
		t.Errorf("fsync with the remote down returned after %v, want about --sync-timeout %v", took, syncTimeout)
	}

	// Past --staging-cap, writes fail with ENOSPC.
	big := v.P(uniqueName())
	bigData := markedData(16 << 20)
	n, werr := writeUntilError(big, bigData)
	errIs(t, "writing past --staging-cap 6M with the remote down", werr, unix.ENOSPC)
	t.Logf("staging cap 6M: write accepted %d bytes, then %v", n, werr)
	if n >= len(bigData) || n > 8<<20 {
		t.Errorf("writes accepted %d bytes with a 6M staging cap and the remote down", n)
	}
	_, data = v.statusJSON(t)
	t.Logf("status after ENOSPC: %v", data)

	// coffer unmount with the remote down: bounded, non-zero, says how much stays staged.
	d := v.Daemon()
	var r result
	took = timed(func() { r = v.run(unmountTimeout+30*time.Second, "unmount", v.Mnt) })
	t.Logf("coffer unmount with the remote down: exit %d after %v: %s", r.code, took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	if r.code == 0 || r.code == -1 {
		t.Errorf("coffer unmount with the remote down: %s; want a non-zero exit", r)
	}
	if !strings.Contains(r.stderr, "bytes are still staged") {
		t.Errorf("coffer unmount with the remote down does not say how much is staged: %q", r.stderr)
	}
	if took > unmountTimeout+15*time.Second {
		t.Errorf("coffer unmount with the remote down took %v (--unmount-timeout %v)", took, unmountTimeout)
	}
	if st, ok := v.waitDaemonExit(d, exitTimeout); !ok {
		t.Fatalf("daemon still running %v after coffer unmount", exitTimeout)
	} else {
		t.Logf("daemon exit: %v", st)
	}
	if m, _ := isMounted(v.Mnt); m {
		t.Fatalf("%s still mounted after coffer unmount with the remote down", v.Mnt)
	}
	left := stagedFiles(filepath.Join(v.State, "staging"))
	if len(left) == 0 {
		t.Fatal("nothing staged after an unmount with the remote down: the unsynced writes were lost")
	}

	// The remote comes back: the next mount uploads the staged data, nothing is lost.
	v.S3.Restart()
	v.Mount()
	v.waitDrained(t, 60*time.Second)
	check := func(when string) {
		t.Helper()
		sameBytes(t, when+": file uploaded before the outage", mustRead(t, uploaded), upData)
		sameBytes(t, when+": file written during the outage", mustRead(t, staged), stagedData)
		got := mustRead(t, big)
		if len(got) < n {
			t.Errorf("%s: the file that hit ENOSPC has %d bytes, write accepted %d", when, len(got), n)
		}
		sameBytes(t, when+": the file that hit ENOSPC", got, bigData[:len(got)])
	}
	check("remote back")
	v.Remount() // the harness checks staging is empty after a clean unmount
	check("remote back, after a remount")
}

// TestStagingDiskFull puts staging on an 8 MiB tmpfs and fills it: writes fail with
// ENOSPC, data written before is intact, the daemon keeps serving reads, and once space is
// freed writes work again. First, --staging-dir naming a directory that holds files coffer
// did not put there is refused, its files and mode untouched; the empty tmpfs is taken.
func TestStagingDiskFull(t *testing.T) {
	v := newVolume(t, localRemote, withLogErrorsAllowed())
	before := v.P(uniqueName())
	beforeData := markedData(2 << 20)
	mustWrite(t, before, beforeData, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))

	busy := filepath.Join(v.Dir, "busy")
	must(t, "mkdir", os.Mkdir(busy, 0o755))
	mustWrite(t, filepath.Join(busy, "notes.txt"), []byte("not coffer's"), 0o644)
	mustWrite(t, filepath.Join(busy, "0123456789abcdefghjkmnpqrs.stg"), []byte("not coffer's either"), 0o644)
	r := v.run(mountTimeout, "mount", "--state", v.State, "--hsm-pin-file", v.PINFile, "--staging-dir", busy, v.Mnt)
	if m, _ := isMounted(v.Mnt); m {
		_, _ = exec1("fusermount3", "-u", "-z", v.Mnt)
		t.Fatalf("mounted with a staging directory holding someone's files (%s)", r)
	}
	oneErrorLine(t, r)
	if !strings.Contains(r.stderr, "holds files coffer did not put there") {
		t.Errorf("refused --staging-dir: %s", r.stderr)
	}
	if fi, err := os.Stat(busy); err != nil || fi.Mode().Perm() != 0o755 || len(regularFiles(busy)) != 2 {
		t.Errorf("a refused --staging-dir was changed: %v %v, files %v", fi.Mode(), err, regularFiles(busy))
	}

	stg := filepath.Join(v.Dir, "staging-tmpfs")
	must(t, "mkdir", os.Mkdir(stg, 0o700))
	if out, err := exec1("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", stg); err != nil {
		t.Fatalf("mount tmpfs for staging: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = exec1("umount", "-l", stg) }) // runs before the volume's cleanup
	v.Mount("--staging-dir", stg)

	// Ballast leaves 1 MiB free on the staging disk.
	var sf unix.Statfs_t
	must(t, "statfs", unix.Statfs(stg, &sf))
	free := int64(sf.Bavail) * sf.Bsize
	ballast := filepath.Join(stg, "ballast")
	mustWrite(t, ballast, make([]byte, free-1<<20), 0o600)

	full := v.P(uniqueName())
	fullData := markedData(4 << 20)
	n, err := writeUntilError(full, fullData)
	if err == nil {
		f, oerr := os.OpenFile(full, os.O_WRONLY, 0)
		must(t, "open", oerr)
		err = f.Sync()
		f.Close()
	}
	errIs(t, "writing 4 MiB with 1 MiB free on the staging disk", err, unix.ENOSPC)
	t.Logf("staging disk full: write accepted %d bytes, then %v", n, err)

	// Still serving: earlier data reads back, the tree lists, metadata changes work.
	sameBytes(t, "file written before the disk filled", mustRead(t, before), beforeData)
	if _, err := os.ReadDir(v.Mnt); err != nil {
		t.Errorf("readdir with the staging disk full: %v", err)
	}
	if d := v.Daemon(); d == nil || d.exited() {
		t.Fatal("the daemon died when its staging disk filled up")
	}

	// Free the space: writes work again, fsync included.
	must(t, "remove ballast", os.Remove(ballast))
	after := v.P(uniqueName())
	afterData := markedData(3 << 20)
	f, err := os.OpenFile(after, os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, "create after freeing space", err)
	_, err = f.Write(afterData)
	must(t, "write after freeing space", err)
	must(t, "fsync after freeing space", f.Sync())
	must(t, "close", f.Close())
	must(t, "remove the file that hit ENOSPC", os.Remove(full))

	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	if left := stagedFiles(stg); len(left) > 0 {
		t.Errorf("%d file(s) left in the staging tmpfs after a clean unmount, e.g. %s", len(left), left[0])
	}
	v.Mount()
	sameBytes(t, "after remount: file written before the disk filled", mustRead(t, before), beforeData)
	sameBytes(t, "after remount: file written after space was freed", mustRead(t, after), afterData)
	v.onlyErrors(t, "no space left on device")
}

// TestTamper damages the remote and the catalog while the volume is unmounted, remounts
// (cold caches) and reads: every damaged file fails with EIO, never wrong data, and the
// damaged objects are named in the daemon's log.
func TestTamper(t *testing.T) {
	v := newVolume(t, localRemote, withLogErrorsAllowed())
	names := []string{"control", "flip", "swap", "swapsrc", "truncate", "rollback", "delete", "keyA", "keyB", "chunkA", "chunkB"}
	path := map[string]string{}
	want := map[string][]byte{}
	ino := map[string]uint64{}
	for _, n := range names {
		path[n] = v.P(uniqueName())
		want[n] = markedData(200000)
		mustWrite(t, path[n], want[n], 0o644)
		ino[n] = lstat(t, path[n]).Ino
	}
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	obj := func(n string) string { return v.objectsOf(t, ino[n])[0] }

	// Rollback: keep the object, overwrite the file, wait until the old object is deleted.
	oldName := obj("rollback")
	oldBytes, err := os.ReadFile(v.objectPath(oldName))
	must(t, "save the rollback object", err)
	v.Mount("--pitr-window", "0") // the replaced object goes at once, not after the point-in-time window
	newData := markedData(200000)
	f, err := os.OpenFile(path["rollback"], os.O_WRONLY, 0)
	must(t, "open", err)
	_, err = f.WriteAt(newData, 0)
	must(t, "overwrite", err)
	must(t, "fsync", f.Sync())
	f.Close()
	want["rollback"] = newData
	deadline := time.Now().Add(60 * time.Second)
	for fileExists(v.objectPath(oldName)) {
		if time.Now().After(deadline) {
			t.Fatalf("the replaced object %s is still on the remote 60 s after the overwrite", oldName)
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))

	// Damage the remote.
	damaged := map[string]string{} // file -> object the log must name
	p := v.objectPath(obj("flip"))
	b, err := os.ReadFile(p)
	must(t, "read object", err)
	b[len(b)/2] ^= 0x01
	must(t, "flip a byte", os.WriteFile(p, b, 0o644))
	damaged["flip"] = obj("flip")
	b, err = os.ReadFile(v.objectPath(obj("swapsrc")))
	must(t, "read object", err)
	must(t, "swap", os.WriteFile(v.objectPath(obj("swap")), b, 0o644))
	damaged["swap"] = obj("swap")
	p = v.objectPath(obj("truncate"))
	st, err := os.Stat(p)
	must(t, "stat object", err)
	must(t, "truncate object", os.Truncate(p, st.Size()/2))
	damaged["truncate"] = obj("truncate")
	must(t, "restore the old object", os.WriteFile(v.objectPath(obj("rollback")), oldBytes, 0o644))
	damaged["rollback"] = obj("rollback")
	must(t, "delete object", os.Remove(v.objectPath(obj("delete"))))
	damaged["delete"] = obj("delete")

	// Damage the catalog: keyA gets keyB's wrapped key; chunkA and chunkB swap objects.
	db := v.openCatalog(t, true)
	tx, err := db.Begin()
	must(t, "begin", err)
	objA, objB := v.chunkObject(t, tx, ino["chunkA"]), v.chunkObject(t, tx, ino["chunkB"])
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`UPDATE file_keys SET iv = (SELECT iv FROM file_keys WHERE ino = ?1), wrapped = (SELECT wrapped FROM file_keys WHERE ino = ?1),
			salt = (SELECT salt FROM file_keys WHERE ino = ?1) WHERE ino = ?2`, []any{int64(ino["keyB"]), int64(ino["keyA"])}},
		{`UPDATE chunks SET object = randomblob(16) WHERE ino = ? AND idx = 0`, []any{int64(ino["chunkA"])}},
		{`UPDATE chunks SET object = ? WHERE ino = ? AND idx = 0`, []any{objA, int64(ino["chunkB"])}},
		{`UPDATE chunks SET object = ? WHERE ino = ? AND idx = 0`, []any{objB, int64(ino["chunkA"])}},
	} {
		res, err := tx.Exec(q.sql, q.args...)
		must(t, "tamper with the catalog", err)
		if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("tamper with the catalog: %d rows changed by %s", n, q.sql)
		}
	}
	must(t, "commit", tx.Commit())
	db.Close()

	v.Mount()
	sameBytes(t, "untouched file", mustRead(t, path["control"]), want["control"])
	sameBytes(t, "the source of the swapped object", mustRead(t, path["swapsrc"]), want["swapsrc"])
	for _, n := range []string{"flip", "swap", "truncate", "rollback", "delete", "keyA", "chunkA", "chunkB"} {
		got, err := os.ReadFile(path[n])
		if err == nil {
			t.Errorf("%s: read %d bytes of a damaged file without an error (intact: %v)", n, len(got), string(got) == string(want[n]))
			continue
		}
		errIs(t, n+": read of a damaged file", err, unix.EIO)
	}
	log := readFileString(filepath.Join(v.State, daemonLogName))
	for n, o := range damaged {
		if !strings.Contains(log, "object="+o) {
			t.Errorf("%s: the daemon log does not name the damaged object %s", n, o)
		}
	}
	for _, n := range []string{"chunkA", "chunkB"} {
		if !strings.Contains(log, "ino="+strconv.FormatUint(ino[n], 10)) {
			t.Errorf("%s: the daemon log does not name inode %d", n, ino[n])
		}
	}
	// Remove the damaged files so the clean-up's checks see a consistent volume.
	for _, n := range []string{"flip", "swap", "truncate", "rollback", "delete", "keyA", "chunkA", "chunkB"} {
		must(t, "remove a damaged file", os.Remove(path[n]))
	}
}

func (v *Volume) chunkObject(t testing.TB, tx *sql.Tx, ino uint64) []byte {
	t.Helper()
	var o []byte
	must(t, "read chunk row", tx.QueryRow("SELECT object FROM chunks WHERE ino = ? AND idx = 0", int64(ino)).Scan(&o))
	return o
}

// stateDigest hashes every file of the state folder except the daemon's log and SQLite's
// shared-memory index (rebuilt by any reader): a refused mount must change none of them.
func stateDigest(t testing.TB, state string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range regularFiles(state) {
		if filepath.Base(p) == daemonLogName || strings.HasSuffix(p, "-shm") {
			continue
		}
		b, err := os.ReadFile(p)
		must(t, "read state file", err)
		out[p] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return out
}

func sameDigest(t testing.TB, what string, before, after map[string]string) {
	t.Helper()
	for p, h := range before {
		if after[p] != h {
			t.Errorf("%s changed %s", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created %s", what, p)
		}
	}
}

// TestHSMTroubleAtMount: a wrong PIN, a token that does not exist and a PKCS#11 module
// that does not exist each make coffer mount fail with one clear line, a non-zero exit, no
// mount, and no change to the state folder.
func TestHSMTroubleAtMount(t *testing.T) {
	v := newVolume(t, localRemote, withLogErrorsAllowed())
	p := v.P(uniqueName())
	data := markedData(300000)
	mustWrite(t, p, data, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))

	setVolume := func(col, val string) {
		t.Helper()
		db := v.openCatalog(t, true)
		defer db.Close()
		res, err := db.Exec("UPDATE volume SET "+col+" = ? WHERE id = 1", val)
		must(t, "edit the volume row", err)
		if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("edit the volume row: %d rows", n)
		}
		// Fold the WAL into the file so the refused mount sees a settled catalog.
		_, err = db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
		must(t, "checkpoint", err)
	}
	badPIN := filepath.Join(v.Dir, "bad-pin")
	mustWrite(t, badPIN, []byte("98765432"), 0o600)
	cases := []struct {
		name, col, val, pinFile string
		mention                 []string // the error must say these
	}{
		{name: "wrong PIN", pinFile: badPIN, mention: []string{"PIN"}},
		{name: "missing token", col: "hsm_token", val: "no-such-token-" + randHex(3), mention: []string{"no-such-token-"}},
		{name: "missing module", col: "hsm_module", val: "/nonexistent/libpkcs11-" + randHex(3) + ".so", mention: []string{"/nonexistent/libpkcs11-"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			var orig string
			if c.col != "" {
				db := v.openCatalog(t, false)
				must(t, "read the volume row", db.QueryRow("SELECT "+c.col+" FROM volume WHERE id = 1").Scan(&orig))
				db.Close()
				setVolume(c.col, c.val)
				defer setVolume(c.col, orig)
			}
			pin := v.PINFile
			if c.pinFile != "" {
				pin = c.pinFile
			}
			before := stateDigest(t, v.State)
			var r result
			took := timed(func() { r = v.run(mountTimeout, "mount", "--state", v.State, "--hsm-pin-file", pin, v.Mnt) })
			if m, _ := isMounted(v.Mnt); m {
				_, _ = exec1("fusermount3", "-u", "-z", v.Mnt)
				t.Fatalf("mounted despite a %s (%s)", c.name, r)
			}
			t.Logf("%s: exit %d after %v: %s", c.name, r.code, took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
			oneErrorLine(t, r)
			for _, m := range c.mention {
				if !strings.Contains(r.stderr, m) {
					t.Errorf("%s: the error does not mention %q: %s", c.name, m, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "98765432") || strings.Contains(r.stderr, string(v.Token.PIN)) {
				t.Errorf("%s: the error repeats a PIN", c.name)
			}
			sameDigest(t, "a mount refused for a "+c.name, before, stateDigest(t, v.State))
			if _, err := findAdoptedDaemon(v.Mnt); err == nil {
				t.Errorf("%s: a coffer daemon is still running after the refused mount", c.name)
			}
		})
	}
	v.Mount()
	sameBytes(t, "after the refused mounts", mustRead(t, p), data)
}

// TestLocalRemoteDown breaks a local-folder remote (root ignores permissions, so the folder
// is moved away and a plain file put in its place): reads of uncached data and fsync fail
// with EIO within their timeouts; once the folder is back, everything uploads.
func TestLocalRemoteDown(t *testing.T) {
	v := newVolume(t, localRemote, withLogErrorsAllowed())
	uploaded := v.P(uniqueName())
	upData := markedData(1 << 20)
	mustWrite(t, uploaded, upData, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	v.Mount("--sync-timeout", "2s", "--read-timeout", "2s")

	away := v.RemoteDir + ".away"
	must(t, "move the remote away", os.Rename(v.RemoteDir, away))
	mustWrite(t, v.RemoteDir, []byte("not a folder\n"), 0o644)
	var err error
	took := timed(func() { _, err = os.ReadFile(uploaded) })
	errIs(t, "read of uncached data with the local remote gone", err, unix.EIO)
	t.Logf("read with the local remote gone: %v after %v", err, took.Round(time.Millisecond))

	staged := v.P(uniqueName())
	stagedData := markedData(1 << 20)
	f, err := os.OpenFile(staged, os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, "create", err)
	_, err = f.Write(stagedData)
	must(t, "write with the local remote gone", err)
	took = timed(func() { err = f.Sync() })
	errIs(t, "fsync with the local remote gone", err, unix.EIO)
	t.Logf("fsync with the local remote gone: %v after %v (--sync-timeout 2s)", err, took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("fsync with the local remote gone took %v", took)
	}

	must(t, "remove the impostor", os.Remove(v.RemoteDir))
	must(t, "bring the remote back", os.Rename(away, v.RemoteDir))
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err = f.Sync(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fsync still fails 60 s after the remote came back: %v", err)
		}
	}
	f.Close()
	v.Remount()
	sameBytes(t, "uploaded before the outage", mustRead(t, uploaded), upData)
	sameBytes(t, "written during the outage", mustRead(t, staged), stagedData)
}
