// Package format implements coffer's content format: the byte layout of a
// chunk object (a 32-byte header followed by AES-256-GCM sealed blocks), the
// per-object key derivation, the bindings that make swaps, truncation and
// rollback detectable, the offset arithmetic that turns a file offset into one
// ranged GET, and a small random-nonce "box" for data that is sealed more than
// once (staging, caches). It also seals the container of catalog replica
// objects (a 64-byte header followed by 64 KiB blocks sealed the same way;
// SealReplica, OpenReplica).
//
// FORMAT.md at the repository root specifies every byte; testdata/vectors.json
// holds test vectors that both this package and test/format/decode.py check.
//
// The package does no I/O. Keys are taken as []byte and never converted to
// strings; every error names object ids and block indices, never key bytes.
package format
