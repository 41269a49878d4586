package volume

import (
	"path/filepath"

	"coffer/fs/meta"
)

// A volume's state directory (coffer init --state, 0700) holds all it keeps on the host:
//
//	catalog.db (-wal, -shm)  the catalog (fs/meta opens it by the directory)
//	staging/                 ciphertext waiting for upload (mount --staging-dir puts it elsewhere)
//	objcache/                copies of uploaded objects (mount --disk-cache)
//	daemon.log               the background daemon's log
//
// These functions are the only code that names its parts.

// CatalogFile is the catalog's SQLite file.
func CatalogFile(state string) string { return filepath.Join(state, meta.FileName) }

// StagingDir is where staged ciphertext is kept unless mount --staging-dir says otherwise.
func StagingDir(state string) string { return filepath.Join(state, "staging") }

// DiskCacheDir holds the disk cache of uploaded objects (mount --disk-cache).
func DiskCacheDir(state string) string { return filepath.Join(state, "objcache") }

// DaemonLog is the log of a daemon running in the background.
func DaemonLog(state string) string { return filepath.Join(state, "daemon.log") }
