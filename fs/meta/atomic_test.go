package meta

import (
	"errors"
	"strings"
	"testing"
)

var errInjected = errors.New("injected fault")

// atomically runs op with a fault injected at its 1st step, then its 2nd,
// and so on until op gets through every step. After every failed attempt the
// catalog must be exactly as before; the successful run must change it and
// leave it consistent. It returns the steps op went through.
func atomically(t *testing.T, c *Catalog, minSteps int, op func() error) []string {
	t.Helper()
	before := dump(t, c)
	var steps []string
	for k := 0; ; k++ {
		steps = steps[:0]
		c.testHook = func(step string) error {
			steps = append(steps, step)
			if len(steps) == k+1 {
				return errInjected
			}
			return nil
		}
		err := op()
		if len(steps) <= k { // no fault was injected: op ran to the end
			c.testHook = nil
			if err != nil {
				t.Fatalf("op failed without a fault: %v", err)
			}
			break
		}
		if !errors.Is(err, errInjected) {
			c.testHook = nil
			t.Fatalf("fault at step %d (%s): op returned %v, want the injected fault", k+1, steps[k], err)
		}
		if after := dump(t, c); after != before {
			c.testHook = nil
			t.Fatalf("fault at step %d (%s of %s) left a half-done change:\nbefore:\n%s\nafter:\n%s",
				k+1, steps[k], strings.Join(steps, ","), before, after)
		}
	}
	if len(steps) < minSteps {
		t.Fatalf("op went through %d steps (%s), want at least %d", len(steps), strings.Join(steps, ","), minSteps)
	}
	if dump(t, c) == before {
		t.Fatal("op changed nothing")
	}
	mustCheck(t, c)
	return append([]string(nil), steps...)
}

func TestAtomicity(t *testing.T) {
	type fixture struct {
		c    *Catalog
		d, e Inode // directories
		f, g Inode // files with a chunk each; g has two links
	}
	setup := func(t *testing.T) *fixture {
		c := newCatalog(t)
		fx := &fixture{c: c}
		fx.d = mkdir(t, c, RootIno, "d")
		fx.e = mkdir(t, c, RootIno, "e")
		fx.f = mkfile(t, c, fx.d.Ino, "f")
		fx.g = mkfile(t, c, fx.e.Ino, "g")
		cs := c.ChunkSize()
		if _, err := c.SetChunks(ctx, fx.f.Ino, []Chunk{{Index: 0, Object: obj(1), Length: cs}, {Index: 1, Object: obj(2), Length: cs},
			{Index: 2, Object: obj(3), Length: 9}}, 2*cs+9, now()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetChunk(ctx, fx.g.Ino, Chunk{Index: 0, Object: obj(4), Length: 4}, 4, now()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Link(ctx, fx.g.Ino, RootIno, []byte("g2"), now()); err != nil {
			t.Fatal(err)
		}
		if err := c.SetXattr(ctx, fx.f.Ino, "user.x", []byte("1"), 0, now()); err != nil {
			t.Fatal(err)
		}
		if _, err := c.AddKEKVersion(ctx, KEK{Created: now()}, "t"); err != nil {
			t.Fatal(err)
		}
		return fx
	}
	cases := []struct {
		name     string
		minSteps int
		op       func(fx *fixture) error
	}{
		{"create with key", 4, func(fx *fixture) error {
			_, err := fx.c.CreateFile(ctx, fx.d.Ino, []byte("new"), fileAttr(), testKey(1))
			return err
		}},
		{"mkdir", 3, func(fx *fixture) error { _, err := fx.c.Mkdir(ctx, fx.d.Ino, []byte("sub"), dirAttr()); return err }},
		{"symlink", 3, func(fx *fixture) error {
			_, err := fx.c.Symlink(ctx, fx.d.Ino, []byte("s"), []byte("target"), fileAttr())
			return err
		}},
		{"link", 3, func(fx *fixture) error { _, err := fx.c.Link(ctx, fx.f.Ino, fx.e.Ino, []byte("f2"), now()); return err }},
		{"rename over last link, reaped", 9, func(fx *fixture) error {
			_, err := fx.c.Rename(ctx, fx.e.Ino, []byte("g"), fx.d.Ino, []byte("f"), 0, now(), true)
			return err
		}},
		{"rename over, kept", 4, func(fx *fixture) error {
			_, err := fx.c.Rename(ctx, fx.e.Ino, []byte("g"), fx.d.Ino, []byte("f"), 0, now(), false)
			return err
		}},
		{"rename dir across parents", 3, func(fx *fixture) error {
			_, err := fx.c.Rename(ctx, RootIno, []byte("e"), fx.d.Ino, []byte("e"), 0, now(), true)
			return err
		}},
		{"rename exchange", 3, func(fx *fixture) error {
			_, err := fx.c.Rename(ctx, fx.d.Ino, []byte("f"), RootIno, []byte("e"), RenameExchange, now(), true)
			return err
		}},
		{"unlink last link, reaped", 8, func(fx *fixture) error {
			_, err := fx.c.Unlink(ctx, fx.d.Ino, []byte("f"), now(), true)
			return err
		}},
		{"unlink one of two links", 3, func(fx *fixture) error {
			_, err := fx.c.Unlink(ctx, RootIno, []byte("g2"), now(), true)
			return err
		}},
		{"rmdir", 4, func(fx *fixture) error {
			_, err := fx.c.Rmdir(ctx, RootIno, []byte("e"), now(), true)
			return err
		}},
		{"chunk replace with size", 3, func(fx *fixture) error {
			_, err := fx.c.SetChunk(ctx, fx.f.Ino, Chunk{Index: 1, Object: obj(20), Length: 5}, 3*fx.c.ChunkSize(), now())
			return err
		}},
		{"several chunks", 4, func(fx *fixture) error {
			_, err := fx.c.SetChunks(ctx, fx.f.Ino, []Chunk{{Index: 0, Object: obj(21), Length: 1}, {Index: 7, Object: obj(22), Length: 1}}, 7*fx.c.ChunkSize()+1, now())
			return err
		}},
		{"truncate", 4, func(fx *fixture) error {
			size := int64(100)
			_, err := fx.c.SetAttr(ctx, fx.f.Ino, AttrChange{Size: &size}, now())
			return err
		}},
		{"reap", 5, func(fx *fixture) error {
			_, err := fx.c.Reap(ctx, fx.f.Ino, now())
			return err
		}},
		{"add KEK version", 3, func(fx *fixture) error { _, err := fx.c.AddKEKVersion(ctx, KEK{Created: now()}, "t"); return err }},
		{"destroy KEK version", 2, func(fx *fixture) error { return fx.c.MarkDestroyed(ctx, "", 1, now(), "t") }},
		{"shred file content", 4, func(fx *fixture) error {
			// What a file shred does: objects queued, key record gone, audited.
			return fx.c.Update(ctx, func(tx *Tx) error {
				if _, err := tx.DropChunks(fx.f.Ino, 0, -1, now()); err != nil {
					return err
				}
				return tx.ShredKey(fx.f.Ino, now(), "t")
			})
		}},
		{"setxattr", 2, func(fx *fixture) error { return fx.c.SetXattr(ctx, fx.f.Ino, "user.y", []byte("v"), 0, now()) }},
		{"removexattr", 2, func(fx *fixture) error { return fx.c.RemoveXattr(ctx, fx.f.Ino, "user.x", now()) }},
		{"composite update", 6, func(fx *fixture) error {
			return fx.c.Update(ctx, func(tx *Tx) error {
				in, err := tx.CreateFile(fx.d.Ino, []byte("c"), fileAttr(), testKey(2))
				if err != nil {
					return err
				}
				if _, err := tx.SetChunks(in.Ino, []Chunk{{Index: 0, Object: obj(30), Length: 3}}, 3, now()); err != nil {
					return err
				}
				_, err = tx.AppendAudit(AuditEvent{Time: now(), Event: "test.composite"})
				return err
			})
		}},
	}
	// Changes committed before the op under test.
	prep := map[string]func(fx *fixture) error{
		"rmdir": func(fx *fixture) error { _, err := fx.c.Unlink(ctx, fx.e.Ino, []byte("g"), now(), true); return err },
		"reap":  func(fx *fixture) error { _, err := fx.c.Unlink(ctx, fx.d.Ino, []byte("f"), now(), false); return err },
	}
	for _, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			fx := setup(t)
			if p := prep[k.name]; p != nil {
				if err := p(fx); err != nil {
					t.Fatal(err)
				}
			}
			steps := atomically(t, fx.c, k.minSteps, func() error { return k.op(fx) })
			t.Logf("%d steps: %s", len(steps), strings.Join(steps, ","))
		})
	}
}

// TestTxErrorPoisons checks that a transaction whose method failed half-way
// cannot commit even if the caller ignores the error.
func TestTxErrorPoisons(t *testing.T) {
	c := newCatalog(t)
	d := mkdir(t, c, RootIno, "d")
	mkfile(t, c, d.Ino, "a")
	mkfile(t, c, d.Ino, "b")
	before := dump(t, c)
	n := 0
	c.testHook = func(step string) error {
		if n++; n == 2 { // after the rename changed the first entry
			return errInjected
		}
		return nil
	}
	err := c.Update(ctx, func(tx *Tx) error {
		tx.Rename(d.Ino, []byte("a"), d.Ino, []byte("b"), 0, now(), true) // error dropped
		c.testHook = nil
		_, err := tx.Mkdir(RootIno, []byte("other"), dirAttr())
		return err
	})
	if !errors.Is(err, errInjected) {
		t.Fatalf("Update returned %v, want the dropped error", err)
	}
	if dump(t, c) != before {
		t.Fatal("a transaction with a failed step committed")
	}
}

// TestUpdatePanic checks that a panic inside Update rolls back and frees the
// writer for the next transaction.
func TestUpdatePanic(t *testing.T) {
	c := newCatalog(t)
	before := dump(t, c)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the panic was swallowed")
			}
		}()
		c.Update(ctx, func(tx *Tx) error {
			if _, err := tx.Mkdir(RootIno, []byte("half"), dirAttr()); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if dump(t, c) != before {
		t.Fatal("a panicking transaction committed")
	}
	mkdir(t, c, RootIno, "next") // the writer is free again
}
