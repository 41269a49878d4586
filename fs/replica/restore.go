package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	"coffer/crypto/format"
	"coffer/remote"
)

// listing is what one epoch's folder holds.
type listing struct {
	deltas map[uint64]int64            // P -> object size
	snaps  map[uint64]map[uint16]int64 // P -> part -> object size
	maxP   uint64
	bytes  int64
}

func list(ctx context.Context, store remote.Store, epoch uint32) (*listing, error) {
	l := &listing{deltas: map[uint64]int64{}, snaps: map[uint64]map[uint16]int64{}}
	err := store.List(ctx, EpochPrefix(epoch), func(name string, size int64) error {
		h, ok := ParseName(name)
		if !ok || h.Epoch != epoch {
			return nil // not a replica object (a leftover of another tool): ignored
		}
		if h.Kind == format.ReplicaDelta {
			l.deltas[h.Position] = size
		} else {
			if l.snaps[h.Position] == nil {
				l.snaps[h.Position] = map[uint16]int64{}
			}
			l.snaps[h.Position][h.Part] = size
		}
		l.maxP = max(l.maxP, h.Position)
		l.bytes += size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("replica: list %s on %s: %w", EpochPrefix(epoch), store, err)
	}
	return l, nil
}

// tail returns the newest object of the epoch (its delta if the newest
// position has one, else part 0 of its snapshot) and its size, or nil if
// there is none.
func (l *listing) tail(epoch uint32) (*format.ReplicaHeader, int64) {
	if len(l.deltas) == 0 && len(l.snaps) == 0 {
		return nil, 0
	}
	h := format.ReplicaHeader{Epoch: epoch, Position: l.maxP, Kind: format.ReplicaDelta}
	size, ok := l.deltas[l.maxP]
	if !ok {
		h.Kind = format.ReplicaSnapshot
		size = l.snaps[l.maxP][0] // 0 if part 0 is missing: as good as torn
	}
	return &h, size
}

// fetchOpen gets and opens the object h names, sealed under key of version.
// It returns the plaintext and the stored header.
func fetchOpen(ctx context.Context, store remote.Store, key []byte, volume format.ID, h format.ReplicaHeader, version uint32) ([]byte, format.ReplicaHeader, error) {
	name := Name(h)
	size, err := store.Stat(ctx, name)
	if err != nil {
		return nil, h, fmt.Errorf("replica: %s: %w", name, err)
	}
	obj, err := store.GetRange(ctx, name, 0, size)
	if err != nil {
		return nil, h, fmt.Errorf("replica: read %s: %w", name, err)
	}
	stored, err := format.ParseReplicaHeader(obj)
	if err != nil {
		return nil, h, fmt.Errorf("replica: %s: %w", name, err)
	}
	want := h
	want.KEKVersion, want.Volume = version, volume
	plain, err := format.OpenReplica(key, want, obj)
	if err != nil {
		return nil, h, fmt.Errorf("replica: %s: %w", name, err)
	}
	return plain, stored, nil
}

// RestoreConfig says what to restore and where.
type RestoreConfig struct {
	Store  remote.Store
	Volume format.ID
	Epoch  uint32
	Key    KeyFunc
	Dst    string // the catalog file to write (must not exist)
	Logger *slog.Logger
	// Progress, if set, is called after each object with the bytes read so
	// far and the total to read.
	Progress func(done, total int64)
	// At, if set, restores the newest state that reached the remote at or
	// before it (point in time) instead of the newest state.
	At time.Time
}

// ErrTooOld means the epoch holds no state at or before RestoreConfig.At
// (an older epoch may; or the history was pruned).
var ErrTooOld = errors.New("no replicated state that old")

// RestoreResult says what a restore rebuilt.
type RestoreResult struct {
	Epoch    uint32
	Position uint64    // the position restored to
	Time     time.Time // when that state was shipped (its commits are older)
	Objects  int
	Bytes    int64
	// DroppedTail names the newest object if it failed to open and was
	// left out (an upload cut short by a crash, or tampering: indistinguishable
	// from a dropped tail).
	DroppedTail string
}

// Restore rebuilds the catalog file Dst from epoch Epoch's replica: the
// newest complete snapshot, then every delta after it, in order, each
// authenticated and linked to the state before it. Any object that fails
// (missing from the middle, altered, truncated, swapped, reordered, replaced
// by an older copy) fails the restore with an error that names it; only the
// newest object may be left out, with a warning (see DroppedTail). Dst is
// removed on failure and synced on success; the caller checks the result as
// a database.
func Restore(ctx context.Context, cfg RestoreConfig) (res RestoreResult, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	res.Epoch = cfg.Epoch
	l, err := list(ctx, cfg.Store, cfg.Epoch)
	if err != nil {
		return res, err
	}
	if len(l.deltas) == 0 && len(l.snaps) == 0 {
		return res, fmt.Errorf("replica: %s holds no replica of epoch %d (%s is empty)", cfg.Store, cfg.Epoch, EpochPrefix(cfg.Epoch))
	}
	keys := map[uint32][]byte{}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	keyFor := func(version uint32) ([]byte, error) {
		if k, ok := keys[version]; ok {
			return k, nil
		}
		d, err := cfg.Key(ctx, version)
		if err != nil {
			return nil, fmt.Errorf("replica key of KEK version %d: %w", version, err)
		}
		k := append([]byte(nil), d.Bytes()...)
		d.Wipe()
		keys[version] = k
		return k, nil
	}
	// open authenticates one object, with the key of the version its header names.
	open := func(h format.ReplicaHeader) ([]byte, format.ReplicaHeader, error) {
		name := Name(h)
		head, err := cfg.Store.GetRange(ctx, name, 0, format.ReplicaHeaderSize)
		if err != nil {
			return nil, h, fmt.Errorf("replica: read %s: %w", name, err)
		}
		stored, err := format.ParseReplicaHeader(head)
		if err != nil {
			return nil, h, fmt.Errorf("replica: %s: %w", name, err)
		}
		key, err := keyFor(stored.KEKVersion)
		if err != nil {
			return nil, h, &keyError{fmt.Errorf("replica: %s: %w", name, err)}
		}
		return fetchOpen(ctx, cfg.Store, key, cfg.Volume, h, stored.KEKVersion)
	}

	f, err := os.OpenFile(cfg.Dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return res, fmt.Errorf("replica: restore: %w", err)
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(cfg.Dst)
		}
	}()

	// The newest snapshot with every part present; an incomplete one is
	// skipped only when nothing follows it (a snapshot cut short by a crash).
	snapPs := make([]uint64, 0, len(l.snaps))
	for p := range l.snaps {
		snapPs = append(snapPs, p)
	}
	sort.Slice(snapPs, func(i, j int) bool { return snapPs[i] > snapPs[j] })
	var total int64 = l.bytes
	var done int64
	progress := func(n int64) {
		done += n
		res.Objects++
		if cfg.Progress != nil {
			cfg.Progress(done, total)
		}
	}
	var base uint64
	var state StateID
	var pageSize int
	found := false
	end := l.maxP // the newest position to restore
	for _, p := range snapPs {
		name := Name(format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: cfg.Epoch, Position: p})
		ok, tooNew, st, ps, t, err := applySnapshot(f, l, p, cfg.Epoch, cfg.At, open, progress)
		if err != nil {
			return res, err
		}
		if tooNew {
			continue
		}
		if !ok {
			// Parts missing or from two attempts: a snapshot cut short by a crash. At the
			// newest position without a delta (a new chain's first object), restore the state
			// before it; where a delta of the same position carries the chain on, an older
			// snapshot and the deltas give the same state. Anywhere else parts were deleted.
			_, hasDelta := l.deltas[p]
			switch {
			case p == l.maxP && !hasDelta:
				log.Warn("replica: the newest snapshot is incomplete (cut short); restoring the state before it", "snapshot", name)
				res.DroppedTail, end = name, p-1
			case hasDelta:
				log.Warn("replica: a snapshot is incomplete (cut short); using an older one and the deltas after it", "snapshot", name)
			default:
				return res, fmt.Errorf("replica: the snapshot %s is missing parts or has parts of another snapshot (deleted or replaced)", name)
			}
			continue
		}
		if p > end {
			continue
		}
		base, state, pageSize, found = p, st, ps, true
		res.Position, res.Time = p, t
		break
	}
	if !found && !cfg.At.IsZero() {
		return res, fmt.Errorf("replica: %s holds no snapshot taken at or before %s: %w", EpochPrefix(cfg.Epoch),
			cfg.At.UTC().Format(time.RFC3339), ErrTooOld)
	}
	if !found {
		if len(l.deltas) > 0 {
			first := l.maxP
			for p := range l.deltas {
				first = min(first, p)
			}
			if first > 1 {
				return res, fmt.Errorf("replica: %s is missing: the deltas from position %d on build on it, and no complete snapshot is left",
					Name(format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: cfg.Epoch, Position: first - 1}), first)
			}
		}
		return res, fmt.Errorf("replica: %s holds no complete snapshot to restore from", EpochPrefix(cfg.Epoch))
	}
	for p := base + 1; p <= end; p++ {
		h := format.ReplicaHeader{Kind: format.ReplicaDelta, Epoch: cfg.Epoch, Position: p}
		name := Name(h)
		if _, ok := l.deltas[p]; !ok {
			if _, snap := l.snaps[p]; snap && !cfg.At.IsZero() {
				break // a newer chain starts here, after At
			}
			if _, snap := l.snaps[p]; snap {
				// A snapshot that started a new chain after this one's last delta: the
				// newest complete snapshot was chosen above, so this one is incomplete.
				return res, fmt.Errorf("replica: position %d has only an incomplete snapshot, and the chain from position %d cannot continue past it", p, base)
			}
			return res, fmt.Errorf("replica: %s is missing: the replica has a hole at position %d (between %d and %d)", name, p, base, end)
		}
		plain, stored, err := open(h)
		if err != nil {
			var ke *keyError
			if p == end && !errors.As(err, &ke) {
				log.Warn("replica: the newest object does not open; restoring to the position before it", "object", name, "err", err)
				res.DroppedTail = name
				break
			}
			return res, err
		}
		d, err := UnmarshalDelta(plain)
		if err != nil {
			return res, fmt.Errorf("replica: %s: %w", name, err)
		}
		if !cfg.At.IsZero() && time.Unix(0, d.TimeNS).After(cfg.At) {
			clear(plain)
			break // the newest state at or before At is reached
		}
		if d.Prev != state {
			return res, fmt.Errorf("replica: %s does not follow the state before it (links to %s, the restored state is %s): "+
				"an object of the chain was replaced by an older copy or another object", name, d.Prev, state)
		}
		if d.PageSize != pageSize {
			return res, fmt.Errorf("replica: %s has page size %d, the catalog %d", name, d.PageSize, pageSize)
		}
		for _, pg := range d.Pages {
			if _, err := f.WriteAt(pg.Data, int64(pg.Pgno-1)*int64(pageSize)); err != nil {
				return res, fmt.Errorf("replica: restore: write %s: %w", cfg.Dst, err)
			}
		}
		if err := f.Truncate(int64(d.DBPages) * int64(pageSize)); err != nil {
			return res, fmt.Errorf("replica: restore: %w", err)
		}
		clear(plain)
		state, res.Position, res.Time = stored.Object, p, time.Unix(0, d.TimeNS)
		progress(l.deltas[p])
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("replica: restore: sync %s: %w", cfg.Dst, err)
	}
	res.Bytes = done
	return res, nil
}

// applySnapshot writes snapshot p's parts into f. ok is false if a part is
// missing (the caller decides whether that is an error).
func applySnapshot(f *os.File, l *listing, p uint64, epoch uint32, notAfter time.Time,
	open func(format.ReplicaHeader) ([]byte, format.ReplicaHeader, error), progress func(int64)) (
	ok, tooNew bool, state StateID, pageSize int, t time.Time, err error) {
	parts := l.snaps[p]
	if _, has := parts[0]; !has {
		return false, false, state, 0, t, nil
	}
	var n uint16
	var dbPages uint32
	var p0 *SnapshotPart
	for k := uint16(0); k == 0 || k < n; k++ {
		h := format.ReplicaHeader{Kind: format.ReplicaSnapshot, Epoch: epoch, Position: p, Part: k}
		if _, has := parts[k]; !has {
			return false, false, state, 0, t, nil
		}
		plain, stored, err := open(h)
		if err != nil {
			return false, false, state, 0, t, err
		}
		sp, err := UnmarshalSnapshotPart(plain, k)
		if err != nil {
			return false, false, state, 0, t, fmt.Errorf("replica: %s: %w", Name(h), err)
		}
		if k == 0 {
			p0 = sp
			n, dbPages, pageSize, t = sp.Parts, sp.DBPages, sp.PageSize, time.Unix(0, sp.TimeNS)
			if !notAfter.IsZero() && t.After(notAfter) {
				clear(plain)
				return false, true, state, 0, t, nil
			}
			state = sp.State
			if state.IsZero() {
				state = stored.Object
			}
			if err := f.Truncate(0); err != nil {
				return false, false, state, 0, t, err
			}
		} else if sp.Parts != n || sp.DBPages != dbPages || sp.PageSize != pageSize || sp.State != p0.State || sp.TimeNS != p0.TimeNS {
			return false, false, state, 0, t, nil // a part of another attempt at this snapshot
		}
		if stored.Last != (k == n-1) {
			return false, false, state, 0, t, fmt.Errorf("replica: %s: last-part flag %v, but the snapshot has %d parts", Name(h), stored.Last, n)
		}
		if _, err := f.WriteAt(sp.Pages, int64(sp.FirstPgno-1)*int64(pageSize)); err != nil {
			return false, false, state, 0, t, fmt.Errorf("replica: restore: %w", err)
		}
		clear(plain)
		progress(parts[k])
	}
	if err := f.Truncate(int64(dbPages) * int64(pageSize)); err != nil {
		return false, false, state, 0, t, err
	}
	return true, false, state, pageSize, t, nil
}

// keyError is a failure to get a replica key (not a fault of the object).
type keyError struct{ err error }

func (e *keyError) Error() string { return e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }
