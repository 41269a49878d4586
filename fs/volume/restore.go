package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/replica"
	"coffer/keys"
	"coffer/keys/hsm"
	"coffer/keys/passphrase"
	"coffer/remote"
)

// RestoreConfig is what `coffer restore` asks for.
type RestoreConfig struct {
	StateDir  string // absent or empty
	Remote    string
	Provider  string // meta.ProviderPKCS11 or meta.ProviderPassphrase
	HSMModule string // pkcs11
	HSMToken  string // pkcs11
	Secret    []byte // PIN or passphrase; not kept
	Logger    *slog.Logger
	Progress  func(done, total int64) // bytes of replica objects read so far
	// At, if set, restores the catalog as it was at that time (the newest state replicated at
	// or before it) instead of the newest. It cannot go back past the last destruction of a
	// KEK version (rotate --retire-old, shred --now) or passphrase change.
	At time.Time
}

// RestoreSummary says what a restore rebuilt.
type RestoreSummary struct {
	Volume      Summary
	Epoch       uint32    // the new owner epoch
	Position    uint64    // position restored to, in the old epoch
	Time        time.Time // when the restored state reached the remote
	Objects     int
	Bytes       int64
	Files       int64    // regular files, directories and others in the catalog
	Unuploaded  []string // files whose newest data was staged on the lost host and never uploaded (they read EIO there until fsck --repair)
	DroppedTail string   // the newest replica object, if it did not open and was left out
}

// Restore rebuilds a volume's state directory on a new host from the replica on its remote
// (FORMAT.md 12): it finds and authenticates the replica of the marker's owner epoch,
// rebuilds the catalog, checks it (SQLite's integrity check and the catalog's own), writes
// the state directory, takes ownership (a new epoch: a first snapshot under it, then the
// marker) so that the old host, if it comes back, stops writing. It refuses a non-empty
// state directory, a remote without a marker or replica, a catalog that is not the
// marker's volume, and keys that do not open the replica.
func Restore(ctx context.Context, cfg RestoreConfig) (sum RestoreSummary, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.StateDir == "" || cfg.Remote == "" {
		return sum, errors.New("restore needs a state directory and a remote")
	}
	if len(cfg.Secret) == 0 {
		return sum, errors.New("empty PIN or passphrase")
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return sum, fmt.Errorf("state directory: %w", err)
	}
	if ents, err := os.ReadDir(stateDir); err == nil && len(ents) > 0 {
		return sum, fmt.Errorf("state directory %s is not empty; restore writes only into an absent or empty one", stateDir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return sum, fmt.Errorf("state directory: %w", err)
	}
	if err := remote.CheckRemote(cfg.Remote); err != nil {
		return sum, err
	}
	store, err := openStore(ctx, cfg.Remote, remote.Options{Logger: log})
	if err != nil {
		return sum, err
	}
	defer store.Close(context.WithoutCancel(ctx))
	m, id, err := markerOf(ctx, store)
	if err != nil {
		return sum, err
	}
	if m.Epoch == 0 {
		return sum, fmt.Errorf("remote %s holds volume %s but no catalog replica (owner epoch 0): the volume was made by a coffer without replication and never mounted since", store, m.Coffer)
	}

	prov, err := restoreProvider(ctx, cfg, store, id)
	if err != nil {
		return sum, err
	}
	defer prov.Wipe()
	// The HSM provider finds a KEK version on the token at its first use.
	keyFn := func(ctx context.Context, version uint32) (*keys.DEK, error) {
		return keys.VolumeKey(ctx, prov, keys.KEKRef{Version: version}, id, ReplicaPurpose)
	}

	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return sum, fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.MkdirTemp(stateDir, ".restore-")
	if err != nil {
		return sum, fmt.Errorf("create state directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if !cfg.At.IsZero() {
		if err := checkBarrier(ctx, store, id, m.Epoch, keyFn, tmp, cfg.At, log); err != nil {
			return sum, err
		}
	}
	var res replica.RestoreResult
	for e := m.Epoch; e >= 1; e-- {
		res, err = replica.Restore(ctx, replica.RestoreConfig{Store: store, Volume: format.ID(id), Epoch: e, Key: keyFn,
			Dst: filepath.Join(tmp, meta.FileName), Logger: log, Progress: cfg.Progress, At: cfg.At})
		if errors.Is(err, replica.ErrTooOld) && e > 1 {
			continue // an older epoch (before an earlier restore) may reach back that far
		}
		break
	}
	if err != nil {
		return sum, fmt.Errorf("restore the catalog from %s: %w", store, err)
	}
	sum.Position, sum.Time, sum.Objects, sum.Bytes, sum.DroppedTail = res.Position, res.Time, res.Objects, res.Bytes, res.DroppedTail

	cat, err := meta.Open(ctx, tmp)
	if err != nil {
		return sum, fmt.Errorf("open the restored catalog: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			cat.Close()
		}
	}()
	if probs, err := cat.Check(ctx); err != nil {
		return sum, fmt.Errorf("check the restored catalog: %w", err)
	} else if len(probs) > 0 {
		return sum, fmt.Errorf("the restored catalog fails its check (%d problems; first: %s)", len(probs), probs[0].Detail)
	}
	mv, err := cat.Volume(ctx)
	if err != nil {
		return sum, err
	}
	if mv.ID != id {
		return sum, fmt.Errorf("the replica on %s is of volume %x, but its marker names %s: the remote's marker and replicas disagree", store, mv.ID, m.Coffer)
	}
	if mv.Provider != cfg.Provider {
		return sum, fmt.Errorf("volume %s uses the %s key provider, not %s", m.Coffer, mv.Provider, cfg.Provider)
	}
	if err := cat.Update(ctx, func(t *meta.Tx) error {
		if err := t.SetRemote(remote.Redact(cfg.Remote)); err != nil {
			return err
		}
		if cfg.Provider == meta.ProviderPKCS11 {
			return t.SetHSM(cfg.HSMModule, cfg.HSMToken)
		}
		return nil
	}); err != nil {
		return sum, fmt.Errorf("record the new host's remote: %w", err)
	}
	if err := cat.SetReplicaEpoch(ctx, m.Epoch+1); err != nil {
		return sum, err
	}
	st, err := cat.Stats(ctx)
	if err != nil {
		return sum, err
	}
	sum.Files = st.Inodes
	ups, err := cat.ListUploads(ctx, "", 0, 0)
	if err != nil {
		return sum, err
	}
	seen := map[uint64]bool{}
	for _, u := range ups {
		if !seen[u.Ino] {
			seen[u.Ino] = true
			sum.Unuploaded = append(sum.Unuploaded, PathOf(ctx, cat, u.Ino))
		}
	}
	sort.Strings(sum.Unuploaded)
	// Their staging files stayed on the lost host: reads of those chunks fail with EIO until
	// fsck --repair truncates the files to their uploaded content.
	if _, err := cat.MarkUploadsLost(ctx); err != nil {
		return sum, err
	}
	cur, err := cat.CurrentKEK(ctx, "")
	if err != nil {
		return sum, err
	}
	closed = true
	if err := cat.Close(); err != nil {
		return sum, fmt.Errorf("close the restored catalog: %w", err)
	}

	// Take ownership: the new epoch's first snapshot, then the marker that fences the old host.
	v := &Volume{ID: id, StateDir: tmp, provider: prov, store: store,
		kek: keys.KEKRef{Chain: cur.Chain, Version: cur.Version}}
	if err := firstSnapshot(ctx, v, log); err != nil {
		return sum, err
	}
	if err := moveCatalog(tmp, stateDir); err != nil {
		return sum, err
	}
	m.Epoch++
	if err := writeMarker(ctx, store, m); err != nil {
		return sum, fmt.Errorf("the catalog is restored in %s, but taking ownership failed (run restore again into an empty directory): %w", stateDir, err)
	}
	sum.Epoch = m.Epoch
	sum.Volume = Summary{ID: id, Remote: remote.Redact(cfg.Remote), Kind: mv.Provider, KeyMode: keys.Mode(mv.KeyMode),
		KEK: keys.KEKRef{Chain: cur.Chain, Version: cur.Version}, Layout: format.Layout{BlockSize: int(mv.BlockSize), ChunkSize: mv.ChunkSize}}
	log.Info("volume restored", "volume", sum.Volume.IDString(), "position", sum.Position, "epoch", sum.Epoch)
	return sum, nil
}

// markerOf reads the marker and its volume id.
func markerOf(ctx context.Context, store remote.Store) (marker, [16]byte, error) {
	var id [16]byte
	m, err := readMarker(ctx, store)
	if errors.Is(err, remote.ErrNotFound) {
		return m, id, fmt.Errorf("%w: remote %s holds no coffer volume marker (object %q)", ErrWrongRemote, store, MarkerName)
	}
	if err != nil {
		return m, id, err
	}
	b, err := hexID(m.Coffer)
	if err != nil {
		return m, id, fmt.Errorf("%w: remote %s: its volume marker names no valid volume id", ErrWrongRemote, store)
	}
	return m, b, nil
}

func hexID(s string) ([16]byte, error) {
	var id [16]byte
	if len(s) != 32 || strings.ToLower(s) != s {
		return id, errors.New("bad id")
	}
	for i := range id {
		var b byte
		if _, err := fmt.Sscanf(s[2*i:2*i+2], "%02x", &b); err != nil {
			return id, err
		}
		id[i] = b
	}
	return id, nil
}

// restoreProvider opens the key provider named on the command line: the HSM token (KEK
// versions are loaded as the replica names them) or the passphrase with the parameters and
// sealed KEK material from replica.KeysObject.
func restoreProvider(ctx context.Context, cfg RestoreConfig, store remote.Store, id [16]byte) (keys.Provider, error) {
	_, kerr := store.Stat(ctx, replica.KeysObject)
	if kerr != nil && !errors.Is(kerr, remote.ErrNotFound) {
		return nil, fmt.Errorf("check %s on %s: %w", replica.KeysObject, store, kerr)
	}
	passVolume := kerr == nil // only a passphrase volume puts its key parameters there
	switch cfg.Provider {
	case meta.ProviderPKCS11:
		if passVolume {
			return nil, fmt.Errorf("the volume on %s is a passphrase volume (it holds %s): restore it with --passphrase", store, replica.KeysObject)
		}
		if cfg.HSMModule == "" || cfg.HSMToken == "" {
			return nil, errors.New("an HSM volume needs --hsm-module and --hsm-token")
		}
		return hsm.New(hsm.Config{Module: cfg.HSMModule, Token: cfg.HSMToken, PIN: cfg.Secret, Volume: id})
	case meta.ProviderPassphrase:
		if !passVolume {
			return nil, fmt.Errorf("remote %s has no %s: the volume uses an HSM (restore it with --hsm-module and --hsm-token), "+
				"or its passphrase parameters never reached the remote", store, replica.KeysObject)
		}
		raw, materials, err := readKeysObject(ctx, store, id)
		if err != nil {
			return nil, err
		}
		var params passphrase.Params
		if err := params.UnmarshalBinary(raw); err != nil {
			return nil, fmt.Errorf("%s on %s holds bad passphrase parameters: %w", replica.KeysObject, store, err)
		}
		p, err := passphrase.OpenContext(ctx, cfg.Secret, id, params)
		if err != nil {
			return nil, err
		}
		for v, m := range materials {
			if err := p.Load(keys.KEKRef{Version: v}, m); err != nil {
				p.Wipe()
				return nil, fmt.Errorf("load KEK %s from %s: %w", keys.KEKRef{Version: v}, replica.KeysObject, err)
			}
		}
		return p, nil
	}
	return nil, fmt.Errorf("unknown key provider %q", cfg.Provider)
}

// barrierEvents are the audit events no point-in-time restore may go back past: before
// them the catalog holds key records only destroyed KEK versions open, or KEK material
// sealed under an old passphrase.
var barrierEvents = []string{"kek.destroy", "passphrase.change"}

// checkBarrier restores the newest state into a scratch folder inside tmp, reads the time
// of its last barrier event, and refuses at if it is older.
func checkBarrier(ctx context.Context, store remote.Store, id [16]byte, epoch uint32, keyFn replica.KeyFunc,
	tmp string, at time.Time, log *slog.Logger) error {
	dir, err := os.MkdirTemp(tmp, "newest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if _, err := replica.Restore(ctx, replica.RestoreConfig{Store: store, Volume: format.ID(id), Epoch: epoch, Key: keyFn,
		Dst: filepath.Join(dir, meta.FileName), Logger: log}); err != nil {
		return fmt.Errorf("restore the newest catalog from %s (to check --at against it): %w", store, err)
	}
	cat, err := meta.Open(ctx, dir)
	if err != nil {
		return fmt.Errorf("open the newest restored catalog: %w", err)
	}
	defer cat.Close()
	ev, ok, err := cat.LastAuditEvent(ctx, barrierEvents...)
	if err != nil {
		return err
	}
	if ok && at.Before(time.Unix(0, ev.Time)) {
		return fmt.Errorf("--at %s is before the last %s (at %s): an older catalog would hold key records only destroyed KEK versions open, "+
			"or key material sealed under an old passphrase; choose a time after it",
			at.UTC().Format(time.RFC3339), ev.Event, time.Unix(0, ev.Time).UTC().Format(time.RFC3339))
	}
	return nil
}
