package fusefront

// Keys of new and re-owned files: which KEK version a create uses (the volume's, or the
// owner's under per-user KEKs, made on first use), and the re-wrap a chown does.

import (
	"context"
	"errors"
	"strconv"
	"syscall"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// errKEKMoved: the KEK version a key was made under is no longer current.
var errKEKMoved = errors.New("the current KEK version changed (rotation or shred); retrying with the new one")

// checkCurrentKEK fails with errKEKMoved unless kek is its chain's current
// version in the transaction's view of the catalog.
func checkCurrentKEK(t *meta.Tx, kek keys.KEKRef) error {
	cur, err := t.CurrentKEK(kek.Chain)
	if errors.Is(err, syscall.ENOENT) || err == nil && cur.Version != kek.Version {
		return errKEKMoved
	}
	return err
}

// ReloadKeyRecords makes every open file take its re-wrapped key record
// (keyops.RotateMounted calls it before older KEK versions are retired).
func (f *FS) ReloadKeyRecords(ctx context.Context) error {
	_, err := f.data.ReloadKeyRecords(ctx)
	return err
}

// KEKsChanged drops every cached current KEK version: keyops calls it after
// a rotation, a retirement or a user shred on the live mount, so the next
// create reads the new ones from the catalog at once.
func (f *FS) KEKsChanged() {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	f.volKEK = keys.KEKRef{}
	clear(f.userKEKs)
}

// forgetKEK drops the cached current KEK version of uid's chain (the
// volume's on a volume without per-user KEKs): the next kekFor reads it
// from the catalog again.
func (f *FS) forgetKEK(uid uint32) {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	if f.vol.PerUser {
		delete(f.userKEKs, uid)
	} else {
		f.volKEK = keys.KEKRef{}
	}
}

// kekFor is the KEK version new files of uid are keyed under: the volume's
// current one, or on a per-user volume the user's (made on their first file).
func (f *FS) kekFor(ctx context.Context, uid uint32) (keys.KEKRef, error) {
	f.kekMu.Lock()
	defer f.kekMu.Unlock()
	if !f.vol.PerUser {
		if f.volKEK.Version == 0 {
			cur, err := f.cat.CurrentKEK(ctx, "")
			if err != nil {
				return keys.KEKRef{}, err
			}
			f.volKEK = keys.KEKRef{Chain: cur.Chain, Version: cur.Version}
		}
		return f.volKEK, nil
	}
	if ref, ok := f.userKEKs[uid]; ok {
		return ref, nil
	}
	chain := keys.UserChain(uid)
	cur, err := f.cat.CurrentKEK(ctx, chain)
	if err == nil {
		ref := keys.KEKRef{Chain: chain, Version: cur.Version}
		f.userKEKs[uid] = ref
		return ref, nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return keys.KEKRef{}, err
	}
	// The user's first file (or their first since a shred): a new version
	// above any destroyed one.
	all, err := f.cat.ListKEKs(ctx)
	if err != nil {
		return keys.KEKRef{}, err
	}
	ref := keys.KEKRef{Chain: chain, Version: 1}
	for _, k := range all {
		if k.Chain == chain && k.Version >= ref.Version {
			ref.Version = k.Version + 1
		}
	}
	if err := keyops.CreateKEKVersion(ctx, f.vol, ref, "uid:"+strconv.FormatUint(uint64(uid), 10), f.log); err != nil {
		return keys.KEKRef{}, err
	}
	f.log.Info("created a per-user KEK", "kek", ref.String())
	f.userKEKs[uid] = ref
	return ref, nil
}

// rekeyForOwner re-wraps a file's key under its new owner's KEK (per-user
// volumes, wrap mode). A derive-mode key cannot move: its DEK is a function
// of the creator's key, so it stays with that chain.
func (f *FS) rekeyForOwner(ctx context.Context, in *meta.Inode) error {
	if f.vol.KeyMode != keys.ModeWrap {
		return nil
	}
	old, err := f.cat.GetKey(ctx, in.Ino)
	if err != nil {
		return err
	}
	if old.Chain == keys.UserChain(in.UID) {
		return nil
	}
	for attempt := 0; ; attempt++ {
		to, err := f.kekFor(ctx, in.UID)
		if err != nil {
			return err
		}
		nrec, err := f.vol.Keys().Rewrap(ctx, volume.RecordOf(old), in.FileID, to)
		if err != nil {
			return err
		}
		err = f.cat.Update(ctx, func(t *meta.Tx) error {
			if err := checkCurrentKEK(t, to); err != nil {
				return err
			}
			swapped, err := t.SwapKey(in.Ino, old, volume.CatalogRecord(nrec))
			if err != nil || !swapped {
				return err
			}
			// Older catalog copies keep the key under the old chain: a later
			// shred names it (keyops reads this event).
			uid, _ := caller(ctx)
			return keyops.AuditKeyMoved(t, in.Ino, in.FileID, keys.KEKRef{Chain: old.Chain, Version: old.Version}, to,
				"uid:"+strconv.FormatUint(uint64(uid), 10))
		})
		if errors.Is(err, errKEKMoved) && attempt < 3 {
			f.forgetKEK(in.UID)
			continue
		}
		return err
	}
}
