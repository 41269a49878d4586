// Package control is the wire protocol of a mount's control socket and its client: where
// the socket of a mountpoint lives, the request and reply lines, and the calls the CLI
// makes (status, unmount, lock, unlock, and the streamed key operations rotate and shred).
// The daemon's side of the socket is coffer/fs/daemon.
//
// One socket per mount, mode 0600 in a 0700 folder; the daemon checks the peer's uid with
// SO_PEERCRED (root or the user who mounted). One request per connection: a JSON line,
// then (unlock only) the raw PIN or passphrase up to the client's half-close, never inside
// the JSON (which would leave copies in decoder buffers); one JSON reply. Key operations
// stream progress lines before their reply.
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
	"coffer/keys"
)

// Request is one request line.
type Request struct {
	Op string `json:"op"` // "status" | "unmount" | "lock" | "unlock" | "rotate" | "shred"

	// rotate and shred
	RetireOld bool     `json:"retire_old,omitempty"`
	Paths     []string `json:"paths,omitempty"` // shred: volume paths or paths under the mountpoint
	User      *uint32  `json:"user,omitempty"`  // shred --user
	Volume    bool     `json:"volume,omitempty"`
	Now       bool     `json:"now,omitempty"`
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
}

// NewShredReply summarizes res, old versions in a stable order.
func NewShredReply(res keyops.ShredResult) ShredReply {
	r := ShredReply{Files: res.Files, Links: res.Links, Deleted: res.Deleted, DeleteFailed: res.DeleteFailed, Destroyed: res.Destroyed}
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

// RuntimeDir holds the control sockets.
func RuntimeDir() string {
	if os.Getuid() == 0 {
		return "/run/coffer"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "coffer")
	}
	return filepath.Join(os.TempDir(), "coffer-"+strconv.Itoa(os.Getuid()))
}

// SocketPath names the control socket of a mountpoint (absolute, cleaned).
func SocketPath(mountpoint string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	return filepath.Join(RuntimeDir(), hex.EncodeToString(sum[:12])+".sock")
}

// ErrNoDaemon says that nothing answers on the control socket of a mountpoint.
var ErrNoDaemon = errors.New("no coffer daemon serves")

// Dial connects to the control socket of the daemon serving mountpoint; it also returns
// the mountpoint made absolute.
func Dial(ctx context.Context, mountpoint string) (net.Conn, string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, "", err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", SocketPath(abs))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, abs, fmt.Errorf("%w %s", ErrNoDaemon, abs)
		}
		return nil, abs, fmt.Errorf("reach the coffer daemon of %s: %w", abs, err)
	}
	return c, abs, nil
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
