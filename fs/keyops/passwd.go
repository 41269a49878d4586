package keyops

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"coffer/fs/meta"
	"coffer/keys"
	"coffer/keys/passphrase"
)

// ChangePassphrase re-seals every live KEK version of a passphrase volume under a key
// derived from newPass (fresh salt, the volume's current Argon2id cost), storing the new
// parameters and materials in one transaction with a passphrase.change audit entry. The KEKs
// themselves, and so every key record and all content, stay as they are. A wrong oldPass
// fails with keys.ErrWrongPassphrase before anything is written. cat must be open for
// writing (its lock keeps a mount out). Neither passphrase is kept; the caller zeroes them.
func ChangePassphrase(ctx context.Context, cat *meta.Catalog, oldPass, newPass []byte, actor string) error {
	mv, err := cat.Volume(ctx)
	if err != nil {
		return err
	}
	if mv.Provider != meta.ProviderPassphrase {
		return fmt.Errorf("this volume's keys are in HSM token %q, not under a passphrase: change the token's PIN with its own tools (e.g. pkcs11-tool --change-pin)", mv.HSMToken)
	}
	if len(newPass) == 0 {
		return errors.New("the new passphrase is empty")
	}
	if bytes.Equal(oldPass, newPass) {
		return errors.New("the new passphrase is the same as the old one")
	}
	var params passphrase.Params
	if err := params.UnmarshalBinary(mv.KDFParams); err != nil {
		return fmt.Errorf("catalog holds bad passphrase parameters: %w", err)
	}
	p, err := passphrase.OpenContext(ctx, oldPass, mv.ID, params)
	if err != nil {
		return err
	}
	defer p.Wipe()
	keks, err := cat.ListKEKs(ctx)
	if err != nil {
		return err
	}
	materials := map[keys.KEKRef][]byte{}
	for _, k := range keks {
		if k.State != meta.KEKDestroyed {
			materials[refOf(k)] = k.Material
		}
	}
	// Seal what was written so far with the old key, before this command's own entry.
	cur, err := cat.CurrentKEK(ctx, "")
	if err != nil {
		return err
	}
	if err := p.Load(refOf(cur), cur.Material); err != nil {
		return err
	}
	if _, err := SealAudit(ctx, cat, p, mv.ID, refOf(cur)); err != nil {
		slog.Warn("audit log not sealed", "err", err)
	}
	newParams, newMats, err := p.ChangePassphraseContext(ctx, newPass, params.Cost, materials)
	if err != nil {
		return err
	}
	enc, err := newParams.MarshalBinary()
	if err != nil {
		return err
	}
	now := time.Now().UnixNano()
	err = cat.Update(ctx, func(t *meta.Tx) error {
		if err := t.SetKDFParams(enc); err != nil {
			return err
		}
		for ref, m := range newMats {
			if err := t.SetKEKMaterial(ref.Chain, ref.Version, m); err != nil {
				return err
			}
		}
		_, err := t.AppendAudit(meta.AuditEvent{Time: now, Event: "passphrase.change", Actor: actor,
			Detail: fmt.Sprintf(`{"kek_versions":%d,"kdf_time":%d,"kdf_memory_kib":%d,"kdf_threads":%d}`,
				len(newMats), newParams.Time, newParams.MemoryKiB, newParams.Threads)})
		return err
	})
	if err != nil {
		return fmt.Errorf("store the re-sealed keys: %w (nothing changed: the old passphrase still works)", err)
	}
	// Materials sealed under the old passphrase leave the WAL (an old catalog copy still
	// opens with the old passphrase: only re-keying makes old copies useless).
	_ = cat.PurgeDeleted(ctx)
	if _, err := SealAudit(ctx, cat, p, mv.ID, refOf(cur)); err != nil {
		slog.Warn("audit log not sealed", "err", err)
	}
	return nil
}
