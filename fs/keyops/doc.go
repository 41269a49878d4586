// Package keyops runs coffer's key-lifecycle operations on an open volume: KEK rotation
// (re-wrapping every file key under a new KEK version, resumable), retiring old KEK
// versions, crypto-shredding a file, a user or the whole volume, changing a passphrase, and
// the provider-keyed MAC on audit entries. The commands call it on unmounted volumes (they
// hold the catalog's lock), the daemon on its mounted one.
//
// Rules every operation here keeps:
//   - A KEK version is first marked destroyed in the catalog (audited, material erased), then
//     destroyed in the HSM. A crash in between leaves a version the catalog calls destroyed
//     but the token still holds; every Retire and shred sweeps those again, so the
//     destruction is retried until it happened. Doing it the other way round would leave a
//     catalog that names a live version the token no longer has, which no command can open.
//   - Rows are rewritten by compare-and-swap (meta SwapKey) in batches, never one transaction
//     per row, and never while an HSM call is in flight inside a transaction.
//   - Nothing touches a remote object except deleting objects queued for deletion, and
//     derive-mode rotation, which writes each re-encrypted chunk as a new object and
//     records it (and queues the old one) only once it is complete (derive.go).
package keyops

import (
	"errors"
	"fmt"

	"coffer/fs/meta"
	"coffer/keys"
)

// ErrRetireBusy is returned when an old KEK version still has key records (or, in derive
// mode, chunks) that use it.
var ErrRetireBusy = errors.New("KEK version still in use")

func toKeys(k meta.KeyRecord) keys.Record {
	return keys.Record{Mode: keys.Mode(k.Mode), KEK: keys.KEKRef{Chain: k.Chain, Version: k.Version},
		IV: k.IV, Wrapped: k.Wrapped, Salt: k.Salt}
}

func toMeta(r keys.Record) meta.KeyRecord {
	return meta.KeyRecord{Mode: string(r.Mode), Chain: r.KEK.Chain, Version: r.KEK.Version,
		IV: r.IV, Wrapped: r.Wrapped, Salt: r.Salt}
}

func refOf(k meta.KEK) keys.KEKRef { return keys.KEKRef{Chain: k.Chain, Version: k.Version} }

func chainName(c string) string {
	if c == "" {
		return "volume"
	}
	return c
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
