package meta

import (
	"context"
	"database/sql"
	"fmt"
)

// applicationID marks a coffer catalog ("CFFR") so Open refuses any other
// SQLite file.
const applicationID = 0x43464652

// A migration moves the schema from version-1 to version. Migrations run in
// order, all of them in one transaction, at Open (and at Create, from 0).
type migration struct {
	version int
	name    string
	stmts   []string
}

// migrations is a var so that internal tests can append a future version.
var migrations = []migration{
	{1, "initial schema", schemaV1},
	{2, "replica epoch", schemaV2},
}

func latestVersion() int { return migrations[len(migrations)-1].version }

// Tables are STRICT so a wrong type is an error, not a silent conversion.
// Names are BLOBs: the kernel hands over bytes, not UTF-8.
var schemaV1 = []string{
	`CREATE TABLE volume (
		id             INTEGER PRIMARY KEY CHECK (id = 1),
		volume_id      BLOB    NOT NULL CHECK (length(volume_id) = 16),
		format_version INTEGER NOT NULL,
		block_size     INTEGER NOT NULL CHECK (block_size > 0),
		chunk_size     INTEGER NOT NULL CHECK (chunk_size >= block_size AND chunk_size % block_size = 0),
		remote         TEXT    NOT NULL,
		key_mode       TEXT    NOT NULL CHECK (key_mode IN ('wrap', 'derive')),
		provider       TEXT    NOT NULL CHECK (provider IN ('pkcs11', 'passphrase', 'keyfile')),
		hsm_module     TEXT    NOT NULL DEFAULT '',
		hsm_token      TEXT    NOT NULL DEFAULT '',
		per_user_keks  INTEGER NOT NULL DEFAULT 0 CHECK (per_user_keks IN (0, 1)),
		kdf_params     BLOB,
		created_ns     INTEGER NOT NULL,
		sync_count     INTEGER NOT NULL DEFAULT 0 -- bumped by Sync to force a synced WAL commit
	) STRICT`,

	`CREATE TABLE kek_versions (
		chain        TEXT    NOT NULL,
		version      INTEGER NOT NULL CHECK (version > 0 AND version <= 4294967295),
		state        TEXT    NOT NULL CHECK (state IN ('active', 'old', 'destroyed')),
		material     BLOB,
		created_ns   INTEGER NOT NULL,
		destroyed_ns INTEGER,
		PRIMARY KEY (chain, version),
		CHECK (state <> 'destroyed' OR material IS NULL)
	) STRICT, WITHOUT ROWID`,
	// At most one current version per chain.
	`CREATE UNIQUE INDEX kek_versions_active ON kek_versions (chain) WHERE state = 'active'`,

	`CREATE TABLE inodes (
		ino      INTEGER PRIMARY KEY AUTOINCREMENT,
		gen      INTEGER NOT NULL DEFAULT 1,
		mode     INTEGER NOT NULL,
		uid      INTEGER NOT NULL,
		gid      INTEGER NOT NULL,
		nlink    INTEGER NOT NULL CHECK (nlink >= 0),
		size     INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
		rdev     INTEGER NOT NULL DEFAULT 0,
		atime_ns INTEGER NOT NULL,
		mtime_ns INTEGER NOT NULL,
		ctime_ns INTEGER NOT NULL,
		file_id  BLOB CHECK (file_id IS NULL OR length(file_id) = 16),
		target   BLOB
	) STRICT`,
	`CREATE UNIQUE INDEX inodes_file_id ON inodes (file_id) WHERE file_id IS NOT NULL`,
	// Orphans (unlinked while open, or a crash before Reap) are found at mount.
	`CREATE INDEX inodes_orphans ON inodes (ino) WHERE nlink = 0`,

	`CREATE TABLE dentries (
		parent INTEGER NOT NULL REFERENCES inodes (ino),
		name   BLOB    NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
		ino    INTEGER NOT NULL REFERENCES inodes (ino),
		PRIMARY KEY (parent, name)
	) STRICT, WITHOUT ROWID`,
	// By child: the parent of a directory (subtree checks), links of an inode.
	`CREATE INDEX dentries_ino ON dentries (ino)`,

	`CREATE TABLE xattrs (
		ino   INTEGER NOT NULL REFERENCES inodes (ino),
		name  BLOB    NOT NULL,
		value BLOB    NOT NULL,
		PRIMARY KEY (ino, name)
	) STRICT, WITHOUT ROWID`,

	`CREATE TABLE chunks (
		ino         INTEGER NOT NULL REFERENCES inodes (ino),
		idx         INTEGER NOT NULL CHECK (idx >= 0),
		object      BLOB    NOT NULL CHECK (length(object) = 16),
		length      INTEGER NOT NULL CHECK (length >= 0),
		key_version INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (ino, idx)
	) STRICT, WITHOUT ROWID`,
	// An object id is sealed exactly once: two chunks can never share one.
	`CREATE UNIQUE INDEX chunks_object ON chunks (object)`,

	`CREATE TABLE file_keys (
		ino     INTEGER PRIMARY KEY REFERENCES inodes (ino),
		mode    TEXT    NOT NULL CHECK (mode IN ('wrap', 'derive')),
		chain   TEXT    NOT NULL,
		version INTEGER NOT NULL,
		iv      BLOB,
		wrapped BLOB,
		salt    BLOB
	) STRICT`,
	`CREATE INDEX file_keys_chain_version ON file_keys (chain, version, ino)`,

	`CREATE TABLE uploads (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		ino        INTEGER NOT NULL,
		idx        INTEGER NOT NULL,
		staging    TEXT    NOT NULL,
		bytes      INTEGER NOT NULL,
		state      TEXT    NOT NULL,
		attempts   INTEGER NOT NULL DEFAULT 0,
		last_error TEXT    NOT NULL DEFAULT '',
		created_ns INTEGER NOT NULL
	) STRICT`,
	`CREATE INDEX uploads_state ON uploads (state, id)`,
	`CREATE INDEX uploads_ino ON uploads (ino, idx)`,

	`CREATE TABLE deletes (
		name          TEXT    PRIMARY KEY,
		enqueued_ns   INTEGER NOT NULL,
		attempts      INTEGER NOT NULL DEFAULT 0,
		not_before_ns INTEGER NOT NULL,
		last_error    TEXT    NOT NULL DEFAULT ''
	) STRICT, WITHOUT ROWID`,
	`CREATE INDEX deletes_due ON deletes (not_before_ns, name)`,

	`CREATE TABLE audit (
		seq       INTEGER PRIMARY KEY AUTOINCREMENT,
		time_ns   INTEGER NOT NULL,
		event     TEXT    NOT NULL,
		actor     TEXT    NOT NULL,
		detail    TEXT    NOT NULL,
		prev_hash BLOB    NOT NULL,
		hash      BLOB    NOT NULL,
		mac       BLOB
	) STRICT`,
}

// schemaV2 adds the owner epoch of the catalog's replicas (fs/replica): a
// restore elsewhere raises the epoch in the remote's marker, and a daemon whose
// catalog holds an older one stops writing. 0: never replicated.
var schemaV2 = []string{
	`ALTER TABLE volume ADD COLUMN replica_epoch INTEGER NOT NULL DEFAULT 0 CHECK (replica_epoch BETWEEN 0 AND 4294967295)`,
}

// migrate brings the schema to latestVersion in one transaction. fresh is
// true only for Create: an existing file at version 0 is not a catalog.
func migrate(ctx context.Context, db *sql.DB, fresh bool) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return wrapSQL("migrate: begin", err)
	}
	defer tx.Rollback()

	var have, appID int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&have); err != nil {
		return wrapSQL("migrate: read schema version", err)
	}
	if err := tx.QueryRowContext(ctx, "PRAGMA application_id").Scan(&appID); err != nil {
		return wrapSQL("migrate: read application id", err)
	}
	if err := checkVersion(have, appID, fresh); err != nil {
		return err
	}
	if have == latestVersion() {
		return nil
	}
	if fresh {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA application_id = %d", applicationID)); err != nil {
			return wrapSQL("migrate: set application id", err)
		}
	}
	for _, m := range migrations {
		if m.version <= have {
			continue
		}
		for _, s := range m.stmts {
			if _, err := tx.ExecContext(ctx, s); err != nil {
				return wrapSQL(fmt.Sprintf("migrate to schema %d (%s)", m.version, m.name), err)
			}
		}
	}
	// user_version lives in the database header and is transactional.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", latestVersion())); err != nil {
		return wrapSQL("migrate: set schema version", err)
	}
	if err := tx.Commit(); err != nil {
		return wrapSQL("migrate: commit", err)
	}
	return nil
}

func checkVersion(have, appID int, fresh bool) error {
	if fresh {
		if have != 0 || appID != 0 {
			return fmt.Errorf("meta: create catalog: database file is not empty")
		}
		return nil
	}
	if appID != applicationID || have == 0 {
		return fmt.Errorf("meta: open catalog: not a coffer catalog (application id %#x, schema %d)", appID, have)
	}
	if have > latestVersion() {
		return fmt.Errorf("meta: open catalog: schema version %d is newer than this coffer supports (%d); use a newer coffer", have, latestVersion())
	}
	return nil
}
