package meta

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

var clock atomic.Int64

// allDue is a time by which every queued deletion is due.
const allDue = int64(1 << 62)

func init() { clock.Store(1_700_000_000_000_000_000) }

// now is a test clock that moves 1 µs per call, so every change shows.
func now() int64 { return clock.Add(1000) }

func testVolume() Volume {
	return Volume{
		ID:            [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		FormatVersion: 1,
		BlockSize:     4096,
		ChunkSize:     4096 * 16,
		Remote:        "s3:bucket/prefix",
		KeyMode:       KeyModeWrap,
		Provider:      ProviderPKCS11,
		HSMModule:     "/usr/lib/softhsm/libsofthsm2.so",
		HSMToken:      "coffer",
		Created:       now(),
		RootUID:       1000,
		RootGID:       1000,
	}
}

func newCatalog(t testing.TB) *Catalog {
	t.Helper()
	return newCatalogOpts(t, options{})
}

func newCatalogOpts(t testing.TB, o options) *Catalog {
	t.Helper()
	c, err := create(context.Background(), t.TempDir(), testVolume(), o)
	if err != nil {
		t.Fatalf("create catalog: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fileAttr() Inode { return Inode{Mode: 0o644, UID: 1000, GID: 1000, Ctime: now()} }
func dirAttr() Inode  { return Inode{Mode: 0o755, UID: 1000, GID: 1000, Ctime: now()} }

func testKey(n byte) *KeyRecord {
	return &KeyRecord{Mode: KeyModeWrap, Chain: "", Version: 1,
		IV: []byte{n, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, Wrapped: []byte{n, 0xaa, 0xbb, 0xcc}}
}

func obj(n int) [16]byte {
	var o [16]byte
	o[0], o[1], o[15] = byte(n>>8), byte(n), 0x5a
	return o
}

func mkfile(t testing.TB, c *Catalog, parent uint64, name string) Inode {
	t.Helper()
	in, err := c.CreateFile(context.Background(), parent, []byte(name), fileAttr(), testKey(byte(len(name))))
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	return in
}

func mkdir(t testing.TB, c *Catalog, parent uint64, name string) Inode {
	t.Helper()
	in, err := c.Mkdir(context.Background(), parent, []byte(name), dirAttr())
	if err != nil {
		t.Fatalf("mkdir %q: %v", name, err)
	}
	return in
}

func stat(t testing.TB, c *Catalog, ino uint64) Inode {
	t.Helper()
	in, err := c.GetInode(context.Background(), ino)
	if err != nil {
		t.Fatalf("getinode %d: %v", ino, err)
	}
	return in
}

func wantErrno(t testing.TB, err error, want syscall.Errno) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
	if Errno(err) != want {
		t.Fatalf("Errno(%v) = %v, want %v", err, Errno(err), want)
	}
}

func mustCheck(t testing.TB, c *Catalog) {
	t.Helper()
	probs, err := c.Check(context.Background())
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	for _, p := range probs {
		t.Errorf("check: inode %d: %s", p.Ino, p.Detail)
	}
	if len(probs) > 0 {
		t.FailNow()
	}
}

// rawDB opens a second, plain connection to the catalog file, for tests
// that tamper with it or read it behind the package's back.
func rawDB(t testing.TB, c *Catalog) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+c.path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var allTables = []string{"volume", "kek_versions", "inodes", "dentries", "xattrs", "chunks",
	"file_keys", "uploads", "deletes", "audit", "sqlite_sequence"}

// dump renders every row of every table, for before/after comparisons.
func dump(t testing.TB, c *Catalog) string {
	t.Helper()
	var b strings.Builder
	ctx := context.Background()
	for _, table := range allTables {
		rows, err := c.r.QueryContext(ctx, "SELECT * FROM "+table+" ORDER BY 1, 2")
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		fmt.Fprintf(&b, "== %s %v\n", table, cols)
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("dump %s: %v", table, err)
			}
			for _, v := range vals {
				if bs, ok := v.([]byte); ok {
					fmt.Fprintf(&b, "%x|", bs)
				} else {
					fmt.Fprintf(&b, "%v|", v)
				}
			}
			b.WriteByte('\n')
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		rows.Close()
	}
	return b.String()
}

func dirOf(c *Catalog) string { return filepath.Dir(c.path) }
