package content

import (
	"database/sql"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"coffer/crypto/format"
	"coffer/fs/meta"
)

// tamperEnv is a volume with two synced files of two chunks each.
type tamperEnv struct {
	*env
	a, b         uint64
	dataA, dataB []byte
	chA, chB     []meta.Chunk
}

func newTamperEnv(t *testing.T, kind string) *tamperEnv {
	e := newEnv(t, kind, smallLayout, Options{Readahead: -1})
	te := &tamperEnv{env: e, a: e.createFile("a"), b: e.createFile("b")}
	C := int(smallLayout.ChunkSize)
	te.dataA, te.dataB = pattern(1, 0, 2*C), pattern(2, 0, 2*C)
	for _, x := range []struct {
		ino  uint64
		data []byte
	}{{te.a, te.dataA}, {te.b, te.dataB}} {
		f := e.openFile(x.ino)
		e.write(f, 0, x.data)
		e.sync(f)
		e.release(f)
	}
	te.chA, te.chB = e.chunks(te.a), e.chunks(te.b)
	if len(te.chA) != 2 || len(te.chB) != 2 {
		t.Fatalf("chunks %+v %+v", te.chA, te.chB)
	}
	return te
}

// expectEIO reads [off, off+n) of ino on a cold cache and wants EIO and an
// ERROR line naming the inode (and the object, if given).
func (te *tamperEnv) expectEIO(ino uint64, off int64, n int, object string) {
	te.t.Helper()
	te.reopen()
	te.settle()
	te.logs.reset()
	f, err := te.s.Open(te.ctx, ino)
	if err == nil {
		buf := make([]byte, n)
		var got int
		got, err = f.ReadAt(te.ctx, buf, off)
		if err == nil {
			te.t.Fatalf("read of tampered data at %d returned %d bytes and no error", off, got)
		}
		te.release(f)
	}
	wantErrno(te.t, err, syscall.EIO, "read of tampered data")
	logs := te.logs.String()
	var line string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "ino="+itoa(ino)) &&
			(object == "" || strings.Contains(l, "object="+object)) {
			line = l
		}
	}
	if line == "" {
		te.t.Fatalf("no ERROR log line naming inode %d and object %q; logs:\n%s", ino, object, logs)
	}
	te.t.Logf("logged: %s", line)
}

// expectOK reads an undamaged range and wants the right bytes.
func (te *tamperEnv) expectOK(ino uint64, off int64, want []byte) {
	te.t.Helper()
	f := te.openFile(ino)
	mustEqual(te.t, te.read(f, off, len(want)), want, "undamaged range")
	te.release(f)
}

// edit changes an object's stored bytes and returns a function that puts
// them back.
func (te *tamperEnv) edit(id [16]byte, fn func(b []byte) []byte) (restore func()) {
	te.t.Helper()
	p := te.objectPath(id)
	orig, err := os.ReadFile(p)
	if err != nil {
		te.t.Fatal(err)
	}
	if err := os.WriteFile(p, fn(append([]byte(nil), orig...)), 0o600); err != nil {
		te.t.Fatal(err)
	}
	return func() {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			te.t.Fatal(err)
		}
		if err := os.WriteFile(p, orig, 0o600); err != nil {
			te.t.Fatal(err)
		}
	}
}

// sqlEdit runs SQL on the catalog file directly, as an attacker with the
// database (and not the keys) could.
func (te *tamperEnv) sqlEdit(stmts ...string) {
	te.t.Helper()
	te.close()
	db, err := sql.Open("sqlite3", filepath.Join(te.state, meta.FileName))
	if err != nil {
		te.t.Fatal(err)
	}
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			te.t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	te.open()
}

func objName(id [16]byte) string { return format.ObjectName(format.ID(id)) }

func TestTamper(t *testing.T) {
	B := int64(smallLayout.BlockSize)
	sb := B + format.TagSize
	te := newTamperEnv(t, "local")
	a0, a1 := te.chA[0].Object, te.chA[1].Object

	t.Run("flipped byte", func(t *testing.T) {
		te.t = t
		restore := te.edit(a0, func(b []byte) []byte { b[format.HeaderSize+sb+5] ^= 0x10; return b })
		te.expectEIO(te.a, B+100, 10, objName(a0))
		te.expectOK(te.a, 0, te.dataA[:B]) // block 0 is intact
		restore()
	})
	t.Run("flipped header", func(t *testing.T) {
		te.t = t
		restore := te.edit(a0, func(b []byte) []byte { b[20] ^= 1; return b })
		te.expectOK(te.a, 0, te.dataA[:B]) // blocks bind the expected header, not the stored one
		restore()
	})
	t.Run("truncated", func(t *testing.T) {
		te.t = t
		restore := te.edit(a1, func(b []byte) []byte { return b[:len(b)-10] })
		te.expectEIO(te.a, smallLayout.ChunkSize+3*B, 10, objName(a1))
		te.expectOK(te.a, smallLayout.ChunkSize, te.dataA[smallLayout.ChunkSize:][:B])
		restore()
		// Cut exactly at a block boundary: the new last block was not sealed as last.
		restore = te.edit(a1, func(b []byte) []byte { return b[:format.HeaderSize+3*sb] })
		te.expectEIO(te.a, smallLayout.ChunkSize+3*B, 10, objName(a1))
		restore()
	})
	t.Run("swapped", func(t *testing.T) {
		te.t = t
		other, err := os.ReadFile(te.objectPath(a1))
		if err != nil {
			t.Fatal(err)
		}
		restore := te.edit(a0, func([]byte) []byte { return other })
		te.expectEIO(te.a, 0, 10, objName(a0))
		restore()
	})
	t.Run("rolled back", func(t *testing.T) {
		te.t = t
		old, err := os.ReadFile(te.objectPath(a0))
		if err != nil {
			t.Fatal(err)
		}
		f := te.openFile(te.a)
		p := pattern(9, 0, 100)
		te.write(f, 0, p)
		te.sync(f)
		te.release(f)
		copy(te.dataA, p)
		cur := te.chunks(te.a)[0].Object
		if cur == a0 {
			t.Fatal("rewrite kept the object id")
		}
		restore := te.edit(cur, func([]byte) []byte { return old }) // the older version of the same chunk
		te.expectEIO(te.a, 0, 10, objName(cur))
		restore()
		te.expectOK(te.a, 0, te.dataA[:B])
	})
	t.Run("deleted", func(t *testing.T) {
		te.t = t
		b1 := te.chB[1].Object
		orig, err := os.ReadFile(te.objectPath(b1))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(te.objectPath(b1)); err != nil {
			t.Fatal(err)
		}
		te.expectEIO(te.b, smallLayout.ChunkSize, 10, objName(b1))
		if err := os.WriteFile(te.objectPath(b1), orig, 0o600); err != nil {
			t.Fatal(err)
		}
		te.expectOK(te.b, smallLayout.ChunkSize, te.dataB[smallLayout.ChunkSize:][:B])
	})
	t.Run("chunk row points at another file's object", func(t *testing.T) {
		te.t = t
		te.sqlEdit(
			"DELETE FROM chunks WHERE ino = "+itoa(te.a)+" AND idx = 1",
			"UPDATE chunks SET object = x'"+hex.EncodeToString(a1[:])+"' WHERE ino = "+itoa(te.b)+" AND idx = 1")
		te.expectEIO(te.b, smallLayout.ChunkSize, 10, objName(a1))
	})
	t.Run("chunk length changed", func(t *testing.T) {
		te.t = t
		te.sqlEdit("UPDATE chunks SET length = length - 100 WHERE ino = " + itoa(te.b) + " AND idx = 0")
		te.expectEIO(te.b, 3*B, 10, objName(te.chB[0].Object))
	})
	t.Run("key record moved to another file", func(t *testing.T) {
		te.t = t
		ka, err := te.v.Catalog().GetKey(te.ctx, te.a)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := te.v.Catalog().GetKey(te.ctx, te.b)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := te.v.Catalog().SwapKey(te.ctx, te.b, kb, ka); !ok || err != nil {
			t.Fatalf("swap key: %v %v", ok, err)
		}
		te.expectEIO(te.b, 0, 10, "")
	})
}

// TestTamperS3: the same detection through a real S3 server.
func TestTamperS3(t *testing.T) {
	B := int64(smallLayout.BlockSize)
	te := newTamperEnv(t, "s3")
	a0 := te.chA[0].Object
	restore := te.edit(a0, func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b })
	te.expectEIO(te.a, 3*B, 10, objName(a0))
	restore()
	if err := os.Remove(te.objectPath(a0)); err != nil {
		t.Fatal(err)
	}
	te.expectEIO(te.a, 0, 10, objName(a0))
}
