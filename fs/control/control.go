// Package control is the wire protocol of a mount's control socket and its client: where
// the socket of a mountpoint lives, the request and reply lines, and the calls the CLI
// makes (status, unmount, lock, unlock, and the streamed key operations rotate and shred).
// The daemon's side of the socket is coffer/fs/daemon.
//
// One socket per mount, mode 0600 in a 0700 folder. Both sides refuse a folder that is not
// their own uid's or that others may write (CheckRuntimeDir), and each checks the other's
// uid with SO_PEERCRED: the daemon serves root or the user who mounted, the client talks
// only to a daemon of its own uid or root, and checks that before it sends anything (Dial).
// One request per connection: a JSON line, then (unlock only) the raw PIN or passphrase up
// to the client's half-close, never inside the JSON (which would leave copies in decoder
// buffers); one JSON reply. Key operations stream progress lines before their reply.
package control

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"coffer/fs/keyops"
	"coffer/fs/mountinfo"
	"coffer/keys"
)

// Request is one request line.
type Request struct {
	Op string `json:"op"` // "status" | "unmount" | "lock" | "unlock" | "rotate" | "shred" | "fsck"

	// rotate and shred
	RetireOld bool     `json:"retire_old,omitempty"`
	Paths     []string `json:"paths,omitempty"` // shred: volume paths or paths under the mountpoint
	User      *uint32  `json:"user,omitempty"`  // shred --user
	Volume    bool     `json:"volume,omitempty"`
	Now       bool     `json:"now,omitempty"`

	// fsck
	Full   bool          `json:"full,omitempty"`
	Repair bool          `json:"repair,omitempty"`
	Window time.Duration `json:"window,omitempty"`
}

// MaxRequest bounds a request line (a shred may name many paths).
const MaxRequest = 1 << 20

// MaxSecret bounds the secret an unlock request may carry.
const MaxSecret = 4096

// Reply is one reply line.
type Reply struct {
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Status json.RawMessage `json:"status,omitempty"` // a Status
	Took   string          `json:"took,omitempty"`   // lock: how long the wipe took

	// rotate and shred: progress lines until the final reply, which carries the result
	// (a keyops.RotateResult or a ShredReply)
	Progress *keyops.Progress `json:"progress,omitempty"`
	Result   json.RawMessage  `json:"result,omitempty"`
}

// Status is what `coffer status MOUNTPOINT` shows: the daemon's live view.
type Status struct {
	PID        int    `json:"pid"`
	Mountpoint string `json:"mountpoint"`
	State      string `json:"state_dir"`
	Volume     string `json:"volume"`
	Remote     string `json:"remote"`
	Provider   string `json:"provider"`
	HSMToken   string `json:"hsm_token,omitempty"`
	KeyMode    string `json:"key_mode"`
	KEK        string `json:"kek"`
	Locked     bool   `json:"locked"`
	ReadOnly   bool   `json:"read_only"`
	Data       any    `json:"data"` // the data path's counters (content.Stats)
	// Replica is the catalog's replication; nil when it is off (read-only mounts).
	Replica *ReplicaStatus `json:"replica,omitempty"`
}

// ReplicaStatus is the replication part of Status.
type ReplicaStatus struct {
	Epoch     uint32 `json:"epoch"`
	Position  uint64 `json:"position"`
	LagBytes  int64  `json:"lag_bytes"`           // WAL bytes of catalog changes not on the remote yet
	LastShip  string `json:"last_ship,omitempty"` // RFC 3339, UTC
	LastError string `json:"last_error,omitempty"`
}

// ShredReply is the result of a shred, as the CLI prints it (offline and live).
type ShredReply struct {
	Files        int                  `json:"files"`
	Links        int                  `json:"links"`
	Deleted      int                  `json:"deleted"`
	DeleteFailed int                  `json:"delete_failed"`
	Destroyed    []keys.KEKRef        `json:"destroyed,omitempty"`
	OldVersions  []keys.KEKRef        `json:"old_versions,omitempty"` // a shred is final once these are destroyed
	Now          *keyops.RotateResult `json:"now,omitempty"`
	// Finality is what the summary says about older catalog copies (a passphrase volume,
	// versions of another chain a chown moved a key from).
	Finality keyops.Finality `json:"finality"`
}

// NewShredReply summarizes res, old versions in a stable order.
func NewShredReply(res keyops.ShredResult) ShredReply {
	r := ShredReply{Files: res.Files, Links: res.Links, Deleted: res.Deleted, DeleteFailed: res.DeleteFailed,
		Destroyed: res.Destroyed, Finality: res.Finality}
	for k := range res.OldVersions {
		r.OldVersions = append(r.OldVersions, k)
	}
	sort.Slice(r.OldVersions, func(i, j int) bool { return r.OldVersions[i].String() < r.OldVersions[j].String() })
	return r
}

// ReadLine reads up to and including '\n' one byte at a time, so that nothing after the
// line (an unlock secret) lands in a buffer this function does not own.
func ReadLine(r io.Reader, max int) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < max {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, errors.New("request line too long")
}

// rootRuntimeDir holds the sockets of daemons run as root (a variable for tests).
var rootRuntimeDir = "/run/coffer"

// testRuntimeDir, when set, replaces RuntimeDir; only tests set it.
var testRuntimeDir string

// RuntimeDir holds the control sockets of this user's daemons: /run/coffer for root,
// else $XDG_RUNTIME_DIR/coffer, else /tmp/coffer-UID. Both sides check it with
// CheckRuntimeDir before they use it.
func RuntimeDir() string {
	if testRuntimeDir != "" {
		return testRuntimeDir
	}
	if os.Getuid() == 0 {
		return rootRuntimeDir
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "coffer")
	}
	return filepath.Join(os.TempDir(), "coffer-"+strconv.Itoa(os.Getuid()))
}

// SocketName is the file name of a mountpoint's control socket inside a runtime folder.
func SocketName(mountpoint string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	return hex.EncodeToString(sum[:12]) + ".sock"
}

// SocketPath names the control socket of a mountpoint (absolute, cleaned).
func SocketPath(mountpoint string) string {
	return filepath.Join(RuntimeDir(), SocketName(mountpoint))
}

// ErrUnsafeRuntimeDir says that a control socket folder could have been prepared by
// someone else: a socket in it might not be the daemon's.
var ErrUnsafeRuntimeDir = errors.New("unsafe control socket folder")

// CheckRuntimeDir fails unless dir is a folder (not a symlink) owned by this process's uid
// that neither its group nor others may write. Only then is a socket in it one that this
// user (or root) put there: /tmp/coffer-UID, for one, can be created by anyone first. A
// missing dir gives an error wrapping os.ErrNotExist.
func CheckRuntimeDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	me := os.Getuid()
	owner := -1
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		owner = int(sys.Uid)
	}
	var what string
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		what = "is a symlink, not a folder"
	case !st.IsDir():
		what = "is not a folder"
	case owner != me:
		what = fmt.Sprintf("belongs to uid %d, not to you (uid %d)", owner, me)
	case st.Mode().Perm()&0o022 != 0:
		what = "may be written by other users"
	default:
		return nil
	}
	fix := "remove it and retry"
	if owner != me || st.Mode()&os.ModeSymlink != 0 {
		fix = "remove it (as root or as its owner) and retry"
	} else if st.IsDir() {
		fix = "chmod 700 it (or remove it) and retry"
	}
	if me != 0 {
		fix += ", or set XDG_RUNTIME_DIR to a folder only you can write"
	}
	return fmt.Errorf("%w %s (owner uid %d, mode %s): it %s, so its socket may not be your coffer daemon's; %s",
		ErrUnsafeRuntimeDir, dir, owner, st.Mode(), what, fix)
}

// ErrNoDaemon says that nothing answers on the control socket of a mountpoint.
var ErrNoDaemon = errors.New("no coffer daemon serves")

// ErrPeer says that the control socket is served by a process of another user: nothing was
// sent to it.
var ErrPeer = errors.New("refusing to talk to the control socket")

// Dial connects to the control socket of the daemon serving mountpoint; it also returns
// the mountpoint made absolute. Before it returns a connection, it checks that the socket
// folder is this user's alone (CheckRuntimeDir) and that the listening process runs as this
// user or as root (SO_PEERCRED), so that no request line, and no PIN or passphrase, reaches
// a process of another user.
func Dial(ctx context.Context, mountpoint string) (net.Conn, string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, "", err
	}
	dir, name := RuntimeDir(), SocketName(abs)
	if err := CheckRuntimeDir(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, abs, notServedHere(abs, name)
		}
		return nil, abs, fmt.Errorf("reach the coffer daemon of %s: %w", abs, err)
	}
	path := filepath.Join(dir, name)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, abs, notServedHere(abs, name)
		}
		return nil, abs, fmt.Errorf("reach the coffer daemon of %s: %w", abs, err)
	}
	uc, ok := c.(*net.UnixConn)
	uid := -1
	if ok {
		uid, err = PeerUID(uc)
	} else {
		err = errors.New("not a unix socket")
	}
	if me := os.Getuid(); err != nil || (uid != me && uid != 0) {
		c.Close()
		if err != nil {
			return nil, abs, fmt.Errorf("%w %s of %s: cannot tell who serves it (%v); nothing was sent", ErrPeer, path, abs, err)
		}
		return nil, abs, fmt.Errorf("%w %s of %s: it is served by a process of uid %d, not by you (uid %d) or root, so it may be another user posing as the daemon; nothing was sent", ErrPeer, path, abs, uid, me)
	}
	return c, abs, nil
}

// notServedHere is the error for a mountpoint whose socket this user's runtime folder
// lacks (or nothing listens on). When a daemon of another user serves it (its socket is in
// root's folder, or the FUSE mount on it belongs to another uid), the truth is that this
// user may not control it.
func notServedHere(abs, name string) error {
	me := os.Getuid()
	owner := -1
	if me != 0 {
		if _, err := os.Lstat(filepath.Join(rootRuntimeDir, name)); err == nil {
			owner = 0
		}
	}
	if owner < 0 {
		if uid, ok := fuseMountOwner(mountinfo.Self, abs); ok && uid != me {
			owner = uid
		}
	}
	switch {
	case owner == 0:
		return fmt.Errorf("%w: the coffer daemon of %s runs as root; run this command as root", os.ErrPermission, abs)
	case owner > 0:
		return fmt.Errorf("%w: the coffer daemon of %s runs as uid %d; run this command as uid %d", os.ErrPermission, abs, owner, owner)
	}
	return fmt.Errorf("%w %s", ErrNoDaemon, abs)
}

// fuseMountOwner reads the uid of the process that made the top coffer FUSE mount on mp
// (its user_id option) from a mountinfo file. It never touches mp itself.
func fuseMountOwner(file, mp string) (int, bool) {
	m, ok, err := mountinfo.Top(file, mp)
	if err != nil || !ok || m.FSType != "fuse.coffer" {
		return -1, false
	}
	v, ok := m.Option("user_id")
	if !ok {
		return -1, false
	}
	uid, err := strconv.Atoi(v)
	if err != nil || uid < 0 {
		return -1, false
	}
	return uid, true
}

// PeerUID is the uid of the process at the other end of c (SO_PEERCRED).
func PeerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// Call sends one request to the daemon serving mountpoint and waits up to timeout.
func Call(ctx context.Context, mountpoint string, op string, timeout time.Duration) (Reply, error) {
	return CallSecret(ctx, mountpoint, op, nil, timeout)
}

// CallSecret is Call with a secret sent after the request line (unlock).
func CallSecret(ctx context.Context, mountpoint string, op string, secret []byte, timeout time.Duration) (Reply, error) {
	c, abs, err := Dial(ctx, mountpoint)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	// Cancelling ctx (^C, SIGTERM) ends the wait at once, as Stream does.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(Request{Op: op}); err != nil {
		return Reply{}, fmt.Errorf("send %s request: %w", op, err)
	}
	if secret != nil {
		if _, err := c.Write(secret); err != nil {
			return Reply{}, fmt.Errorf("send %s request: %w", op, err)
		}
	}
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	var r Reply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		if ctx.Err() != nil {
			return Reply{}, fmt.Errorf("interrupted: the %s request was sent; the daemon of %s may still carry it out", op, abs)
		}
		return Reply{}, fmt.Errorf("no answer from the coffer daemon of %s: %w", abs, err)
	}
	if !r.OK {
		return r, errors.New(r.Error)
	}
	return r, nil
}

// GetStatus asks the daemon serving mountpoint for its Status.
func GetStatus(ctx context.Context, mountpoint string, timeout time.Duration) (Status, json.RawMessage, error) {
	r, err := Call(ctx, mountpoint, "status", timeout)
	if err != nil {
		return Status{}, nil, err
	}
	var st Status
	if err := json.Unmarshal(r.Status, &st); err != nil {
		return Status{}, nil, fmt.Errorf("daemon status: %w", err)
	}
	return st, r.Status, nil
}

// Stream sends a key-operation request to the daemon of mountpoint and reads its progress
// lines (passed to progress) up to the final reply. Cancelling ctx (Ctrl-C) closes the
// connection, which stops a rotation in the daemon. The final reply is returned with its
// error, if any (a shred with a failed --now carries both a result and an error).
func Stream(ctx context.Context, mountpoint string, req Request, progress func(keyops.Progress)) (Reply, error) {
	c, abs, err := Dial(ctx, mountpoint)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Reply{}, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	dec := json.NewDecoder(c)
	for {
		var r Reply
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() != nil {
				return Reply{}, fmt.Errorf("interrupted: the daemon of %s stops the %s (rerun the command to finish)", abs, req.Op)
			}
			return Reply{}, fmt.Errorf("no answer from the coffer daemon of %s: %w", abs, err)
		}
		if r.Progress != nil {
			if progress != nil {
				progress(*r.Progress)
			}
			continue
		}
		if !r.OK {
			return r, errors.New(r.Error)
		}
		return r, nil
	}
}
