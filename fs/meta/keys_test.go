package meta

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestKEKVersions(t *testing.T) {
	c := newCatalog(t)
	_, err := c.CurrentKEK(ctx, "")
	wantErrno(t, err, syscall.ENOENT)

	k1, err := c.AddKEKVersion(ctx, KEK{Chain: "", Created: now()}, "init")
	if err != nil || k1.Version != 1 || k1.State != KEKActive {
		t.Fatalf("v1 %+v %v", k1, err)
	}
	k2, err := c.AddKEKVersion(ctx, KEK{Chain: "", Material: []byte("sealed-2"), Created: now()}, "rotate")
	if err != nil || k2.Version != 2 {
		t.Fatalf("v2 %+v %v", k2, err)
	}
	cur, err := c.CurrentKEK(ctx, "")
	if err != nil || cur.Version != 2 || string(cur.Material) != "sealed-2" {
		t.Fatalf("current %+v %v", cur, err)
	}
	if old, _ := c.GetKEK(ctx, "", 1); old.State != KEKOld {
		t.Fatalf("v1 after v2: %+v", old)
	}
	_, err = c.AddKEKVersion(ctx, KEK{Chain: "", Version: 2, Created: now()}, "x")
	wantErrno(t, err, syscall.EEXIST)
	_, err = c.AddKEKVersion(ctx, KEK{Chain: ""}, "x")
	wantErrno(t, err, syscall.EINVAL)
	k7, err := c.AddKEKVersion(ctx, KEK{Chain: "", Version: 7, Created: now()}, "x") // gaps allowed, going up
	if err != nil || k7.Version != 7 {
		t.Fatalf("v7 %+v %v", k7, err)
	}
	u, err := c.AddKEKVersion(ctx, KEK{Chain: "u1000", Created: now()}, "init")
	if err != nil || u.Chain != "u1000" || u.Version != 1 {
		t.Fatalf("user chain %+v %v", u, err)
	}
	if cur, _ := c.CurrentKEK(ctx, ""); cur.Version != 7 {
		t.Fatal("a user chain changed the volume chain")
	}
	list, err := c.ListKEKs(ctx)
	if err != nil || len(list) != 4 {
		t.Fatalf("list %+v %v", list, err)
	}
	states := ""
	for _, k := range list {
		states += k.Chain + ":" + k.State + " "
	}
	if states != ":old :old :active u1000:active " {
		t.Fatalf("states %q", states)
	}

	ts := now()
	if err := c.MarkDestroyed(ctx, "", 2, ts, "admin"); err != nil {
		t.Fatal(err)
	}
	d, _ := c.GetKEK(ctx, "", 2)
	if d.State != KEKDestroyed || d.Material != nil || d.Destroyed != ts {
		t.Fatalf("destroyed %+v", d)
	}
	if err := c.MarkDestroyed(ctx, "", 2, now(), "admin"); err != nil {
		t.Fatalf("destroying twice: %v", err)
	}
	wantErrno(t, c.MarkDestroyed(ctx, "", 99, now(), "admin"), syscall.ENOENT)
	_, err = c.GetKEK(ctx, "", 99)
	wantErrno(t, err, syscall.ENOENT)

	// Every KEK event is in the audit log, in order.
	ev, _ := c.ListAudit(ctx, 0, 0)
	var names []string
	for _, e := range ev {
		names = append(names, e.Event+"/"+e.Actor)
	}
	if got := strings.Join(names, " "); got != "volume.create/init kek.add/init kek.add/rotate kek.add/x kek.add/init kek.destroy/admin" {
		t.Fatalf("audit %s", got)
	}
	if !strings.Contains(ev[5].Detail, `"version":2`) || !strings.Contains(ev[5].Detail, `"was":"old"`) {
		t.Fatalf("destroy detail %s", ev[5].Detail)
	}
	if n, err := c.VerifyAuditChain(ctx); err != nil || n != 6 {
		t.Fatalf("chain %d %v", n, err)
	}

	// Re-seal (passwd) in one transaction with the KDF parameters.
	err = c.Update(ctx, func(tx *Tx) error {
		if err := tx.SetKEKMaterial("", 7, []byte("resealed")); err != nil {
			return err
		}
		return tx.SetKDFParams([]byte("new-params"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := c.GetKEK(ctx, "", 7); string(k.Material) != "resealed" {
		t.Fatal("material not replaced")
	}
	if v, _ := c.Volume(ctx); string(v.KDFParams) != "new-params" {
		t.Fatal("KDF params not replaced")
	}
	err = c.Update(ctx, func(tx *Tx) error { return tx.SetKEKMaterial("", 2, []byte("x")) })
	wantErrno(t, err, syscall.ENOENT) // destroyed stays destroyed
}

func TestFileKeys(t *testing.T) {
	c := newCatalog(t)
	var files []Inode
	for i := range 5 {
		files = append(files, mkfile(t, c, RootIno, string(rune('a'+i))))
	}
	d := mkdir(t, c, RootIno, "dir")
	k, err := c.GetKey(ctx, files[0].Ino)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := c.CountKeysUsing(ctx, "", 1); n != 5 {
		t.Fatalf("count v1 = %d", n)
	}
	// Walk in batches of 2, as rotation does.
	var seen []uint64
	var after uint64
	for {
		batch, err := c.KeysUsing(ctx, "", 1, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) == 0 {
			break
		}
		for _, ik := range batch {
			seen = append(seen, ik.Ino)
			if ik.FileID != stat(t, c, ik.Ino).FileID || ik.Key.Mode != KeyModeWrap {
				t.Fatalf("batch row %+v", ik)
			}
		}
		after = batch[len(batch)-1].Ino
	}
	if len(seen) != 5 || seen[0] != files[0].Ino || seen[4] != files[4].Ino {
		t.Fatalf("walk %v", seen)
	}

	nk := KeyRecord{Mode: KeyModeWrap, Version: 2, IV: []byte("iv2"), Wrapped: []byte("w2")}
	ok, err := c.SwapKey(ctx, files[0].Ino, k, nk)
	if err != nil || !ok {
		t.Fatalf("swap: %v %v", ok, err)
	}
	ok, err = c.SwapKey(ctx, files[0].Ino, k, nk) // stale "old": no swap
	if err != nil || ok {
		t.Fatalf("stale swap: %v %v", ok, err)
	}
	if got, _ := c.GetKey(ctx, files[0].Ino); !got.equal(&nk) {
		t.Fatalf("after swap %+v", got)
	}
	if ok, err := c.SwapKey(ctx, d.Ino, k, nk); err != nil || ok {
		t.Fatalf("swap on a file without key: %v %v", ok, err)
	}
	_, err = c.SwapKey(ctx, files[1].Ino, *testKey(1), KeyRecord{Mode: "bad"})
	wantErrno(t, err, syscall.EINVAL)
	if n, _ := c.CountKeysUsing(ctx, "", 1); n != 4 {
		t.Fatalf("count v1 after swap = %d", n)
	}
	// Chunks under a derive-mode key version.
	if _, err := c.SetChunk(ctx, files[0].Ino, Chunk{Index: 0, Object: obj(1), Length: 1, KeyVersion: 2}, 1, now()); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.CountChunksUsing(ctx, "", 2); n != 1 {
		t.Fatalf("chunks under version 2: %d", n)
	}

	// PutKey on a file that has none; refused where one exists or on a dir.
	bare, _ := c.CreateFile(ctx, RootIno, []byte("bare"), fileAttr(), nil)
	if err := c.PutKey(ctx, bare.Ino, *testKey(9)); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, c.PutKey(ctx, bare.Ino, *testKey(9)), syscall.EEXIST)
	wantErrno(t, c.PutKey(ctx, d.Ino, *testKey(9)), syscall.EINVAL)
	wantErrno(t, c.PutKey(ctx, 9999, *testKey(9)), syscall.ENOENT)

	// Shred: the record goes, an audit event stays.
	if err := c.ShredKey(ctx, files[1].Ino, now(), "uid:0"); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetKey(ctx, files[1].Ino)
	wantErrno(t, err, syscall.ENOENT)
	wantErrno(t, c.ShredKey(ctx, files[1].Ino, now(), "uid:0"), syscall.ENOENT)
	ev, _ := c.ListAudit(ctx, 0, 0)
	last := ev[len(ev)-1]
	if last.Event != "key.shred" || !strings.Contains(last.Detail, hexID(files[1].FileID)) {
		t.Fatalf("shred audit %+v", last)
	}
}

// TestSecureDelete checks that destroyed KEK material and shredded key
// records leave no bytes in catalog.db or its WAL once PurgeDeleted ran.
func TestSecureDelete(t *testing.T) {
	c := newCatalog(t)
	marker := []byte("MARKER-sealed-kek-material-0123456789")
	wrapped := []byte("MARKER-wrapped-dek-abcdefghijklmnop")
	if _, err := c.AddKEKVersion(ctx, KEK{Material: marker, Created: now()}, "t"); err != nil {
		t.Fatal(err)
	}
	f, err := c.CreateFile(ctx, RootIno, []byte("f"), fileAttr(), &KeyRecord{Mode: KeyModeWrap, Version: 1, Wrapped: wrapped})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 { // some unrelated traffic
		mkfile(t, c, RootIno, "x"+string(rune('A'+i)))
	}
	files := func() []byte {
		var all []byte
		for _, suffix := range []string{"", "-wal"} {
			b, err := os.ReadFile(c.path + suffix)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			all = append(all, b...)
		}
		return all
	}
	if !bytes.Contains(files(), marker) || !bytes.Contains(files(), wrapped) {
		t.Fatal("test is broken: the markers are not in the files to begin with")
	}
	if err := c.MarkDestroyed(ctx, "", 1, now(), "t"); err != nil {
		t.Fatal(err)
	}
	if err := c.ShredKey(ctx, f.Ino, now(), "t"); err != nil {
		t.Fatal(err)
	}
	if err := c.PurgeDeleted(ctx); err != nil {
		t.Fatal(err)
	}
	all := files()
	if bytes.Contains(all, marker) {
		t.Error("destroyed KEK material still in the catalog files")
	}
	if bytes.Contains(all, wrapped) {
		t.Error("shredded key record still in the catalog files")
	}
	// And the catalog still works.
	mkfile(t, c, RootIno, "after")
	mustCheck(t, c)
}
