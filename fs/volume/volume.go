// Package volume ties one coffer volume together: its catalog (fs/meta), its KEK provider
// (keys/hsm or keys/passphrase) and its object store (remote). It creates volumes (`coffer
// init`) and opens them for the commands and the filesystem that work on one.
package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/replica"
	"coffer/keys"
	"coffer/keys/hsm"
	"coffer/keys/passphrase"
	"coffer/remote"
)

// openStore is remote.Open; tests wrap it to inject faults.
var openStore = remote.Open

// MarkerName is the remote object that says "this remote holds a coffer volume". It holds
// no secret: the volume id, the format version and the creation time.
const MarkerName = "coffer-volume"

// DefaultHSMModule is SoftHSM2's module on Debian, the embedded default.
const DefaultHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// Config is what `coffer init` asks for.
type Config struct {
	StateDir    string // where the catalog lives (created 0700)
	Remote      string // rclone remote string; refused if it carries credentials
	Provider    string // meta.ProviderPKCS11 or meta.ProviderPassphrase
	HSMModule   string // pkcs11: module path
	HSMToken    string // pkcs11: token label
	Secret      []byte // the PIN or passphrase; read, never kept, never stored
	KeyMode     keys.Mode
	Layout      format.Layout
	PerUserKEKs bool
	KDFCost     passphrase.Cost // passphrase: zero means passphrase.DefaultCost
	Logger      *slog.Logger
}

// Summary describes a volume as created or opened. It holds no secret.
type Summary struct {
	ID      [16]byte
	Remote  string // redacted
	Kind    string // meta.ProviderPKCS11 or meta.ProviderPassphrase
	KeyMode keys.Mode
	KEK     keys.KEKRef // current volume KEK version
	Layout  format.Layout
}

// IDString is the volume id as printed everywhere (hex).
func (s Summary) IDString() string { return hex.EncodeToString(s.ID[:]) }

// marker is the JSON body of MarkerName.
type marker struct {
	Coffer  string `json:"coffer_volume"`
	Format  int    `json:"format"`
	Created string `json:"created"`
	Epoch   uint32 `json:"epoch,omitempty"` // owner epoch of the catalog's replicas (FORMAT.md 12.13)
}

func (c *Config) validate() error {
	if c.StateDir == "" {
		return errors.New("no state directory given (--state DIR)")
	}
	if c.Remote == "" {
		return errors.New("no remote given (--remote REMOTE)")
	}
	if err := c.Layout.Validate(); err != nil {
		return err
	}
	if _, err := keys.ParseMode(string(c.KeyMode)); err != nil {
		return err
	}
	switch c.Provider {
	case meta.ProviderPKCS11:
		if c.HSMModule == "" || c.HSMToken == "" {
			return errors.New("an HSM volume needs --hsm-module and --hsm-token")
		}
	case meta.ProviderPassphrase:
	default:
		return fmt.Errorf("unknown key provider %q", c.Provider)
	}
	if len(c.Secret) == 0 {
		return errors.New("empty PIN or passphrase")
	}
	return nil
}

// Create makes a new volume: KEK version 1 in the provider, a self-test of the key path, the
// catalog in StateDir and the marker on the remote. It refuses a state directory that
// already holds a catalog and a remote that already holds a marker. On any failure it undoes
// what it did (KEK destroyed, catalog removed, marker deleted): nothing is half-created.
func Create(ctx context.Context, cfg Config) (sum Summary, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.validate(); err != nil {
		return sum, err
	}
	if err := remote.CheckRemote(cfg.Remote); err != nil {
		return sum, err
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return sum, fmt.Errorf("state directory: %w", err)
	}
	if _, err := os.Lstat(CatalogFile(stateDir)); err == nil {
		return sum, fmt.Errorf("state directory %s already holds a volume (%s); choose another --state", stateDir, meta.FileName)
	}

	var undo []func()
	var prov keys.Provider
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
		if prov != nil { // after the undo steps: destroying the KEK needs the provider
			prov.Wipe()
		}
	}()
	// Folders this call creates are removed again on failure; existing ones are left alone.
	undo = append(undo, removeIfCreated(stateDir))
	if filepath.IsAbs(cfg.Remote) {
		undo = append(undo, removeIfCreated(cfg.Remote))
	}

	// Log in first: a wrong PIN or a missing module must fail before anything is touched.
	if _, err := rand.Read(sum.ID[:]); err != nil {
		return sum, fmt.Errorf("random volume id: %w", err)
	}
	prov, kdfParams, err := newProvider(ctx, cfg, sum.ID)
	if err != nil {
		return sum, err
	}

	store, err := openStore(ctx, cfg.Remote, remote.Options{Logger: log})
	if err != nil {
		return sum, err
	}
	defer store.Close(context.WithoutCancel(ctx))
	if err := checkNoMarker(ctx, store); err != nil {
		return sum, err
	}

	ref := keys.KEKRef{Chain: "", Version: 1}
	material, err := prov.CreateKEK(ctx, ref)
	if err != nil {
		return sum, fmt.Errorf("create KEK %s: %w", ref, err)
	}
	undo = append(undo, func() {
		if derr := prov.DestroyKEK(context.WithoutCancel(ctx), ref); derr != nil {
			log.Error("init: could not destroy the KEK created before the failure", "kek", ref.String(), "err", derr)
		}
	})
	if err := SelfTest(ctx, prov, cfg.KeyMode, ref, sum.ID); err != nil {
		return sum, err
	}

	// The catalog is built in a private folder and renamed into place last, so a crash
	// never leaves a catalog without its marker and KEK behind.
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return sum, fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.MkdirTemp(stateDir, ".init-")
	if err != nil {
		return sum, fmt.Errorf("create state directory: %w", err)
	}
	undo = append(undo, func() { os.RemoveAll(tmp) })

	now := time.Now()
	cat, err := meta.Create(ctx, tmp, meta.Volume{
		ID: sum.ID, FormatVersion: format.Version,
		BlockSize: int64(cfg.Layout.BlockSize), ChunkSize: cfg.Layout.ChunkSize,
		Remote: remote.Redact(cfg.Remote), KeyMode: string(cfg.KeyMode), Provider: cfg.Provider,
		HSMModule: cfg.HSMModule, HSMToken: cfg.HSMToken, PerUserKEKs: cfg.PerUserKEKs,
		KDFParams: kdfParams, Created: now.UnixNano(),
		RootMode: 0o755, RootUID: uint32(os.Getuid()), RootGID: uint32(os.Getgid()),
	})
	if err != nil {
		return sum, fmt.Errorf("create catalog: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			cat.Close()
		}
	}()
	if _, err := cat.AddKEKVersion(ctx, meta.KEK{Chain: ref.Chain, Version: ref.Version, Material: material, Created: now.UnixNano()}, "init"); err != nil {
		return sum, fmt.Errorf("record KEK %s: %w", ref, err)
	}

	if err := cat.SetReplicaEpoch(ctx, 1); err != nil {
		return sum, err
	}
	body, _ := json.Marshal(marker{Coffer: hex.EncodeToString(sum.ID[:]), Format: format.Version, Created: now.UTC().Format(time.RFC3339), Epoch: 1})
	if err := store.Put(ctx, MarkerName, body); err != nil {
		return sum, fmt.Errorf("write volume marker to %s: %w", store, err)
	}
	undo = append(undo, func() {
		if derr := store.Delete(context.WithoutCancel(ctx), MarkerName); derr != nil {
			log.Error("init: could not delete the volume marker written before the failure", "remote", store.String(), "err", derr)
		}
	})

	if err := cat.Sync(ctx); err != nil {
		return sum, fmt.Errorf("sync catalog: %w", err)
	}
	closed = true
	if err := cat.Close(); err != nil {
		return sum, fmt.Errorf("close catalog: %w", err)
	}
	// The first snapshot of the catalog's replica, before the volume exists for anyone.
	if err := firstSnapshot(ctx, &Volume{ID: sum.ID, StateDir: tmp, provider: prov, store: store, kek: ref}, log); err != nil {
		return sum, err
	}
	if err := moveCatalog(tmp, stateDir); err != nil {
		return sum, err
	}
	os.RemoveAll(tmp)

	sum.Remote = remote.Redact(cfg.Remote)
	sum.Kind = cfg.Provider
	sum.KeyMode = cfg.KeyMode
	sum.KEK = ref
	sum.Layout = cfg.Layout
	log.Info("volume created", "volume", sum.IDString(), "remote", sum.Remote, "provider", sum.Kind, "key_mode", string(sum.KeyMode))
	return sum, nil
}

// newProvider opens the provider for a new volume; for a passphrase it also returns the KDF
// parameters to store.
func newProvider(ctx context.Context, cfg Config, id [16]byte) (keys.Provider, []byte, error) {
	switch cfg.Provider {
	case meta.ProviderPKCS11:
		p, err := hsm.New(hsm.Config{Module: cfg.HSMModule, Token: cfg.HSMToken, PIN: cfg.Secret, Volume: id})
		if err != nil {
			return nil, nil, err
		}
		return p, nil, nil
	case meta.ProviderPassphrase:
		cost := cfg.KDFCost
		if cost == (passphrase.Cost{}) {
			cost = passphrase.DefaultCost
		}
		p, params, err := passphrase.CreateContext(ctx, cfg.Secret, id, cost)
		if err != nil {
			return nil, nil, err
		}
		b, err := params.MarshalBinary()
		if err != nil {
			p.Wipe()
			return nil, nil, fmt.Errorf("encode passphrase parameters: %w", err)
		}
		return p, b, nil
	}
	return nil, nil, fmt.Errorf("unknown key provider %q", cfg.Provider)
}

// removeIfCreated returns an undo step that removes dir if it does not exist now, i.e. if
// whatever runs after this call creates it.
func removeIfCreated(dir string) func() {
	if _, err := os.Lstat(dir); err == nil {
		return func() {}
	}
	return func() { os.RemoveAll(dir) }
}

// SelfTest makes a throwaway file key under ref and opens it again, so that a volume whose
// key path does not round-trip is never created: init checks that an unwrap of a fresh
// wrap (or a second derivation) succeeds before it writes anything (ARCHITECTURE.md,
// "coffer init").
func SelfTest(ctx context.Context, p keys.Provider, mode keys.Mode, ref keys.KEKRef, volume [16]byte) error {
	id := keys.FileIdentity{Volume: volume}
	if _, err := rand.Read(id.File[:]); err != nil {
		return err
	}
	rec, dek, err := keys.NewFileKey(ctx, p, mode, ref, id)
	if err != nil {
		return fmt.Errorf("self-test: new %s-mode file key under KEK %s: %w", mode, ref, err)
	}
	defer dek.Wipe()
	again, err := keys.OpenFileKey(ctx, p, rec, id)
	if err != nil {
		return fmt.Errorf("self-test: open a fresh %s-mode file key under KEK %s: %w", mode, ref, err)
	}
	defer again.Wipe()
	if !bytes.Equal(dek.Bytes(), again.Bytes()) {
		return fmt.Errorf("self-test: %s-mode file key under KEK %s did not round-trip", mode, ref)
	}
	return nil
}

func checkNoMarker(ctx context.Context, store remote.Store) error {
	_, err := store.Stat(ctx, MarkerName)
	switch {
	case err == nil:
		return fmt.Errorf("remote %s already holds a coffer volume (object %q); use an empty remote or prefix", store, MarkerName)
	case errors.Is(err, remote.ErrNotFound):
		return nil
	default:
		return fmt.Errorf("check remote %s: %w", store, err)
	}
}

// ErrWrongRemote is returned by Open when the remote does not hold this volume's marker.
var ErrWrongRemote = errors.New("the remote is not this volume's")

// maxMarker bounds the marker object Open reads (its JSON is under 200 bytes).
const maxMarker = 4096

// checkMarker checks that store holds the marker of volume id (written by Create): a catalog
// pointed at another volume's remote, at an empty one, or at one whose rclone configuration
// changed, would otherwise write there (and a shred delete there). Errors wrap
// ErrWrongRemote, except a remote that cannot be read.
func checkMarker(ctx context.Context, store remote.Store, id [16]byte) error {
	want := hex.EncodeToString(id[:])
	size, err := store.Stat(ctx, MarkerName)
	if errors.Is(err, remote.ErrNotFound) {
		return fmt.Errorf("%w: remote %s holds no coffer volume marker (object %q), so it is not where volume %s was created "+
			"(the catalog or the rclone configuration points elsewhere, or the marker was deleted: restore it from a backup); nothing was written there",
			ErrWrongRemote, store, MarkerName, want)
	}
	if err != nil {
		return fmt.Errorf("check the volume marker on remote %s: %w", store, err)
	}
	corrupt := func(why string) error {
		return fmt.Errorf("%w: remote %s: its volume marker (object %q) %s, so coffer cannot tell that it belongs to volume %s; nothing was written there",
			ErrWrongRemote, store, MarkerName, why, want)
	}
	if size > maxMarker {
		return corrupt(fmt.Sprintf("is %d bytes, not a coffer marker", size))
	}
	body, err := store.GetRange(ctx, MarkerName, 0, size)
	if err != nil {
		return fmt.Errorf("read the volume marker on remote %s: %w", store, err)
	}
	var m marker
	if err := json.Unmarshal(body, &m); err != nil {
		return corrupt("is not valid JSON")
	}
	got, err := hex.DecodeString(m.Coffer)
	if err != nil || len(got) != len(id) {
		return corrupt("names no valid volume id")
	}
	if !bytes.Equal(got, id[:]) {
		return fmt.Errorf("%w: remote %s holds volume %s (its marker %q), not this catalog's volume %s: "+
			"the catalog or the rclone configuration points at another volume's remote; nothing was written there",
			ErrWrongRemote, store, m.Coffer, MarkerName, want)
	}
	return nil
}

// moveCatalog renames the finished catalog into the state directory. After a clean Close
// SQLite has folded the WAL back into the main file; any leftover journal files move too.
func moveCatalog(from, to string) error {
	for _, name := range []string{meta.FileName + "-wal", meta.FileName + "-shm", replica.StateFileName} {
		if _, err := os.Lstat(filepath.Join(from, name)); err == nil {
			if err := os.Rename(filepath.Join(from, name), filepath.Join(to, name)); err != nil {
				return fmt.Errorf("move catalog into place: %w", err)
			}
		}
	}
	if err := os.Rename(filepath.Join(from, meta.FileName), filepath.Join(to, meta.FileName)); err != nil {
		return fmt.Errorf("move catalog into place: %w", err)
	}
	d, err := os.Open(to)
	if err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	return nil
}

// Volume is an open volume: the catalog (open for writing: one owner at a time), the
// provider with every live KEK version loaded, a keyring with a DEK cache, and the object
// store. Its parts are set by Open and never replaced; the one thing that changes while it
// is open, the current KEK version, changes only through SetKEK.
type Volume struct {
	// What the catalog says of the volume; fixed while it is open.
	ID       [16]byte
	Remote   string // redacted
	Kind     string // meta.ProviderPKCS11 or meta.ProviderPassphrase
	KeyMode  keys.Mode
	Layout   format.Layout
	PerUser  bool
	StateDir string

	catalog  *meta.Catalog
	provider keys.Provider
	keyring  *keys.Keyring
	store    remote.Store
	replica  *replica.Replicator // nil: read-only, or replication off

	kekMu sync.Mutex
	kek   keys.KEKRef // the volume chain's current version
}

// Catalog is the volume's catalog.
func (v *Volume) Catalog() *meta.Catalog { return v.catalog }

// Provider is the keyring's provider: it forwards to the current provider, so it stays
// valid across Lock and Unlock (failing with keys.ErrLocked in between).
func (v *Volume) Provider() keys.Provider { return v.provider }

// Keys is the volume's keyring (DEK cache, lock and unlock).
func (v *Volume) Keys() *keys.Keyring { return v.keyring }

// Store is the volume's object store (with the decorators OpenOptions.WrapStore added).
func (v *Volume) Store() remote.Store { return v.store }

// KEK is the volume chain's current KEK version, as this process last set it (Open, or
// SetKEK by a rotation). A daemon whose catalog another goroutine may change reads the
// catalog instead when it must be exact.
func (v *Volume) KEK() keys.KEKRef {
	v.kekMu.Lock()
	defer v.kekMu.Unlock()
	return v.kek
}

// SetKEK makes ref the volume chain's current version (after it is recorded in the
// catalog).
func (v *Volume) SetKEK(ref keys.KEKRef) {
	v.kekMu.Lock()
	v.kek = ref
	v.kekMu.Unlock()
}

// IDString is the volume id as printed everywhere (hex).
func (v *Volume) IDString() string { return hex.EncodeToString(v.ID[:]) }

// Summary describes the open volume.
func (v *Volume) Summary() Summary {
	return Summary{ID: v.ID, Remote: v.Remote, Kind: v.Kind, KeyMode: v.KeyMode, KEK: v.KEK(), Layout: v.Layout}
}

// OpenOptions tune Open.
type OpenOptions struct {
	Logger      *slog.Logger
	DEKCacheTTL time.Duration // default 10 min
	DEKCacheMax int           // default 10,000 keys
	Remote      remote.Options
	ReadOnly    bool // open the catalog read-only (status, fsck without repair)
	// WrapStore, if set, decorates the object store once it is open (the daemon's disk
	// cache; tests inject faults). An error fails Open.
	WrapStore func(remote.Store) (remote.Store, error)
	// ReplicaInterval is how often committed catalog changes are shipped to the remote
	// (replica.DefaultInterval if 0); fsync and the key commands wait for them anyway.
	ReplicaInterval time.Duration
	// PITRWindow is how far back `restore --at` can go: replica history this old is kept
	// (replica.DefaultWindow if 0; negative: none).
	PITRWindow time.Duration
	// NoReplica turns catalog replication off (benchmarks): a host loss then loses the
	// volume.
	NoReplica bool
}

// Open opens the volume in stateDir with the PIN or passphrase in secret (not kept). It
// refuses a catalog that another process owns and, unless opt.ReadOnly, a remote that does
// not hold this volume's marker (ErrWrongRemote: another volume's, an empty one, a corrupt
// marker). Errors say what failed: a wrong PIN or passphrase, a missing module or token, a
// missing KEK version, an unreachable remote.
func Open(ctx context.Context, stateDir string, secret []byte, opt OpenOptions) (v *Volume, err error) {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	var cat *meta.Catalog
	if opt.ReadOnly {
		cat, err = meta.OpenReadOnly(ctx, stateDir)
	} else {
		cat, err = meta.Open(ctx, stateDir)
	}
	if err != nil {
		return nil, fmt.Errorf("open volume in %s: %w", stateDir, err)
	}
	v = &Volume{StateDir: stateDir, catalog: cat}
	defer func() {
		if err != nil {
			v.Close(context.WithoutCancel(ctx))
			v = nil
		}
	}()
	mv, err := cat.Volume(ctx)
	if err != nil {
		return v, err
	}
	v.ID, v.Remote, v.Kind, v.KeyMode, v.PerUser = mv.ID, mv.Remote, mv.Provider, keys.Mode(mv.KeyMode), mv.PerUserKEKs
	v.Layout = format.Layout{BlockSize: int(mv.BlockSize), ChunkSize: mv.ChunkSize}
	if err := v.Layout.Validate(); err != nil {
		return v, fmt.Errorf("catalog holds a bad layout: %w", err)
	}
	prov, err := openProvider(ctx, cat, mv, secret)
	if err != nil {
		return v, err
	}
	v.provider = prov // wiped by Close if Open fails before the keyring owns it
	cur, err := cat.CurrentKEK(ctx, "")
	if err != nil {
		return v, fmt.Errorf("current volume KEK: %w", err)
	}
	v.kek = keys.KEKRef{Chain: cur.Chain, Version: cur.Version}
	ttl, max := opt.DEKCacheTTL, opt.DEKCacheMax
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if max <= 0 {
		max = 10000
	}
	v.keyring = keys.NewKeyring(prov, mv.ID, keys.NewCache(ttl, max))
	// The keyring's Provider stays valid across Lock and Unlock (a new provider behind it).
	v.provider = v.keyring.Provider()
	ropt := opt.Remote
	if ropt.Logger == nil {
		ropt.Logger = log
	}
	if v.store, err = remote.Open(ctx, mv.Remote, ropt); err != nil {
		return v, err
	}
	if !opt.ReadOnly {
		// Before anything is written there: the remote must be this volume's.
		if err := checkMarker(ctx, v.store, mv.ID); err != nil {
			return v, err
		}
	}
	if opt.WrapStore != nil {
		wrapped, err := opt.WrapStore(v.store)
		if err != nil {
			return v, err
		}
		v.store = wrapped
	}
	if !opt.ReadOnly && !opt.NoReplica {
		if err := v.startReplica(ctx, opt, log); err != nil {
			return v, err
		}
	}
	return v, nil
}

// openProvider opens the volume's key provider with the PIN or passphrase in secret (HSM
// login, or Argon2id and the passphrase check) and loads every KEK version the catalog has not
// destroyed. Open and Unlock both use it. A wrong secret fails with keys.ErrWrongPIN or
// keys.ErrWrongPassphrase; nothing is kept on failure.
func openProvider(ctx context.Context, cat *meta.Catalog, mv meta.Volume, secret []byte) (p keys.Provider, err error) {
	if len(secret) == 0 {
		return nil, errors.New("empty PIN or passphrase")
	}
	switch mv.Provider {
	case meta.ProviderPKCS11:
		hp, err := hsm.New(hsm.Config{Module: mv.HSMModule, Token: mv.HSMToken, PIN: secret, Volume: mv.ID})
		if err != nil {
			return nil, err
		}
		p = hp
	case meta.ProviderPassphrase:
		var params passphrase.Params
		if err := params.UnmarshalBinary(mv.KDFParams); err != nil {
			return nil, fmt.Errorf("catalog holds bad passphrase parameters: %w", err)
		}
		pp, err := passphrase.OpenContext(ctx, secret, mv.ID, params)
		if err != nil {
			return nil, err
		}
		p = pp
	default:
		return nil, fmt.Errorf("catalog names an unknown key provider %q", mv.Provider)
	}
	opened := p // the named result is nil by the time a failing return runs the defer
	defer func() {
		if err != nil {
			opened.Wipe()
		}
	}()
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keks {
		if k.State == meta.KEKDestroyed {
			continue
		}
		ref := keys.KEKRef{Chain: k.Chain, Version: k.Version}
		if err := p.Load(ref, k.Material); err != nil {
			return nil, fmt.Errorf("load KEK %s: %w", ref, err)
		}
	}
	return p, nil
}

// Lock wipes every key of the volume now (coffer lock): the DEK cache is zeroed and the
// provider wiped (HSM sessions closed, passphrase keys zeroed). Until Unlock every key
// operation fails with keys.ErrLocked; the catalog and the store stay open, so metadata
// keeps working. The data path holds its own copies of file keys: content.DataPath.WipeKeys
// wipes them (fusefront.FS.Lock does both). The volume is locked even if Lock returns an error (an
// HSM that did not close its sessions in time).
func (v *Volume) Lock() error {
	if v.replica != nil {
		v.replica.WipeKey()
	}
	if err := v.keyring.Lock(); err != nil {
		return fmt.Errorf("lock volume: %w", err)
	}
	return nil
}

// Locked reports whether the volume's keys are locked.
func (v *Volume) Locked() bool { return v.keyring.Locked() }

// Unlock opens a new provider exactly as Open does (HSM login with the PIN, or the
// passphrase through Argon2id), loads every KEK version the catalog has not destroyed and
// installs it. A wrong PIN or passphrase returns the same error as Open (keys.ErrWrongPIN,
// keys.ErrWrongPassphrase) and leaves the volume locked. Unlocking a volume that is not
// locked does nothing and does not check secret. secret is not kept.
func (v *Volume) Unlock(ctx context.Context, secret []byte) error {
	if !v.Locked() {
		return nil
	}
	mv, err := v.catalog.Volume(ctx)
	if err != nil {
		return fmt.Errorf("unlock volume: %w", err)
	}
	p, err := openProvider(ctx, v.catalog, mv, secret)
	if err != nil {
		return fmt.Errorf("unlock volume: %w", err)
	}
	if err := v.keyring.Unlock(p); err != nil {
		return fmt.Errorf("unlock volume: %w", err)
	}
	return nil
}

// Close ships the catalog's last changes to the remote, wipes every key (cache, provider
// sessions) and closes the store and the catalog. An error from the replication means the
// remote may miss the last catalog changes (the next mount ships them).
func (v *Volume) Close(ctx context.Context) error {
	var errs []error
	if v.replica != nil {
		errs = append(errs, v.replica.Close(ctx))
	}
	if v.keyring != nil {
		errs = append(errs, v.keyring.Wipe())
	} else if v.provider != nil {
		errs = append(errs, v.provider.Wipe())
	}
	if v.store != nil {
		errs = append(errs, v.store.Close(ctx))
	}
	if v.catalog != nil {
		errs = append(errs, v.catalog.Close())
	}
	if v.replica != nil && v.catalog != nil {
		errs = append(errs, v.replica.MarkClean())
	}
	return errors.Join(errs...)
}
