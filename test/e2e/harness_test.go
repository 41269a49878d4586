package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"coffer/fs/mountinfo"
	"coffer/test/s3server"
	"coffer/test/sftpserver"
	"coffer/test/softhsm"

	"golang.org/x/sys/unix"
)

// backend is where a volume keeps its objects.
type backend string

const (
	localRemote backend = "local" // a plain folder (rclone's local backend)
	s3Remote    backend = "s3"    // a real S3 server on 127.0.0.1 (test/s3server)
	sftpRemote  backend = "sftp"  // OpenSSH's sshd on 127.0.0.1 serving SFTP (test/sftpserver)
)

var allBackends = []backend{localRemote, s3Remote}

// provider is what protects a volume's keys.
type provider string

const (
	hsmProvider  provider = "hsm"        // a SoftHSM2 token of its own (the default)
	passProvider provider = "passphrase" // coffer init --passphrase (Argon2id at coffer's default cost)
)

var allProviders = []provider{hsmProvider, passProvider}

// Timeouts of the harness: a stuck mount must fail the test, never hang the suite.
const (
	initTimeout    = 60 * time.Second
	mountTimeout   = 60 * time.Second
	unmountTimeout = 120 * time.Second // unmount flushes staged data to the remote
	exitTimeout    = 30 * time.Second  // from `coffer unmount` returning to the daemon exiting
	defaultBudget  = 5 * time.Minute   // a volume older than this is declared stuck
)

type options struct {
	blockSize, chunkSize string // --block-size/--chunk-size for init ("" = coffer's default)
	allowOther           bool   // mount --allow-other
	foreground           bool   // mount --foreground (the test process is the daemon's parent)
	budget               time.Duration
	allowLogErrors       bool // the test provokes errors the daemon may log at ERROR
	initArgs             []string
	provider             provider // "" = hsmProvider
}

// Option changes how newVolume creates and mounts a volume.
type Option func(*options)

func withLayout(block, chunk string) Option {
	return func(o *options) { o.blockSize, o.chunkSize = block, chunk }
}
func withAllowOther() Option            { return func(o *options) { o.allowOther = true } }
func withForeground() Option            { return func(o *options) { o.foreground = true } }
func withBudget(d time.Duration) Option { return func(o *options) { o.budget = d } }
func withLogErrorsAllowed() Option      { return func(o *options) { o.allowLogErrors = true } }
func withInitArgs(a ...string) Option {
	return func(o *options) { o.initArgs = append(o.initArgs, a...) }
}
func withProvider(p provider) Option      { return func(o *options) { o.provider = p } }
func (v *Volume) P(elem ...string) string { return filepath.Join(append([]string{v.Mnt}, elem...)...) }

// Volume is one coffer volume created with `coffer init` on its own SoftHSM2 token (or with
// a passphrase: withProvider(passProvider)) and mounted with `coffer mount`. Its cleanup
// unmounts it, checks that the daemon exited 0 and scans everything the daemon wrote for
// leaked plaintext, names and secrets.
type Volume struct {
	t       testing.TB
	Backend backend
	Dir     string // this volume's folder (0755)
	State   string // --state
	Mnt     string // mount point
	Remote  string // --remote as given to init
	// RemoteDir is the folder that holds the remote's objects: the local remote itself, or
	// the S3 or SFTP server's backing folder.
	RemoteDir string
	TmpDir    string // the daemon's TMPDIR
	HomeDir   string // the daemon's HOME and XDG_CACHE_HOME (rclone's config and cache)
	LogDir    string // stdout/stderr of every coffer command (and the daemon's, if it keeps them)
	SealLog   string // COFFER_DEBUG_SEAL_LOG
	Provider  provider
	Token     *softhsm.Token // nil for a passphrase volume
	PINFile   string
	// Passphrase and PassFile (which holds it) are a passphrase volume's secret.
	Passphrase []byte
	PassFile   string
	S3         *s3server.Server
	SFTP       *sftpserver.Server
	opts       options

	mu       sync.Mutex
	seq      int
	daemon   *daemon
	mounted  bool
	watchdog *time.Timer
	names    map[string]bool // names seen in the tree, scanned for on the remote
	// pinInEnv makes the next mounts take the PIN from COFFER_HSM_PIN instead of --hsm-pin-file.
	pinInEnv bool
}

// daemon is the process serving the mount.
type daemon struct {
	pid   int
	proc  *os.Process
	done  chan struct{}
	state *os.ProcessState
	err   error
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

var knownDaemons sync.Map // pid -> true: daemons already claimed by a volume

// newVolume creates a token, runs coffer init against the backend and mounts the volume.
func newVolume(t *testing.T, b backend, opt ...Option) *Volume {
	t.Helper()
	requireCoffer(t)
	v := &Volume{t: t, Backend: b, names: map[string]bool{}}
	v.opts.budget = defaultBudget
	for _, o := range opt {
		o(&v.opts)
	}
	dir, err := os.MkdirTemp(baseDir, sanitize(t.Name())+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	v.Dir = dir
	v.State = filepath.Join(dir, "state")
	v.Mnt = filepath.Join(dir, "mnt")
	v.TmpDir = filepath.Join(dir, "tmp")
	v.HomeDir = filepath.Join(dir, "home")
	v.LogDir = filepath.Join(dir, "logs")
	v.SealLog = filepath.Join(dir, "seal.log")
	for _, d := range []string{v.Mnt, v.TmpDir, v.HomeDir, v.LogDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	v.Provider = v.opts.provider
	if v.Provider == "" {
		v.Provider = hsmProvider
	}
	switch v.Provider {
	case hsmProvider:
		v.Token = softhsm.NewToken(t, "")
		v.PINFile = filepath.Join(dir, "pin")
		if err := os.WriteFile(v.PINFile, v.Token.PIN, 0o600); err != nil {
			t.Fatal(err)
		}
	case passProvider:
		v.Passphrase = []byte("pass phrase " + randHex(8))
		v.PassFile = filepath.Join(dir, "passphrase")
		if err := os.WriteFile(v.PassFile, v.Passphrase, 0o600); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown key provider %q", v.Provider)
	}
	switch b {
	case localRemote:
		v.RemoteDir = filepath.Join(dir, "remote")
		v.Remote = v.RemoteDir
	case s3Remote:
		// Started before our cleanup is registered, so it is stopped after it.
		v.S3 = s3server.Start(t)
		v.RemoteDir = v.S3.Dir
		v.Remote = v.S3.Remote("bkt-" + randHex(4) + "/vol")
	case sftpRemote:
		v.SFTP = sftpserver.Start(t)
		v.RemoteDir = v.SFTP.Dir
		v.Remote = v.SFTP.Remote("vol")
	default:
		t.Fatalf("unknown backend %q", b)
	}
	t.Cleanup(v.cleanup)
	v.arm(v.opts.budget, "the test")

	args := append([]string{"init", "--state", v.State, "--remote", v.Remote}, v.keyArgs()...)
	if v.opts.blockSize != "" {
		args = append(args, "--block-size", v.opts.blockSize, "--chunk-size", v.opts.chunkSize)
	}
	args = append(args, v.opts.initArgs...)
	if r := v.run(initTimeout, args...); r.code != 0 {
		t.Fatalf("coffer init (%s remote): %s", b, r)
	}
	v.Mount()
	return v
}

// keyArgs are the flags that name the volume's key provider and its secret's file, as
// coffer init and coffer restore take them.
func (v *Volume) keyArgs() []string {
	if v.Provider == passProvider {
		return []string{"--passphrase", "--passphrase-file", v.PassFile}
	}
	return []string{"--hsm-module", v.Token.Module, "--hsm-token", v.Token.Label, "--hsm-pin-file", v.PINFile}
}

// secretArgs is the flag that gives a command that opens the volume its secret.
func (v *Volume) secretArgs() []string {
	if v.Provider == passProvider {
		return []string{"--passphrase-file", v.PassFile}
	}
	return []string{"--hsm-pin-file", v.PINFile}
}

// secret is the volume's PIN or passphrase.
func (v *Volume) secret() []byte {
	if v.Token != nil {
		return v.Token.PIN
	}
	return v.Passphrase
}

// result is the outcome of one coffer command.
type result struct {
	args           []string
	code           int // -1: did not exit in time (killed)
	stdout, stderr string
}

func (r result) String() string {
	s := fmt.Sprintf("coffer %s: exit %d", strings.Join(r.args, " "), r.code)
	if r.code == -1 {
		s = fmt.Sprintf("coffer %s: timed out (killed)", strings.Join(r.args, " "))
	}
	if r.stderr != "" {
		s += "\nstderr: " + strings.TrimSpace(r.stderr)
	}
	if r.stdout != "" {
		s += "\nstdout: " + strings.TrimSpace(r.stdout)
	}
	return s
}

// env is the environment of every coffer command: ours without COFFER_* and TMPDIR/HOME,
// plus the token store, the log level, the seal log and private TMPDIR/HOME to scan.
func (v *Volume) env() []string {
	var env []string
	for _, e := range os.Environ() {
		switch {
		case strings.HasPrefix(e, "COFFER_"), strings.HasPrefix(e, "SOFTHSM2_CONF="),
			strings.HasPrefix(e, "TMPDIR="), strings.HasPrefix(e, "HOME="), strings.HasPrefix(e, "XDG_"):
			continue
		}
		env = append(env, e)
	}
	level := os.Getenv("COFFER_E2E_LOG")
	if level == "" {
		level = "info"
	}
	if v.Token != nil {
		env = append(env, v.Token.Env()...)
	}
	return append(env, "COFFER_LOG="+level, "COFFER_DEBUG_SEAL_LOG="+v.SealLog,
		"TMPDIR="+v.TmpDir, "HOME="+v.HomeDir, "XDG_CACHE_HOME="+filepath.Join(v.HomeDir, ".cache"),
		"XDG_CONFIG_HOME="+filepath.Join(v.HomeDir, ".config"))
}

// command prepares a coffer command whose stdout and stderr go to files in LogDir (files,
// not pipes: a daemon that inherits them must not keep Wait from returning).
func (v *Volume) command(args ...string) (*exec.Cmd, string, string) {
	v.mu.Lock()
	v.seq++
	n := v.seq
	v.mu.Unlock()
	base := filepath.Join(v.LogDir, fmt.Sprintf("%02d-%s", n, args[0]))
	outF, err := os.Create(base + ".out")
	if err != nil {
		v.t.Fatal(err)
	}
	errF, err := os.Create(base + ".err")
	if err != nil {
		v.t.Fatal(err)
	}
	cmd := exec.Command(cofferBin, args...)
	cmd.Env = v.env()
	if v.pinInEnv && args[0] == "mount" {
		cmd.Env = append(cmd.Env, "COFFER_HSM_PIN="+string(v.Token.PIN))
	}
	cmd.Dir = v.Dir
	cmd.Stdout, cmd.Stderr = outF, errF
	return cmd, outF.Name(), errF.Name()
}

// run runs one coffer command to completion, killing it after timeout.
func (v *Volume) run(timeout time.Duration, args ...string) result {
	v.t.Helper()
	cmd, outName, errName := v.command(args...)
	r := result{args: args}
	if err := cmd.Start(); err != nil {
		v.t.Fatalf("start coffer %s: %v", args[0], err)
	}
	closeFiles(cmd)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		r.code = -1
	}
	if r.code != -1 {
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			r.code = ee.ExitCode()
		default:
			v.t.Fatalf("coffer %s: %v", args[0], err)
		}
	}
	r.stdout = readFileString(outName)
	r.stderr = readFileString(errName)
	return r
}

func closeFiles(cmd *exec.Cmd) {
	for _, f := range []any{cmd.Stdout, cmd.Stderr} {
		if f, ok := f.(*os.File); ok {
			f.Close()
		}
	}
}

func readFileString(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// Mount mounts the volume at Mnt: `coffer mount` in the background (the default), which
// must return only once the filesystem is ready, or --foreground with readiness taken from
// /proc/self/mountinfo.
func (v *Volume) Mount(extra ...string) {
	v.t.Helper()
	if plainMode {
		v.mounted = true
		return
	}
	if mounted, _ := isMounted(v.Mnt); mounted {
		v.t.Fatalf("%s is already a mount point before coffer mount", v.Mnt)
	}
	args := []string{"mount", "--state", v.State}
	if !v.pinInEnv {
		args = append(args, v.secretArgs()...)
	}
	if v.opts.allowOther {
		args = append(args, "--allow-other")
	}
	args = append(args, extra...)
	if v.opts.foreground {
		v.mountForeground(append(args, "--foreground", v.Mnt))
		return
	}
	args = append(args, v.Mnt)
	r := v.run(mountTimeout, args...)
	if r.code != 0 {
		v.t.Fatalf("%s", r)
	}
	// "mount returns once the filesystem is ready": no polling allowed here.
	mounted, fstype := isMounted(v.Mnt)
	if !mounted {
		v.t.Fatalf("coffer mount exited 0 but %s is not a mount point yet", v.Mnt)
	}
	if !strings.HasPrefix(fstype, "fuse") {
		v.t.Fatalf("%s is mounted as %q, want a FUSE filesystem", v.Mnt, fstype)
	}
	var st unix.Stat_t
	if err := unix.Stat(v.Mnt, &st); err != nil {
		v.t.Fatalf("stat mount point right after coffer mount returned: %v", err)
	}
	pid, err := findAdoptedDaemon(v.Mnt)
	if err != nil {
		v.t.Fatalf("after coffer mount: %v", err)
	}
	d := &daemon{pid: pid, done: make(chan struct{})}
	d.proc, err = os.FindProcess(pid)
	if err != nil {
		v.t.Fatalf("daemon pid %d: %v", pid, err)
	}
	go func() {
		d.state, d.err = d.proc.Wait()
		knownDaemons.Delete(d.pid) // reaped: the pid may be reused
		close(d.done)
	}()
	v.mu.Lock()
	v.daemon, v.mounted = d, true
	v.mu.Unlock()
}

func (v *Volume) mountForeground(args []string) {
	v.t.Helper()
	cmd, _, errName := v.command(args...)
	if err := cmd.Start(); err != nil {
		v.t.Fatalf("start coffer mount --foreground: %v", err)
	}
	closeFiles(cmd)
	d := &daemon{pid: cmd.Process.Pid, proc: cmd.Process, done: make(chan struct{})}
	knownDaemons.Store(d.pid, true)
	go func() {
		err := cmd.Wait()
		d.state = cmd.ProcessState
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			d.err = err
		}
		knownDaemons.Delete(d.pid)
		close(d.done)
	}()
	deadline := time.Now().Add(mountTimeout)
	for {
		if ok, _ := isMounted(v.Mnt); ok {
			break
		}
		if d.exited() {
			v.t.Fatalf("coffer mount --foreground exited before mounting (%v): %s", d.state, readFileString(errName))
		}
		if time.Now().After(deadline) {
			_ = d.proc.Kill()
			<-d.done
			v.t.Fatalf("coffer mount --foreground: %s not mounted after %v", v.Mnt, mountTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	v.mu.Lock()
	v.daemon, v.mounted = d, true
	v.mu.Unlock()
}

// findAdoptedDaemon finds the coffer process that serves mnt among our children (we are a
// child subreaper, so the daemon that `coffer mount` left behind is ours).
func findAdoptedDaemon(mnt string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	var cands, withMnt []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, known := knownDaemons.Load(pid); known {
			continue
		}
		if ppid, err := parentPID(pid); err != nil || ppid != self {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if exe != cofferBin {
			continue
		}
		cands = append(cands, pid)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmdline, []byte(mnt)) {
			withMnt = append(withMnt, pid)
		}
	}
	pick := cands
	if len(withMnt) > 0 {
		pick = withMnt
	}
	switch len(pick) {
	case 1:
		knownDaemons.Store(pick[0], true)
		return pick[0], nil
	case 0:
		return 0, errors.New("no coffer daemon process found (expected the background daemon to outlive coffer mount)")
	}
	return 0, fmt.Errorf("several coffer daemon candidates %v for %s", pick, mnt)
}

func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("bad stat")
	}
	return strconv.Atoi(f[1])
}

// isMounted reports whether path is a mount point in our mount namespace, and its type.
func isMounted(path string) (bool, string) {
	m, ok, err := mountinfo.Top(mountinfo.Self, path)
	if err != nil || !ok {
		return false, ""
	}
	return true, m.FSType
}

// Unmount runs `coffer unmount` and checks that it exits 0, that the daemon exits 0 soon
// after and that the mount point is gone. On failure it forces the mount away and reports
// an error; it returns whether everything went right.
func (v *Volume) Unmount() bool {
	v.t.Helper()
	if plainMode {
		v.mounted = false
		return true
	}
	v.mu.Lock()
	d, mounted := v.daemon, v.mounted
	v.mu.Unlock()
	if !mounted {
		return true
	}
	if d != nil && d.exited() {
		v.t.Errorf("the coffer daemon (pid %d) died while the volume was mounted: %v%s", d.pid, exitText(d), v.logHint())
		v.forceUnmount()
		return false
	}
	r := v.run(unmountTimeout, "unmount", v.Mnt)
	if r.code != 0 {
		v.t.Errorf("%s", r)
		v.forceUnmount()
		return false
	}
	ok := true
	if d != nil {
		select {
		case <-d.done:
			if d.err != nil || d.state == nil || d.state.ExitCode() != 0 {
				v.t.Errorf("coffer daemon (pid %d) did not exit 0 after coffer unmount: %s%s", d.pid, exitText(d), v.logHint())
				ok = false
			}
		case <-time.After(exitTimeout):
			v.t.Errorf("coffer daemon (pid %d) still running %v after coffer unmount returned 0", d.pid, exitTimeout)
			v.forceUnmount()
			return false
		}
	}
	if m, _ := isMounted(v.Mnt); m {
		v.t.Errorf("%s is still mounted after coffer unmount returned 0", v.Mnt)
		v.forceUnmount()
		return false
	}
	v.mu.Lock()
	v.mounted, v.daemon = false, nil
	v.mu.Unlock()
	// A clean unmount with the remote reachable uploads everything that was staged.
	if left := stagedFiles(filepath.Join(v.State, "staging")); len(left) > 0 {
		v.t.Errorf("%d staged file(s) left after a clean unmount (the remote was reachable), e.g. %s", len(left), left[0])
		ok = false
	}
	return ok
}

// stagedFiles lists the staging files (*.stg) in a staging directory: not its marker
// (content.StagingMarker).
func stagedFiles(dir string) []string {
	var out []string
	for _, p := range regularFiles(dir) {
		if strings.HasSuffix(p, ".stg") {
			out = append(out, p)
		}
	}
	return out
}

// regularFiles lists the regular files under dir.
func regularFiles(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func exitText(d *daemon) string {
	if d.err != nil {
		return "wait: " + d.err.Error()
	}
	if d.state == nil {
		return "still running"
	}
	return d.state.String()
}

// Remount unmounts (the test stops on failure) and mounts again.
func (v *Volume) Remount() {
	v.t.Helper()
	if !v.Unmount() {
		v.t.FailNow()
	}
	v.Mount()
}

// forceUnmount gets rid of a mount that would not go away: SIGKILL the daemon (which also
// aborts every request blocked in the kernel), then a lazy unmount.
func (v *Volume) forceUnmount() {
	v.mu.Lock()
	d := v.daemon
	v.mu.Unlock()
	if d != nil && !d.exited() {
		_ = d.proc.Signal(syscall.SIGKILL)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			v.t.Errorf("coffer daemon pid %d survived SIGKILL for 10 s", d.pid)
		}
	}
	if m, _ := isMounted(v.Mnt); m {
		if out, err := exec.Command("fusermount3", "-u", "-z", v.Mnt).CombinedOutput(); err != nil {
			v.t.Errorf("fusermount3 -u -z %s: %v %s", v.Mnt, err, out)
		}
	}
	v.mu.Lock()
	v.mounted, v.daemon = false, nil
	v.mu.Unlock()
}

// arm (re)starts the watchdog: if the volume is still in use after d, the mount is
// declared stuck, the daemon killed and the mount lazily unmounted, so that the blocked
// test fails (ENOTCONN) instead of hanging the suite.
func (v *Volume) arm(d time.Duration, what string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.watchdog != nil {
		v.watchdog.Stop()
	}
	if plainMode {
		return
	}
	v.watchdog = time.AfterFunc(d, func() {
		v.t.Errorf("watchdog: %s still running after %v: the mount at %s looks stuck; killing the daemon and unmounting lazily", what, d, v.Mnt)
		v.dumpGoroutines()
		v.forceUnmount()
	})
}

// dumpGoroutines makes a stuck daemon print its goroutines (SIGQUIT: the Go runtime
// writes every stack to its log and exits) and logs those running coffer code, so a
// deadlock seen once in CI can be read from the test output.
func (v *Volume) dumpGoroutines() {
	v.mu.Lock()
	d := v.daemon
	v.mu.Unlock()
	if d == nil || d.exited() || d.proc.Signal(syscall.SIGQUIT) != nil {
		return
	}
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
	}
	log := readFileString(filepath.Join(v.State, daemonLogName))
	i := strings.LastIndex(log, "SIGQUIT")
	if i < 0 {
		v.t.Logf("the stuck daemon wrote no goroutine dump")
		return
	}
	var keep []string
	for _, g := range strings.Split(log[i:], "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && strings.Contains(g, "coffer/") {
			keep = append(keep, g)
		}
	}
	v.t.Logf("goroutines of the stuck daemon running coffer code (%d):\n%s", len(keep), strings.Join(keep, "\n\n"))
}

// Daemon is the serving process (nil in plain mode or when unmounted).
func (v *Volume) Daemon() *daemon {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.daemon
}

// waitDaemonExit waits for the daemon to exit by itself and returns its exit status.
func (v *Volume) waitDaemonExit(d *daemon, timeout time.Duration) (*os.ProcessState, bool) {
	select {
	case <-d.done:
		if m, _ := isMounted(v.Mnt); !m {
			v.mu.Lock()
			v.mounted, v.daemon = false, nil
			v.mu.Unlock()
		}
		return d.state, true
	case <-time.After(timeout):
		return nil, false
	}
}

func (v *Volume) cleanup() {
	t := v.t
	v.arm(2*time.Minute, "the cleanup (unmount and leak scans)")
	v.mu.Lock()
	mounted := v.mounted
	v.mu.Unlock()
	if mounted {
		v.collectNames(v.Mnt)
		v.Unmount()
	}
	v.mu.Lock()
	if v.watchdog != nil {
		v.watchdog.Stop()
	}
	v.mu.Unlock()
	v.scanLeaks()
	v.checkSealLog()
	v.checkLogs()
	if t.Failed() {
		t.Logf("volume folder: %s%s", v.Dir, v.logTail())
	}
	if m, _ := isMounted(v.Mnt); m {
		t.Errorf("%s is still mounted at the end of the test; leaving its folder", v.Mnt)
		return
	}
	if !keepDirs {
		os.RemoveAll(v.Dir)
	}
}

// collectNames records every name in the tree that is long enough to be searched for on the
// remote without false positives (the leak scans check these as well as namePrefix).
func (v *Volume) collectNames(root string) {
	n := 0
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root {
			return nil
		}
		if n++; n > 50000 {
			return filepath.SkipAll
		}
		if name := d.Name(); len(name) >= minScanName {
			v.mu.Lock()
			v.names[name] = true
			v.mu.Unlock()
		}
		return nil
	})
}

// daemonLogName is the background daemon's log inside the state folder.
const daemonLogName = "daemon.log"

// logFiles lists everything coffer printed: each command's stdout and stderr, and the
// background daemon's log.
func (v *Volume) logFiles() []string {
	var out []string
	ents, _ := os.ReadDir(v.LogDir)
	for _, e := range ents {
		out = append(out, filepath.Join(v.LogDir, e.Name()))
	}
	if p := filepath.Join(v.State, daemonLogName); fileExists(p) {
		out = append(out, p)
	}
	return out
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// checkLogs fails the test on a panic or an ERROR line in anything coffer printed.
func (v *Volume) checkLogs() {
	for _, p := range v.logFiles() {
		b, _ := os.ReadFile(p)
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			bad := ""
			switch {
			case strings.Contains(line, "panic:"), strings.Contains(line, "fatal error:"):
				bad = "coffer panicked"
			case strings.Contains(line, "level=ERROR") && !v.opts.allowLogErrors:
				bad = "coffer logged an error"
			}
			if bad != "" {
				if n++; n <= 5 {
					v.t.Errorf("%s (%s): %s", bad, filepath.Base(p), line)
				}
			}
		}
		if n > 5 {
			v.t.Errorf("... and %d more such lines in %s", n-5, p)
		}
	}
}

func (v *Volume) logHint() string {
	return " (logs in " + v.LogDir + ")"
}

// logTail returns the last lines of every log, for a failing test's output.
func (v *Volume) logTail() string {
	var b strings.Builder
	for _, p := range v.logFiles() {
		data := strings.TrimSpace(readFileString(p))
		if data == "" {
			continue
		}
		lines := strings.Split(data, "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(&b, "\n--- %s (last %d lines)\n%s", filepath.Base(p), len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}

func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// forMatrix runs fn as one subtest per backend and key provider ("local/hsm", ...).
func forMatrix(t *testing.T, bs []backend, ps []provider, fn func(t *testing.T, b backend, p provider)) {
	forBackends(t, bs, func(t *testing.T, b backend) {
		for _, p := range ps {
			t.Run(string(p), func(t *testing.T) { fn(t, b, p) })
		}
	})
}

// forBackends runs fn as one subtest per backend.
func forBackends(t *testing.T, bs []backend, fn func(t *testing.T, b backend)) {
	for _, b := range bs {
		t.Run(string(b), func(t *testing.T) { fn(t, b) })
	}
}
