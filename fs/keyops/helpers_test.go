package keyops

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"coffer/crypto/format"
	"coffer/fs/content"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/keys/passphrase"
	"coffer/test/softhsm"
)

func TestMain(m *testing.M) { softhsm.Main(m) }

var ctx = context.Background()

// quiet keeps test output readable; failures are asserted, not logged.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// cheap keeps Argon2id fast in tests.
var cheap = passphrase.Cost{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

var testLayout = format.Layout{BlockSize: 4096, ChunkSize: 16 << 10}

// tvol is a real volume (SoftHSM2 token or passphrase, SQLite catalog, local-folder remote).
type tvol struct {
	t      testing.TB
	dir    string
	state  string
	remote string
	tok    *softhsm.Token
	secret []byte
	v      *volume.Volume
}

type volOpt struct {
	passphrase bool
	derive     bool
	perUser    bool
}

func newVol(t testing.TB, o volOpt) *tvol {
	t.Helper()
	e := &tvol{t: t, dir: t.TempDir()}
	e.state = filepath.Join(e.dir, "state")
	e.remote = filepath.Join(e.dir, "remote")
	cfg := volume.Config{StateDir: e.state, Remote: e.remote, KeyMode: keys.ModeWrap, Layout: testLayout,
		PerUserKEKs: o.perUser, Logger: quiet}
	if o.derive {
		cfg.KeyMode = keys.ModeDerive
	}
	if o.passphrase {
		cfg.Provider = meta.ProviderPassphrase
		cfg.KDFCost = cheap
		e.secret = []byte("keyops test passphrase")
	} else {
		e.tok = softhsm.NewToken(t, "")
		cfg.Provider = meta.ProviderPKCS11
		cfg.HSMModule, cfg.HSMToken = e.tok.Module, e.tok.Label
		e.secret = e.tok.PIN
	}
	cfg.Secret = e.secret
	if _, err := volume.Create(ctx, cfg); err != nil {
		t.Fatalf("create volume: %v", err)
	}
	e.open()
	t.Cleanup(func() {
		if e.v != nil {
			e.v.Close(ctx)
		}
	})
	return e
}

func (e *tvol) open() {
	e.t.Helper()
	v, err := volume.Open(ctx, e.state, e.secret, volume.OpenOptions{Logger: quiet})
	if err != nil {
		e.t.Fatalf("open volume: %v", err)
	}
	e.v = v
}

func (e *tvol) close() {
	e.t.Helper()
	if err := e.v.Close(ctx); err != nil {
		e.t.Fatalf("close volume: %v", err)
	}
	e.v = nil
}

func (e *tvol) reopen() { e.close(); e.open() }

// kekFor is the KEK new files of uid get: the volume's, or on a per-user volume the user's
// chain (made on first use, as the filesystem does).
func (e *tvol) kekFor(uid uint32) keys.KEKRef {
	e.t.Helper()
	if !e.v.PerUser {
		cur, err := e.v.Catalog().CurrentKEK(ctx, "")
		if err != nil {
			e.t.Fatal(err)
		}
		return refOf(cur)
	}
	chain := keys.UserChain(uid)
	cur, err := e.v.Catalog().CurrentKEK(ctx, chain)
	if err == nil {
		return refOf(cur)
	}
	if !errors.Is(err, syscall.ENOENT) {
		e.t.Fatal(err)
	}
	ref := keys.KEKRef{Chain: chain, Version: 1}
	if err := CreateKEKVersion(ctx, e.v, ref, "test", quiet); err != nil {
		e.t.Fatal(err)
	}
	return ref
}

// addFiles creates n empty regular files /<prefix><i> owned by uid, with real keys,
// in transactions of 1,000.
func (e *tvol) addFiles(prefix string, n int, uid uint32) []uint64 {
	e.t.Helper()
	kek := e.kekFor(uid)
	var inos []uint64
	for done := 0; done < n; {
		m := min(1000, n-done)
		type nf struct {
			fid [16]byte
			rec meta.KeyRecord
		}
		fs := make([]nf, m)
		for i := range fs {
			rand.Read(fs[i].fid[:])
			rec, dek, err := keys.NewFileKey(ctx, e.v.Provider(), e.v.KeyMode, kek, keys.FileIdentity{Volume: e.v.ID, File: fs[i].fid})
			if err != nil {
				e.t.Fatal(err)
			}
			dek.Wipe()
			fs[i].rec = volume.CatalogRecord(rec)
		}
		now := time.Now().UnixNano()
		err := e.v.Catalog().Update(ctx, func(t *meta.Tx) error {
			for i := range fs {
				in, err := t.CreateFile(meta.RootIno, []byte(prefix+strconv.Itoa(done+i)),
					meta.Inode{Mode: syscall.S_IFREG | 0o644, UID: uid, GID: uid, Atime: now, Mtime: now, Ctime: now, FileID: fs[i].fid}, &fs[i].rec)
				if err != nil {
					return err
				}
				inos = append(inos, in.Ino)
			}
			return nil
		})
		if err != nil {
			e.t.Fatal(err)
		}
		done += m
	}
	return inos
}

// writeFile creates /name (uid) with data through the real data path and syncs it to the remote.
func (e *tvol) writeFile(name string, uid uint32, data []byte) meta.Inode {
	e.t.Helper()
	ino := e.addFiles(name, 1, uid)[0]
	// addFiles names it name+"0"; rename to name.
	if _, err := e.v.Catalog().Rename(ctx, meta.RootIno, []byte(name+"0"), meta.RootIno, []byte(name), 0, time.Now().UnixNano(), true); err != nil {
		e.t.Fatal(err)
	}
	s := e.dataPath()
	f, err := s.Open(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	if n, err := f.WriteAt(ctx, data, 0); err != nil || n != len(data) {
		e.t.Fatalf("write %s: %d, %v", name, n, err)
	}
	if err := f.Sync(ctx); err != nil {
		e.t.Fatalf("fsync %s: %v", name, err)
	}
	f.Flush(ctx)
	f.Release(ctx)
	e.closeDataPath(s)
	in, err := e.v.Catalog().GetInode(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

// readFile reads a file's whole content through the data path.
func (e *tvol) readFile(ino uint64) ([]byte, error) {
	e.t.Helper()
	s := e.dataPath()
	defer e.closeDataPath(s)
	return readWhole(s, ino)
}

// readWhole reads file ino's whole content through data path s.
func readWhole(s *content.DataPath, ino uint64) ([]byte, error) {
	f, err := s.Open(ctx, ino)
	if err != nil {
		return nil, err
	}
	defer f.Release(ctx)
	buf := make([]byte, f.Size())
	n, err := f.ReadAt(ctx, buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

func (e *tvol) dataPath() *content.DataPath {
	e.t.Helper()
	s, err := content.New(e.v, content.Options{StagingDir: filepath.Join(e.state, "staging"), Logger: quiet, DirtyDelay: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *tvol) closeDataPath(s *content.DataPath) {
	e.t.Helper()
	if left, err := s.Close(ctx); err != nil || left != 0 {
		e.t.Fatalf("close data path: %d left staged, %v", left, err)
	}
}

// versions returns "chain/vN:state" for every KEK version in the catalog.
func (e *tvol) versions() []string {
	e.t.Helper()
	keks, err := e.v.Catalog().ListKEKs(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, k := range keks {
		out = append(out, refOf(k).String()+":"+k.State)
	}
	return out
}

// tokenVersions lists the KEK versions whose objects are on the token (via pkcs11-tool).
func (e *tvol) tokenVersions() []string {
	e.t.Helper()
	seen := map[string]bool{}
	var out []string
	for _, l := range e.tok.ObjectLabels(e.t) {
		// coffer:<volume>:<chain>:v<N>:<aes|hmac>
		p := strings.Split(l, ":")
		if len(p) != 5 || p[1] != e.v.IDString() {
			continue
		}
		r := chainName(p[2]) + "/" + p[3]
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// countUsing returns how many key records use chain/version.
func (e *tvol) countUsing(chain string, version uint32) int64 {
	e.t.Helper()
	n, err := e.v.Catalog().CountKeysUsing(ctx, chain, version)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// catalogBytes is catalog.db and its WAL, concatenated.
func (e *tvol) catalogBytes() []byte {
	e.t.Helper()
	var all []byte
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(filepath.Join(e.state, meta.FileName+suffix))
		if err != nil && !os.IsNotExist(err) {
			e.t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

// objectFiles lists the chunk objects on the local remote.
func (e *tvol) objectFiles() []string {
	e.t.Helper()
	var out []string
	filepath.Walk(filepath.Join(e.remote, "c"), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func mustEqualBytes(t testing.TB, got, want []byte, what string) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes, want %d (content differs)", what, len(got), len(want))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dekOf opens a file's DEK and returns a copy of its bytes.
func (e *tvol) dekOf(ino uint64) []byte {
	e.t.Helper()
	in, err := e.v.Catalog().GetInode(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	k, err := e.v.Catalog().GetKey(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := keys.OpenFileKey(ctx, e.v.Provider(), volume.RecordOf(k), keys.FileIdentity{Volume: e.v.ID, File: in.FileID})
	if err != nil {
		e.t.Fatalf("open key of inode %d: %v", ino, err)
	}
	defer d.Wipe()
	return bytes.Clone(d.Bytes())
}

// chainName is how tests write a chain: "volume" for the volume's.
func chainName(c string) string {
	if c == "" {
		return "volume"
	}
	return c
}

// catalogCopy is an older copy of the catalog, as a backup or a thief keeps it, with the
// objects of some files (remote versioning may keep deleted objects).
type catalogCopy struct {
	state string            // a state directory holding only the copied catalog.db
	objs  map[string]string // remote path -> saved copy
}

// copyCatalog copies catalog.db (checkpointed first, so it holds everything) and the objects
// of inos, as they are now.
func (e *tvol) copyCatalog(inos ...uint64) *catalogCopy {
	e.t.Helper()
	if err := e.v.Catalog().PurgeDeleted(ctx); err != nil {
		e.t.Fatal(err)
	}
	dir, err := os.MkdirTemp(e.dir, "copy-")
	if err != nil {
		e.t.Fatal(err)
	}
	c := &catalogCopy{state: filepath.Join(dir, "state"), objs: map[string]string{}}
	copyFile(e.t, volume.CatalogFile(e.state), volume.CatalogFile(c.state))
	for _, ino := range inos {
		chunks, err := e.v.Catalog().Chunks(ctx, ino, 0, -1)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, ch := range chunks {
			p := filepath.Join(e.remote, filepath.FromSlash(format.ObjectName(format.ID(ch.Object))))
			c.objs[p] = filepath.Join(filepath.Dir(c.state), "objects", filepath.Base(p))
			copyFile(e.t, p, c.objs[p])
		}
	}
	return c
}

// readFromCopy puts the saved objects back on the remote and opens the volume from the
// copied catalog with the volume's secret (PIN or passphrase), as whoever holds the copy
// would, and reads file ino through the data path. An error says where it stopped (the
// volume does not open, or the file's key does not).
func (e *tvol) readFromCopy(c *catalogCopy, ino uint64) ([]byte, error) {
	e.t.Helper()
	for p, saved := range c.objs {
		copyFile(e.t, saved, p)
	}
	v, err := volume.Open(ctx, c.state, e.secret, volume.OpenOptions{Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer v.Close(ctx)
	s, err := content.New(v, content.Options{StagingDir: volume.StagingDir(c.state), Logger: quiet, DirtyDelay: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	defer s.Close(ctx)
	return readWhole(s, ino)
}

// chown gives file ino to uid as a chown on the mounted per-user volume does
// (fs/fusefront rekeyForOwner): the key is re-wrapped under uid's chain and the move is
// audited in the same transaction.
func (e *tvol) chown(ino uint64, uid uint32) {
	e.t.Helper()
	in, err := e.v.Catalog().GetInode(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	old, err := e.v.Catalog().GetKey(ctx, ino)
	if err != nil {
		e.t.Fatal(err)
	}
	to := e.kekFor(uid)
	nrec, err := e.v.Keys().Rewrap(ctx, volume.RecordOf(old), in.FileID, to)
	if err != nil {
		e.t.Fatal(err)
	}
	err = e.v.Catalog().Update(ctx, func(t *meta.Tx) error {
		if _, err := t.SetAttr(ino, meta.AttrChange{UID: &uid}, time.Now().UnixNano()); err != nil {
			return err
		}
		if ok, err := t.SwapKey(ino, old, volume.CatalogRecord(nrec)); err != nil || !ok {
			return fmt.Errorf("swap key: %v %v", ok, err)
		}
		return AuditKeyMoved(t, ino, in.FileID, keys.KEKRef{Chain: old.Chain, Version: old.Version}, to, "test")
	})
	if err != nil {
		e.t.Fatal(err)
	}
}
