package keyops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"coffer/fs/content"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// ShredOptions tune the shred operations.
type ShredOptions struct {
	Actor      string // for the audit log
	StagingDir string // where the volume stages ciphertext (default STATE/staging)
	Logger     *slog.Logger
	// Live is the mounted file system when the daemon shreds on a live mount (nil
	// offline): it revokes the files before their key records go and drops the kernel's
	// cached names after, and takes the new KEK versions after a user shred. The data path
	// owns staging then (StagingDir is not touched).
	Live LiveFS

	started int64 // when the shred began: the objects it queues skip the point-in-time window
}

func (o *ShredOptions) defaults(v *volume.Volume) {
	o.started = time.Now().UnixNano()
	if o.Actor == "" {
		o.Actor = "shred"
	}
	if o.StagingDir == "" {
		o.StagingDir = volume.StagingDir(v.StateDir)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// ShredResult summarizes a shred.
type ShredResult struct {
	Files        int   // files whose key record was destroyed and entries removed
	Links        int   // directory entries removed
	Queued       int64 // remote objects waiting for deletion after the shred (before deleting)
	Deleted      int   // remote objects deleted now
	DeleteFailed int   // remote objects that stay queued (deleting failed)
	Destroyed    []keys.KEKRef
	OtherChains  int // (--user) files of the user keyed under another chain
	// OldVersions are the live KEK versions that wrap a shredded file's key in an older copy
	// of the catalog (the record's version and the older live ones of its chain; for a key a
	// chown moved, the previous chain's versions too), with how many files each: the shred
	// is final against older copies once they are destroyed — except on a passphrase
	// volume (see Finality).
	OldVersions   map[keys.KEKRef]int
	Finality      Finality
	StagingFreed  int // staged (ciphertext) chunks of shredded files removed
	ShreddedInode []uint64

	shredded []shreddedKey // the destroyed records' files and versions
}

// ResolvePath finds the inode of a path inside the volume ("/docs/a.txt" or "docs/a.txt").
func ResolvePath(ctx context.Context, cat *meta.Catalog, path string) (meta.Inode, error) {
	in, err := cat.GetInode(ctx, meta.RootIno)
	if err != nil {
		return in, err
	}
	for _, c := range strings.Split(path, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return in, fmt.Errorf("%s: '..' is not allowed in a volume path", path)
		}
		if !in.IsDir() {
			return in, fmt.Errorf("%s: not found in the volume (a component is not a directory)", path)
		}
		in, err = cat.Lookup(ctx, in.Ino, []byte(c))
		if errors.Is(err, syscall.ENOENT) {
			return in, fmt.Errorf("%s: not found in the volume", path)
		}
		if err != nil {
			return in, fmt.Errorf("%s: %w", path, err)
		}
	}
	return in, nil
}

// ShredPaths crypto-shreds the files at paths: each file's key record is deleted (audited as
// key.shred; secure_delete overwrites it in the page), every directory entry of the inode
// goes (all hard links), its objects are queued for deletion, and the catalog files are
// checkpointed so no image of the record stays in the WAL. Queued objects are then deleted
// from the remote (best effort; what fails stays queued). All paths are resolved before
// anything changes: one bad path changes nothing.
//
// The shred is final once the KEK versions in res.OldVersions are destroyed (an older copy
// of the catalog still holds the wrapped key): ShredNow / rotate --retire-old; on a
// passphrase volume not even then (res.Finality).
func ShredPaths(ctx context.Context, v *volume.Volume, paths []string, opt ShredOptions) (ShredResult, error) {
	opt.defaults(v)
	res := ShredResult{OldVersions: map[keys.KEKRef]int{}}
	sealCurrent(ctx, v, opt.Logger)
	seen := map[uint64]bool{}
	var inos []uint64
	for _, p := range paths {
		in, err := ResolvePath(ctx, v.Catalog(), p)
		if err != nil {
			return res, err
		}
		switch {
		case in.IsDir():
			return res, fmt.Errorf("%s is a directory: shred the files in it", p)
		case !in.IsRegular():
			return res, fmt.Errorf("%s is not a regular file (nothing encrypted to shred)", p)
		}
		if !seen[in.Ino] {
			seen[in.Ino] = true
			inos = append(inos, in.Ino)
		}
	}
	if err := shredInodes(ctx, v, inos, opt, &res); err != nil {
		return res, err
	}
	return res, finishShred(ctx, v, opt, &res)
}

// shredInodes destroys the key record and every entry of each inode, a few per transaction.
func shredInodes(ctx context.Context, v *volume.Volume, inos []uint64, opt ShredOptions, res *ShredResult) error {
	const per = 200
	for len(inos) > 0 {
		b := inos[:min(len(inos), per)]
		inos = inos[len(b):]
		if opt.Live != nil {
			if err := opt.Live.RevokeFiles(ctx, b); err != nil {
				return fmt.Errorf("shred: %w", err)
			}
		}
		now := time.Now().UnixNano()
		var files, links int
		var shredded []shreddedKey
		err := v.Catalog().Update(ctx, func(t *meta.Tx) error {
			files, links = 0, 0
			shredded = shredded[:0]
			for _, ino := range b {
				k, err := t.GetKey(ino)
				switch {
				case err == nil:
					in, err := t.GetInode(ino)
					if err != nil {
						return err
					}
					shredded = append(shredded, shreddedKey{file: in.FileID, ref: keys.KEKRef{Chain: k.Chain, Version: k.Version}})
					if err := t.ShredKey(ino, now, opt.Actor); err != nil {
						return err
					}
				case errors.Is(err, syscall.ENOENT): // no key (a rerun, or never written)
				default:
					return err
				}
				ls, err := t.Links(ino)
				if err != nil {
					return err
				}
				for _, l := range ls {
					if _, err := t.Unlink(l.Parent, l.Name, now, true); err != nil {
						return err
					}
				}
				if _, err := t.Reap(ino, now); err != nil { // an inode with no entry left
					return err
				}
				files++
				links += len(ls)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("shred: %w", err)
		}
		if opt.Live != nil {
			opt.Live.FilesRemoved(b)
		}
		res.Files += files
		res.Links += links
		res.ShreddedInode = append(res.ShreddedInode, b...)
		res.shredded = append(res.shredded, shredded...)
	}
	return nil
}

// finishShred drops staged chunks of shredded files, purges the catalog files, and deletes
// queued objects from the remote.
func finishShred(ctx context.Context, v *volume.Volume, opt ShredOptions, res *ShredResult) error {
	if err := finality(ctx, v, res); err != nil {
		return err
	}
	gone := map[uint64]bool{}
	for _, ino := range res.ShreddedInode {
		gone[ino] = true
	}
	if opt.Live == nil { // live: the data path dropped them (RevokeFiles)
		n, err := content.DiscardStaged(ctx, v.Catalog(), opt.StagingDir, gone)
		res.StagingFreed += n
		if err != nil {
			return err
		}
	}
	if err := v.Catalog().PurgeDeleted(ctx); err != nil {
		return fmt.Errorf("shred: erase the key records from the catalog files: %w", err)
	}
	// A shred's objects go now, not after the point-in-time window (FORMAT.md 12.13).
	if _, err := v.Catalog().ExpediteDeletes(ctx, opt.started); err != nil {
		return err
	}
	var err error
	if res.Queued, err = v.Catalog().PendingDeletes(ctx); err != nil {
		return err
	}
	res.Deleted, res.DeleteFailed = content.DrainDeletes(ctx, v.Catalog(), v.Store(), opt.Logger, deleteWorkers)
	sealCurrent(ctx, v, opt.Logger)
	return nil
}

// deleteWorkers is how many remote deletes an offline drain of the delete queue runs at a time.
const deleteWorkers = 8

// ShredUser makes every file of uid unrecoverable on a volume made with per-user KEKs: every
// version of the user's chain u<uid> is destroyed (catalog first, then the HSM), then the
// files keyed under that chain, and any other regular file uid owns, lose their key record
// and every entry, and their objects are deleted. Other users' files are untouched (except a
// file another user owns whose key is still in uid's chain — a derive-mode file uid created
// and gave away: it cannot be read without uid's KEK either, so it goes too). Files uid owns
// that are keyed under another chain are shredded by record only: res.OtherChains counts
// them, final once those versions are retired. Files whose key a chown moved into uid's
// chain are still wrapped under the previous owner's chain in older catalog copies: those
// versions are in res.OldVersions and res.Finality.Moved. Rerunning finishes an interrupted
// run.
func ShredUser(ctx context.Context, v *volume.Volume, uid uint32, opt ShredOptions) (ShredResult, error) {
	opt.defaults(v)
	if opt.Live != nil {
		defer opt.Live.KEKsChanged() // the user's chain is destroyed
	}
	res := ShredResult{OldVersions: map[keys.KEKRef]int{}}
	if !v.PerUser {
		return res, errors.New("this volume was not created with --kek-per-user: a user's files share the volume KEK; shred them by path")
	}
	sealCurrent(ctx, v, opt.Logger)
	chain := keys.UserChain(uid)
	keks, err := v.Catalog().ListKEKs(ctx)
	if err != nil {
		return res, err
	}
	var versions []meta.KEK
	var live []keys.KEKRef
	for _, k := range keks {
		if k.Chain == chain {
			versions = append(versions, k)
			if k.State != meta.KEKDestroyed {
				live = append(live, refOf(k))
			}
		}
	}
	// Which files: records in the chain (any version), and regular files uid owns.
	set := map[uint64]bool{}
	var inos []uint64
	add := func(ino uint64) {
		if !set[ino] {
			set[ino] = true
			inos = append(inos, ino)
		}
	}
	for _, k := range versions {
		var after uint64
		for {
			rows, err := v.Catalog().KeysUsing(ctx, chain, k.Version, after, 10000)
			if err != nil {
				return res, err
			}
			for _, r := range rows {
				add(r.Ino)
			}
			if len(rows) < 10000 {
				break
			}
			after = rows[len(rows)-1].Ino
		}
	}
	var after uint64
	for {
		owned, err := v.Catalog().RegularFilesOwnedBy(ctx, uid, after, 10000)
		if err != nil {
			return res, err
		}
		for _, ino := range owned {
			if !set[ino] {
				k, err := v.Catalog().GetKey(ctx, ino)
				if err == nil && k.Chain != chain {
					res.OtherChains++
				}
			}
			add(ino)
		}
		if len(owned) < 10000 {
			break
		}
		after = owned[len(owned)-1]
	}

	detail := fmt.Sprintf(`{"uid":%d,"chain":%q,"files":%d,"versions":%d}`, uid, chain, len(inos), len(live))
	if _, err := v.Catalog().AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: "user.shred", Actor: opt.Actor, Detail: detail}); err != nil {
		return res, err
	}
	// Keys first: once they are gone the files are unrecoverable, whatever happens next.
	if err := destroyVersions(ctx, v, live, opt.Actor, opt.Logger); err != nil {
		return res, err
	}
	res.Destroyed = live
	if err := shredInodes(ctx, v, inos, opt, &res); err != nil {
		return res, err
	}
	return res, finishShred(ctx, v, opt, &res) // OldVersions: uid's chain is destroyed, so not in them
}

// ShredVolume destroys every KEK version of every chain: first recorded (volume.shred in the
// audit log, which is sealed while the key still exists), then marked destroyed in the
// catalog, then destroyed in the provider. Every file of the volume is unrecoverable after;
// the catalog stays (names and tree are still in it: remove the state directory to drop
// them) and the volume can no longer be opened.
func ShredVolume(ctx context.Context, v *volume.Volume, opt ShredOptions) ([]keys.KEKRef, error) {
	opt.defaults(v)
	keks, err := v.Catalog().ListKEKs(ctx)
	if err != nil {
		return nil, err
	}
	var live []keys.KEKRef
	for _, k := range keks {
		if k.State != meta.KEKDestroyed {
			live = append(live, refOf(k))
		}
	}
	detail := fmt.Sprintf(`{"volume_id":%q,"versions":%d}`, v.IDString(), len(live))
	if _, err := v.Catalog().AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: "volume.shred", Actor: opt.Actor, Detail: detail}); err != nil {
		return nil, err
	}
	sealCurrent(ctx, v, opt.Logger)
	// Nothing can seal the catalog once the keys are gone, and no replica may outlive them.
	if err := v.DiscardReplica(ctx); err != nil {
		return nil, fmt.Errorf("delete the catalog's replica: %w", err)
	}
	if err := destroyVersions(ctx, v, live, opt.Actor, opt.Logger); err != nil {
		return live, err
	}
	return live, nil
}

// ShredNow makes earlier file shreds final at once on a wrap-mode HSM volume: it rotates
// every chain (re-wrapping every remaining file) and retires every older version, so no old
// copy of the catalog can open a shredded file's key again. On a passphrase volume it does
// the same, but an old copy keeps the retired versions, sealed under the passphrase it was
// made with (Finality.Passphrase). On a derive-mode volume it refuses (DeriveNowError):
// every file's key is derived from the same KEK version, so destroying that version needs
// every other file re-encrypted first.
func ShredNow(ctx context.Context, v *volume.Volume, ropt RotateOptions) (RotateResult, error) {
	if v.KeyMode != keys.ModeWrap {
		return RotateResult{}, DeriveNowError(v)
	}
	ropt.RetireOld = true
	return Rotate(ctx, v, ropt)
}

// DeriveNowError is ErrDeriveNow, saying on a passphrase volume that not even the rotation
// it points at is final against an older catalog copy.
func DeriveNowError(v *volume.Volume) error {
	if v.Kind == meta.ProviderPassphrase {
		return fmt.Errorf("%w; on this passphrase volume not even that is final against an older copy of the catalog, "+
			"which keeps the old version sealed under the passphrase it was made with", ErrDeriveNow)
	}
	return ErrDeriveNow
}

// ErrDeriveNow is returned by ShredNow on a derive-mode volume.
var ErrDeriveNow = errors.New("--now needs a wrap-mode volume: in derive mode every file's key is derived from the same KEK version, " +
	"so making one shred final means re-encrypting every other file under a new version: shred without --now, then run " +
	"coffer rotate --retire-old (it re-encrypts the other files and destroys the old version; until then an old catalog copy can open the file)")
