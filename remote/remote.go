// Package remote is coffer's object store: a narrow interface over rclone
// (used as a Go library, pinned at v1.76.0) holding opaque, immutable objects
// under short names.
//
// # Remote strings
//
// Open accepts three forms of remote string:
//
//   - a name from the user's rclone.conf, e.g. "s3:bucket/prefix" (the file named
//     by RCLONE_CONFIG, else rclone's default location; it is only ever read,
//     never written back);
//   - an on-the-fly connection string, e.g.
//     ":s3,provider=Minio,endpoint='http://10.0.0.5:9000':bucket/prefix"
//     (values containing ':' or ',' must be quoted);
//   - an absolute local path, e.g. "/srv/coffer-objects" (created if missing).
//
// Credentials never appear in a remote string: CheckRemote refuses any string
// that carries one (passwords, secret keys, tokens, access key ids, ...), and
// points to rclone.conf or rclone's environment variables
// (RCLONE_CONFIG_<NAME>_<KEY> for a named remote, RCLONE_<BACKEND>_<KEY> for
// an on-the-fly one). A string that passes CheckRemote is safe to store in
// the catalog; Redact is the belt and braces for display.
//
// Only the local, s3 and sftp backends are linked in (rclone also registers
// crypt as a side effect): with rclone's backend/all a cold build took about
// 4x longer (272 s against 61-70 s on 2 cores) and the binary grew from 39 MB
// to 107 MB. Any other backend type fails at Open with rclone's "didn't find
// backend called ...". rclone has no stable Go API, hence the exact pin.
//
// # Objects
//
// Names are short: [a-z0-9/_.-], no empty or "."/".." components, at most
// 200 bytes. Content objects are written once under a fresh name and never
// overwritten: local and sftp writes are not atomic, so a crash mid-write can
// leave a truncated object, which is harmless only if nothing refers to it
// yet. Put on an existing name does replace it (the conformance suite checks
// it), which coffer uses only for small bookkeeping objects.
//
// # Behaviour worth knowing
//
// Every Store returned by Open retries transient errors with exponential
// backoff and jitter (see WithRetries), and returns as soon as the caller's
// context ends, even while rclone is still sleeping in its pacer: the call
// is abandoned (it no longer touches the caller's buffer or callback) and
// finishes in the background.
//
// A GetRange is one ranged GET on S3, with no HEAD first: the size comes back
// in Content-Range, so a range past the end still fails cleanly, and a server
// that ignores Range is caught by the body's length. A Put to S3 is one PUT
// carrying Content-MD5, so corruption on the way up fails the Put (coffer sets
// no_head=true: rclone's HEAD after the upload would only read back metadata).
// Puts to a local folder are fsynced (with their folders) unless
// Options.NoSync; reads of a local folder keep up to 256 descriptors open
// between calls, dropped on Put, Delete and Close.
//
// After a failure, rclone's pacer spaces calls out (S3: up to 2 s apart,
// decaying by a quarter per success), so the first seconds after an outage
// are slow; each low-level retry (Options.LowLevelRetries) pays that too.
//
// coffer sets sftp's disable_concurrent_reads=true unless the user set it:
// with concurrent reads a 4 KiB range at the start of a 4 MiB object took
// 5-13 ms on loopback (rclone pumps the object to its end), without 0.5-0.8
// ms. Tune further in the remote string itself: for sftp "set_modtime=false"
// saves a round trip per Put; for S3 "upload_cutoff=..." chooses when
// multipart uploads start (single PUTs are atomic and retried whole).
package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Store is an object store holding opaque objects under short names.
// Implementations are safe for concurrent use.
type Store interface {
	// Put stores data as the whole object name, replacing any object of
	// that name. data must not be modified until Put returns.
	Put(ctx context.Context, name string, data []byte) error
	// GetRange returns exactly n bytes of name starting at off, or an
	// error. n = -1 reads to the end of the object. A range that runs past
	// the end of the object is an error wrapping io.ErrUnexpectedEOF; a
	// missing object is ErrNotFound.
	GetRange(ctx context.Context, name string, off, n int64) ([]byte, error)
	// Stat returns the size of name, or ErrNotFound.
	Stat(ctx context.Context, name string) (size int64, err error)
	// Delete removes name. Deleting a missing object is not an error.
	Delete(ctx context.Context, name string) error
	// List calls fn for every object whose name starts with prefix,
	// recursively, in no particular order. An error from fn stops the
	// listing and is returned. prefix need not end at a '/'.
	List(ctx context.Context, prefix string, fn func(name string, size int64) error) error
	// String describes the store with any sensitive value redacted.
	String() string
	// Close releases connections and aborts unfinished uploads. Calls
	// after Close fail with ErrClosed.
	Close(ctx context.Context) error
}

// Errors callers test with errors.Is.
var (
	// ErrNotFound means the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrInvalidName means a name or prefix broke the naming rules.
	ErrInvalidName = errors.New("invalid object name")
	// ErrClosed means the Store was used after Close.
	ErrClosed = errors.New("store is closed")
	// ErrCredentials means a remote string carried a credential.
	ErrCredentials = errors.New("remote string carries a credential")
)

// MaxNameLen is the longest object name accepted, in bytes. Local and sftp
// refuse path components over 255 bytes; whole names stay well below.
const MaxNameLen = 200

// Options tune a Store. The zero value gives sensible defaults.
type Options struct {
	// Retries is how many times a failed call is tried again on a transient
	// error: 0 means the default (4), a negative value means never.
	Retries int
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts (defaults 100 ms and 5 s); each wait is jittered.
	MinBackoff, MaxBackoff time.Duration
	// LowLevelRetries is rclone's own per-request retry count (default 2).
	// rclone's default of 10 can stall a caller for minutes.
	LowLevelRetries int
	// ConnectTimeout bounds connection set-up (default 10 s).
	ConnectTimeout time.Duration
	// IdleTimeout is how long a transfer may make no progress before it
	// fails (rclone's --timeout, default 60 s).
	IdleTimeout time.Duration
	// NoSync skips the fsync after each Put on a local-folder remote.
	// Only for benchmarks and throwaway tests: without it a Put is not
	// durable against power loss.
	NoSync bool
	// Logger receives coffer's remote logs (retries) and rclone's own
	// ERROR-level logs (process-wide: the last Open with a Logger wins).
	// nil means slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Retries == 0 {
		o.Retries = 4
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.LowLevelRetries <= 0 {
		o.LowLevelRetries = 2
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Open makes a Store for remote (see the package doc for the forms
// accepted). It refuses remote strings carrying credentials. Open does not
// contact S3 (an unreachable S3 remote fails at the first call); sftp
// connects here, so bound ctx if the server may hang.
func Open(ctx context.Context, remote string, opt Options) (Store, error) {
	if opt.Logger != nil {
		setRcloneLogger(opt.Logger)
	}
	opt = opt.withDefaults()
	s, err := openRclone(ctx, remote, opt)
	if err != nil {
		return nil, err
	}
	return WithRetries(s, opt), nil
}

// ValidName reports whether name is an acceptable object name, with the
// reason when it is not. The error wraps ErrInvalidName.
func ValidName(name string) error {
	if err := checkChars(name); err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if strings.HasSuffix(name, "/") {
		return fmt.Errorf("%w: %q ends with '/'", ErrInvalidName, name)
	}
	return nil
}

// validPrefix checks a List prefix: like a name, but may be empty and may
// end with '/'.
func validPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		return fmt.Errorf("%w: prefix %q", ErrInvalidName, prefix)
	}
	return checkChars(p)
}

func checkChars(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalidName, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '/' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("%w: %q has a character outside [a-z0-9/_.-]", ErrInvalidName, name)
		}
	}
	if name == "" {
		return nil
	}
	for comp := range strings.SplitSeq(name, "/") {
		switch comp {
		case "":
			return fmt.Errorf("%w: %q has an empty path component", ErrInvalidName, name)
		case ".", "..":
			return fmt.Errorf("%w: %q has a %q component", ErrInvalidName, name, comp)
		}
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidName, name)
	}
	return nil
}
