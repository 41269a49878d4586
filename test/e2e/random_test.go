package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRandomOps applies a long random sequence of file operations (fixed seeds) to the mount
// and to a plain ext4 directory in lockstep and compares every result, errno included, then
// the whole tree; then it remounts and compares again. A small block and chunk size (4 KiB
// in 16 KiB chunks) makes files of a few hundred KiB cross many chunk boundaries.
func TestRandomOps(t *testing.T) {
	cases := []struct {
		b    backend
		seed uint64
		ops  int
	}{
		{localRemote, 20260501, 10000},
		{s3Remote, 7, 2500},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/seed%d/%dops", c.b, c.seed, c.ops), func(t *testing.T) {
			v := newVolume(t, c.b, withLayout("4K", "16K"))
			plain := filepath.Join(v.Dir, "plain")
			if err := os.Mkdir(plain, 0o755); err != nil {
				t.Fatal(err)
			}
			m := v.P("rnd")
			if err := os.Mkdir(m, 0o755); err != nil {
				t.Fatal(err)
			}
			// The roots themselves were made alike; only their content is compared.
			start := time.Now()
			r := newRandomRun(t, c.seed, m, plain)
			r.run(c.ops)
			r.closeAll()
			t.Logf("%d operations in %v (%d errno results, %d ok); per kind ok/errno: %v; %d paths at the end",
				c.ops, time.Since(start).Round(time.Millisecond), r.errs, c.ops-r.errs, r.stats, len(r.existing))

			opts := compareOpts{owner: true, skipRoot: true}
			requireSameTree(t, "mount vs plain directory after the random run", snapshot(t, m), snapshot(t, plain), opts)
			checkDirNlink(t, snapshot(t, m), snapshot(t, plain))
			before := snapshot(t, m)
			digest := treeDigest(before)

			v.Remount()
			after := snapshot(t, m)
			requireSameTree(t, "mount vs plain directory after remount", after, snapshot(t, plain), opts)
			requireSameTree(t, "mount before unmount vs after remount", before, after,
				identical)
			if d := treeDigest(after); d != digest {
				t.Fatalf("tree digest changed across remount: %s -> %s", digest, d)
			}
		})
	}
}

// checkDirNlink reports directories whose link count differs from ext4's (2 + subdirs),
// without stopping the test: the other comparisons matter more.
func checkDirNlink(t *testing.T, a, b map[string]*entry) {
	t.Helper()
	var bad []string
	for k, x := range a {
		if y, ok := b[k]; ok && x.Type == "dir" && y.Type == "dir" && x.Nlink != y.Nlink && k != "." {
			bad = append(bad, fmt.Sprintf("%s: nlink %d, ext4 has %d", k, x.Nlink, y.Nlink))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Errorf("directory link counts differ from ext4 (2 + subdirectories) for %d directories, e.g.:\n  %s",
			len(bad), strings.Join(bad[:min(5, len(bad))], "\n  "))
	}
}

const randomFDs = 6

// side is one of the two trees the random run drives.
type side struct {
	root string
	fds  [randomFDs]int // -1: slot free
}

type randomRun struct {
	t        *testing.T
	rng      *rand.Rand
	m, p     *side
	names    []string
	existing []string // paths that exist in the plain tree (refreshed now and then)
	files    []string // the regular files among them
	dirs     []string // the directories among them
	recent   []string
	errs     int
	n        int
	stats    map[string][2]int // op kind -> {ok, errno}
}

func newRandomRun(t *testing.T, seed uint64, mRoot, pRoot string) *randomRun {
	r := &randomRun{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), m: &side{root: mRoot}, p: &side{root: pRoot},
		stats: map[string][2]int{}}
	for i := range randomFDs {
		r.m.fds[i], r.p.fds[i] = -1, -1
	}
	// A small pool of names makes collisions (EEXIST, ENOTEMPTY, ...) frequent.
	for _, s := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		r.names = append(r.names, namePrefix+s)
	}
	return r
}

func (r *randomRun) name() string { return r.names[r.rng.IntN(len(r.names))] }

// path picks an existing path of any type most of the time, else a random one up to 3
// levels deep (which often does not exist: errors are compared too).
func (r *randomRun) path() string {
	if len(r.existing) > 0 && r.rng.IntN(4) != 0 {
		return r.existing[r.rng.IntN(len(r.existing))]
	}
	parts := make([]string, 1+r.rng.IntN(3))
	for i := range parts {
		parts[i] = r.name()
	}
	return strings.Join(parts, "/")
}

// pick returns one of list with probability 3/4, else path().
func (r *randomRun) pick(list []string) string {
	if len(list) > 0 && r.rng.IntN(4) != 0 {
		return list[r.rng.IntN(len(list))]
	}
	return r.path()
}

func (r *randomRun) file() string { return r.pick(r.files) }

// dir is an existing directory ("." is the root) most of the time.
func (r *randomRun) dir() string {
	if r.rng.IntN(4) == 0 {
		return "."
	}
	return r.pick(r.dirs)
}

// newPath is a name inside an existing directory most of the time (which may exist too).
func (r *randomRun) newPath() string {
	if r.rng.IntN(5) == 0 {
		return r.path()
	}
	d := "."
	if len(r.dirs) > 0 && r.rng.IntN(3) != 0 {
		d = r.dirs[r.rng.IntN(len(r.dirs))]
	}
	return filepath.Join(d, r.name())
}

func (r *randomRun) refresh() {
	r.existing, r.files, r.dirs = r.existing[:0], r.files[:0], r.dirs[:0]
	_ = filepath.WalkDir(r.p.root, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != r.p.root {
			rel, _ := filepath.Rel(r.p.root, p)
			r.existing = append(r.existing, rel)
			switch {
			case d.Type().IsRegular():
				r.files = append(r.files, rel)
			case d.IsDir():
				r.dirs = append(r.dirs, rel)
			}
		}
		return nil
	})
}

// data returns n random bytes with a content marker every 512 bytes (for the leak scans).
func (r *randomRun) data(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.rng.Uint32())
	}
	for off := 0; off+len(markerPrefix)+16 <= n; off += 512 {
		copy(b[off:], markerPrefix)
		copy(b[off+len(markerPrefix):], fmt.Sprintf("%016x", r.rng.Uint64()))
	}
	return b
}

var randomModes = []uint32{0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o2750, 0o1777, 0}

// op is one operation, applied to each side; it returns a description of the result that
// must be identical on both.
type op struct {
	desc string
	do   func(s *side) string
}

func (r *randomRun) run(n int) {
	for i := 0; i < n; i++ {
		r.n = i
		if i%8 == 0 {
			r.refresh()
		}
		o := r.next()
		r.recent = append(r.recent, fmt.Sprintf("#%d %s", i, o.desc))
		if len(r.recent) > 25 {
			r.recent = r.recent[1:]
		}
		got := o.do(r.m)
		want := o.do(r.p)
		if got != want {
			r.t.Fatalf("operation #%d diverged: %s\n  mount: %s\n  ext4:  %s\nrecent operations:\n  %s",
				i, o.desc, got, want, strings.Join(r.recent, "\n  "))
		}
		kind, _, _ := strings.Cut(o.desc, " ")
		st := r.stats[kind]
		if strings.HasPrefix(want, "E") {
			r.errs++
			st[1]++
		} else {
			st[0]++
		}
		r.stats[kind] = st
	}
}

func (s *side) abs(rel string) string { return filepath.Join(s.root, rel) }

func res(err error, ok string) string {
	if err != nil {
		return errnoName(err)
	}
	return ok
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

func (r *randomRun) next() op {
	rng := r.rng
	switch k := rng.IntN(100); {
	case k < 10: // create, write from 0, close
		p := r.newPath()
		flags := unix.O_CREAT | unix.O_WRONLY
		if rng.IntN(3) == 0 {
			flags |= unix.O_EXCL
		}
		if rng.IntN(3) == 0 {
			flags |= unix.O_TRUNC
		}
		mode := []uint32{0o644, 0o600, 0o755}[rng.IntN(3)]
		data := r.data(rng.IntN(20000))
		return op{fmt.Sprintf("create %s flags=%#x mode=%#o len=%d", p, flags, mode, len(data)), func(s *side) string {
			fd, err := unix.Open(s.abs(p), flags|unix.O_CLOEXEC, mode)
			if err != nil {
				return errnoName(err)
			}
			n, err := unix.Pwrite(fd, data, 0)
			cerr := unix.Close(fd)
			return fmt.Sprintf("wrote %d %s close %s", n, errnoName(err), errnoName(cerr))
		}}
	case k < 22: // open, write at an offset (or append), close
		p := r.file()
		app := rng.IntN(4) == 0
		off := int64(rng.IntN(300 << 10))
		data := r.data(1 + rng.IntN(70<<10))
		return op{fmt.Sprintf("write %s off=%d len=%d append=%v", p, off, len(data), app), func(s *side) string {
			flags := unix.O_WRONLY | unix.O_CLOEXEC
			if app {
				flags |= unix.O_APPEND
			}
			fd, err := unix.Open(s.abs(p), flags, 0)
			if err != nil {
				return errnoName(err)
			}
			var n int
			if app {
				n, err = unix.Write(fd, data)
			} else {
				n, err = unix.Pwrite(fd, data, off)
			}
			cerr := unix.Close(fd)
			return fmt.Sprintf("wrote %d %s close %s", n, errnoName(err), errnoName(cerr))
		}}
	case k < 30: // read a whole file
		p := r.file()
		return op{"read " + p, func(s *side) string {
			b, err := os.ReadFile(s.abs(p))
			return res(err, fmt.Sprintf("len=%d sha=%s", len(b), sum(b)))
		}}
	case k < 34:
		p := r.file()
		size := int64(rng.IntN(320 << 10))
		return op{fmt.Sprintf("truncate %s %d", p, size), func(s *side) string {
			return errnoName(unix.Truncate(s.abs(p), size))
		}}
	case k < 41:
		a, b := r.path(), r.newPath()
		flags := uint(0)
		switch rng.IntN(6) {
		case 0:
			flags = unix.RENAME_NOREPLACE
		case 1:
			flags = unix.RENAME_EXCHANGE
		}
		return op{fmt.Sprintf("rename %s -> %s flags=%d", a, b, flags), func(s *side) string {
			return errnoName(unix.Renameat2(unix.AT_FDCWD, s.abs(a), unix.AT_FDCWD, s.abs(b), flags))
		}}
	case k < 45:
		a, b := r.file(), r.newPath()
		return op{fmt.Sprintf("link %s -> %s", a, b), func(s *side) string {
			return errnoName(unix.Link(s.abs(a), s.abs(b)))
		}}
	case k < 50:
		p := r.file()
		return op{"unlink " + p, func(s *side) string { return errnoName(unix.Unlink(s.abs(p))) }}
	case k < 56:
		p := r.newPath()
		mode := []uint32{0o755, 0o700, 0o777, 0o750}[rng.IntN(4)]
		return op{fmt.Sprintf("mkdir %s %#o", p, mode), func(s *side) string { return errnoName(unix.Mkdir(s.abs(p), mode)) }}
	case k < 59:
		p := r.dir()
		return op{"rmdir " + p, func(s *side) string { return errnoName(unix.Rmdir(s.abs(p))) }}
	case k < 62:
		p := r.newPath()
		target := r.name()
		switch rng.IntN(3) {
		case 0:
			target = r.name() + "/" + r.name()
		case 1:
			target = "missing-" + r.name()
		}
		return op{fmt.Sprintf("symlink %s -> %s", p, target), func(s *side) string {
			return errnoName(unix.Symlink(target, s.abs(p)))
		}}
	case k < 64:
		p := r.path()
		return op{"readlink " + p, func(s *side) string {
			t, err := os.Readlink(s.abs(p))
			return res(err, "target="+t)
		}}
	case k < 67:
		p := r.path()
		mode := randomModes[rng.IntN(len(randomModes))]
		return op{fmt.Sprintf("chmod %s %#o", p, mode), func(s *side) string { return errnoName(unix.Chmod(s.abs(p), mode)) }}
	case k < 71:
		p := r.path()
		name := fmt.Sprintf("user.k%d", rng.IntN(3))
		val := make([]byte, rng.IntN(200))
		for i := range val {
			val[i] = "abcdefgh"[rng.IntN(8)] // xattr values live in the catalog: no markers
		}
		flags := []int{0, 0, unix.XATTR_CREATE, unix.XATTR_REPLACE}[rng.IntN(4)]
		follow := rng.IntN(2) == 0
		return op{fmt.Sprintf("setxattr %s %s len=%d flags=%d follow=%v", p, name, len(val), flags, follow), func(s *side) string {
			if follow {
				return errnoName(unix.Setxattr(s.abs(p), name, val, flags))
			}
			return errnoName(unix.Lsetxattr(s.abs(p), name, val, flags))
		}}
	case k < 73:
		p := r.path()
		name := fmt.Sprintf("user.k%d", rng.IntN(3))
		return op{fmt.Sprintf("getxattr %s %s", p, name), func(s *side) string {
			val, err := lgetxattr(s.abs(p), name)
			return res(err, "value="+string(val))
		}}
	case k < 74:
		p := r.path()
		name := fmt.Sprintf("user.k%d", rng.IntN(3))
		return op{fmt.Sprintf("removexattr %s %s", p, name), func(s *side) string {
			return errnoName(unix.Lremovexattr(s.abs(p), name))
		}}
	case k < 75:
		p := r.path()
		return op{"listxattr " + p, func(s *side) string {
			x, err := userXattrs(s.abs(p))
			return res(err, x)
		}}
	case k < 80:
		p := r.path()
		follow := rng.IntN(2) == 0
		return op{fmt.Sprintf("stat %s follow=%v", p, follow), func(s *side) string {
			var st unix.Stat_t
			var err error
			if follow {
				err = unix.Stat(s.abs(p), &st)
			} else {
				err = unix.Lstat(s.abs(p), &st)
			}
			return res(err, statString(&st))
		}}
	case k < 83:
		p := r.dir()
		return op{"readdir " + p, func(s *side) string {
			ents, err := os.ReadDir(s.abs(p))
			if err != nil {
				return errnoName(err)
			}
			var out []string
			for _, e := range ents {
				out = append(out, e.Name()+":"+e.Type().String())
			}
			sort.Strings(out)
			return strings.Join(out, ",")
		}}
	default:
		return r.fdOp()
	}
}

// statString is what stat results are compared on (not times, inode numbers, blocks, or a
// directory's size and link count, which differ legitimately or are checked elsewhere).
func statString(st *unix.Stat_t) string {
	s := fmt.Sprintf("fmt=%o perm=%o uid=%d gid=%d", st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		s += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
	}
	return s
}

// fdOp works on long-lived descriptors: files stay open across renames and unlinks.
func (r *randomRun) fdOp() op {
	rng := r.rng
	slot := rng.IntN(randomFDs)
	open := r.m.fds[slot] >= 0
	if !open || rng.IntN(12) == 0 {
		if open {
			return op{fmt.Sprintf("close fd%d", slot), func(s *side) string {
				err := unix.Close(s.fds[slot])
				s.fds[slot] = -1
				return errnoName(err)
			}}
		}
		p := r.file()
		if rng.IntN(4) == 0 {
			p = r.newPath()
		}
		flags := []int{unix.O_RDWR, unix.O_RDWR | unix.O_CREAT, unix.O_RDWR | unix.O_APPEND, unix.O_RDONLY, unix.O_RDWR | unix.O_TRUNC}[rng.IntN(5)]
		return op{fmt.Sprintf("open fd%d %s flags=%#x", slot, p, flags), func(s *side) string {
			fd, err := unix.Open(s.abs(p), flags|unix.O_CLOEXEC, 0o640)
			if err != nil {
				return errnoName(err)
			}
			s.fds[slot] = fd
			return "OK"
		}}
	}
	switch k := rng.IntN(10); {
	case k < 3:
		off := int64(rng.IntN(300 << 10))
		data := r.data(1 + rng.IntN(40<<10))
		return op{fmt.Sprintf("pwrite fd%d off=%d len=%d", slot, off, len(data)), func(s *side) string {
			n, err := unix.Pwrite(s.fds[slot], data, off)
			return res(err, fmt.Sprintf("wrote %d", n))
		}}
	case k < 6:
		off := int64(rng.IntN(320 << 10))
		n := 1 + rng.IntN(64<<10)
		return op{fmt.Sprintf("pread fd%d off=%d len=%d", slot, off, n), func(s *side) string {
			b := make([]byte, n)
			got, err := unix.Pread(s.fds[slot], b, off)
			if err != nil {
				return errnoName(err)
			}
			return fmt.Sprintf("n=%d sha=%s", got, sum(b[:got]))
		}}
	case k < 7:
		size := int64(rng.IntN(320 << 10))
		return op{fmt.Sprintf("ftruncate fd%d %d", slot, size), func(s *side) string {
			return errnoName(unix.Ftruncate(s.fds[slot], size))
		}}
	case k < 8:
		return op{fmt.Sprintf("fstat fd%d", slot), func(s *side) string {
			var st unix.Stat_t
			err := unix.Fstat(s.fds[slot], &st)
			return res(err, statString(&st))
		}}
	case k < 9:
		modes := []uint32{0, unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_ZERO_RANGE}
		mode := modes[rng.IntN(len(modes))]
		off := int64(rng.IntN(300 << 10))
		n := int64(1 + rng.IntN(64<<10))
		return op{fmt.Sprintf("fallocate fd%d mode=%#x off=%d len=%d", slot, mode, off, n), func(s *side) string {
			return errnoName(unix.Fallocate(s.fds[slot], mode, off, n))
		}}
	default:
		return op{fmt.Sprintf("fsync fd%d", slot), func(s *side) string { return errnoName(unix.Fsync(s.fds[slot])) }}
	}
}

func (r *randomRun) closeAll() {
	for _, s := range []*side{r.m, r.p} {
		for i, fd := range s.fds {
			if fd >= 0 {
				if err := unix.Close(fd); err != nil {
					r.t.Errorf("close fd%d under %s: %v", i, s.root, err)
				}
				s.fds[i] = -1
			}
		}
	}
}
