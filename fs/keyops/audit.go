package keyops

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"coffer/fs/meta"
	"coffer/keys"
)

// Audit MAC (the audit table's mac column), stored as
//
//	0x01 || uint32be(KEK version of the volume chain) || HMAC-SHA256(that version's HMAC key,
//	        keys.AuditMACMessage(volume id, seq, hash))                          = 37 bytes
//
// The MAC covers the row's chain hash, which covers the row and every row before it. Someone
// who edits, reorders or deletes rows and recomputes the hash chain cannot recompute the MACs
// without the provider (the HSM, or the passphrase).
const (
	auditMACVersion = 1
	auditMACSize    = 1 + 4 + keys.MACSize
	auditBatch      = 1000
)

// AuditError names the first audit entry that fails verification.
type AuditError struct {
	Seq    int64
	Reason string
}

func (e *AuditError) Error() string {
	return fmt.Sprintf("audit entry %d: %s", e.Seq, e.Reason)
}

// AuditReport is what VerifyAudit found.
type AuditReport struct {
	Entries       int64         // entries whose hash chain verifies
	Authenticated int64         // entries whose MAC verifies
	Unsealed      int64         // newest entries not MACed yet (written since the last seal)
	Keys          []keys.KEKRef // KEK versions whose HMAC keys the MACs use
}

// String is the one-line summary coffer audit --verify prints.
func (r AuditReport) String() string {
	s := fmt.Sprintf("audit log: %d entries, hash chain intact, %d MACs verified", r.Entries, r.Authenticated)
	if len(r.Keys) > 0 {
		s += " (key"
		for i, k := range r.Keys {
			if i > 0 {
				s += ","
			}
			s += " " + k.String()
		}
		s += ")"
	}
	if r.Unsealed > 0 {
		s += fmt.Sprintf(", %d newest not MACed yet", r.Unsealed)
	}
	return s
}

func encodeAuditMAC(version uint32, mac []byte) []byte {
	b := make([]byte, 0, auditMACSize)
	b = append(b, auditMACVersion)
	b = binary.BigEndian.AppendUint32(b, version)
	return append(b, mac...)
}

func decodeAuditMAC(b []byte) (uint32, []byte, bool) {
	if len(b) != auditMACSize || b[0] != auditMACVersion {
		return 0, nil, false
	}
	return binary.BigEndian.Uint32(b[1:5]), b[5:], true
}

func auditMAC(ctx context.Context, p keys.Provider, volume [keys.IDSize]byte, ref keys.KEKRef, e meta.AuditEvent) ([]byte, error) {
	mac, err := p.MAC(ctx, ref, keys.AuditMACMessage(volume, e.Seq, e.Hash))
	if err != nil {
		return nil, fmt.Errorf("MAC audit entry %d with KEK %s: %w", e.Seq, ref, err)
	}
	return mac, nil
}

// SealAudit MACs the audit entries written since the last sealed one, with the HMAC key of
// the volume chain's KEK version cur, and returns how many it sealed. It checks the hash
// chain first and refuses to seal a log that fails it (sealing would bless an edit). Only the
// unsealed tail is sealed: an entry without a MAC that precedes a sealed one (a removed MAC)
// is never filled in, so VerifyAudit keeps reporting it. A log with no MAC at all (entries
// from init, or from before this existed) is sealed whole.
func SealAudit(ctx context.Context, cat *meta.Catalog, p keys.Provider, volume [keys.IDSize]byte, cur keys.KEKRef) (int, error) {
	if _, err := cat.VerifyAuditChain(ctx); err != nil {
		return 0, fmt.Errorf("seal audit log: hash chain broken, not sealing it: %w", err)
	}
	// Find the first row after the last sealed one.
	var after, lastSealed int64
	var tail []meta.AuditEvent
	for {
		evs, err := cat.ListAudit(ctx, after, auditBatch)
		if err != nil {
			return 0, err
		}
		for _, e := range evs {
			if e.MAC != nil {
				lastSealed = e.Seq
				tail = tail[:0]
			} else if e.Seq > lastSealed {
				tail = append(tail, e)
			}
			after = e.Seq
		}
		if len(evs) < auditBatch {
			break
		}
	}
	if lastSealed == 0 && len(tail) > 0 {
		// A log never sealed cannot contain what only sealing commands write: if it does,
		// its MACs were stripped, and sealing it now would bless whatever was edited.
		if e, ok, err := cat.LastAuditEvent(ctx, eventRotateEnd, "passphrase.change", "user.shred"); err != nil {
			return 0, err
		} else if ok {
			return 0, fmt.Errorf("seal audit log: %w", &AuditError{Seq: e.Seq,
				Reason: "no entry has a MAC although coffer key commands ran: the MACs were removed; not sealing the log"})
		}
	}
	n := 0
	for len(tail) > 0 {
		b := tail[:min(len(tail), auditBatch)]
		tail = tail[len(b):]
		macs := make([][]byte, len(b))
		for i, e := range b {
			mac, err := auditMAC(ctx, p, volume, cur, e)
			if err != nil {
				return n, fmt.Errorf("seal audit log: %w", err)
			}
			macs[i] = encodeAuditMAC(cur.Version, mac)
		}
		if err := cat.Update(ctx, func(t *meta.Tx) error {
			for i, e := range b {
				if err := t.SetAuditMAC(e.Seq, macs[i]); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return n, fmt.Errorf("seal audit log: %w", err)
		}
		n += len(b)
	}
	return n, nil
}

// VerifyAudit checks the hash chain and every MAC with the provider. It returns an
// *AuditError for an edited, reordered or deleted entry (the hash chain), an entry whose MAC
// does not match (edited and re-hashed without the provider, or a MAC copied from another
// entry), a MAC removed from an entry older than a sealed one, or a MAC under a KEK version
// the provider no longer has. Unsealed newest entries are counted, not errors.
func VerifyAudit(ctx context.Context, cat *meta.Catalog, p keys.Provider, volume [keys.IDSize]byte) (AuditReport, error) {
	var r AuditReport
	n, err := cat.VerifyAuditChain(ctx)
	r.Entries = n
	if err != nil {
		var ce *meta.ChainError
		if errors.As(err, &ce) {
			return r, &AuditError{Seq: ce.Seq, Reason: ce.Reason}
		}
		return r, err
	}
	seen := map[uint32]bool{}
	var after, firstUnsealed int64
	for {
		evs, err := cat.ListAudit(ctx, after, auditBatch)
		if err != nil {
			return r, err
		}
		for _, e := range evs {
			after = e.Seq
			if e.MAC == nil {
				if firstUnsealed == 0 {
					firstUnsealed = e.Seq
				}
				r.Unsealed++
				continue
			}
			if firstUnsealed != 0 {
				return r, &AuditError{Seq: firstUnsealed, Reason: fmt.Sprintf("no MAC, but the later entry %d has one (its MAC was removed)", e.Seq)}
			}
			version, mac, ok := decodeAuditMAC(e.MAC)
			if !ok {
				return r, &AuditError{Seq: e.Seq, Reason: fmt.Sprintf("malformed MAC (%d bytes)", len(e.MAC))}
			}
			ref := keys.KEKRef{Chain: "", Version: version}
			if ref.Validate() != nil {
				return r, &AuditError{Seq: e.Seq, Reason: "MAC names KEK version 0"}
			}
			want, err := auditMAC(ctx, p, volume, ref, e)
			if errors.Is(err, keys.ErrKEKMissing) {
				return r, &AuditError{Seq: e.Seq, Reason: fmt.Sprintf("MAC under KEK %s, which is destroyed or missing: cannot be verified", ref)}
			}
			if err != nil {
				return r, err
			}
			if subtle.ConstantTimeCompare(want, mac) != 1 {
				return r, &AuditError{Seq: e.Seq, Reason: "MAC does not match: the entry was edited, moved, or its hash chain recomputed without the key"}
			}
			if !seen[version] {
				seen[version] = true
				r.Keys = append(r.Keys, ref)
			}
			r.Authenticated++
		}
		if len(evs) < auditBatch {
			break
		}
	}
	return r, nil
}

// remacAudit re-MACs, under cur, every entry MACed under one of the versions in from, after
// checking its old MAC (a forged entry is never re-blessed). Retire calls it before it
// destroys those versions, so the log stays verifiable.
func remacAudit(ctx context.Context, cat *meta.Catalog, p keys.Provider, volume [keys.IDSize]byte, from map[uint32]bool, cur keys.KEKRef, log *slog.Logger) (int, error) {
	if len(from) == 0 {
		return 0, nil
	}
	var after int64
	n := 0
	for {
		evs, err := cat.ListAudit(ctx, after, auditBatch)
		if err != nil {
			return n, err
		}
		type upd struct {
			seq int64
			mac []byte
		}
		var ups []upd
		for _, e := range evs {
			after = e.Seq
			version, mac, ok := decodeAuditMAC(e.MAC)
			if !ok || !from[version] {
				continue
			}
			old, err := auditMAC(ctx, p, volume, keys.KEKRef{Version: version}, e)
			if err != nil {
				return n, err
			}
			if subtle.ConstantTimeCompare(old, mac) != 1 {
				return n, fmt.Errorf("re-MAC audit log before retiring KEK volume/v%d: %w", version,
					&AuditError{Seq: e.Seq, Reason: "MAC does not match (tampered entry); not re-MACing it"})
			}
			nm, err := auditMAC(ctx, p, volume, cur, e)
			if err != nil {
				return n, err
			}
			ups = append(ups, upd{e.Seq, encodeAuditMAC(cur.Version, nm)})
		}
		if len(ups) > 0 {
			if err := cat.Update(ctx, func(t *meta.Tx) error {
				for _, u := range ups {
					if err := t.SetAuditMAC(u.seq, u.mac); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return n, err
			}
			n += len(ups)
		}
		if len(evs) < auditBatch {
			break
		}
	}
	if n > 0 {
		log.Info("re-MACed audit entries under the current KEK before retiring older versions", "entries", n, "kek", cur.String())
	}
	return n, nil
}
