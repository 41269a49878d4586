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
