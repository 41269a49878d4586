package replica

import (
	"coffer/crypto/format"
	"coffer/keys"
	"coffer/remote"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"
)

// takeSnapshot streams the catalog file as the parts of a snapshot that starts
// a new chain at position r.p+1. Every snapshot does: one never overwrites an
// older snapshot's objects (a torn overwrite could leave no complete one), and
// never depends on what older objects were sealed under.
func (r *Replicator) takeSnapshot(ctx context.Context) error {
	return r.cfg.Catalog.ReadMainFile(ctx, func(f *os.File) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		key, version, err := r.currentKeyLocked(ctx)
		if err != nil {
			return err
		}
		defer key.Wipe()
		// No delta ships while chainStart is set, so r.p is the state before the
		// main file's: the snapshot is the next position.
		p := r.p + 1
		now := time.Now()
		first, err := writeSnapshot(ctx, r.cfg.Store, f, key, now, format.ReplicaHeader{
			Kind: format.ReplicaSnapshot, KEKVersion: version, Volume: r.cfg.Volume, Epoch: r.cfg.Epoch, Position: p}, StateID{})
		if err != nil {
			return err
		}
		r.p, r.state, r.chainStart = p, first, false
		r.shownP.Store(p)
		r.sinceSnap, r.lastSnap = 0, now
		r.snaps[p] = snapInfo{time: now, complete: true}
		r.lastShip.Store(time.Now().UnixNano())
		r.log.Info("replica: snapshot written", "epoch", r.cfg.Epoch, "position", p)
		return nil
	})
}

// writeSnapshot seals and puts the database file f as the parts of the
// snapshot h (Part and Last set here) and returns part 0's object id.
func writeSnapshot(ctx context.Context, store remote.Store, f *os.File, key *keys.DEK, at time.Time, h format.ReplicaHeader, state StateID) (StateID, error) {
	var hdr [100]byte
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, 100), hdr[:]); err != nil {
		return StateID{}, fmt.Errorf("replica: snapshot: read the catalog header: %w", err)
	}
	ps := int(binary.BigEndian.Uint16(hdr[16:]))
	if ps == 1 {
		ps = 65536
	}
	if err := checkPageSize(ps); err != nil {
		return StateID{}, fmt.Errorf("replica: snapshot: catalog header: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return StateID{}, fmt.Errorf("replica: snapshot: %w", err)
	}
	if st.Size()%int64(ps) != 0 || st.Size() == 0 {
		return StateID{}, fmt.Errorf("replica: snapshot: catalog file of %d bytes is not whole pages of %d", st.Size(), ps)
	}
	dbPages := uint32(st.Size() / int64(ps))
	per := PagesPerPart(ps)
	parts := (dbPages + per - 1) / per
	if parts > 0xffff {
		return StateID{}, fmt.Errorf("replica: snapshot: catalog of %d pages needs %d parts, more than 65535", dbPages, parts)
	}
	now := at.UnixNano()
	var first StateID
	for k := range parts {
		firstPg := k*per + 1
		n := min(per, dbPages-firstPg+1)
		pages := make([]byte, int(n)*ps)
		if _, err := f.ReadAt(pages, int64(firstPg-1)*int64(ps)); err != nil {
			return StateID{}, fmt.Errorf("replica: snapshot: read the catalog: %w", err)
		}
		sp := SnapshotPart{PageSize: ps, DBPages: dbPages, TimeNS: now, Parts: uint16(parts), FirstPgno: firstPg,
			State: state, Pages: pages}
		h.Part, h.Last = uint16(k), k == parts-1
		if err := sealPut(ctx, store, key.Clone(), &h, sp.Marshal()); err != nil {
			return StateID{}, err
		}
		clear(pages)
		if k == 0 {
			first = h.Object
		}
	}
	if state.IsZero() {
		return first, nil
	}
	return state, nil
}

// sealPut seals plain under a fresh object id (set in h), wipes key (before
// the Put, which may take long) and puts the object.
func sealPut(ctx context.Context, store remote.Store, key *keys.DEK, h *format.ReplicaHeader, plain []byte) error {
	defer key.Wipe()
	id, err := format.NewID()
	if err != nil {
		return err
	}
	h.Object = id
	obj, err := format.SealReplica(key.Bytes(), *h, plain)
	key.Wipe()
	clear(plain)
	if err != nil {
		return err
	}
	if err := store.Put(ctx, Name(*h), obj); err != nil {
		return fmt.Errorf("replica: put %s: %w", Name(*h), err)
	}
	return nil
}
