package keyops

import (
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"coffer/fs/meta"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver, to tamper with a catalog copy
)

type auditRow struct {
	seq, time            int64
	event, actor, detail string
	prev, hash, mac      []byte
}

// chainHash is the audit hash of fs/meta (documented there), recomputed as an attacker who
// can write the file but has no key would.
func chainHash(prev []byte, r auditRow) []byte {
	h := sha256.New()
	h.Write([]byte("coffer audit v1\x00"))
	h.Write(prev)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(r.seq))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(r.time))
	h.Write(b[:])
	for _, s := range []string{r.event, r.actor, r.detail} {
		binary.BigEndian.PutUint32(b[:4], uint32(len(s)))
		h.Write(b[:4])
		h.Write([]byte(s))
	}
	return h.Sum(nil)
}

// tamper copies the catalog to a new folder and rewrites its audit log with edit; with
// rehash it renumbers the rows and recomputes the whole hash chain (and sqlite_sequence).
func tamper(t *testing.T, e *tvol, rehash bool, edit func([]auditRow) []auditRow) *meta.Catalog {
	t.Helper()
	if err := e.v.Catalog().PurgeDeleted(ctx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "copy")
	copyFile(t, filepath.Join(e.state, meta.FileName), filepath.Join(dir, meta.FileName))
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, meta.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs, err := db.Query(`SELECT seq, time_ns, event, actor, detail, prev_hash, hash, mac FROM audit ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	var rows []auditRow
	for rs.Next() {
		var r auditRow
		if err := rs.Scan(&r.seq, &r.time, &r.event, &r.actor, &r.detail, &r.prev, &r.hash, &r.mac); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	rs.Close()
	rows = edit(rows)
	if rehash {
		prev := make([]byte, 32)
		for i := range rows {
			rows[i].seq = int64(i + 1)
			rows[i].prev = prev
			rows[i].hash = chainHash(prev, rows[i])
			prev = rows[i].hash
		}
	}
	tx, _ := db.Begin()
	must := func(_ sql.Result, err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tx.Exec(`DELETE FROM audit`))
	for _, r := range rows {
		must(tx.Exec(`INSERT INTO audit (seq, time_ns, event, actor, detail, prev_hash, hash, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			r.seq, r.time, r.event, r.actor, r.detail, r.prev, r.hash, r.mac))
	}
	if rehash {
		must(tx.Exec(`UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'`, len(rows)))
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	c, err := meta.OpenReadOnly(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAuditMAC: every entry gets a MAC under the current volume KEK; an edited, reordered or
// deleted entry is reported even when the attacker recomputed the hash chain without the HSM.
func TestAuditMAC(t *testing.T) {
	e := newVol(t, volOpt{})
	for i := range 6 {
		if _, err := e.v.Catalog().AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: "test.event", Actor: "t",
			Detail: `{"i":` + string(rune('0'+i)) + `}`}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Authenticated != 0 || rep.Unsealed != 8 {
		t.Fatalf("before sealing: %+v %v", rep, err)
	}
	n, err := SealAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID, e.v.KEK())
	if err != nil || n != 8 {
		t.Fatalf("seal: %d %v", n, err)
	}
	if n, _ := SealAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID, e.v.KEK()); n != 0 {
		t.Fatalf("a second seal sealed %d entries", n)
	}
	rep, err = VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Authenticated != 8 || rep.Unsealed != 0 || !strings.Contains(rep.String(), "8 MACs verified (key volume/v1)") {
		t.Fatalf("after sealing: %+v %v", rep, err)
	}
	// New entries are unsealed until the next seal, which MACs only them.
	e.v.Catalog().AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: "test.late", Actor: "t"})
	if rep, err = VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID); err != nil || rep.Unsealed != 1 {
		t.Fatalf("with a new entry: %+v %v", rep, err)
	}
	if n, _ := SealAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID, e.v.KEK()); n != 1 {
		t.Fatalf("sealed %d, want 1", n)
	}

	cases := []struct {
		name   string
		rehash bool
		edit   func([]auditRow) []auditRow
		seq    int64
		reason string
	}{
		{"edit", false, func(r []auditRow) []auditRow { r[3].detail = `{"i":9}`; return r }, 4, "row edited"},
		{"edit and rehash", true, func(r []auditRow) []auditRow { r[3].detail = `{"i":9}`; return r }, 4, "MAC does not match"},
		{"delete and rehash", true, func(r []auditRow) []auditRow { return append(r[:3], r[4:]...) }, 4, "MAC does not match"},
		{"reorder and rehash", true, func(r []auditRow) []auditRow { r[3], r[4] = r[4], r[3]; return r }, 4, "MAC does not match"},
		{"MAC copied", false, func(r []auditRow) []auditRow { r[3].mac = r[4].mac; return r }, 4, "MAC does not match"},
		{"MAC removed", false, func(r []auditRow) []auditRow { r[2].mac = nil; return r }, 3, "was removed"},
		{"delete tail and rehash", true, func(r []auditRow) []auditRow { r[2].actor = "x"; return r[:5] }, 3, "MAC does not match"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cat := tamper(t, e, c.rehash, c.edit)
			_, err := VerifyAudit(ctx, cat, e.v.Provider(), e.v.ID)
			var ae *AuditError
			if !errors.As(err, &ae) || ae.Seq != c.seq || !strings.Contains(ae.Reason, c.reason) {
				t.Fatalf("verify: %v, want entry %d: %q", err, c.seq, c.reason)
			}
			if !c.rehash && c.name == "edit" {
				if _, err := SealAudit(ctx, cat, e.v.Provider(), e.v.ID, e.v.KEK()); err == nil {
					t.Fatal("sealed a log whose hash chain is broken")
				}
			}
		})
	}
	// Every MAC stripped after a key command ran: sealing refuses to bless the log.
	if _, err := Rotate(ctx, e.v, RotateOptions{Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	stripped := tamper(t, e, false, func(r []auditRow) []auditRow {
		for i := range r {
			r[i].mac = nil
		}
		return r
	})
	if _, err := SealAudit(ctx, stripped, e.v.Provider(), e.v.ID, e.v.KEK()); err == nil || !strings.Contains(err.Error(), "MACs were removed") {
		t.Fatalf("seal of a stripped log: %v", err)
	}
	// The untampered log still verifies.
	if _, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID); err != nil {
		t.Fatal(err)
	}
}

// TestAuditPassphrase: the same MAC with a passphrase provider's HMAC key.
func TestAuditPassphrase(t *testing.T) {
	e := newVol(t, volOpt{passphrase: true})
	if _, err := SealAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID, e.v.KEK()); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyAudit(ctx, e.v.Catalog(), e.v.Provider(), e.v.ID)
	if err != nil || rep.Authenticated != 2 {
		t.Fatalf("%+v %v", rep, err)
	}
	cat := tamper(t, e, true, func(r []auditRow) []auditRow { r[0].actor = "mallory"; return r })
	if _, err := VerifyAudit(ctx, cat, e.v.Provider(), e.v.ID); err == nil || !strings.Contains(err.Error(), "MAC does not match") {
		t.Fatalf("rehashed edit on a passphrase volume: %v", err)
	}
}
