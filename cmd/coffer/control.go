package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"coffer/fs/keyops"
)

// The control socket lets `coffer unmount`, `lock`, `unlock` and `status MOUNTPOINT` talk to
// the daemon serving a mountpoint. One socket per mount, mode 0600 in a 0700 folder; the
// peer's uid is checked with SO_PEERCRED (root or the user who mounted). One request per
// connection: a JSON line, then (unlock only) the raw PIN or passphrase up to the client's
// half-close, never inside the JSON (which would leave copies in decoder buffers); one JSON
// reply. Key operations (rotate, shred: live.go) stream progress lines before their reply.

type ctlRequest struct {
	Op string `json:"op"` // "status" | "unmount" | "lock" | "unlock" | "rotate" | "shred"

	// rotate and shred (live.go)
	RetireOld bool     `json:"retire_old,omitempty"`
	Paths     []string `json:"paths,omitempty"` // shred: volume paths or paths under the mountpoint
	User      *uint32  `json:"user,omitempty"`  // shred --user
	Volume    bool     `json:"volume,omitempty"`
	Now       bool     `json:"now,omitempty"`
}

// maxRequest bounds a request line (a shred may name many paths).
const maxRequest = 1 << 20

// maxSecret bounds the secret an unlock request may carry.
const maxSecret = 4096

type ctlReply struct {
	OK     bool            `json:"ok"`
	Error  string          `json:"error,omitempty"`
	Status json.RawMessage `json:"status,omitempty"`
	Took   string          `json:"took,omitempty"` // lock: how long the wipe took

	// rotate and shred: progress lines until the final reply, which carries the result
	Progress *keyops.Progress `json:"progress,omitempty"`
	Result   json.RawMessage  `json:"result,omitempty"`
}

// readLine reads up to and including '\n' one byte at a time, so that nothing after the
// line (an unlock secret) lands in a buffer this function does not own.
func readLine(r io.Reader, max int) ([]byte, error) {
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

// runtimeDir holds the control sockets.
func runtimeDir() string {
	if os.Getuid() == 0 {
		return "/run/coffer"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "coffer")
	}
	return filepath.Join(os.TempDir(), "coffer-"+strconv.Itoa(os.Getuid()))
}

// socketPath names the control socket of a mountpoint (absolute, cleaned).
func socketPath(mountpoint string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(mountpoint)))
	return filepath.Join(runtimeDir(), hex.EncodeToString(sum[:12])+".sock")
}

// ctlServer answers control requests for one mount.
type ctlServer struct {
	ln      *net.UnixListener
	path    string
	owner   int
	status  func() any
	unmount func() error // asks the mount to go away; returns once the daemon has finished
	lock    func() (time.Duration, error)
	unlock  func(secret []byte) error
	keyop   func(c *net.UnixConn, uid int, req ctlRequest) // rotate, shred (live.go)
	log     *slog.Logger
	pending sync.WaitGroup // unmount replies not yet written
	pendMu  sync.Mutex     // orders pending.Add before flush's Wait
	flushed bool           // flush started: no more Add
}

func listenControl(mountpoint string, log *slog.Logger) (*ctlServer, error) {
	dir := runtimeDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	path := socketPath(mountpoint)
	// A socket left by a killed daemon: remove it if nobody answers on it.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is already served by a running coffer daemon", mountpoint)
	}
	os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	go sweepDeadSockets(dir, path, log)
	return &ctlServer{ln: ln, path: path, owner: os.Getuid(), log: log}, nil
}

// sweepDeadSockets removes the sockets of other mounts whose daemon was killed (nothing
// listens: the connection is refused), so the runtime folder does not fill up with them.
func sweepDeadSockets(dir, ours string, log *slog.Logger) {
	socks, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	for _, p := range socks {
		if p == ours {
			continue
		}
		c, err := net.DialTimeout("unix", p, 200*time.Millisecond)
		if err == nil {
			c.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) && os.Remove(p) == nil {
			log.Info("removed the control socket of a dead daemon", "socket", p)
		}
	}
}

func (s *ctlServer) serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *ctlServer) close() { s.ln.Close() }

// flush waits (up to d) until every `coffer unmount` waiting on this daemon got its answer,
// so the process does not exit under them.
func (s *ctlServer) flush(d time.Duration) {
	s.pendMu.Lock()
	s.flushed = true
	s.pendMu.Unlock()
	ch := make(chan struct{})
	go func() { s.pending.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

func (s *ctlServer) handle(c *net.UnixConn) {
	defer c.Close()
	reply := func(r ctlReply) { json.NewEncoder(c).Encode(r) }
	uid, err := peerUID(c)
	if err != nil || (uid != 0 && uid != s.owner) {
		s.log.Warn("control socket: request refused", "peer_uid", uid, "err", err)
		reply(ctlReply{Error: "permission denied: only root or the user who mounted may control this mount"})
		return
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c, maxRequest)
	var req ctlRequest
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	if err != nil {
		reply(ctlReply{Error: "bad request: " + err.Error()})
		return
	}
	if (req.Op == "lock" || req.Op == "unlock") && (s.lock == nil || s.unlock == nil) {
		reply(ctlReply{Error: "this daemon cannot lock or unlock"})
		return
	}
	switch req.Op {
	case "status":
		b, err := json.Marshal(s.status())
		if err != nil {
			reply(ctlReply{Error: err.Error()})
			return
		}
		reply(ctlReply{OK: true, Status: b})
	case "unmount":
		s.pendMu.Lock()
		if !s.flushed {
			s.pending.Add(1)
			defer s.pending.Done()
		}
		s.pendMu.Unlock()
		if err := s.unmount(); err != nil {
			reply(ctlReply{Error: err.Error()})
			return
		}
		reply(ctlReply{OK: true})
	case "lock":
		took, err := s.lock()
		if err != nil {
			reply(ctlReply{Error: err.Error()})
			return
		}
		reply(ctlReply{OK: true, Took: took.String()})
	case "rotate", "shred":
		if s.keyop == nil {
			reply(ctlReply{Error: "this daemon cannot run key operations"})
			return
		}
		s.keyop(c, uid, req)
	case "unlock":
		secret := make([]byte, maxSecret)
		defer clear(secret)
		n, err := io.ReadFull(c, secret)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			reply(ctlReply{Error: "read secret: " + err.Error()})
			return
		}
		if n == 0 || n == maxSecret {
			reply(ctlReply{Error: "unlock needs the PIN or passphrase (at most 4 KiB)"})
			return
		}
		if err := s.unlock(secret[:n]); err != nil {
			reply(ctlReply{Error: err.Error()})
			return
		}
		reply(ctlReply{OK: true})
	default:
		reply(ctlReply{Error: fmt.Sprintf("unknown request %q", req.Op)})
	}
}

// ctlDial connects to the control socket of the daemon serving mountpoint.
func ctlDial(ctx context.Context, mountpoint string) (net.Conn, string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, "", err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socketPath(abs))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, abs, fmt.Errorf("no coffer daemon serves %s", abs)
		}
		return nil, abs, fmt.Errorf("reach the coffer daemon of %s: %w", abs, err)
	}
	return c, abs, nil
}

func peerUID(c *net.UnixConn) (int, error) {
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

// ctlCall sends one request to the daemon serving mountpoint and waits up to timeout.
func ctlCall(ctx context.Context, mountpoint string, op string, timeout time.Duration) (ctlReply, error) {
	return ctlCallSecret(ctx, mountpoint, op, nil, timeout)
}

// ctlCallSecret is ctlCall with a secret sent after the request line (unlock).
func ctlCallSecret(ctx context.Context, mountpoint string, op string, secret []byte, timeout time.Duration) (ctlReply, error) {
	c, abs, err := ctlDial(ctx, mountpoint)
	if err != nil {
		return ctlReply{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(ctlRequest{Op: op}); err != nil {
		return ctlReply{}, fmt.Errorf("send %s request: %w", op, err)
	}
	if secret != nil {
		if _, err := c.Write(secret); err != nil {
			return ctlReply{}, fmt.Errorf("send %s request: %w", op, err)
		}
	}
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	var r ctlReply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return ctlReply{}, fmt.Errorf("no answer from the coffer daemon of %s: %w", abs, err)
	}
	if !r.OK {
		return r, errors.New(r.Error)
	}
	return r, nil
}
