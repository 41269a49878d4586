package content

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
)

// TestReencryptChunk copies real objects on a local-folder remote from one key to another:
// the copy opens only under the new key and binding and holds the same plaintext, the old
// object is left alone, every seal is logged, and a damaged, missing or wrongly keyed source
// is refused without putting anything.
func TestReencryptChunk(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	rs, err := remote.Open(ctx, filepath.Join(dir, "remote"), remote.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close(ctx)
	sealLog := filepath.Join(dir, "seals")
	t.Setenv(SealLogEnv, sealLog)
	l := smallLayout
	var vol, file format.ID
	rand.Read(vol[:])
	rand.Read(file[:])
	newKey := func() *keys.DEK {
		b := make([]byte, keys.DEKSize)
		rand.Read(b)
		d, err := keys.NewDEK(b)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	k1, k2 := newKey(), newKey()
	defer k1.Wipe()
	defer k2.Wipe()
	// put seals plain under key as a fresh object and returns its catalog row.
	put := func(key *keys.DEK, plain []byte) meta.Chunk {
		id, _ := format.NewID()
		obj, err := format.SealChunk(key.Bytes(), format.Binding{Volume: vol, File: file, Object: id}, l, plain)
		if err != nil {
			t.Fatal(err)
		}
		if err := rs.Put(ctx, format.ObjectName(id), obj); err != nil {
			t.Fatal(err)
		}
		return meta.Chunk{Object: id, Length: int64(len(plain)), KeyVersion: 1}
	}
	open := func(key *keys.DEK, id format.ID, length int64) ([]byte, error) {
		obj, err := rs.GetRange(ctx, format.ObjectName(id), 0, -1)
		if err != nil {
			return nil, err
		}
		return format.OpenChunk(key.Bytes(), format.Binding{Volume: vol, File: file, Object: id}, l, length, obj)
	}

	for _, n := range []int{1, 4096, 5000, 16 << 10} {
		plain := make([]byte, n)
		rand.Read(plain)
		row := put(k1, plain)
		to, _ := format.NewID()
		if err := ReencryptChunk(ctx, rs, l, Reencrypt{Volume: vol, File: file, Chunk: row, To: to, OldKey: k1, NewKey: k2}); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		got, err := open(k2, to, row.Length)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: the copy does not open to the same plaintext: %v", n, err)
		}
		if _, err := open(k1, to, row.Length); !errors.Is(err, format.ErrAuth) {
			t.Fatalf("%d bytes: the copy opens under the old key: %v", n, err)
		}
		if got, err := open(k1, format.ID(row.Object), row.Length); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: the old object changed: %v", n, err)
		}
		log, _ := os.ReadFile(sealLog)
		if !strings.Contains(string(log), "object "+to.String()+"\n") {
			t.Fatalf("seal of %s not logged: %q", to, log)
		}
	}

	row := put(k1, bytes.Repeat([]byte("x"), 9000))
	to, _ := format.NewID()
	r := Reencrypt{Volume: vol, File: file, Chunk: row, To: to, OldKey: k1, NewKey: k2}
	notPut := func(what string) {
		t.Helper()
		if _, err := rs.Stat(ctx, format.ObjectName(to)); !errors.Is(err, remote.ErrNotFound) {
			t.Fatalf("%s: a copy was put anyway (%v)", what, err)
		}
	}
	// Wrong old key, wrong file identity, wrong length: authentication fails.
	bad := r
	bad.OldKey = k2
	if err := ReencryptChunk(ctx, rs, l, bad); !errors.Is(err, format.ErrAuth) {
		t.Fatalf("wrong old key: %v", err)
	}
	bad = r
	bad.File[0] ^= 1
	if err := ReencryptChunk(ctx, rs, l, bad); !errors.Is(err, format.ErrAuth) {
		t.Fatalf("wrong file id: %v", err)
	}
	bad = r
	bad.Chunk.Length = 8999
	if err := ReencryptChunk(ctx, rs, l, bad); !errors.Is(err, format.ErrAuth) {
		t.Fatalf("wrong length: %v", err)
	}
	notPut("refused source")
	// The same id, a zero id, a wiped key: refused before anything is fetched.
	bad = r
	bad.To = format.ID(row.Object)
	if err := ReencryptChunk(ctx, rs, l, bad); err == nil || !strings.Contains(err.Error(), "new object id") {
		t.Fatalf("copy onto itself: %v", err)
	}
	bad.To = format.ID{}
	if err := ReencryptChunk(ctx, rs, l, bad); err == nil {
		t.Fatal("copy to the zero id accepted")
	}
	w := newKey()
	w.Wipe()
	bad = r
	bad.NewKey = w
	if err := ReencryptChunk(ctx, rs, l, bad); !errors.Is(err, keys.ErrWiped) {
		t.Fatalf("wiped new key: %v", err)
	}
	notPut("wiped key")
	// A tampered object on the remote, and a missing one.
	p := filepath.Join(dir, "remote", filepath.FromSlash(format.ObjectName(format.ID(row.Object))))
	obj, _ := os.ReadFile(p)
	obj[len(obj)-1] ^= 1
	os.WriteFile(p, obj, 0o600)
	if err := ReencryptChunk(ctx, rs, l, r); !errors.Is(err, format.ErrAuth) {
		t.Fatalf("tampered object: %v", err)
	}
	os.Remove(p)
	if err := ReencryptChunk(ctx, rs, l, r); !errors.Is(err, remote.ErrNotFound) {
		t.Fatalf("missing object: %v", err)
	}
	notPut("bad objects")
}
