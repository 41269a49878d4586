package volume

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/replica"
	"coffer/keys"
	"coffer/remote"
)

// ReplicaPurpose is the volume-level key purpose that seals catalog replicas (FORMAT.md 9.8).
const ReplicaPurpose = "replica"

// ReplicaStateFile is where a clean unmount records the replicated state (no secret).
func ReplicaStateFile(stateDir string) string { return filepath.Join(stateDir, replica.StateFileName) }

// readMarker reads and parses the remote's volume marker (checkMarker has vetted it).
func readMarker(ctx context.Context, store remote.Store) (marker, error) {
	var m marker
	size, err := store.Stat(ctx, MarkerName)
	if err != nil {
		return m, fmt.Errorf("read the volume marker on remote %s: %w", store, err)
	}
	if size > maxMarker {
		return m, fmt.Errorf("%w: remote %s: its volume marker is %d bytes, not a coffer marker", ErrWrongRemote, store, size)
	}
	body, err := store.GetRange(ctx, MarkerName, 0, size)
	if err != nil {
		return m, fmt.Errorf("read the volume marker on remote %s: %w", store, err)
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return m, fmt.Errorf("%w: remote %s: its volume marker is not valid JSON", ErrWrongRemote, store)
	}
	return m, nil
}

func writeMarker(ctx context.Context, store remote.Store, m marker) error {
	body, _ := json.Marshal(m)
	if err := store.Put(ctx, MarkerName, body); err != nil {
		return fmt.Errorf("write volume marker to %s: %w", store, err)
	}
	return nil
}

// ownerEpoch settles the epoch this catalog replicates under: the catalog's and the
// marker's must agree, except for a volume made before replication (both 0: epoch 1 is
// written to both, catalog first) and that upgrade interrupted (catalog 1, marker 0).
func ownerEpoch(ctx context.Context, cat *meta.Catalog, store remote.Store) (uint32, error) {
	m, err := readMarker(ctx, store)
	if err != nil {
		return 0, err
	}
	ce, err := cat.ReplicaEpoch(ctx)
	if err != nil {
		return 0, err
	}
	switch {
	case m.Epoch == ce && ce != 0:
		return ce, nil
	case m.Epoch > ce:
		return 0, fmt.Errorf("%w: the volume was restored on another host (the remote is at owner epoch %d, this catalog at %d); "+
			"this host must not write to it any more: run `coffer restore` into an empty state directory to continue from the remote",
			replica.ErrNotOwner, m.Epoch, ce)
	case m.Epoch == 0 && ce <= 1:
		if ce == 0 {
			if err := cat.SetReplicaEpoch(ctx, 1); err != nil {
				return 0, err
			}
		}
		m.Epoch = 1
		if err := writeMarker(ctx, store, m); err != nil {
			return 0, err
		}
		return 1, nil
	default:
		return 0, fmt.Errorf("%w: remote %s: its marker says owner epoch %d, older than this catalog's %d (the marker was replaced by an old copy); nothing was written",
			ErrWrongRemote, store, m.Epoch, ce)
	}
}

// replicaConfig is the replicator's view of an open volume.
func (v *Volume) replicaConfig(epoch uint32, opt OpenOptions, log *slog.Logger) replica.Config {
	return replica.Config{
		Catalog: v.catalog, Store: v.store, Volume: format.ID(v.ID), Epoch: epoch,
		Key: func(ctx context.Context, version uint32) (*keys.DEK, error) {
			return keys.VolumeKey(ctx, v.provider, keys.KEKRef{Version: version}, v.ID, ReplicaPurpose)
		},
		Current: func() uint32 { return v.KEK().Version },
		CheckOwner: func(ctx context.Context) error {
			m, err := readMarker(ctx, v.store)
			if err != nil {
				return err
			}
			if m.Epoch > epoch {
				return fmt.Errorf("%w: the volume was restored on another host (remote owner epoch %d, this host's %d)", replica.ErrNotOwner, m.Epoch, epoch)
			}
			return nil
		},
		Bootstrap: func(ctx context.Context) ([]byte, error) { return bootstrap(ctx, v.catalog) },
		StateFile: ReplicaStateFile(v.StateDir),
		Interval:  opt.ReplicaInterval,
		Window:    opt.PITRWindow,
		Logger:    log,
	}
}

// startReplica starts replicating an open, writable volume's catalog.
func (v *Volume) startReplica(ctx context.Context, opt OpenOptions, log *slog.Logger) error {
	epoch, err := ownerEpoch(ctx, v.catalog, v.store)
	if err != nil {
		return err
	}
	r, err := replica.Start(ctx, v.replicaConfig(epoch, opt, log))
	if err != nil {
		return fmt.Errorf("start catalog replication: %w", err)
	}
	v.replica = r
	if opt.PITRWindow > 0 {
		// Objects outlive the commits that drop them by the window, so a restore --at any
		// kept time finds its objects (mount sets it; offline commands delete at once).
		v.catalog.SetDeleteDelay(opt.PITRWindow)
	}
	return nil
}

// DiscardReplica ends the catalog's replication and deletes the replica from the remote
// (shred --volume, before the keys go).
func (v *Volume) DiscardReplica(ctx context.Context) error {
	if v.replica == nil {
		return nil
	}
	err := v.replica.Discard(ctx)
	v.replica = nil
	return err
}

// SnapshotReplica writes a snapshot of the catalog's replica under the current KEK version
// and waits for it (before a version of the volume chain is destroyed). Nothing to do
// without replication.
func (v *Volume) SnapshotReplica(ctx context.Context) error {
	if v.replica == nil {
		return nil
	}
	return v.replica.SnapshotNow(ctx)
}

// Replica is the volume's replicator, or nil (read-only, or replication off).
func (v *Volume) Replica() *replica.Replicator { return v.replica }

// keysObject is the JSON of replica.KeysObject (FORMAT.md 12.14): what restore needs to
// open a passphrase volume's provider before any catalog exists.
type keysObject struct {
	Volume    string       `json:"volume"`
	KDFParams string       `json:"kdf_params"`
	KEKs      []keysObjKEK `json:"keks"`
}

type keysObjKEK struct {
	Version  uint32 `json:"version"`
	Material string `json:"material"`
}

// bootstrap returns keysObject's bytes for a passphrase volume, nil for an HSM volume.
func bootstrap(ctx context.Context, cat *meta.Catalog) ([]byte, error) {
	mv, err := cat.Volume(ctx)
	if err != nil {
		return nil, err
	}
	if mv.Provider != meta.ProviderPassphrase {
		return nil, nil
	}
	ks, err := cat.ListKEKs(ctx)
	if err != nil {
		return nil, err
	}
	o := keysObject{Volume: hex.EncodeToString(mv.ID[:]), KDFParams: base64.StdEncoding.EncodeToString(mv.KDFParams)}
	for _, k := range ks {
		if k.Chain == "" && k.State != meta.KEKDestroyed {
			o.KEKs = append(o.KEKs, keysObjKEK{Version: k.Version, Material: base64.StdEncoding.EncodeToString(k.Material)})
		}
	}
	return json.Marshal(o)
}

// readKeysObject fetches and checks replica.KeysObject for volume id.
func readKeysObject(ctx context.Context, store remote.Store, id [16]byte) (params []byte, materials map[uint32][]byte, err error) {
	size, err := store.Stat(ctx, replica.KeysObject)
	if errors.Is(err, remote.ErrNotFound) {
		return nil, nil, fmt.Errorf("remote %s has no %s: the passphrase volume's key parameters were never replicated", store, replica.KeysObject)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s on %s: %w", replica.KeysObject, store, err)
	}
	if size > 1<<20 {
		return nil, nil, fmt.Errorf("%s on %s is %d bytes, too large", replica.KeysObject, store, size)
	}
	b, err := store.GetRange(ctx, replica.KeysObject, 0, size)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s on %s: %w", replica.KeysObject, store, err)
	}
	var o keysObject
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, nil, fmt.Errorf("%s on %s is not valid JSON", replica.KeysObject, store)
	}
	if o.Volume != hex.EncodeToString(id[:]) {
		return nil, nil, fmt.Errorf("%s on %s belongs to volume %q, not %x", replica.KeysObject, store, o.Volume, id)
	}
	if params, err = base64.StdEncoding.DecodeString(o.KDFParams); err != nil {
		return nil, nil, fmt.Errorf("%s on %s: bad kdf_params", replica.KeysObject, store)
	}
	materials = map[uint32][]byte{}
	for _, k := range o.KEKs {
		m, err := base64.StdEncoding.DecodeString(k.Material)
		if err != nil || k.Version == 0 {
			return nil, nil, fmt.Errorf("%s on %s: bad KEK version %d", replica.KeysObject, store, k.Version)
		}
		materials[k.Version] = m
	}
	return params, materials, nil
}

// PathOf names inode ino by one of its paths, for messages ("?" parts where the
// catalog has no link).
func PathOf(ctx context.Context, cat *meta.Catalog, ino uint64) string {
	var parts []string
	for i := 0; ino != meta.RootIno && i < 4096; i++ {
		ls, err := cat.Links(ctx, ino)
		if err != nil || len(ls) == 0 {
			parts = append(parts, fmt.Sprintf("<inode %d>", ino))
			break
		}
		parts = append(parts, string(ls[0].Name))
		ino = ls[0].Parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return "/" + path.Join(parts...)
}

// firstSnapshot opens the closed catalog in v.StateDir, writes the first snapshot of its
// replica (under the marker's epoch) and closes it again, recording the clean state.
// v carries the provider, store, id and current KEK; its catalog is set here.
func firstSnapshot(ctx context.Context, v *Volume, log *slog.Logger) error {
	cat, err := meta.Open(ctx, v.StateDir)
	if err != nil {
		return fmt.Errorf("reopen catalog: %w", err)
	}
	v.catalog = cat
	defer func() { v.catalog = nil }()
	epoch, err := cat.ReplicaEpoch(ctx)
	if err == nil {
		var r *replica.Replicator
		if r, err = replica.Start(ctx, v.replicaConfig(epoch, OpenOptions{}, log)); err == nil {
			err = r.Close(ctx)
			if cerr := cat.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err == nil {
				err = r.MarkClean()
			}
			if err != nil {
				return fmt.Errorf("write the catalog's first replica snapshot: %w", err)
			}
			return nil
		}
	}
	cat.Close()
	return fmt.Errorf("write the catalog's first replica snapshot: %w", err)
}
