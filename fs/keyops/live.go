package keyops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"coffer/fs/volume"
	"coffer/keys"
)

// ErrMountLocked is what a key operation on a locked mount says.
var ErrMountLocked = errors.New("the mount is locked: coffer unlock first")

// ErrDeriveLive refuses a derive-mode rotation on a live mount: it re-encrypts chunks,
// which needs the data path stopped.
var ErrDeriveLive = errors.New("derive-mode rotation runs on an unmounted volume: coffer unmount first")

// LiveFS is the mounted file system's part in a key operation the daemon runs on a live
// mount (fusefront.FS implements it).
type LiveFS interface {
	// RevokeFiles is called before the key records of inos are destroyed: every descriptor
	// still open on them must fail from then on, and the file system drops their keys,
	// ciphers, staged writes and cached plaintext (its own and the kernel's pages).
	RevokeFiles(ctx context.Context, inos []uint64) error
	// FilesRemoved is called once the catalog no longer holds inos: the kernel forgets
	// their names.
	FilesRemoved(inos []uint64)
	// ReloadKeyRecords makes every open file take its key record from the catalog again
	// (after a rotation re-wrapped them).
	ReloadKeyRecords(ctx context.Context) error
	// KEKsChanged: the current KEK versions moved (rotation, a destroyed user chain); new
	// files must take the new ones.
	KEKsChanged()
}

// mountedErr words an error of a key operation on a live mount for the operator.
func mountedErr(err error) error {
	if errors.Is(err, keys.ErrLocked) {
		return ErrMountLocked
	}
	return err
}

// RotateMounted is a wrap-mode rotation on a mounted volume, in the only order that keeps
// every open file readable: Rotate re-wraps every key record (new files get the new
// version as soon as it exists: the file system checks it in each create's transaction);
// then every open file takes its re-wrapped record, and only then, with retire, are older
// versions destroyed, so no open file keeps a record under a destroyed version.
func RotateMounted(ctx context.Context, v *volume.Volume, live LiveFS, retire bool, opt RotateOptions) (RotateResult, error) {
	start := time.Now()
	if v.Locked() {
		return RotateResult{}, ErrMountLocked
	}
	if v.KeyMode != keys.ModeWrap {
		return RotateResult{}, ErrDeriveLive
	}
	defer live.KEKsChanged() // new files take the new version at once
	opt.Mounted, opt.RetireOld = true, false
	res, err := Rotate(ctx, v, opt)
	if err != nil {
		return res, fmt.Errorf("%w (rerun coffer rotate to finish: %d key records were re-wrapped before it stopped)", mountedErr(err), res.Rewrapped)
	}
	if err := live.ReloadKeyRecords(ctx); err != nil {
		return res, fmt.Errorf("rotated, but open files could not take their new key records: %w (rerun coffer rotate --retire-old)", mountedErr(err))
	}
	if retire {
		if res.Retired, err = Retire(ctx, v, opt.Actor, opt.Logger); err != nil {
			return res, fmt.Errorf("rotated, but retiring the older versions failed: %w", mountedErr(err))
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}
