package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"coffer/fs/control"
)

// server answers control requests for one mount (the protocol is coffer/fs/control's).
type server struct {
	ln      *net.UnixListener
	path    string
	owner   int
	status  func() any
	unmount func() error // asks the mount to go away; returns once the daemon has finished
	lock    func() (time.Duration, error)
	unlock  func(secret []byte) error
	keyop   func(c *net.UnixConn, uid int, req control.Request) // rotate, shred (keyops.go)
	log     *slog.Logger
	pending sync.WaitGroup // unmount replies not yet written
	pendMu  sync.Mutex     // orders pending.Add before flush's Wait
	flushed bool           // flush started: no more Add
}

// runtimeDir is control.RuntimeDir; tests point it elsewhere.
var runtimeDir = control.RuntimeDir

// listen creates the control socket of mountpoint in the runtime folder, which it creates
// 0700 if missing and refuses unless it is this uid's alone (control.CheckRuntimeDir):
// someone else's folder could hold their socket in place of ours.
func listen(mountpoint string, log *slog.Logger) (*server, error) {
	dir := runtimeDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := control.CheckRuntimeDir(dir); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	path := filepath.Join(dir, control.SocketName(mountpoint))
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
	return &server{ln: ln, path: path, owner: os.Getuid(), log: log}, nil
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

func (s *server) serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *server) close() { s.ln.Close() }

// flush waits (up to d) until every `coffer unmount` waiting on this daemon got its answer,
// so the process does not exit under them.
func (s *server) flush(d time.Duration) {
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

func (s *server) handle(c *net.UnixConn) {
	defer c.Close()
	reply := func(r control.Reply) { json.NewEncoder(c).Encode(r) }
	uid, err := control.PeerUID(c)
	if err != nil || (uid != 0 && uid != s.owner) {
		s.log.Warn("control socket: request refused", "peer_uid", uid, "err", err)
		reply(control.Reply{Error: "permission denied: only root or the user who mounted may control this mount"})
		return
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := control.ReadLine(c, control.MaxRequest)
	var req control.Request
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	if err != nil {
		reply(control.Reply{Error: "bad request: " + err.Error()})
		return
	}
	if (req.Op == "lock" || req.Op == "unlock") && (s.lock == nil || s.unlock == nil) {
		reply(control.Reply{Error: "this daemon cannot lock or unlock"})
		return
	}
	switch req.Op {
	case "status":
		b, err := json.Marshal(s.status())
		if err != nil {
			reply(control.Reply{Error: err.Error()})
			return
		}
		reply(control.Reply{OK: true, Status: b})
	case "unmount":
		s.pendMu.Lock()
		if !s.flushed {
			s.pending.Add(1)
			defer s.pending.Done()
		}
		s.pendMu.Unlock()
		if err := s.unmount(); err != nil {
			reply(control.Reply{Error: err.Error()})
			return
		}
		reply(control.Reply{OK: true})
	case "lock":
		took, err := s.lock()
		if err != nil {
			reply(control.Reply{Error: err.Error()})
			return
		}
		reply(control.Reply{OK: true, Took: took.String()})
	case "rotate", "shred", "fsck":
		if s.keyop == nil {
			reply(control.Reply{Error: "this daemon cannot run key operations"})
			return
		}
		s.keyop(c, uid, req)
	case "unlock":
		secret := make([]byte, control.MaxSecret)
		defer clear(secret)
		n, err := io.ReadFull(c, secret)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			reply(control.Reply{Error: "read secret: " + err.Error()})
			return
		}
		if n == 0 || n == control.MaxSecret {
			reply(control.Reply{Error: "unlock needs the PIN or passphrase (at most 4 KiB)"})
			return
		}
		if err := s.unlock(secret[:n]); err != nil {
			reply(control.Reply{Error: err.Error()})
			return
		}
		reply(control.Reply{OK: true})
	default:
		reply(control.Reply{Error: fmt.Sprintf("unknown request %q", req.Op)})
	}
}
