package replica

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/keys"
	"coffer/remote"
)

// Defaults of Config.
const (
	DefaultInterval = time.Second
	// DefaultMaxLag caps the WAL bytes not yet on the remote: past it, catalog
	// writes fail with ENOSPC until the remote catches up (about 29,000
	// creates at 36 KB of WAL each).
	DefaultMaxLag = 1 << 30
	// checkpointAt is the WAL size past which the replicator checkpoints
	// after shipping, so the WAL (and the next delta's scan) stays small.
	checkpointAt = 4 << 20
	// ownerCheckEvery is how often the remote's marker is read for a newer
	// owner epoch (a restore elsewhere).
	ownerCheckEvery = time.Minute
)

// KeyFunc returns K_rep of version v of the volume chain (keys.VolumeKey with
// purpose "replica"). It fails with keys.ErrLocked while the volume is locked.
type KeyFunc func(ctx context.Context, version uint32) (*keys.DEK, error)

// Config is what a Replicator needs.
type Config struct {
	Catalog *meta.Catalog
	Store   remote.Store
	Volume  format.ID
	Epoch   uint32 // the owner epoch, as the catalog and the marker agree
	Key     KeyFunc
	// Current returns the volume chain's current KEK version: new objects
	// are sealed under it, and a change makes a new snapshot.
	Current func() uint32
	// CheckOwner fails (wrapping ErrNotOwner) once the remote's marker names
	// a newer epoch than Epoch. Nil: never checked.
	CheckOwner func(ctx context.Context) error
	// Bootstrap returns what restore needs besides the key provider's secret
	// (passphrase volumes: the KDF parameters and sealed KEK material), put
	// as KeysObject whenever it changes. Nil, or nil bytes: nothing.
	Bootstrap func(ctx context.Context) ([]byte, error)
	// StateFile is where a clean Close records the position, so the next
	// start resumes without a new snapshot ("" : always snapshot at start).
	StateFile string
	Interval  time.Duration // DefaultInterval if 0
	MaxLag    int64         // DefaultMaxLag if 0
	// OwnerCheckEvery is how often CheckOwner runs besides before every snapshot
	// (ownerCheckEvery if 0).
	OwnerCheckEvery time.Duration
	// Window is the point-in-time window: history this old stays restorable
	// (DefaultWindow if 0; negative: none, only the newest snapshot and the
	// deltas after it are kept).
	Window time.Duration
	Logger *slog.Logger
}

// ErrNotOwner means another host restored the volume and now owns it: this
// catalog must not write to the remote any more.
var ErrNotOwner = errors.New("another host owns this volume now")

// Replicator ships the catalog's committed WAL frames to the remote as
// sealed deltas, and whole snapshots when a delta cannot continue the chain.
// It implements meta.Replication.
type Replicator struct {
	cfg     Config
	log     *slog.Logger
	walPath string

	mu         sync.Mutex // the shipping state below; taken after the catalog's writer
	pos        Position   // where the last shipped delta ended in the WAL
	p          uint64     // position of the newest state on the remote
	state      StateID
	chainStart bool       // the next object must be a snapshot starting a new chain
	keyMu      sync.Mutex // key and keyVersion; never held across remote I/O, so a lock is immediate
	key        *keys.DEK
	keyVersion uint32
	shownP     atomic.Uint64 // p, for Status (which must not wait behind a hung Put)
	bootSum    [32]byte
	lastOwner  time.Time
	sinceSnap  int64               // delta bytes put since the newest snapshot
	lastSnap   time.Time           // when the newest snapshot was taken (or this session started)
	lastPrune  time.Time           // when retention last ran
	snaps      map[uint64]snapInfo // snapshots of this epoch whose time is known
	cleanOK    bool                // Close left the catalog file holding exactly state cleanP
	cleanP     uint64
	cleanState StateID

	fenced   atomic.Pointer[error]
	lag      atomic.Int64 // WAL bytes not on the remote at the last look
	lastErr  atomic.Pointer[string]
	lastShip atomic.Int64 // unix ns of the last successful round with something new

	wmu     sync.Mutex
	started uint64 // rounds started
	waiters []waiter

	kick    chan struct{}
	stop    context.CancelFunc // ends the loop, and aborts a round in flight (a hung Put)
	loopCtx context.Context
	done    chan struct{}
	closing atomic.Bool
}

type waiter struct {
	gen uint64
	ch  chan error
}

// Status is what `coffer status` shows of replication.
type Status struct {
	Epoch     uint32
	Position  uint64
	LagBytes  int64     // WAL bytes not yet on the remote
	LastShip  time.Time // zero: nothing shipped this session
	LastError string
}

// Start finds where the remote's replica of this epoch ends and decides how
// to continue: after the newest delta if the WAL still holds it, after a
// clean Close recorded in StateFile, or else with a new snapshot. It then
// installs itself on the catalog and runs until Close.
func Start(ctx context.Context, cfg Config) (*Replicator, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = DefaultMaxLag
	}
	if cfg.OwnerCheckEvery <= 0 {
		cfg.OwnerCheckEvery = ownerCheckEvery
	}
	switch {
	case cfg.Window == 0:
		cfg.Window = DefaultWindow
	case cfg.Window < 0:
		cfg.Window = 0
	}
	if cfg.Epoch == 0 {
		return nil, errors.New("replica: start: epoch 0")
	}
	r := &Replicator{cfg: cfg, log: cfg.Logger, walPath: cfg.Catalog.Path() + "-wal",
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.loopCtx, r.stop = context.WithCancel(context.WithoutCancel(ctx))
	r.snaps = map[uint64]snapInfo{}
	r.lastSnap, r.lastPrune = time.Now(), time.Now()
	if r.log == nil {
		r.log = slog.Default()
	}
	if err := r.resume(ctx); err != nil {
		return nil, err
	}
	r.lastOwner = time.Now()
	r.shownP.Store(r.p)
	cfg.Catalog.SetReplication(r)
	go r.loop()
	return r, nil
}

// resume sets the shipping state from the remote (the authority) and the
// local WAL.
func (r *Replicator) resume(ctx context.Context) error {
	l, err := list(ctx, r.cfg.Store, r.cfg.Epoch)
	if err != nil {
		return err
	}
	tail, tailSize := l.tail(r.cfg.Epoch)
	var newestSnap uint64
	for p := range l.snaps {
		newestSnap = max(newestSnap, p)
	}
	for p, size := range l.deltas {
		if p > newestSnap {
			r.sinceSnap += size
		}
	}
	clean, cleanErr := readStateFile(r.cfg.StateFile)
	if r.cfg.StateFile != "" {
		// From here on a crash must not look like a clean close.
		if err := os.Remove(r.cfg.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replica: remove %s: %w", r.cfg.StateFile, err)
		}
	}
	if tail == nil {
		r.p, r.chainStart = 0, true
		r.log.Info("replica: no replica in this epoch yet; starting with a snapshot", "epoch", r.cfg.Epoch)
		return nil
	}
	r.p = tail.Position
	var stored format.ReplicaHeader
	herr := fmt.Errorf("%s is %d bytes, cut short", Name(*tail), tailSize) // a crash during its upload
	if tailSize >= format.ReplicaHeaderSize {
		head, err := r.cfg.Store.GetRange(ctx, Name(*tail), 0, format.ReplicaHeaderSize)
		if err != nil {
			return fmt.Errorf("replica: read the newest replica object %s: %w", Name(*tail), err)
		}
		stored, herr = format.ParseReplicaHeader(head)
	}
	// 1. The WAL still holds the newest delta's end: continue from there.
	if herr == nil && tail.Kind == format.ReplicaDelta {
		if d, err := r.openDelta(ctx, *tail, stored.KEKVersion); err == nil && r.walContinues(d.WAL) {
			r.pos, r.state = d.WAL, stored.Object
			r.log.Info("replica: resuming after the newest delta", "epoch", r.cfg.Epoch, "position", r.p)
			return nil
		}
	}
	// 2. A clean Close recorded this very state and the catalog file as it
	// left it: whatever the WAL holds now is new.
	if herr == nil && cleanErr == nil && clean != nil && clean.matches(r.cfg.Epoch, r.p, stored.Object) {
		if ok, err := clean.fileMatches(r.cfg.Catalog.Path()); err == nil && ok {
			r.pos, r.state = Position{}, clean.stateID()
			r.log.Info("replica: resuming after a clean unmount", "epoch", r.cfg.Epoch, "position", r.p)
			return nil
		}
	}
	// 3. Nothing proves the catalog continues the remote's chain.
	r.chainStart = true
	r.log.Info("replica: cannot continue the newest replica object; starting a new chain with a snapshot",
		"epoch", r.cfg.Epoch, "position", r.p+1)
	return nil
}

// walContinues reports whether the WAL has a commit boundary exactly at pos.
func (r *Replicator) walContinues(pos Position) bool {
	f, err := os.Open(r.walPath)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() < pos.Offset {
		return false
	}
	_, next, err := ReadCommitted(f, pos.Offset, Position{})
	return err == nil && next == pos
}

func (r *Replicator) openDelta(ctx context.Context, h format.ReplicaHeader, version uint32) (*Delta, error) {
	key, err := r.cfg.Key(ctx, version)
	if err != nil {
		return nil, err
	}
	defer key.Wipe()
	plain, _, err := fetchOpen(ctx, r.cfg.Store, key.Bytes(), r.cfg.Volume, h, version)
	if err != nil {
		return nil, err
	}
	return UnmarshalDelta(plain)
}

// Admit implements meta.Replication.
func (r *Replicator) Admit() error {
	if e := r.fenced.Load(); e != nil {
		return *e
	}
	if lag := r.lag.Load(); lag > r.cfg.MaxLag {
		return fmt.Errorf("replica: %d bytes of catalog changes are not on the remote yet (cap %d): %w",
			lag, r.cfg.MaxLag, syscall.ENOSPC)
	}
	return nil
}

// Flush implements meta.Replication: it waits for a round that starts after
// the call.
func (r *Replicator) Flush(ctx context.Context) error {
	if e := r.fenced.Load(); e != nil {
		return *e
	}
	ch := make(chan error, 1)
	r.wmu.Lock()
	r.waiters = append(r.waiters, waiter{gen: r.started + 1, ch: ch})
	r.wmu.Unlock()
	r.poke()
	select {
	case err := <-ch:
		return err
	case <-r.done:
		return errors.New("replica: replicator stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Replicator) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// ShipAndCheckpoint implements meta.Replication (the catalog's writer is
// held). After a completed checkpoint the WAL starts over.
func (r *Replicator) ShipAndCheckpoint(ctx context.Context, checkpoint func() (bool, error), ship bool) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ship {
		if err := r.shipLocked(ctx); err != nil {
			return false, err
		}
	} else if pending, err := r.unshippedLocked(); err != nil || pending {
		return false, err
	}
	done, err := checkpoint()
	if err != nil || !done {
		return false, err
	}
	r.pos = Position{}
	return true, nil
}

// unshippedLocked reports whether the WAL holds committed frames after r.pos
// (not during a new chain's start: its snapshot will hold them).
func (r *Replicator) unshippedLocked() (bool, error) {
	if r.chainStart {
		return false, nil
	}
	f, err := os.Open(r.walPath)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("replica: open WAL: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("replica: stat WAL: %w", err)
	}
	if !r.pos.IsZero() && st.Size() == r.pos.Offset {
		return false, nil // nothing appended since the last ship: no need to read it
	}
	frames, _, err := ReadCommitted(f, st.Size(), r.pos)
	if errors.Is(err, ErrWALReset) {
		return true, nil // shipLocked deals with it
	}
	return len(frames) > 0, err
}

// SnapshotNow writes a snapshot of the current state, sealed under the current
// KEK version, and returns once it is on the remote. Key operations call it
// before they destroy a version of the volume chain, so the newest state
// stays restorable whatever the older objects were sealed under.
func (r *Replicator) SnapshotNow(ctx context.Context) error {
	r.mu.Lock()
	r.chainStart = true
	r.mu.Unlock()
	return r.Flush(ctx)
}

// WipeKey forgets the replica key (coffer lock). Shipping needs the key
// again: until Key works, changes wait and Flush fails with EKEYREVOKED.
func (r *Replicator) WipeKey() {
	r.keyMu.Lock()
	r.wipeKeyLocked()
	r.keyMu.Unlock()
}

func (r *Replicator) wipeKeyLocked() {
	if r.key != nil {
		r.key.Wipe()
		r.key = nil
	}
	r.keyVersion = 0
}

// Status reports replication's state.
func (r *Replicator) Status() Status {
	s := Status{Epoch: r.cfg.Epoch, Position: r.shownP.Load()}
	s.LagBytes = r.lag.Load()
	if t := r.lastShip.Load(); t != 0 {
		s.LastShip = time.Unix(0, t)
	}
	if e := r.lastErr.Load(); e != nil {
		s.LastError = *e
	}
	if e := r.fenced.Load(); e != nil {
		s.LastError = (*e).Error()
	}
	return s
}

func (r *Replicator) loop() {
	defer close(r.done)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-r.loopCtx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		r.round(r.loopCtx)
	}
}

// round ships what is new (a snapshot first if one is due), answers the
// waiters that were waiting before it started, and checkpoints a large WAL.
func (r *Replicator) round(ctx context.Context) error {
	r.wmu.Lock()
	r.started++
	gen := r.started
	r.wmu.Unlock()
	err := r.roundOnce(ctx)
	if err != nil {
		s := err.Error()
		r.lastErr.Store(&s)
		r.log.Warn("replica: shipping the catalog failed; retrying", "err", err)
	} else {
		r.lastErr.Store(nil)
	}
	r.wmu.Lock()
	keep := r.waiters[:0]
	for _, w := range r.waiters {
		if w.gen <= gen {
			w.ch <- err
		} else {
			keep = append(keep, w)
		}
	}
	r.waiters = keep
	r.wmu.Unlock()
	return err
}

func (r *Replicator) roundOnce(ctx context.Context) error {
	if e := r.fenced.Load(); e != nil {
		return *e
	}
	if r.cfg.CheckOwner != nil && time.Since(r.lastOwner) >= r.cfg.OwnerCheckEvery {
		if err := r.checkOwner(ctx); err != nil {
			return err
		}
	}
	if err := r.putBootstrap(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	start := r.chainStart
	r.mu.Unlock()
	if start {
		if r.cfg.CheckOwner != nil {
			if err := r.checkOwner(ctx); err != nil {
				return err
			}
		}
		if err := r.takeSnapshot(ctx); err != nil {
			return err
		}
	}
	r.mu.Lock()
	err := r.shipLocked(ctx)
	big := r.pos.Offset > checkpointAt
	if err == nil && r.dueForCompactionLocked(catalogBytes(r.cfg.Catalog.Path())) {
		r.chainStart = true
		r.poke()
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if big {
		// Only if nothing committed since the ship: writers must not wait for a Put
		// behind the held writer (commits keep coming; a later round catches a lull).
		if _, err := r.cfg.Catalog.CheckpointIfShipped(ctx); err != nil {
			r.log.Warn("replica: checkpoint failed", "err", err)
		}
	}
	if start || time.Since(r.lastPrune) > pruneEvery {
		if err := r.prune(ctx); err != nil {
			r.log.Warn("replica: pruning old history failed; retrying later", "err", err)
		}
	}
	return nil
}

func catalogBytes(path string) int64 {
	if st, err := os.Stat(path); err == nil {
		return st.Size()
	}
	return 0
}

func (r *Replicator) checkOwner(ctx context.Context) error {
	r.lastOwner = time.Now()
	err := r.cfg.CheckOwner(ctx)
	if errors.Is(err, ErrNotOwner) {
		fe := fmt.Errorf("replica: %w; this host stopped writing to the volume (epoch %d): %w", err, r.cfg.Epoch, syscall.EROFS)
		r.fenced.Store(&fe)
		r.log.Error("replica: the volume was restored on another host; this host stops writing", "err", err)
		return fe
	}
	return err // a remote that cannot be read: try again next round
}

func (r *Replicator) putBootstrap(ctx context.Context) error {
	if r.cfg.Bootstrap == nil {
		return nil
	}
	b, err := r.cfg.Bootstrap(ctx)
	if err != nil || b == nil {
		return err
	}
	sum := sha256.Sum256(b)
	if sum == r.bootSum {
		return nil
	}
	if err := r.cfg.Store.Put(ctx, KeysObject, b); err != nil {
		return fmt.Errorf("replica: put %s: %w", KeysObject, err)
	}
	r.bootSum = sum
	return nil
}

// currentKeyLocked returns a copy of the key to seal new objects with (the
// caller wipes it) and its version. After a rotation it asks for a snapshot
// under the new version, so that retiring the old one keeps the newest state
// restorable. r.mu is held (for r.chainStart).
func (r *Replicator) currentKeyLocked(ctx context.Context) (*keys.DEK, uint32, error) {
	v := r.cfg.Current()
	r.keyMu.Lock()
	defer r.keyMu.Unlock()
	if r.key != nil && r.keyVersion == v {
		return r.key.Clone(), v, nil
	}
	k, err := r.cfg.Key(ctx, v)
	if err != nil {
		if errors.Is(err, keys.ErrLocked) {
			return nil, 0, fmt.Errorf("replica: the volume is locked, catalog changes wait for unlock: %w", syscall.EKEYREVOKED)
		}
		return nil, 0, fmt.Errorf("replica: replica key of KEK version %d: %w", v, err)
	}
	if r.keyVersion != 0 && r.keyVersion != v {
		r.chainStart = true // the next round: a snapshot under the new version
	}
	r.wipeKeyLocked()
	r.key, r.keyVersion = k, v
	return k.Clone(), v, nil
}

// shipLocked ships the committed WAL frames after r.pos as delta r.p+1.
func (r *Replicator) shipLocked(ctx context.Context) error {
	if e := r.fenced.Load(); e != nil {
		return *e
	}
	if r.chainStart {
		return nil // the snapshot that starts the chain will hold them
	}
	f, err := os.Open(r.walPath)
	if errors.Is(err, os.ErrNotExist) {
		r.lag.Store(0)
		return nil
	}
	if err != nil {
		return fmt.Errorf("replica: open WAL: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("replica: stat WAL: %w", err)
	}
	size := st.Size()
	frames, next, err := ReadCommitted(f, size, r.pos)
	if errors.Is(err, ErrWALReset) {
		// Someone else checkpointed (a tool on the catalog, a crash of ours
		// between checkpoint and bookkeeping): frames may be gone.
		r.log.Warn("replica: the WAL was reset behind the replicator; starting a new chain", "err", err)
		r.chainStart = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("replica: read WAL: %w", err)
	}
	r.lag.Store(max(0, size-r.pos.Offset))
	if len(frames) == 0 {
		return nil
	}
	key, version, err := r.currentKeyLocked(ctx)
	if err != nil {
		return err
	}
	defer key.Wipe()
	// The remote must never hold a commit the local disk could lose.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("replica: sync WAL: %w", err)
	}
	d := Delta{PageSize: next.PageSize, DBPages: frames[len(frames)-1].Commit, TimeNS: time.Now().UnixNano(),
		Prev: r.state, WAL: next, Pages: PagesFromFrames(frames)}
	h := format.ReplicaHeader{Kind: format.ReplicaDelta, KEKVersion: version, Volume: r.cfg.Volume,
		Epoch: r.cfg.Epoch, Position: r.p + 1}
	plainOf := d.Marshal()
	if err := sealPut(ctx, r.cfg.Store, key, &h, plainOf); err != nil {
		return err
	}
	r.p, r.state, r.pos = h.Position, h.Object, next
	r.shownP.Store(r.p)
	r.sinceSnap += format.ReplicaObjectSize(int64(len(plainOf)))
	r.lag.Store(max(0, size-next.Offset))
	r.lastShip.Store(time.Now().UnixNano())
	return nil
}

// Close ships what is left and checkpoints, so that the catalog file alone
// holds the replicated state, and stops. MarkClean, after the catalog is
// closed, records that state for the next Start.
func (r *Replicator) Close(ctx context.Context) error {
	if r.closing.Swap(true) {
		return nil
	}
	r.stop()
	<-r.done
	defer func() {
		r.cfg.Catalog.SetReplication(nil)
		r.WipeKey()
	}()
	if e := r.fenced.Load(); e != nil {
		return *e
	}
	if err := r.round(ctx); err != nil {
		r.failWaiters(err)
		return fmt.Errorf("replica: final shipping: %w", err)
	}
	r.failWaiters(nil)
	done, err := r.cfg.Catalog.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("replica: final checkpoint: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if done && !r.chainStart && r.pos.IsZero() {
		r.cleanP, r.cleanState, r.cleanOK = r.p, r.state, true
	}
	return nil
}

func (r *Replicator) failWaiters(err error) {
	if err == nil {
		err = errors.New("replica: replicator closed")
	}
	r.wmu.Lock()
	for _, w := range r.waiters {
		w.ch <- err
	}
	r.waiters = nil
	r.wmu.Unlock()
}

// MarkClean records, after the catalog is closed, the state a clean Close
// left, with a digest of the catalog file, for the next Start.
func (r *Replicator) MarkClean() error {
	r.mu.Lock()
	ok, p, state := r.cleanOK, r.cleanP, r.cleanState
	r.mu.Unlock()
	if !ok || r.cfg.StateFile == "" {
		return nil
	}
	return writeStateFile(r.cfg.StateFile, r.cfg.Catalog.Path(), r.cfg.Epoch, p, state)
}

// Discard ends replication without shipping what is left and deletes every replica
// object and KeysObject from the remote (shred --volume: the volume's keys are about to
// be destroyed, nothing could seal the rest, and no replica may outlive the volume).
func (r *Replicator) Discard(ctx context.Context) error {
	if !r.closing.Swap(true) {
		r.stop()
		<-r.done
	}
	r.cfg.Catalog.SetReplication(nil)
	r.WipeKey()
	r.failWaiters(errors.New("replica: replication ended (volume shredded)"))
	var names []string
	if err := r.cfg.Store.List(ctx, Prefix, func(name string, _ int64) error {
		names = append(names, name)
		return nil
	}); err != nil {
		return fmt.Errorf("replica: list the replica to delete it: %w", err)
	}
	for _, n := range names {
		if err := r.cfg.Store.Delete(ctx, n); err != nil && !errors.Is(err, remote.ErrNotFound) {
			return fmt.Errorf("replica: delete %s: %w", n, err)
		}
	}
	return nil
}
