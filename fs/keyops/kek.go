package keyops

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// refOf names catalog KEK version k as keys does.
func refOf(k meta.KEK) keys.KEKRef { return keys.KEKRef{Chain: k.Chain, Version: k.Version} }

// CreateKEKVersion makes KEK version ref in v's provider and then records it in the catalog
// as its chain's current version (audited as actor). It is the one place a version is made
// on an open volume: by a rotation, and by the filesystem for a user's first file under
// per-user KEKs. The provider comes first, so the catalog never names a version the
// provider lacks; if the catalog row cannot be written, the version is destroyed in the
// provider again (a failure to do so is logged on log, or slog's default if nil: nothing
// uses an unrecorded version). A new
// version of the volume's chain becomes v.KEK().
func CreateKEKVersion(ctx context.Context, v *volume.Volume, ref keys.KEKRef, actor string, log *slog.Logger) error {
	return createKEKVersion(ctx, v, ref, actor, log, nil)
}

// createKEKVersion is CreateKEKVersion with a test hook at "kek-created", between the
// provider call and the catalog row.
func createKEKVersion(ctx context.Context, v *volume.Volume, ref keys.KEKRef, actor string, log *slog.Logger, hook hookFunc) error {
	material, err := v.Provider().CreateKEK(ctx, ref)
	if err != nil {
		return fmt.Errorf("create KEK %s: %w", ref, err)
	}
	if err := hook.at("kek-created"); err != nil {
		return err
	}
	if _, err := v.Catalog().AddKEKVersion(ctx, meta.KEK{Chain: ref.Chain, Version: ref.Version, Material: material,
		Created: time.Now().UnixNano()}, actor); err != nil {
		if derr := v.Provider().DestroyKEK(ctx, ref); derr != nil {
			if log == nil {
				log = slog.Default()
			}
			log.Error("could not destroy a KEK version that was not recorded", "kek", ref.String(), "err", derr)
		}
		return fmt.Errorf("record KEK %s: %w", ref, err)
	}
	if ref.Chain == "" {
		v.SetKEK(ref)
	}
	return nil
}
