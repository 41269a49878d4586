package fusefront

import "context"

// dataPath is what the node layer needs from the data path. content.DataPath
// provides it (see New); tests wrap it to inject faults.
type dataPath interface {
	Open(ctx context.Context, ino uint64) (dataFile, error)
	// Attr is the size and mtime of a file with open handles or staged
	// writes; they override the catalog's.
	Attr(ino uint64) (size, mtimeNs int64, ok bool)
	// StagedBytes is what the file has staged and not yet committed.
	StagedBytes(ino uint64) int64
	// Idle: nothing of ino is open, pinned or staged in the data path.
	Idle(ino uint64) bool
	Truncate(ctx context.Context, ino uint64, size int64) error
	Discard(ctx context.Context, ino uint64) error
	// WipeKeys zeroes every key and cached plaintext the data path holds
	// (coffer lock, after the volume's keyring is locked).
	WipeKeys()
	// Resume restarts uploads paused by a lock (after unlock).
	Resume()
	// ReloadKeyRecords makes every open file take its key record from the
	// catalog again (after a live rotation re-wrapped them).
	ReloadKeyRecords(ctx context.Context) (int, error)
}

// dataFile is one open file of the data path, shared by every handle on the
// inode (refcounted by the data path).
type dataFile interface {
	ReadAt(ctx context.Context, dst []byte, off int64) (int, error)
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	Allocate(ctx context.Context, off, n int64, mode uint32) error
	Seek(ctx context.Context, off int64, whence int) (int64, error)
	Flush(ctx context.Context) error
	Sync(ctx context.Context) error
	Release(ctx context.Context) error
}
