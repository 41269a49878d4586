package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"golang.org/x/sys/unix"
)

// sh runs a program with a timeout and returns its combined output; it fails the test on a
// non-zero exit (with the output) unless allowFail.
func sh(t *testing.T, dir string, env []string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := shErr(dir, env, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, clipOutput(out))
	}
	return out
}

func shErr(dir string, env []string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return string(out), err
}

func clipOutput(s string) string {
	if len(s) > 4000 {
		return s[:4000] + "\n... (output clipped)"
	}
	return s
}

func requireTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: run make test (test/deps.sh installs the Debian package %s)", name, pkg)
	}
}

// The source trees for the untar test: part of Go's own source, plus a folder of our own
// with distinctive names, content markers, symlinks, hard links, odd modes and an empty
// directory. Each archive is built once per process and extracted on ext4 as the reference.
type tarball struct {
	once sync.Once
	file string // the archive
	ref  string // the archive extracted on ext4
	err  error
	n    int // entries
}

var (
	tarballsMu sync.Mutex
	tarballs   = map[string]*tarball{}
)

func buildTarball(t *testing.T, sources ...string) *tarball {
	t.Helper()
	requireTool(t, "tar", "tar")
	requireTool(t, "diff", "diffutils")
	key := strings.Join(sources, "+")
	tarballsMu.Lock()
	tb := tarballs[key]
	if tb == nil {
		tb = &tarball{}
		tarballs[key] = tb
	}
	tarballsMu.Unlock()
	tb.once.Do(func() { tb.err = tb.build(sources) })
	if tb.err != nil {
		t.Fatalf("build the source tarball: %v", tb.err)
	}
	return tb
}

func (tb *tarball) build(sources []string) error {
	goSrc := filepath.Join(goRoot(), "src")
	dir, err := os.MkdirTemp(baseDir, "tarball-")
	if err != nil {
		return err
	}
	extra := filepath.Join(dir, "extra", namePrefix+"-extra")
	if err := os.MkdirAll(filepath.Join(extra, "empty", "deeper"), 0o755); err != nil {
		return err
	}
	for i := 0; i < 30; i++ {
		p := filepath.Join(extra, fmt.Sprintf("%s-%02d.txt", uniqueName(), i))
		if err := os.WriteFile(p, markedData(100*i*i), 0o644); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{"exec.sh", 0o755}, {"private", 0o600}, {"readonly", 0o444}} {
		p := filepath.Join(extra, namePrefix+f.name)
		if err := os.WriteFile(p, []byte(markedText(f.name)), f.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, f.mode); err != nil {
			return err
		}
	}
	if err := os.Symlink(namePrefix+"exec.sh", filepath.Join(extra, namePrefix+"link")); err != nil {
		return err
	}
	if err := os.Link(filepath.Join(extra, namePrefix+"private"), filepath.Join(extra, namePrefix+"hardlink")); err != nil {
		return err
	}
	tb.file = filepath.Join(dir, "src.tar")
	args := append([]string{"-cf", tb.file, "-C", goSrc}, sources...)
	args = append(args, "-C", filepath.Join(dir, "extra"), namePrefix+"-extra")
	if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("tar %v: %v\n%s", args, err, out)
	}
	tb.ref = filepath.Join(dir, "ref")
	if err := os.Mkdir(tb.ref, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("tar", "-xpf", tb.file, "-C", tb.ref).CombinedOutput(); err != nil {
		return fmt.Errorf("tar -x into %s: %v\n%s", tb.ref, err, out)
	}
	tb.n = len(snapshotNames(tb.ref)) - 1
	return nil
}

// goRoot is the Go installation whose src/ the untar test archives.
func goRoot() string { return runtime.GOROOT() }

// TestUntarDiff extracts a real source tree inside the mount with tar, compares it with
// diff -r and with a full metadata snapshot, remounts and compares again. The local remote
// gets a few thousand files of Go's source; the S3 remote a few hundred (every first read of
// a file after the upload is a GET, and those are slow through the test S3 server).
func TestUntarDiff(t *testing.T) {
	sources := map[backend][]string{localRemote: {"crypto", "go", "encoding"}, s3Remote: {"encoding", "bufio", "container"}}
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		tb := buildTarball(t, sources[b]...)
		v := newVolume(t, b)
		dst := v.P("untar")
		must(t, "mkdir", os.Mkdir(dst, 0o755))
		lap := stopwatch(t)
		sh(t, dst, nil, 4*time.Minute, "tar", "-xpf", tb.file, "-C", dst)
		lap(fmt.Sprintf("tar -x of %d entries", tb.n))
		sh(t, "/", nil, 2*time.Minute, "diff", "-r", "--no-dereference", tb.ref, dst)
		src := sources[b][0]
		sh(t, "/", nil, 2*time.Minute, "diff", "-r", "--no-dereference", filepath.Join(goRoot(), "src", src), filepath.Join(dst, src))
		lap("diff -r (twice)")
		ref := snapshot(t, tb.ref)
		opts := compareOpts{owner: true, mtime: true, skipRoot: true}
		before := snapshot(t, dst)
		requireSameTree(t, "extracted tree vs the same archive extracted on ext4", before, ref, opts)
		lap("snapshot and compare")
		v.Remount()
		lap("unmount (uploads) and mount")
		sh(t, "/", nil, 2*time.Minute, "diff", "-r", "--no-dereference", tb.ref, dst)
		lap("diff -r after remount (cold)")
		after := snapshot(t, dst)
		requireSameTree(t, "extracted tree before unmount vs after remount", before, after, identical)
		lap("snapshot and compare after remount")
	})
}

// stopwatch logs the time each phase of a test took.
func stopwatch(t *testing.T) func(what string) {
	start := time.Now()
	return func(what string) {
		t.Helper()
		now := time.Now()
		t.Logf("%s: %v", what, now.Sub(start).Round(time.Millisecond))
		start = now
	}
}

func snapshotNames(root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		out = append(out, p)
		return nil
	})
	return out
}

// TestSQLite creates, fills and checks SQLite databases inside the mount, in rollback-journal
// and in WAL mode (whose -shm file is a shared writable mmap), then remounts and checks again.
func TestSQLite(t *testing.T) {
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		v := newVolume(t, b)
		dir := v.P(uniqueName())
		must(t, "mkdir", os.Mkdir(dir, 0o755))
		sums := map[string]string{}
		for _, mode := range []string{"DELETE", "WAL"} {
			path := filepath.Join(dir, uniqueName()+"-"+strings.ToLower(mode)+".db")
			sums[path] = fillDatabase(t, path, mode)
		}
		v.Remount()
		for path, want := range sums {
			db := openDB(t, path, "")
			checkIntegrity(t, db, path)
			if got := dbChecksum(t, db); got != want {
				t.Errorf("%s: content changed across remount (checksum %s -> %s)", path, want, got)
			}
			// Still writable after the remount.
			_, err := db.Exec(`INSERT INTO items(body, blob) VALUES (?, ?)`, markedText("after remount"), markedData(3000))
			must(t, "insert after remount", err)
			checkIntegrity(t, db, path)
			db.Close()
		}
	})
}

func openDB(t *testing.T, path, journal string) *sql.DB {
	t.Helper()
	dsn := "file:" + path + "?_busy_timeout=10000&_synchronous=FULL"
	if journal != "" {
		dsn += "&_journal_mode=" + journal
	}
	db, err := sql.Open("sqlite3", dsn)
	must(t, "open "+path, err)
	db.SetMaxOpenConns(1)
	return db
}

// fillDatabase creates a database with thousands of rows over several transactions
// (inserts, updates, deletes, an index, a VACUUM) and returns a checksum of its content.
func fillDatabase(t *testing.T, path, journal string) string {
	t.Helper()
	db := openDB(t, path, journal)
	defer db.Close()
	var mode string
	must(t, "journal mode", db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	if !strings.EqualFold(mode, journal) {
		t.Fatalf("%s: journal_mode is %q, want %s", path, mode, journal)
	}
	_, err := db.Exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL, blob BLOB, n INTEGER DEFAULT 0)`)
	must(t, "create table", err)
	rng := rand.New(rand.NewPCG(1, 2))
	for tx := 0; tx < 6; tx++ {
		x, err := db.Begin()
		must(t, "begin", err)
		for i := 0; i < 1000; i++ {
			_, err := x.Exec(`INSERT INTO items(body, blob, n) VALUES (?, ?, ?)`,
				markedText(fmt.Sprintf("row %d/%d", tx, i)), markedData(rng.IntN(2000)), rng.IntN(1000))
			must(t, "insert", err)
		}
		_, err = x.Exec(`UPDATE items SET n = n + 1, body = body || ? WHERE id % 7 = ?`, markedText("updated"), tx)
		must(t, "update", err)
		_, err = x.Exec(`DELETE FROM items WHERE id % 13 = ?`, tx)
		must(t, "delete", err)
		must(t, "commit", x.Commit())
	}
	// A rolled-back transaction leaves nothing behind.
	x, err := db.Begin()
	must(t, "begin", err)
	_, err = x.Exec(`DELETE FROM items`)
	must(t, "delete all", err)
	must(t, "rollback", x.Rollback())
	_, err = db.Exec(`CREATE INDEX items_n ON items(n)`)
	must(t, "create index", err)
	_, err = db.Exec(`VACUUM`)
	must(t, "vacuum", err)
	var count int
	must(t, "count", db.QueryRow(`SELECT count(*) FROM items`).Scan(&count))
	if count < 4000 {
		t.Errorf("%s: %d rows, want over 4000", path, count)
	}
	checkIntegrity(t, db, path)
	if journal == "WAL" {
		_, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
		must(t, "checkpoint", err)
	}
	return dbChecksum(t, db)
}

func checkIntegrity(t *testing.T, db *sql.DB, path string) {
	t.Helper()
	rows, err := db.Query(`PRAGMA integrity_check`)
	must(t, "integrity_check", err)
	defer rows.Close()
	var res []string
	for rows.Next() {
		var s string
		must(t, "scan", rows.Scan(&s))
		res = append(res, s)
	}
	if len(res) != 1 || res[0] != "ok" {
		t.Fatalf("%s: PRAGMA integrity_check: %q", path, res)
	}
}

func dbChecksum(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query(`SELECT id, body, blob, n FROM items ORDER BY id`)
	must(t, "select", err)
	defer rows.Close()
	h := sha256.New()
	for rows.Next() {
		var id, n int64
		var body string
		var blob []byte
		must(t, "scan", rows.Scan(&id, &body, &blob, &n))
		fmt.Fprintf(h, "%d %q %x %d\n", id, body, blob, n)
	}
	must(t, "rows", rows.Err())
	return hex.EncodeToString(h.Sum(nil))
}

// TestGit commits, logs and clones a repository inside the mount. A local clone hard-links
// the object files: the case where gocryptfs reports a wrong size for a fresh hard link.
func TestGit(t *testing.T) {
	requireTool(t, "git", "git")
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		v := newVolume(t, b)
		home := filepath.Join(v.Dir, "git-home")
		must(t, "mkdir", os.MkdirAll(home, 0o755))
		env := []string{"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@example.invalid",
			"GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@example.invalid", "GIT_TERMINAL_PROMPT=0"}
		git := func(dir string, args ...string) string {
			t.Helper()
			return sh(t, dir, env, 2*time.Minute, "git", append([]string{"-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "init.defaultBranch=main"}, args...)...)
		}
		repo := v.P(uniqueName())
		git(v.Mnt, "init", "-q", repo)
		files := map[string][]byte{}
		for i := 0; i < 40; i++ {
			rel := filepath.Join(fmt.Sprintf("dir%d", i%4), fmt.Sprintf("%s-%d.txt", uniqueName(), i))
			files[rel] = []byte(strings.Repeat(markedText(fmt.Sprintf("file %d", i)), 1+i*10))
		}
		files["binary.bin"] = markedData(300000)
		for rel, data := range files {
			must(t, "mkdir", os.MkdirAll(filepath.Join(repo, filepath.Dir(rel)), 0o755))
			mustWrite(t, filepath.Join(repo, rel), data, 0o644)
		}
		mustWrite(t, filepath.Join(repo, "run.sh"), []byte("#!/bin/sh\necho "+marker()+"\n"), 0o755)
		must(t, "symlink", os.Symlink("run.sh", filepath.Join(repo, "link")))
		git(repo, "add", "-A")
		git(repo, "commit", "-q", "-m", "first")
		// A second commit that modifies, deletes and renames.
		for rel := range files {
			if strings.HasPrefix(rel, "dir1/") {
				mustWrite(t, filepath.Join(repo, rel), []byte(markedText("modified")), 0o644)
			}
			if strings.HasPrefix(rel, "dir2/") {
				must(t, "remove", os.Remove(filepath.Join(repo, rel)))
			}
		}
		must(t, "rmdir", os.Remove(filepath.Join(repo, "dir2"))) // git does not keep empty directories
		git(repo, "mv", "dir3", "dir3-renamed")
		git(repo, "add", "-A")
		git(repo, "commit", "-q", "-m", "second")
		if n := strings.Count(strings.TrimSpace(git(repo, "log", "--oneline")), "\n") + 1; n != 2 {
			t.Fatalf("git log shows %d commits, want 2", n)
		}
		if st := git(repo, "status", "--porcelain"); st != "" {
			t.Fatalf("git status not clean after commit:\n%s", st)
		}
		git(repo, "fsck", "--full", "--strict")
		head := strings.TrimSpace(git(repo, "rev-parse", "HEAD"))

		clone := v.P(uniqueName())
		git(v.Mnt, "clone", "-q", repo, clone)
		checkClone := func(when string) {
			t.Helper()
			git(clone, "fsck", "--full", "--strict")
			if got := strings.TrimSpace(git(clone, "rev-parse", "HEAD")); got != head {
				t.Fatalf("%s: clone HEAD %s, want %s", when, got, head)
			}
			if st := git(clone, "status", "--porcelain"); st != "" {
				t.Fatalf("%s: clone's git status not clean:\n%s", when, st)
			}
			sh(t, "/", nil, time.Minute, "diff", "-r", "--no-dereference", "--exclude=.git", repo, clone)
		}
		checkClone("after clone")
		// The local clone hard-linked the objects: same inode, right size, through both names.
		linked := 0
		_ = filepath.WalkDir(filepath.Join(clone, ".git", "objects"), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(clone, p)
			st, orig := lstat(t, p), filepath.Join(repo, rel)
			var ost unix.Stat_t
			if unix.Lstat(orig, &ost) == nil && ost.Ino == st.Ino {
				linked++
				if st.Size != ost.Size || st.Nlink < 2 {
					t.Errorf("hard-linked object %s: size %d vs %d, nlink %d", rel, st.Size, ost.Size, st.Nlink)
				}
				if !bytes.Equal(mustRead(t, p), mustRead(t, orig)) {
					t.Errorf("hard-linked object %s reads differently through its two names", rel)
				}
			}
			return nil
		})
		if linked == 0 {
			t.Error("git clone made no hard links (expected a local clone to link its objects)")
		}
		// Repack in the clone (mmap, renames, deletes), then commit there and pull back.
		git(clone, "gc", "-q", "--prune=now")
		mustWrite(t, filepath.Join(clone, "from-clone.txt"), []byte(markedText("from clone")), 0o644)
		git(clone, "add", "-A")
		git(clone, "commit", "-q", "-m", "third")
		git(repo, "pull", "-q", "--no-rebase", clone, "main")
		head = strings.TrimSpace(git(repo, "rev-parse", "HEAD"))
		git(repo, "fsck", "--full", "--strict")

		v.Remount()
		git(repo, "fsck", "--full", "--strict")
		if st := git(repo, "status", "--porcelain"); st != "" {
			t.Fatalf("after remount: git status not clean:\n%s", st)
		}
		checkClone("after remount")
	})
}

// TestConcurrentWriters runs writers on disjoint ranges of one file and on separate files,
// with readers checking every byte they see, then verifies every byte, before and after a
// remount.
func TestConcurrentWriters(t *testing.T) {
	forBackends(t, allBackends, func(t *testing.T, b backend) {
		v := newVolume(t, b)
		dir := v.P(uniqueName())
		must(t, "mkdir", os.Mkdir(dir, 0o755))
		const (
			writers = 8
			region  = 768 << 10 // 8 x 768 KiB = 6 MiB: crosses the 4 MiB chunk boundary
			files   = 8
			perFile = 1 << 20
		)
		shared := filepath.Join(dir, "shared")
		mustWrite(t, shared, nil, 0o644)
		want := markedData(writers * region)
		fileData := make([][]byte, files)
		for i := range fileData {
			fileData[i] = markedData(perFile + i*1000)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		stop := make(chan struct{})
		fail := func(err error) {
			select {
			case errs <- err:
			default:
			}
		}
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				fd, err := unix.Open(shared, unix.O_WRONLY, 0)
				if err != nil {
					fail(err)
					return
				}
				defer unix.Close(fd)
				rng := rand.New(rand.NewPCG(uint64(w), 99))
				// Random-sized pieces of the region, in random order.
				var pieces [][2]int
				for off := 0; off < region; {
					n := min(1+rng.IntN(64<<10), region-off)
					pieces = append(pieces, [2]int{off, n})
					off += n
				}
				rng.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
				base := w * region
				for _, p := range pieces {
					if _, err := unix.Pwrite(fd, want[base+p[0]:base+p[0]+p[1]], int64(base+p[0])); err != nil {
						fail(fmt.Errorf("writer %d: %w", w, err))
						return
					}
				}
				if err := unix.Fsync(fd); err != nil {
					fail(fmt.Errorf("writer %d fsync: %w", w, err))
				}
			}(w)
		}
		for i := 0; i < files; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				p := filepath.Join(dir, fmt.Sprintf("%s-%d", uniqueName(), i))
				fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_APPEND, 0o644)
				if err != nil {
					fail(err)
					return
				}
				data := fileData[i]
				rng := rand.New(rand.NewPCG(uint64(i), 7))
				for off := 0; off < len(data); {
					n := min(4096*(1+rng.IntN(32)), len(data)-off)
					if _, err := unix.Write(fd, data[off:off+n]); err != nil {
						fail(fmt.Errorf("file %d: %w", i, err))
						break
					}
					off += n
				}
				if err := unix.Close(fd); err != nil {
					fail(fmt.Errorf("close file %d: %w", i, err))
				}
				if err := os.Rename(p, filepath.Join(dir, fmt.Sprintf("file-%d", i))); err != nil {
					fail(err)
				}
			}(i)
		}
		var readers sync.WaitGroup
		var reads [4]int
		for r := 0; r < 4; r++ {
			readers.Add(1)
			go func(r int) {
				defer readers.Done()
				fd, err := unix.Open(shared, unix.O_RDONLY, 0)
				if err != nil {
					fail(err)
					return
				}
				defer unix.Close(fd)
				rng := rand.New(rand.NewPCG(uint64(r), 3))
				buf := make([]byte, 128<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					off := rng.IntN(len(want))
					n, err := unix.Pread(fd, buf[:rng.IntN(len(buf))+1], int64(off))
					if err != nil {
						fail(fmt.Errorf("reader %d: %w", r, err))
						return
					}
					reads[r]++
					// Every byte is either not written yet (zero) or what its writer wrote.
					for i := 0; i < n; i++ {
						if c := buf[i]; c != 0 && c != want[off+i] {
							fail(fmt.Errorf("reader %d saw byte %#x at offset %d, want 0 or %#x", r, c, off+i, want[off+i]))
							return
						}
					}
				}
			}(r)
		}
		wg.Wait()
		close(stop)
		readers.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("readers made %v reads while the writers ran", reads)
		verify := func(when string) {
			t.Helper()
			sameBytes(t, when+": shared file", mustRead(t, shared), want)
			for i := range fileData {
				sameBytes(t, fmt.Sprintf("%s: file %d", when, i), mustRead(t, filepath.Join(dir, fmt.Sprintf("file-%d", i))), fileData[i])
			}
		}
		verify("after the writers")
		v.Remount()
		verify("after remount")
	})
}
