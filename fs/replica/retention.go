package replica

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"coffer/crypto/format"
	"coffer/remote"
)

// Compaction and retention (FORMAT.md 12.13). A restore replays the newest
// snapshot and every delta after it, so a snapshot is taken once the deltas
// since the last one outweigh the catalog (at least 64 MiB of them), or a day
// after it. History is kept for the point-in-time window: the newest snapshot
// at or before now-window and everything after it stay, older objects of the
// epoch go, and so do older epochs once the window lies wholly inside this
// one.
// DefaultWindow is the point-in-time window (mount --pitr-window).
const DefaultWindow = 7 * 24 * time.Hour

// Variables only so that tests can shrink them.
var (
	compactMinBytes int64 = 64 << 20
	compactEvery          = 24 * time.Hour
	pruneEvery            = time.Hour
)

// snapInfo is what retention needs to know of a snapshot: its time and
// whether every part is there.
type snapInfo struct {
	time     time.Time
	complete bool
}

// dueForCompaction reports whether the deltas since the last snapshot call for
// a new one. r.mu is held.
func (r *Replicator) dueForCompactionLocked(catalogBytes int64) bool {
	if r.chainStart {
		return false
	}
	return r.sinceSnap > max(catalogBytes, compactMinBytes) || time.Since(r.lastSnap) > compactEvery
}

// prune deletes what the window no longer needs. It never deletes the newest
// complete snapshot, nor anything after the snapshot it keeps.
func (r *Replicator) prune(ctx context.Context) error {
	r.lastPrune = time.Now()
	l, err := list(ctx, r.cfg.Store, r.cfg.Epoch)
	if err != nil {
		return err
	}
	cutoff := time.Now().Add(-r.cfg.Window)
	ps := make([]uint64, 0, len(l.snaps))
	for p := range l.snaps {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] > ps[j] })
	var keep uint64
	found := false
	for _, p := range ps {
		si, err := r.snapInfo(ctx, l, p)
		if err != nil {
			return err
		}
		if si.complete && !si.time.After(cutoff) {
			keep, found = p, true
			break
		}
	}
	if !found {
		return nil // the window reaches back past every complete snapshot of this epoch
	}
	var names []string
	for p := range l.deltas {
		if p <= keep {
			names = append(names, Name(format.ReplicaHeader{Kind: format.ReplicaDelta, Epoch: r.cfg.Epoch, Position: p}))
		}
	}
	for p, parts := range l.snaps {
		if p < keep {
			for k := range parts {
				names = append(names, Name(format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: r.cfg.Epoch, Position: p, Part: k}))
			}
			delete(r.snaps, p)
		}
	}
	// Older epochs: the window lies wholly inside this one now.
	err = r.cfg.Store.List(ctx, Prefix, func(name string, _ int64) error {
		if h, ok := ParseName(name); ok && h.Epoch < r.cfg.Epoch {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replica: list older epochs: %w", err)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := r.cfg.Store.Delete(ctx, n); err != nil && !isNotFound(err) {
			return fmt.Errorf("replica: prune %s: %w", n, err)
		}
	}
	if len(names) > 0 {
		r.log.Info("replica: pruned history older than the point-in-time window", "objects", len(names),
			"kept_from_position", keep, "window", r.cfg.Window.String())
	}
	return nil
}

// snapInfo learns a snapshot's time and completeness, from this session's
// own record or by opening its part 0 (once per session).
func (r *Replicator) snapInfo(ctx context.Context, l *listing, p uint64) (snapInfo, error) {
	if si, ok := r.snaps[p]; ok {
		return si, nil
	}
	parts := l.snaps[p]
	if _, ok := parts[0]; !ok {
		return snapInfo{}, nil
	}
	h := format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: r.cfg.Epoch, Position: p}
	head, err := r.cfg.Store.GetRange(ctx, Name(h), 0, format.ReplicaHeaderSize)
	if err != nil {
		return snapInfo{}, fmt.Errorf("replica: read %s: %w", Name(h), err)
	}
	stored, err := format.ParseReplicaHeader(head)
	if err != nil {
		return snapInfo{}, nil // damaged: never the one kept
	}
	key, err := r.cfg.Key(ctx, stored.KEKVersion)
	if err != nil {
		return snapInfo{}, err
	}
	plain, _, err := fetchOpen(ctx, r.cfg.Store, key.Bytes(), r.cfg.Volume, h, stored.KEKVersion)
	key.Wipe()
	if err != nil {
		return snapInfo{}, nil // does not open: never the one kept
	}
	sp, err := UnmarshalSnapshotPart(plain, 0)
	clear(plain)
	if err != nil {
		return snapInfo{}, nil
	}
	si := snapInfo{time: time.Unix(0, sp.TimeNS), complete: true}
	for k := uint16(0); k < sp.Parts; k++ {
		if _, ok := parts[k]; !ok {
			si.complete = false
		}
	}
	r.snaps[p] = si
	return si, nil
}

func isNotFound(err error) bool { return errors.Is(err, remote.ErrNotFound) }

// Holes lists the delta names missing from epoch's replica between its newest snapshot
// and its newest position (fsck). A replica that simply ends early (the tail a crash
// leaves) has none: nothing records how far it went.
func Holes(ctx context.Context, store remote.Store, epoch uint32) ([]string, error) {
	l, err := list(ctx, store, epoch)
	if err != nil {
		return nil, err
	}
	var base uint64
	found := false
	for p, parts := range l.snaps {
		if _, ok := parts[0]; ok && (!found || p > base) {
			base, found = p, true
		}
	}
	if !found {
		if len(l.deltas) == 0 {
			return nil, nil
		}
		first := l.maxP
		for p := range l.deltas {
			first = min(first, p)
		}
		return []string{Name(format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: epoch, Position: first - 1})}, nil
	}
	var out []string
	for p := base + 1; p <= l.maxP; p++ {
		if _, ok := l.deltas[p]; ok {
			continue
		}
		if _, ok := l.snaps[p]; ok {
			continue
		}
		out = append(out, Name(format.ReplicaHeader{Kind: format.ReplicaDelta, Epoch: epoch, Position: p}))
	}
	return out, nil
}
