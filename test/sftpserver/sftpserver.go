// Package sftpserver runs OpenSSH's real sshd on a random 127.0.0.1 port
// for tests, serving SFTP (internal-sftp) with a generated host key and a
// generated client key, from a config in a temporary folder.
//
// Usage:
//
//	srv := sftpserver.Start(t)                 // killed by t.Cleanup
//	st, err := remote.Open(ctx, srv.Remote("vol1"), remote.Options{})
//	data, _ := os.ReadFile(srv.ObjectPath("vol1", "c/ab/xyz"))
//	srv.Stop()    // listener and every session killed: connections refused
//	srv.Restart() // same port, keys and folder
//
// The connection string carries no credential: key_file and
// known_hosts_file are paths (the host key is checked, not trusted blindly).
// Needs /usr/sbin/sshd (Debian's openssh-server, which `make test`
// installs); running as root it also needs /run/sshd, which Start creates.
package sftpserver

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the server binary.
const SSHD = "/usr/sbin/sshd"

// Server is a running (or stopped) sshd.
type Server struct {
	// Dir is the served folder (absolute): Remote(sub) roots at Dir/sub.
	Dir string
	// Addr is 127.0.0.1:PORT, the same across Restart.
	Addr string
	// User is the login name (the current user).
	User string
	// KeyFile is the client's private key (OpenSSH format, no passphrase).
	KeyFile string
	// KnownHosts holds the server's host key for Addr.
	KnownHosts string

	t      testing.TB
	cfg    string // sshd_config path
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start starts sshd and waits until it answers with an SSH banner.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(SSHD); err != nil {
		t.Fatalf("sftpserver: %s not found (%v): install openssh-server (make test does)", SSHD, err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sftpserver: current user: %v", err)
	}
	tmp := t.TempDir()
	s := &Server{
		Dir:        filepath.Join(tmp, "data"),
		User:       u.Username,
		KeyFile:    filepath.Join(tmp, "id_ed25519"),
		KnownHosts: filepath.Join(tmp, "known_hosts"),
		t:          t,
		cfg:        filepath.Join(tmp, "sshd_config"),
		log:        &lockedBuffer{},
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation folder; Debian's init script makes it.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sftpserver: %v", err)
		}
	}
	hostPub, err := writeKey(filepath.Join(tmp, "host_ed25519"))
	if err != nil {
		t.Fatalf("sftpserver: host key: %v", err)
	}
	clientPub, err := writeKey(s.KeyFile)
	if err != nil {
		t.Fatalf("sftpserver: client key: %v", err)
	}
	authorized := filepath.Join(tmp, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("sftpserver: %v", err)
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, hostPub)
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Join([]string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(tmp, "host_ed25519"),
		"PidFile none",
		"AuthorizedKeysFile " + authorized,
		"AllowUsers " + s.User,
		"PermitRootLogin prohibit-password",
		"StrictModes no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"PrintMotd no",
		"Subsystem sftp internal-sftp",
		// rclone opens a connection per concurrent transfer.
		"MaxStartups 200",
		"MaxSessions 200",
		"LogLevel ERROR",
		"",
	}, "\n")
	if err := os.WriteFile(s.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.start(); err != nil {
		t.Fatalf("sftpserver: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func writeKey(path string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command(SSHD, "-D", "-e", "-f", s.cfg)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.WaitDelay = 2 * time.Second // a stray session must not hold Stop
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", SSHD, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := banner(s.Addr); err == nil {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("sshd exited at start: %s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("sshd did not answer on %s within 5s: %s", s.Addr, s.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// banner checks that an SSH server answers on addr.
func banner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("not an SSH banner: %q", line)
	}
	return nil
}

// Remote returns an rclone connection string for the folder Dir/sub
// (sub may be ""). It holds paths and names, no secret.
func (s *Server) Remote(sub string) string {
	host, port, _ := net.SplitHostPort(s.Addr)
	root := filepath.ToSlash(filepath.Join(s.Dir, filepath.FromSlash(sub)))
	return fmt.Sprintf(":sftp,host=%s,port=%s,user=%s,key_file='%s',known_hosts_file='%s',shell_type=none:%s",
		host, port, s.User, s.KeyFile, s.KnownHosts, root)
}

// ObjectPath is the file holding object name of the store opened on
// Remote(sub).
func (s *Server) ObjectPath(sub, name string) string {
	return filepath.Join(s.Dir, filepath.FromSlash(sub), filepath.FromSlash(name))
}

// Running reports whether sshd is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Log returns what sshd wrote on stderr (errors only).
func (s *Server) Log() string { return s.log.String() }

// Stop kills sshd and every session it spawned (sshd's per-connection
// processes outlive the listener and start their own sessions, so they are
// found through /proc). Afterwards connections to Addr are refused and open
// ones are dead.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	pid := s.cmd.Process.Pid
	kids := descendants(pid)
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	// Wait returns once the sessions, which share sshd's stderr, are gone.
	<-s.exited
	s.cmd = nil
}

// descendants lists the processes below pid, read from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			parent[p] = pp
		}
	}
	var out []int
	frontier := []int{pid}
	for len(frontier) > 0 {
		cur := frontier[0]
		frontier = frontier[1:]
		for p, pp := range parent {
			if pp == cur {
				out = append(out, p)
				frontier = append(frontier, p)
			}
		}
	}
	return out
}

// Restart starts sshd again on the same port with the same keys.
func (s *Server) Restart() {
	s.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sftpserver: restart on %s: %v", s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
