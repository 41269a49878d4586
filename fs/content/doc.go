// Package content is coffer's data path, below FUSE: it reads and writes
// the content of regular files.
//
// Reads go offset -> chunk -> blocks: a block cache (plaintext, bounded,
// keyed by object id and block, so entries never go stale) or one ranged
// GET of exactly the sealed blocks needed, each authenticated against the
// binding the catalog gives (volume, file, object, block index, last-block
// flag). Sequential reads prefetch the next window concurrently, under the
// data path's own context. A failed authentication, a missing or short object
// is EIO and an ERROR log line naming the object and the inode; never data.
//
// Writes land in per-chunk staging files that hold ciphertext only
// (FORMAT.md section 10): one slot per block, each a random-nonce box under a
// key derived from the file's DEK and the staging id. Each staging file is
// on the catalog's upload queue from the moment it exists. Uploaders (in
// the background, several at once) assemble a dirty chunk (staged blocks
// over the committed object's blocks, zeros for holes), seal it under a
// fresh object id, put it, and swap the chunk row in one catalog
// transaction that also queues the replaced object for deletion; a deleter
// drains that queue (DrainDeletes, which offline key operations run once
// too). A chunk that turns out all zeros is dropped, not
// stored. fsync waits for the file's chunks and a durable catalog commit;
// close does not wait. With the remote down, writes fill staging up to the
// cap (then ENOSPC) and fsync fails with EIO after SyncTimeout; staged data
// survives crashes and unmounts and is uploaded by Recover at the next
// mount.
//
// coffer lock (WipeKeys, after the volume's keyring is locked) zeroes every
// DEK the data path holds, drops every object cipher and staging key built
// from them, and zeroes the plaintext block cache, while everything keeps
// running. Reads, writes, fallocate and truncate then fail with
// EKEYREVOKED, also through files opened before, and so does fsync when
// something is staged; staged data stays staged (ciphertext) and its
// uploads pause without counting as failures until Resume after unlock.
// Whoever builds a key object or copies cached plaintext checks a wipe
// generation afterwards (File.keyGen, blockCache.gen), so nothing built
// or copied concurrently with the wipe survives it or reads zeros.
//
// The parts: DataPath (datapath.go) holds what they share (catalog, keys,
// remote, the open-file table, the block cache, staged bytes, wipe state);
// File and chunk are one file's and one chunk's state. Reads: read.go,
// fetch.go (fetches, prefetch), cache.go. Writes: write.go, staging.go, and
// the uploader type (uploader.go: scheduling, workers; upload.go: one
// chunk). The deleter type and DrainDeletes (deleter.go) empty the delete
// queue. Also truncate.go, recover.go, shred.go (Revoke, ReloadKeyRecords).
//
// Locking is per file and per chunk; there is no global lock on the data
// path (lock order: see DataPath and File).
package content
