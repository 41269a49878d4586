package meta

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// auditCatalog returns a catalog with 6 audit events (seq 1..6).
func auditCatalog(t *testing.T) *Catalog {
	c := newCatalog(t) // seq 1: volume.create
	for i := range 5 {
		_, err := c.AppendAudit(ctx, AuditEvent{Time: now(), Event: "test.event", Actor: "uid:0",
			Detail: fmt.Sprintf(`{"n":%d}`, i)})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.VerifyAuditChain(ctx); err != nil || n != 6 {
		t.Fatalf("fresh chain: %d %v", n, err)
	}
	return c
}

func wantBreak(t *testing.T, c *Catalog, seq int64, reason string) {
	t.Helper()
	_, err := c.VerifyAuditChain(ctx)
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("verify: %v, want a chain error at seq %d", err, seq)
	}
	if ce.Seq != seq || !strings.Contains(ce.Reason, reason) {
		t.Fatalf("chain error at seq %d (%s), want seq %d (%s)", ce.Seq, ce.Reason, seq, reason)
	}
	probs, err := c.Check(ctx)
	if err != nil || len(probs) == 0 || !strings.Contains(probs[len(probs)-1].Detail, "audit chain broken") {
		t.Fatalf("Check does not report the broken chain: %+v %v", probs, err)
	}
}

func TestAuditAppendList(t *testing.T) {
	c := auditCatalog(t)
	ev, err := c.ListAudit(ctx, 2, 3)
	if err != nil || len(ev) != 3 || ev[0].Seq != 3 || ev[2].Seq != 5 {
		t.Fatalf("list: %+v %v", ev, err)
	}
	all, _ := c.ListAudit(ctx, 0, 0)
	for i := 1; i < len(all); i++ {
		if string(all[i].PrevHash) != string(all[i-1].Hash) || len(all[i].Hash) != 32 || all[i].MAC != nil {
			t.Fatalf("row %d not chained: %+v", all[i].Seq, all[i])
		}
	}
	e, err := c.AppendAudit(ctx, AuditEvent{Time: now(), Event: "x"})
	if err != nil || e.Detail != "{}" || e.Seq != 7 {
		t.Fatalf("empty detail: %+v %v", e, err)
	}
	_, err = c.AppendAudit(ctx, AuditEvent{Time: now(), Event: "x", Detail: "{not json"})
	wantErrno(t, err, syscall.EINVAL)
	_, err = c.AppendAudit(ctx, AuditEvent{Time: now()})
	wantErrno(t, err, syscall.EINVAL)
	// Recorded in the same transaction as a change: both or neither.
	err = c.Update(ctx, func(tx *Tx) error {
		if _, err := tx.Mkdir(RootIno, []byte("audited"), dirAttr()); err != nil {
			return err
		}
		if _, err := tx.AppendAudit(AuditEvent{Time: now(), Event: "dir.made"}); err != nil {
			return err
		}
		return errors.New("changed my mind")
	})
	if err == nil || err.Error() != "changed my mind" {
		t.Fatalf("update: %v", err)
	}
	if ev, _ := c.ListAudit(ctx, 7, 0); len(ev) != 0 {
		t.Fatal("audit row of a rolled-back transaction survived")
	}
	if _, err := c.Lookup(ctx, RootIno, []byte("audited")); Errno(err) != syscall.ENOENT {
		t.Fatal("change of a rolled-back transaction survived")
	}
}

func TestAuditTamper(t *testing.T) {
	t.Run("edited", func(t *testing.T) {
		c := auditCatalog(t)
		if _, err := rawDB(t, c).Exec(`UPDATE audit SET detail = '{"n":99}' WHERE seq = 3`); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 3, "row edited")
	})
	t.Run("edited and rehashed", func(t *testing.T) {
		c := auditCatalog(t)
		ev, _ := c.ListAudit(ctx, 2, 1)
		e := ev[0]
		h := auditHash(e.PrevHash, e.Seq, e.Time, e.Event, "uid:666", e.Detail)
		if _, err := rawDB(t, c).Exec(`UPDATE audit SET actor = 'uid:666', hash = ? WHERE seq = 3`, h); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 4, "prev_hash")
	})
	t.Run("time edited", func(t *testing.T) {
		c := auditCatalog(t)
		if _, err := rawDB(t, c).Exec(`UPDATE audit SET time_ns = time_ns - 1 WHERE seq = 6`); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 6, "row edited")
	})
	t.Run("deleted", func(t *testing.T) {
		c := auditCatalog(t)
		if _, err := rawDB(t, c).Exec(`DELETE FROM audit WHERE seq = 4`); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 4, "missing")
	})
	t.Run("deleted and renumbered", func(t *testing.T) {
		c := auditCatalog(t)
		db := rawDB(t, c)
		if _, err := db.Exec(`DELETE FROM audit WHERE seq = 4`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`UPDATE audit SET seq = seq - 1 WHERE seq > 4`); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 4, "prev_hash")
	})
	t.Run("tail deleted", func(t *testing.T) {
		c := auditCatalog(t)
		if _, err := rawDB(t, c).Exec(`DELETE FROM audit WHERE seq >= 5`); err != nil {
			t.Fatal(err)
		}
		wantBreak(t, c, 5, "missing")
	})
	t.Run("reordered", func(t *testing.T) {
		c := auditCatalog(t)
		db := rawDB(t, c)
		for _, q := range []string{
			`UPDATE audit SET seq = 100 WHERE seq = 3`,
			`UPDATE audit SET seq = 3 WHERE seq = 4`,
			`UPDATE audit SET seq = 4 WHERE seq = 100`,
		} {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		wantBreak(t, c, 3, "prev_hash")
	})
}
