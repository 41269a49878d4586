package meta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"

	"coffer/crypto/format"
)

// auditDomain separates audit hashes from any other SHA-256 use.
const auditDomain = "coffer audit v1\x00"

// auditHash is the chain hash of one row:
//
//	SHA-256( "coffer audit v1\0" || prev_hash (32 bytes) ||
//	         seq (8 bytes, big endian) || time_ns (8, big endian, two's complement) ||
//	         len(event) (4, big endian) || event ||
//	         len(actor) (4) || actor || len(detail) (4) || detail )
//
// Every field is fixed-size or length-prefixed, so no two rows encode alike;
// seq is inside, so moving a row breaks it. The first row's prev_hash is 32
// zero bytes. The mac column is not covered (it will cover the hash).
func auditHash(prev []byte, seq, timeNs int64, event, actor, detail string) []byte {
	h := sha256.New()
	h.Write([]byte(auditDomain))
	h.Write(prev)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(seq))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(timeNs))
	h.Write(b[:])
	var lp []byte
	for _, s := range []string{event, actor, detail} {
		lp = format.AppendLP(lp, []byte(s))
	}
	h.Write(lp)
	return h.Sum(nil)
}

var zeroHash = make([]byte, sha256.Size)

// AppendAudit appends an event to the audit log (hash-chained to the
// previous one). Use the Tx form to record an event in the same transaction
// as the change it describes. e.Detail must be a JSON value ("" means {}).
func (c *Catalog) AppendAudit(ctx context.Context, e AuditEvent) (AuditEvent, error) {
	return do(c, ctx, "append audit event", func(t *Tx) (AuditEvent, error) { return t.AppendAudit(e) })
}

// AppendAudit is Catalog.AppendAudit inside this transaction.
func (t *Tx) AppendAudit(e AuditEvent) (_ AuditEvent, err error) {
	defer t.track(&err)
	if e.Event == "" || e.Time == 0 {
		return AuditEvent{}, errf(syscall.EINVAL, "append audit event: event name and time are required")
	}
	if e.Detail == "" {
		e.Detail = "{}"
	}
	if !json.Valid([]byte(e.Detail)) {
		return AuditEvent{}, errf(syscall.EINVAL, "append audit event %q: detail is not JSON", e.Event)
	}
	var lastSeq int64
	var lastHash []byte
	err = t.tx.QueryRowContext(t.ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&lastSeq, &lastHash)
	if errors.Is(err, sql.ErrNoRows) {
		lastSeq, lastHash = 0, zeroHash
	} else if err != nil {
		return AuditEvent{}, wrapSQL("append audit event", err)
	}
	e.Seq = lastSeq + 1
	e.PrevHash = lastHash
	e.Hash = auditHash(e.PrevHash, e.Seq, e.Time, e.Event, e.Actor, e.Detail)
	e.MAC = nil
	if _, err := t.exec("append audit event", `INSERT INTO audit (seq, time_ns, event, actor, detail, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, e.Seq, e.Time, e.Event, e.Actor, e.Detail, e.PrevHash, e.Hash); err != nil {
		return AuditEvent{}, err
	}
	return e, t.step("audit")
}

const auditCols = `seq, time_ns, event, actor, detail, prev_hash, hash, mac`

func scanAudit(s scanner) (AuditEvent, error) {
	var e AuditEvent
	err := s.Scan(&e.Seq, &e.Time, &e.Event, &e.Actor, &e.Detail, &e.PrevHash, &e.Hash, &e.MAC)
	return e, err
}

// ListAudit returns up to limit events (<= 0: all) with seq above afterSeq.
func (c *Catalog) ListAudit(ctx context.Context, afterSeq int64, limit int) ([]AuditEvent, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := c.r.QueryContext(ctx, `SELECT `+auditCols+` FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`, afterSeq, limit)
	if err != nil {
		return nil, wrapSQL("read audit log", err)
	}
	defer rows.Close()
	var out []AuditEvent
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return nil, wrapSQL("read audit log", err)
		}
		out = append(out, e)
	}
	return out, wrapSQL("read audit log", rows.Err())
}

// VerifyAuditChain walks the whole audit log and returns how many events
// verify. A *ChainError names the first bad seq: an edited row (its hash), a
// deleted row (a gap, or the next row's prev_hash), a reordered row (seq is
// hashed), a deleted tail (the table's AUTOINCREMENT high-water mark). Someone
// who can rewrite the file can recompute the whole chain; the HSM-keyed MAC
// (later) and the remote snapshots are what stop that.
func (c *Catalog) VerifyAuditChain(ctx context.Context) (int64, error) {
	tx, err := c.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true}) // one snapshot for rows and high-water mark
	if err != nil {
		return 0, wrapSQL("verify audit chain", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, `SELECT `+auditCols+` FROM audit ORDER BY seq`)
	if err != nil {
		return 0, wrapSQL("verify audit chain", err)
	}
	defer rows.Close()
	var n, prevSeq int64
	prev := zeroHash
	for rows.Next() {
		e, err := scanAudit(rows)
		if err != nil {
			return n, wrapSQL("verify audit chain", err)
		}
		switch {
		case e.Seq != prevSeq+1:
			return n, &ChainError{Seq: prevSeq + 1, Reason: fmt.Sprintf("missing (next row present is seq %d)", e.Seq)}
		case !bytes.Equal(e.PrevHash, prev):
			return n, &ChainError{Seq: e.Seq, Reason: "prev_hash does not match the previous row (a row before it was changed, removed or moved)"}
		case !bytes.Equal(e.Hash, auditHash(e.PrevHash, e.Seq, e.Time, e.Event, e.Actor, e.Detail)):
			return n, &ChainError{Seq: e.Seq, Reason: "hash does not match the row's contents (row edited)"}
		}
		prev, prevSeq = e.Hash, e.Seq
		n++
	}
	if err := rows.Err(); err != nil {
		return n, wrapSQL("verify audit chain", err)
	}
	var high int64
	err = tx.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = 'audit'`).Scan(&high)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return n, wrapSQL("verify audit chain", err)
	}
	if high > prevSeq {
		return n, &ChainError{Seq: prevSeq + 1, Reason: fmt.Sprintf("missing (rows up to seq %d were written)", high)}
	}
	return n, nil
}
