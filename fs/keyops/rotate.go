package keyops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// RotateOptions tune Rotate. Zero values take the defaults.
type RotateOptions struct {
	Actor     string // who rotates, for the audit log (e.g. "uid:0")
	RetireOld bool   // destroy the older KEK versions once nothing uses them
	BatchSize int    // key records per transaction (default 1000)
	Workers   int    // concurrent re-wraps (default GOMAXPROCS, at least 2), or re-encryptions (derive mode, default 2-4)
	// ChunkBatch is how many chunks derive mode re-encrypts per catalog transaction (default 32).
	ChunkBatch int
	// Mounted says a data path (content.DataPath) runs on the volume: the daemon rotating a live
	// mount. Derive mode then refuses with ErrDeriveMounted (it swaps and deletes chunk objects
	// the data path may hold); wrap mode does not care.
	Mounted bool
	Logger  *slog.Logger
	// Progress, if set, is called after every committed batch (from one goroutine).
	Progress func(Progress)

	hook hookFunc // tests: fail at a named step, as a kill there would
}

// hookFunc lets tests stop an operation at a named step, as a kill there would.
type hookFunc func(step string) error

func (h hookFunc) at(step string) error {
	if h == nil {
		return nil
	}
	if err := h(step); err != nil {
		return fmt.Errorf("stopped at %s: %w", step, err)
	}
	return nil
}

// Progress is reported while key records are re-wrapped (wrap mode) or chunks re-encrypted
// (derive mode).
type Progress struct {
	Done, Total int64 // key records re-wrapped, or chunks re-encrypted, so far / in this run
	Elapsed     time.Duration
	// Unit is what Done and Total count: "key records" or "chunks".
	Unit string
	// Bytes and TotalBytes are plaintext bytes re-encrypted so far / in this run (derive mode).
	Bytes, TotalBytes int64
}

// RotateResult summarizes a rotation.
type RotateResult struct {
	Resumed   bool          // an interrupted rotation was finished (no new version made)
	Targets   []keys.KEKRef // the current version of every rotated chain
	Rewrapped int64         // key records re-wrapped in this run
	Changed   int64         // records that changed underneath (compare-and-swap lost), retried
	Retired   []keys.KEKRef // versions destroyed (RetireOld)
	Elapsed   time.Duration
	// Passphrase: a passphrase volume, whose KEK versions live in the catalog sealed under
	// the passphrase: older catalog copies keep the retired ones, openable with the
	// passphrase they were made with.
	Passphrase bool `json:",omitempty"`

	// Derive mode only.
	Rekeyed          int64 // key records moved to the new version (same salt)
	Reencrypted      int64 // chunks re-encrypted into new objects in this run
	ReencryptedBytes int64 // their plaintext bytes
	DeletedObjects   int   // old objects (and orphaned copies of an interrupted run) deleted from the remote
}

// FailedRecordsError lists key records that could not be re-wrapped because they do not
// open (tampered, or moved from another file). The rotation stays incomplete.
type FailedRecordsError struct{ Inodes []uint64 }

func (e *FailedRecordsError) Error() string {
	show, more := firstTen(e.Inodes)
	return fmt.Sprintf("%d key records could not be re-wrapped because they do not open (tampered?): inodes %v%s; "+
		"the rotation is incomplete: shred or restore those files, then run coffer rotate again", len(e.Inodes), show, more)
}

// firstTen is what an error message lists of xs: at most ten, and " and N more".
func firstTen[T any](xs []T) ([]T, string) {
	if len(xs) > 10 {
		return xs[:10], fmt.Sprintf(" and %d more", len(xs)-10)
	}
	return xs, ""
}

// rotatePlan is the detail of the rotate.start audit event: the version each chain rotates
// to. A rerun that finds rotate.start without a later rotate.end finishes that plan instead
// of making yet another version.
type rotatePlan struct {
	Targets   []planTarget `json:"targets"`
	RetireOld bool         `json:"retire_old"`
}

type planTarget struct {
	Chain   string `json:"chain"`
	Version uint32 `json:"version"`
}

const (
	eventRotateStart = "rotate.start"
	eventRotateEnd   = "rotate.end"
)

// Rotate makes a new KEK version in every chain that has a current one (the volume chain and
// each per-user chain), makes it current, and re-wraps every key record wrapped by an older
// version, in batches of compare-and-swap updates. In wrap mode no content and no remote
// object is touched.
//
// It is resumable: the plan (the new version per chain) is recorded in the audit log
// (rotate.start) before anything else, and rotate.end only once every record is re-wrapped.
// A run that finds a rotate.start without its rotate.end finishes that plan — it creates a
// planned version that is not recorded yet, and re-wraps what is left — and never makes yet
// another version. Killed at any point, a rerun finishes.
//
// With RetireOld it then destroys every older version (Retire).
//
// On a derive-mode volume the new version is made and planned the same way, and then the
// files are re-keyed instead of re-wrapped (reencryptAll, FORMAT.md 9.3.2): every record moves
// to the new version keeping its salt, and every chunk sealed under an older version is
// re-encrypted into a new object, swapped in by compare-and-swap, and its old object deleted.
// That needs the volume unmounted: no data path (content.DataPath) may run on it meanwhile.
func Rotate(ctx context.Context, v *volume.Volume, opt RotateOptions) (res RotateResult, err error) {
	start := time.Now()
	res.Passphrase = v.Kind == meta.ProviderPassphrase
	if v.KeyMode != keys.ModeWrap && v.KeyMode != keys.ModeDerive {
		return res, fmt.Errorf("rotate: unknown key mode %q", string(v.KeyMode))
	}
	if v.KeyMode == keys.ModeDerive && opt.Mounted {
		return res, ErrDeriveMounted
	}
	if opt.BatchSize <= 0 {
		opt.BatchSize = 1000
	}
	if opt.Workers <= 0 {
		opt.Workers = max(2, runtime.GOMAXPROCS(0))
		if v.KeyMode == keys.ModeDerive {
			opt.Workers = min(opt.Workers, 4) // remote round trips, not CPU, bound re-encryption
		}
	}
	if opt.ChunkBatch <= 0 {
		opt.ChunkBatch = 32
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Actor == "" {
		opt.Actor = "rotate"
	}
	cat := v.Catalog()
	sealCurrent(ctx, v, opt.Logger)

	plan, resumed, err := rotationPlan(ctx, v, opt)
	if err != nil {
		return res, err
	}
	res.Resumed = resumed
	if err := opt.hook.at("planned"); err != nil {
		return res, err
	}

	// Make every planned version that the catalog does not hold yet.
	for _, tg := range plan.Targets {
		ref := keys.KEKRef{Chain: tg.Chain, Version: tg.Version}
		k, err := cat.GetKEK(ctx, tg.Chain, tg.Version)
		if errors.Is(err, syscall.ENOENT) {
			if err := createVersion(ctx, v, ref, opt); err != nil {
				return res, err
			}
			continue
		}
		if err != nil {
			return res, err
		}
		if k.State == meta.KEKDestroyed {
			opt.Logger.Warn("rotate: a planned KEK version was destroyed meanwhile (chain shredded); skipping its chain", "kek", ref.String())
		}
	}
	if err := opt.hook.at("keks-ready"); err != nil {
		return res, err
	}

	// The current version of every rotated chain (a chain shredded meanwhile has none).
	var targets []keys.KEKRef
	for _, tg := range plan.Targets {
		cur, err := cat.CurrentKEK(ctx, tg.Chain)
		if errors.Is(err, syscall.ENOENT) {
			continue // chain shredded
		}
		if err != nil {
			return res, err
		}
		targets = append(targets, refOf(cur))
	}
	res.Targets = targets
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return res, err
	}

	if v.KeyMode == keys.ModeDerive {
		// Derive mode: records move to the new version (same salt), chunks are re-encrypted.
		if err := reencryptAll(ctx, v, targets, keks, opt, &res, start); err != nil {
			return res, err
		}
		if err := opt.hook.at("reencrypted"); err != nil {
			return res, err
		}
	} else {
		if err := rewrapAll(ctx, v, targets, keks, opt, &res, start); err != nil {
			return res, err
		}
		if err := opt.hook.at("rewrapped"); err != nil {
			return res, err
		}
	}

	if opt.RetireOld {
		if res.Retired, err = Retire(ctx, v, opt.Actor, opt.Logger); err != nil {
			return res, err
		}
	}
	res.Elapsed = time.Since(start)
	names := make([]string, len(res.Targets))
	for i, t := range res.Targets {
		names[i] = t.String()
	}
	retired := make([]string, len(res.Retired))
	for i, t := range res.Retired {
		retired[i] = t.String()
	}
	end := map[string]any{"targets": names, "rewrapped": res.Rewrapped, "resumed": resumed,
		"retired": retired, "elapsed_ms": res.Elapsed.Milliseconds()}
	if v.KeyMode == keys.ModeDerive {
		end["rekeyed"], end["reencrypted"], end["reencrypted_bytes"] = res.Rekeyed, res.Reencrypted, res.ReencryptedBytes
	}
	detail, _ := json.Marshal(end)
	if _, err := cat.AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: eventRotateEnd, Actor: opt.Actor, Detail: string(detail)}); err != nil {
		return res, err
	}
	// Old record images leave the WAL; the seal covers this run's entries.
	if err := cat.PurgeDeleted(ctx); err != nil {
		opt.Logger.Warn("rotate: could not checkpoint the catalog; old key record images stay in the WAL until the next checkpoint", "err", err)
	}
	sealCurrent(ctx, v, opt.Logger)
	return res, nil
}

// rewrapAll re-wraps (wrap mode) every record of a rotated chain under a live version other
// than the chain's current one.
func rewrapAll(ctx context.Context, v *volume.Volume, targets []keys.KEKRef, keks []meta.KEK, opt RotateOptions, res *RotateResult, start time.Time) error {
	type job struct{ from, to keys.KEKRef }
	var jobs []job
	var total int64
	for _, to := range targets {
		for _, k := range keks {
			if k.Chain != to.Chain || k.Version == to.Version || k.State == meta.KEKDestroyed {
				continue
			}
			n, err := v.Catalog().CountKeysUsing(ctx, k.Chain, k.Version)
			if err != nil {
				return err
			}
			if n > 0 {
				jobs = append(jobs, job{refOf(k), to})
				total += n
			}
		}
	}
	r := &rewrapper{v: v, opt: opt, total: total, start: start}
	var failed []uint64
	for _, j := range jobs {
		f, err := r.drain(ctx, j.from, j.to)
		failed = append(failed, f...)
		if err != nil {
			res.Rewrapped, res.Changed = r.done.Load(), r.changed.Load()
			return err
		}
	}
	res.Rewrapped, res.Changed = r.done.Load(), r.changed.Load()
	if len(failed) > 0 {
		sort.Slice(failed, func(i, j int) bool { return failed[i] < failed[j] })
		return &FailedRecordsError{Inodes: failed}
	}
	return nil
}

// rotationPlan returns the plan of an unfinished rotation, or records a new one.
func rotationPlan(ctx context.Context, v *volume.Volume, opt RotateOptions) (rotatePlan, bool, error) {
	cat := v.Catalog()
	var plan rotatePlan
	last, ok, err := cat.LastAuditEvent(ctx, eventRotateStart, eventRotateEnd)
	if err != nil {
		return plan, false, err
	}
	if ok && last.Event == eventRotateStart {
		if err := json.Unmarshal([]byte(last.Detail), &plan); err != nil || len(plan.Targets) == 0 {
			return plan, false, fmt.Errorf("rotate: the unfinished rotation's plan (audit entry %d) is unreadable", last.Seq)
		}
		opt.Logger.Info("rotate: finishing an interrupted rotation", "audit_seq", last.Seq)
		return plan, true, nil
	}
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return plan, false, err
	}
	top := map[string]uint32{}
	active := map[string]bool{}
	for _, k := range keks {
		top[k.Chain] = max(top[k.Chain], k.Version)
		if k.State == meta.KEKActive {
			active[k.Chain] = true
		}
	}
	chains := make([]string, 0, len(active))
	for c := range active {
		chains = append(chains, c)
	}
	sort.Strings(chains)
	if !active[""] {
		return plan, false, errors.New("rotate: the volume has no current KEK (was it shredded?)")
	}
	for _, c := range chains {
		next := top[c] + 1
		// A version the token holds but the catalog does not know was left by something
		// else (a newer catalog, another tool): never reuse or destroy it.
		for v.Kind == meta.ProviderPKCS11 && v.Provider().Load(keys.KEKRef{Chain: c, Version: next}, nil) == nil {
			opt.Logger.Warn("rotate: the token holds a KEK version the catalog does not know; leaving it alone",
				"kek", keys.KEKRef{Chain: c, Version: next}.String())
			next++
		}
		plan.Targets = append(plan.Targets, planTarget{Chain: c, Version: next})
	}
	plan.RetireOld = opt.RetireOld
	detail, _ := json.Marshal(plan)
	if _, err := cat.AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: eventRotateStart, Actor: opt.Actor, Detail: string(detail)}); err != nil {
		return plan, false, err
	}
	return plan, false, nil
}

// createVersion makes planned version ref (createKEKVersion) and logs it. A planned version
// the catalog does not hold was never used (records are swapped only after it is recorded),
// so leftovers of an interrupted creation are destroyed first and it is made anew.
func createVersion(ctx context.Context, v *volume.Volume, ref keys.KEKRef, opt RotateOptions) error {
	if err := v.Provider().DestroyKEK(ctx, ref); err != nil && !errors.Is(err, keys.ErrKEKMissing) {
		return fmt.Errorf("rotate: clear the unrecorded KEK %s left by an interrupted rotation: %w", ref, err)
	}
	if err := createKEKVersion(ctx, v, ref, opt.Actor, opt.Logger, opt.hook); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	opt.Logger.Info("rotate: new KEK version is current", "kek", ref.String())
	return nil
}

// rewrapper re-wraps key records: a reader fetches a batch, workers re-wrap it in the
// provider, and a committer swaps the batch in one transaction while the next batch is
// being re-wrapped.
type rewrapper struct {
	v       *volume.Volume
	opt     RotateOptions
	total   int64
	start   time.Time
	done    atomic.Int64
	changed atomic.Int64
}

type rewrapBatch struct {
	rows []meta.InoKey
	recs []meta.KeyRecord // zero Mode: not re-wrapped (failed)
}

// drain re-wraps every record of version from to version to. It returns the inodes whose
// records do not open; other errors stop it.
func (r *rewrapper) drain(ctx context.Context, from, to keys.KEKRef) ([]uint64, error) {
	var failed []uint64
	skip := map[uint64]bool{}
	// Records that changed underneath between read and swap are picked up by another pass.
	for pass := 0; pass < 5; pass++ {
		f, progressed, err := r.pass(ctx, from, to, skip)
		failed = append(failed, f...)
		for _, ino := range f {
			skip[ino] = true
		}
		if err != nil {
			return failed, err
		}
		left, err := r.v.Catalog().CountKeysUsing(ctx, from.Chain, from.Version)
		if err != nil {
			return failed, err
		}
		if left <= int64(len(skip)) || !progressed {
			return failed, nil
		}
	}
	return failed, nil
}

func (r *rewrapper) pass(ctx context.Context, from, to keys.KEKRef, skip map[uint64]bool) (failed []uint64, progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	commits := make(chan *rewrapBatch, 1)
	committed := make(chan error, 1)
	go func() {
		var err error
		for b := range commits {
			if err != nil {
				continue
			}
			var n int64
			if err = r.commit(ctx, b, &n); err != nil {
				cancel(err)
				continue
			}
			if n > 0 {
				progressed = true
			}
		}
		committed <- err
	}()

	var after uint64
	var readErr error
	for {
		rows, err := r.v.Catalog().KeysUsing(ctx, from.Chain, from.Version, after, r.opt.BatchSize)
		if err != nil {
			readErr = err
			break
		}
		if len(rows) == 0 {
			break
		}
		after = rows[len(rows)-1].Ino
		if len(skip) > 0 {
			kept := rows[:0]
			for _, row := range rows {
				if !skip[row.Ino] {
					kept = append(kept, row)
				}
			}
			rows = kept
		}
		b, f, err := r.rewrapBatch(ctx, rows, to)
		failed = append(failed, f...)
		if err != nil {
			readErr = err
			break
		}
		select {
		case commits <- b:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	if readErr == nil && ctx.Err() != nil {
		readErr = context.Cause(ctx)
	}
	close(commits)
	cerr := <-committed
	if cerr != nil {
		return failed, progressed, cerr
	}
	if readErr != nil {
		if c := context.Cause(ctx); c != nil && errors.Is(readErr, context.Canceled) {
			return failed, progressed, c
		}
		return failed, progressed, readErr
	}
	return failed, progressed, nil
}

// rewrapBatch re-wraps rows with Workers goroutines. A record that does not open is
// reported in failed; any other error (HSM gone, KEK missing, cancelled) stops the batch.
func (r *rewrapper) rewrapBatch(ctx context.Context, rows []meta.InoKey, to keys.KEKRef) (*rewrapBatch, []uint64, error) {
	b := &rewrapBatch{rows: rows, recs: make([]meta.KeyRecord, len(rows))}
	var mu sync.Mutex
	var failed []uint64
	var firstErr error
	var wg sync.WaitGroup
	w := min(r.opt.Workers, max(1, len(rows)))
	for k := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := k; i < len(rows); i += w {
				row := rows[i]
				var nrec keys.Record
				var err error
				if r.v.Keys() != nil {
					// Through the keyring: a DEK it has cached (a live mount) stays a hit.
					nrec, err = r.v.Keys().Rewrap(ctx, volume.RecordOf(row.Key), row.FileID, to)
				} else {
					id := keys.FileIdentity{Volume: r.v.ID, File: row.FileID}
					nrec, err = keys.Rewrap(ctx, r.v.Provider(), volume.RecordOf(row.Key), id, to)
				}
				if err == nil {
					b.recs[i] = volume.CatalogRecord(nrec)
					continue
				}
				mu.Lock()
				if errors.Is(err, keys.ErrUnwrap) {
					failed = append(failed, row.Ino)
					r.opt.Logger.Error("rotate: a key record does not open; leaving it as it is", "ino", row.Ino, "err", err)
				} else if firstErr == nil {
					firstErr = err
				}
				stop := firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, failed, fmt.Errorf("rotate: re-wrap to KEK %s: %w", to, firstErr)
	}
	return b, failed, nil
}

func (r *rewrapper) commit(ctx context.Context, b *rewrapBatch, swapped *int64) error {
	var n, lost int64
	swaps := make([]meta.KeySwap, 0, len(b.rows))
	for i, row := range b.rows {
		if b.recs[i].Mode != "" {
			swaps = append(swaps, meta.KeySwap{Ino: row.Ino, Old: row.Key, New: b.recs[i]})
		}
	}
	err := r.v.Catalog().Update(ctx, func(t *meta.Tx) error {
		n, lost = 0, 0
		ok, err := t.SwapKeys(swaps)
		if err != nil {
			return err
		}
		for _, s := range ok {
			if s {
				n++
			} else {
				lost++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rotate: store re-wrapped key records: %w", err)
	}
	*swapped = n
	done := r.done.Add(n)
	r.changed.Add(lost)
	if r.opt.Progress != nil {
		r.opt.Progress(Progress{Done: done, Total: r.total, Elapsed: time.Since(r.start), Unit: "key records"})
	}
	return r.opt.hook.at("batch")
}

// ErrRetireBusy is returned when an old KEK version still has key records (or, in derive
// mode, chunks) that use it.
var ErrRetireBusy = errors.New("KEK version still in use")

// Retire destroys every old KEK version (state "old") once no key record uses it: first in
// the catalog (marked destroyed, audited, material erased), then in the provider. It refuses
// with an error wrapping ErrRetireBusy, destroying nothing, while any record (or, in derive
// mode, any chunk) still uses one. It also retries the provider-side destruction of versions
// the catalog already calls destroyed. Audit entries MACed under a retired volume version are
// re-MACed under the current one first.
func Retire(ctx context.Context, v *volume.Volume, actor string, log *slog.Logger) ([]keys.KEKRef, error) {
	if log == nil {
		log = slog.Default()
	}
	cat := v.Catalog()
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return nil, err
	}
	var retire []keys.KEKRef
	var busy []string
	for _, k := range keks {
		if k.State != meta.KEKOld {
			continue
		}
		n, err := cat.CountKeysUsing(ctx, k.Chain, k.Version)
		if err != nil {
			return nil, err
		}
		what := "key records"
		if n == 0 && v.KeyMode == keys.ModeDerive {
			if n, err = cat.CountChunksUsing(ctx, k.Chain, k.Version); err != nil {
				return nil, err
			}
			what = "chunks"
		}
		if n > 0 {
			busy = append(busy, fmt.Sprintf("%s (%d %s)", refOf(k), n, what))
			continue
		}
		retire = append(retire, refOf(k))
	}
	if len(busy) > 0 {
		return nil, fmt.Errorf("cannot retire KEK %v: still used; run coffer rotate to finish moving them to the current version first; nothing was destroyed: %w", busy, ErrRetireBusy)
	}
	cur, err := cat.CurrentKEK(ctx, "")
	if err != nil {
		return nil, err
	}
	from := map[uint32]bool{}
	for _, r := range retire {
		if r.Chain == "" {
			from[r.Version] = true
		}
	}
	if _, err := remacAudit(ctx, cat, v.Provider(), v.ID, from, refOf(cur), log); err != nil {
		return nil, err
	}
	if err := destroyVersions(ctx, v, retire, actor, log); err != nil {
		return nil, err
	}
	return retire, nil
}

// destroyVersions marks refs destroyed in the catalog, then destroys them in the provider,
// then retries the provider side of every version the catalog calls destroyed (a crash
// between the two steps), and purges the catalog files of the erased rows.
func destroyVersions(ctx context.Context, v *volume.Volume, refs []keys.KEKRef, actor string, log *slog.Logger) error {
	now := time.Now().UnixNano()
	for _, r := range refs {
		// The catalog's replica is sealed under a key of the volume chain: its newest state
		// must be sealed under a version that stays before one goes.
		if r.Chain == "" {
			if err := v.SnapshotReplica(ctx); err != nil {
				return fmt.Errorf("snapshot the catalog's replica under the current KEK version before destroying %s: %w", r, err)
			}
			break
		}
	}
	if len(refs) > 0 {
		if err := v.Catalog().Update(ctx, func(t *meta.Tx) error {
			for _, r := range refs {
				if err := t.MarkDestroyed(r.Chain, r.Version, now, actor); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("mark KEK versions destroyed: %w", err)
		}
	}
	if err := sweepDestroyed(ctx, v, log); err != nil {
		return err
	}
	if err := v.Catalog().PurgeDeleted(ctx); err != nil {
		return fmt.Errorf("erase destroyed key material from the catalog files: %w", err)
	}
	return nil
}

// sweepDestroyed destroys in the provider every version the catalog calls destroyed that the
// provider still has.
func sweepDestroyed(ctx context.Context, v *volume.Volume, log *slog.Logger) error {
	keks, err := v.Catalog().ListKEKs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range keks {
		if k.State != meta.KEKDestroyed {
			continue
		}
		err := v.Provider().DestroyKEK(ctx, refOf(k))
		switch {
		case err == nil:
			if v.Kind == meta.ProviderPKCS11 {
				log.Info("destroyed KEK version in the HSM", "kek", refOf(k).String())
			}
		case errors.Is(err, keys.ErrKEKMissing):
		default:
			errs = append(errs, fmt.Errorf("destroy KEK %s in the provider (the catalog already calls it destroyed; run the command again): %w", refOf(k), err))
		}
	}
	return errors.Join(errs...)
}

// sealCurrent MACs the unsealed audit entries with the volume's current KEK version. Key
// commands seal when they start (so the first seal of a log always precedes the events only
// key commands write) and when they end. A log that cannot be sealed (a broken chain,
// stripped MACs) does not stop the key operation: it is logged, and coffer audit reports it.
func sealCurrent(ctx context.Context, v *volume.Volume, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	cur, err := v.Catalog().CurrentKEK(ctx, "")
	if err == nil {
		_, err = SealAudit(ctx, v.Catalog(), v.Provider(), v.ID, refOf(cur))
	}
	if err != nil {
		log.Warn("audit log not sealed", "err", err)
	}
}
