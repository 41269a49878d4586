package meta

import (
	"encoding/hex"
	"syscall"

	"coffer/crypto/format"
)

// Limits, matching ext4 where there is one.
const (
	MaxNameLen    = 255      // bytes in one directory entry name (NAME_MAX)
	MaxSymlinkLen = 4095     // bytes in a symlink target (PATH_MAX - 1)
	MaxLinks      = 65000    // hard links to one file (EXT4_LINK_MAX)
	MaxXattrName  = 255      // XATTR_NAME_MAX
	MaxXattrValue = 65536    // XATTR_SIZE_MAX
	RootIno       = 1        // the root directory; inode numbers are never reused
	modeTypeMask  = 0o170000 // S_IFMT
	modePermMask  = 0o7777
)

// Rename flags (renameat2), as the kernel passes them.
const (
	RenameNoReplace = 1 // RENAME_NOREPLACE
	RenameExchange  = 2 // RENAME_EXCHANGE
)

// Setxattr flags, as the kernel passes them.
const (
	XattrCreate  = 1 // XATTR_CREATE: fail with EEXIST if present
	XattrReplace = 2 // XATTR_REPLACE: fail with ENODATA if absent
)

// Key modes, provider kinds and KEK states as stored.
const (
	KeyModeWrap   = "wrap"
	KeyModeDerive = "derive"

	ProviderPKCS11     = "pkcs11"
	ProviderPassphrase = "passphrase"
	ProviderKeyfile    = "keyfile"

	KEKActive    = "active"
	KEKOld       = "old"
	KEKDestroyed = "destroyed"
)

// Volume is the one row describing the volume. It holds no secret: the HSM
// PIN and the passphrase never reach the catalog.
type Volume struct {
	ID            [16]byte // volume id, bound into every object
	FormatVersion uint32
	BlockSize     int64  // plaintext bytes per sealed block
	ChunkSize     int64  // plaintext bytes per chunk object; a multiple of BlockSize
	Remote        string // already redacted by the caller
	KeyMode       string // KeyModeWrap | KeyModeDerive
	Provider      string // ProviderPKCS11 | ProviderPassphrase | ProviderKeyfile
	HSMModule     string // PKCS#11 module path (pkcs11 only)
	HSMToken      string // token label (pkcs11 only)
	PerUserKEKs   bool
	KDFParams     []byte // passphrase KDF parameters (salt, costs); nil otherwise
	Created       int64  // ns since the epoch

	// Root* describe the root directory made by Create (ino 1); they are not
	// stored in the volume row and are zero when read back. RootMode's type
	// bits are ignored; 0 means 0755.
	RootMode uint32
	RootUID  uint32
	RootGID  uint32
}

// Inode is one file system object. Times are ns since the epoch.
type Inode struct {
	Ino    uint64
	Gen    uint64
	Mode   uint32 // S_IFMT type bits | permission bits
	UID    uint32
	GID    uint32
	Nlink  uint32 // a directory has 2 + its subdirectories
	Size   int64  // bytes; a symlink's is len(Target)
	Rdev   uint32 // device number for character and block devices
	Atime  int64
	Mtime  int64
	Ctime  int64
	FileID [16]byte // crypto identity of a regular file; zero for anything else
	Target []byte   // symlink target
	Stored int64    // plaintext bytes held in chunk objects (holes excluded); read-only
}

// IsDir, IsRegular and IsSymlink test the type bits.
func (i *Inode) IsDir() bool     { return i.Mode&modeTypeMask == syscall.S_IFDIR }
func (i *Inode) IsRegular() bool { return i.Mode&modeTypeMask == syscall.S_IFREG }
func (i *Inode) IsSymlink() bool { return i.Mode&modeTypeMask == syscall.S_IFLNK }

// DirEntry is one directory entry as ReadDir returns it.
type DirEntry struct {
	Name []byte
	Ino  uint64
	Mode uint32
}

// DirEntryPlus is a directory entry with the whole inode (readdirplus).
type DirEntryPlus struct {
	Name  []byte
	Inode Inode
}

// AttrChange lists what SetAttr changes; nil fields stay as they are.
type AttrChange struct {
	Mode  *uint32 // permission bits (07777); the type bits never change
	UID   *uint32
	GID   *uint32
	Size  *int64 // truncate or extend (regular files only)
	Atime *int64
	Mtime *int64 // when Size changes and Mtime is nil, mtime becomes now
	Ctime *int64 // nil means now
}

// KeyRecord is a file's key record: a wrapped DEK (wrap mode) or the salt
// the DEK is derived from (derive mode). Nothing in it is secret.
type KeyRecord struct {
	Mode    string // KeyModeWrap | KeyModeDerive
	Chain   string // "" for the volume chain, keys.UserChain(uid) ("u1000") for per-user KEKs
	Version uint32 // KEK version that wrapped it (or derive key version)
	IV      []byte
	Wrapped []byte
	Salt    []byte
}

// InoKey is one row of a KeysUsing batch.
type InoKey struct {
	Ino    uint64
	FileID [16]byte
	Key    KeyRecord
}

// KEK is one version of a key-encryption key in a chain.
type KEK struct {
	Chain     string
	Version   uint32
	State     string // KEKActive | KEKOld | KEKDestroyed
	Material  []byte // passphrase mode: the sealed KEK; nil otherwise and once destroyed
	Created   int64
	Destroyed int64 // 0 unless destroyed
}

// Chunk is one chunk of a regular file: plaintext bytes
// [Index*ChunkSize, Index*ChunkSize+Length) live in one remote object.
type Chunk struct {
	Index      int64
	Object     [16]byte // random object id; a new one every time the chunk is written
	Length     int64    // plaintext bytes in the object
	KeyVersion uint32   // derive mode: key version the object was sealed under
}

// Upload is one entry of the staging upload queue.
type Upload struct {
	ID        int64
	Ino       uint64
	Index     int64  // chunk index
	Staging   string // staging file name (ciphertext only)
	Bytes     int64
	State     string // caller-defined, e.g. "pending", "uploading"
	Attempts  int
	LastError string
	Created   int64
}

// PendingDelete is one remote object waiting to be deleted.
type PendingDelete struct {
	Name      string // ObjectName(id) for chunk objects; other names as enqueued
	Enqueued  int64
	Attempts  int
	NotBefore int64
	LastError string
}

// AuditEvent is one row of the audit log.
type AuditEvent struct {
	Seq      int64
	Time     int64  // ns since the epoch
	Event    string // e.g. "kek.add"
	Actor    string // who did it, e.g. "uid:0" or "coffer rotate"
	Detail   string // JSON object; never a secret
	PrevHash []byte // hash of the previous row (32 zero bytes for the first)
	Hash     []byte // SHA-256 over PrevHash and the row; see auditHash
	MAC      []byte // reserved for an HSM-held MAC key; nil for now
}

// Stats are the numbers statfs needs.
type Stats struct {
	Inodes     int64 // all inodes, including orphans not yet reaped
	Bytes      int64 // sum of file sizes
	Chunks     int64
	ChunkBytes int64 // plaintext bytes held in chunk objects
}

// Problem is one inconsistency found by Check.
type Problem struct {
	Ino    uint64 // 0 when not about one inode
	Detail string
}

// ObjectName is the remote name of a chunk object (FORMAT.md section 2): the
// name under which a replaced object goes on the delete queue, so the delete
// worker passes queue names to the remote as they are.
func ObjectName(id [16]byte) string { return format.ObjectName(format.ID(id)) }

// hexID is how ids appear in audit details and messages.
func hexID(id [16]byte) string { return hex.EncodeToString(id[:]) }
