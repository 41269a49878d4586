package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"coffer/crypto/secmem"
	cofferfs "coffer/fs"
	"coffer/fs/content"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/remote"

	"golang.org/x/sys/unix"
)

// Fds a daemon child inherits from `coffer mount` (after stdin, stdout, stderr).
const (
	readyFd  = 3 // the child writes "ok\n" or "error: ...\n" when the mount is ready or failed
	secretFd = 4 // the parent writes the PIN or passphrase, then closes it
)

type mountConfig struct {
	state, mountpoint     string
	foreground, child     bool
	allowOther, readOnly  bool
	pinFile, passFile     string
	cacheSize, stagingCap int64
	diskCache             int64 // bytes of uploaded objects kept in STATE/objcache; 0 = off
	unmountTimeout        time.Duration
	syncTimeout           time.Duration // fsync gives up with EIO after this
	readTimeout           time.Duration // one remote read gives up with EIO after this
	stagingDir            string        // staged ciphertext (default STATE/staging)
}

func cmdMount(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	var mc mountConfig
	fl.StringVar(&mc.state, "state", "", "state directory of the volume")
	fl.BoolVar(&mc.foreground, "foreground", false, "serve in the foreground (logs to stderr)")
	fl.BoolVar(&mc.allowOther, "allow-other", false, "let other users use the mount (permissions still apply)")
	fl.BoolVar(&mc.readOnly, "read-only", false, "mount read-only")
	fl.StringVar(&mc.pinFile, "hsm-pin-file", "", "file holding the HSM PIN (else COFFER_HSM_PIN or a prompt)")
	fl.StringVar(&mc.passFile, "passphrase-file", "", "file holding the passphrase (else COFFER_PASSPHRASE or a prompt)")
	cache := fl.String("cache-size", "256M", "plaintext block cache in memory")
	staging := fl.String("staging-cap", "8G", "ciphertext staged locally before writes fail with ENOSPC")
	diskCache := fl.String("disk-cache", "0", "keep copies of uploaded objects (ciphertext) in STATE/objcache, up to this size, and read from them (0: off)")
	fl.DurationVar(&mc.unmountTimeout, "unmount-timeout", time.Minute, "how long unmount waits for uploads before it gives up (data stays staged)")
	fl.DurationVar(&mc.syncTimeout, "sync-timeout", time.Minute, "how long fsync waits for uploads before it fails with EIO (data stays staged)")
	fl.DurationVar(&mc.readTimeout, "read-timeout", time.Minute, "how long a read waits for the remote before it fails with EIO")
	fl.StringVar(&mc.stagingDir, "staging-dir", "", "where staged ciphertext is kept (default STATE/staging); it must survive reboots")
	fl.BoolVar(&mc.child, "daemon-child", false, "internal: run as the background daemon")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	if mc.state == "" {
		return usageError{"--state DIR is required"}
	}
	if mc.cacheSize, err = parseSize(*cache); err != nil {
		return usageError{"--cache-size: " + err.Error()}
	}
	if mc.stagingCap, err = parseSize(*staging); err != nil {
		return usageError{"--staging-cap: " + err.Error()}
	}
	if *diskCache != "0" {
		if mc.diskCache, err = parseSize(*diskCache); err != nil {
			return usageError{"--disk-cache: " + err.Error()}
		}
	}
	if mc.state, err = filepath.Abs(mc.state); err != nil {
		return err
	}
	if mc.mountpoint, err = filepath.Abs(pos[0]); err != nil {
		return err
	}
	if mc.stagingDir == "" {
		mc.stagingDir = filepath.Join(mc.state, "staging")
	} else if mc.stagingDir, err = filepath.Abs(mc.stagingDir); err != nil {
		return err
	}
	if mc.syncTimeout <= 0 || mc.readTimeout <= 0 || mc.unmountTimeout <= 0 {
		return usageError{"--sync-timeout, --read-timeout and --unmount-timeout must be positive"}
	}

	if mc.child {
		secret, err := readSecretFd()
		if err != nil {
			return err
		}
		ready := os.NewFile(readyFd, "ready")
		return runDaemon(ctx, env, mc, secret, func(err error) {
			if err != nil {
				fmt.Fprintf(ready, "error: %s\n", oneLine(err.Error()))
			} else {
				fmt.Fprintln(ready, "ok")
			}
			ready.Close()
		})
	}

	if err := checkMountpoint(ctx, mc.mountpoint); err != nil {
		return err
	}
	src, err := stateSecret(ctx, mc.state, mc.pinFile, mc.passFile)
	if err != nil {
		return err
	}
	secret, err := env.readSecret(src)
	if err != nil {
		return err
	}
	defer clear(secret)
	return spawnDaemon(env, mc, args, secret)
}

func checkMountpoint(ctx context.Context, mnt string) error {
	if _, err := ctlCall(ctx, mnt, "status", 2*time.Second); err == nil {
		return fmt.Errorf("%s is already mounted by a running coffer daemon (coffer unmount %s)", mnt, mnt)
	}
	// A coffer mount that no daemon answers for was left by a killed daemon. Right after a
	// kill -9 it may not fail with ENOTCONN yet, so look it up rather than stat it.
	if isCofferMount(mnt) {
		slog.Warn("clearing a coffer mount left by a dead daemon", "mountpoint", mnt)
		if err := cofferfs.Detach(mnt); err != nil {
			return fmt.Errorf("clear dead mount on %s: %w", mnt, err)
		}
	}
	if err := cofferfs.ClearDeadMount(mnt); err != nil {
		return err
	}
	st, err := os.Stat(mnt)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	return nil
}

// isCofferMount reports whether /proc/self/mountinfo lists a coffer FUSE mount on mnt.
func isCofferMount(mnt string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	unescape := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	for _, line := range strings.Split(string(b), "\n") {
		// 36 35 0:45 / /mnt rw,... - fuse.coffer coffer rw,...
		f := strings.Fields(line)
		if len(f) < 5 || unescape.Replace(f[4]) != mnt {
			continue
		}
		if i := strings.Index(line, " - "); i >= 0 && strings.HasPrefix(line[i+3:], "fuse.coffer ") {
			return true
		}
	}
	return false
}

// daemonEnv is the daemon's environment: ours without the secrets, plus the settings that
// make freed memory hold no key: the Go collector overwrites every object it frees
// (clobberfree: crypto11 drops Go copies of unwrapped DEKs it never clears), and glibc
// overwrites every chunk it frees (perturb; its per-thread cache skips that, so it is off):
// the PKCS#11 binding frees C buffers that held DEKs and the PIN without zeroing them.
// Both are read at process start, hence a fresh process even with --foreground.
func daemonEnv() []string {
	var out []string
	godebug, tunables := "clobberfree=1", "glibc.malloc.tcache_count=0"
	for _, e := range os.Environ() {
		switch k, v, _ := strings.Cut(e, "="); k {
		case "COFFER_HSM_PIN", "COFFER_PASSPHRASE", "COFFER_NEW_PASSPHRASE", "MALLOC_PERTURB_":
		case "GODEBUG":
			godebug = v + "," + godebug
		case "GLIBC_TUNABLES":
			tunables = v + ":" + tunables
		default:
			out = append(out, e)
		}
	}
	return append(out, "GODEBUG="+godebug, "GLIBC_TUNABLES="+tunables, "MALLOC_PERTURB_=165")
}

// spawnDaemon re-runs coffer as the daemon, hands it the secret over a pipe (never the
// environment or argv) and waits until it says the mount is ready. In the background the
// daemon is a session leader logging to STATE/daemon.log; with --foreground it logs to our
// stderr and we wait for it, passing signals on.
func spawnDaemon(env *cliEnv, mc mountConfig, args []string, secret []byte) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(mc.state, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	secR, secW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return err
	}
	cmd := exec.Command(exe, append([]string{"mount", "--daemon-child"}, args...)...)
	cmd.ExtraFiles = []*os.File{readyW, secR}
	cmd.Env = daemonEnv()
	if mc.foreground {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// Its own process group: a ^C reaches it once, through us.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sigs)
		go func() {
			for s := range sigs {
				if cmd.Process != nil {
					cmd.Process.Signal(s)
				}
			}
		}()
	} else {
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		secR.Close()
		secW.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	readyW.Close()
	secR.Close()
	_, werr := secW.Write(secret)
	secW.Close()
	if werr != nil {
		cmd.Process.Kill()
		return fmt.Errorf("hand the secret to the daemon: %w", werr)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	line, err := bufio.NewReader(readyR).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok" && mc.foreground:
		fmt.Fprintf(env.stdout, "mounted %s (daemon pid %d); serving until unmounted\n", mc.mountpoint, cmd.Process.Pid)
		if err := <-exited; err != nil {
			return fmt.Errorf("the daemon of %s: %w", mc.mountpoint, err)
		}
		return nil
	case line == "ok":
		fmt.Fprintf(env.stdout, "mounted %s (daemon pid %d, log %s)\n", mc.mountpoint, cmd.Process.Pid, logPath)
		return nil
	case strings.HasPrefix(line, "error: "):
		<-exited
		return errors.New(strings.TrimPrefix(line, "error: "))
	default:
		werr := <-exited
		return fmt.Errorf("the daemon exited before the mount was ready (%v); see %s", werr, logPath)
	}
}

func readSecretFd() ([]byte, error) {
	f := os.NewFile(secretFd, "secret")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("read secret from parent: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("no secret from parent")
	}
	return b, nil
}

// harden keeps key material out of core dumps and other processes' reach.
func harden() {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		slog.Warn("could not make the daemon non-dumpable", "err", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		slog.Warn("could not disable core dumps", "err", err)
	}
	// Never swapped: every page as it is touched (MCL_ONFAULT: no RSS for reserved but
	// unused address space). Without CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK, locking
	// future mappings would make allocations fail once the limit is hit, so then only the
	// key buffers (crypto/secmem) are locked.
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil && (lim.Cur == unix.RLIM_INFINITY || hasCapIPCLock()) {
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
			slog.Warn("could not lock the daemon's memory: it may be swapped out", "err", err)
		}
	} else {
		slog.Warn("the daemon's memory can be swapped out (no CAP_IPC_LOCK, RLIMIT_MEMLOCK limited); key buffers are locked")
	}
	if !secmem.Erasing {
		slog.Warn("built without GOEXPERIMENT=runtimesecret (use make build): AES key schedules and stack copies of keys may outlive a wipe")
	}
}

// hasCapIPCLock reports whether CAP_IPC_LOCK is in our effective set.
func hasCapIPCLock() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_IPC_LOCK/32].Effective&(1<<(unix.CAP_IPC_LOCK%32)) != 0
}

// scrub makes the collector free, and so overwrite (clobberfree, runtime/secret), every
// heap object a wipe just dropped: ciphers, key schedules, Go copies of DEKs. Two cycles,
// because objects with cleanups or finalizers are freed one cycle later.
//
// It also rewrites every thread's signal stack: a signal saves the interrupted thread's
// registers there, and the copy stays until the next signal, so registers that held key
// bytes at that moment (AES round keys, a DEK being copied, the HSM module's buffers)
// would survive the wipe. Every thread gets a signal now, while its registers hold no key
// (key code runs inside secmem.Do, which clears them), overwriting the old frame. SIGURG
// is Go's own preemption signal, which the runtime expects to see unannounced.
func scrub() time.Duration {
	start := time.Now()
	runtime.GC()
	if tasks, err := os.ReadDir("/proc/self/task"); err == nil {
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil {
				_ = unix.Tgkill(os.Getpid(), tid, unix.SIGURG)
			}
		}
	}
	time.Sleep(time.Millisecond) // delivery is asynchronous
	runtime.GC()
	return time.Since(start)
}

// holdBeforeExit is a test hook: with COFFER_TEST_HOLD_EXIT=DIR the daemon, after its final
// wipe, creates DIR/held and waits (at most a minute) for DIR/release, so a test can scan
// the memory of a process that is about to exit.
func holdBeforeExit(log *slog.Logger) {
	dir := os.Getenv("COFFER_TEST_HOLD_EXIT")
	if dir == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(dir, "held"), nil, 0o600); err != nil {
		log.Error("test hook: hold before exit", "err", err)
		return
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "release")); err == nil {
			return
		}
	}
}

// runDaemon opens the volume, mounts it, serves until unmounted, then uploads what is staged
// and wipes every key. ready is called once: with nil when the mount is usable, or with the
// error that stopped it.
func runDaemon(parent context.Context, env *cliEnv, mc mountConfig, secret []byte, ready func(error)) (err error) {
	defer startProfiling(slog.Default())() // only with COFFER_DEBUG_*PROFILE set
	ctx := context.WithoutCancel(parent)   // signals are handled below, not by cancelling I/O
	readyCalled := false
	signalReady := func(e error) {
		if !readyCalled {
			readyCalled = true
			ready(e)
		}
	}
	defer func() {
		if err != nil {
			signalReady(err)
		}
	}()
	harden()
	// The block cache is ordinary Go memory: without a limit the collector lets the heap
	// grow to about twice what is live (610 MiB peak for a 256 MiB cache). A soft limit
	// keeps RSS near the cache cap plus working memory.
	debug.SetMemoryLimit(mc.cacheSize + 96<<20)
	log := slog.Default()
	if err := checkMountpoint(ctx, mc.mountpoint); err != nil {
		return err
	}

	v, err := volume.Open(ctx, mc.state, secret, volume.OpenOptions{Logger: log})
	clear(secret)
	if err != nil {
		return err
	}
	audit := func(event string, kv ...any) {
		detail := map[string]any{"mountpoint": mc.mountpoint, "pid": os.Getpid()}
		for i := 0; i+1 < len(kv); i += 2 {
			detail[kv[i].(string)] = kv[i+1]
		}
		b, _ := json.Marshal(detail)
		if _, err := v.Catalog.AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: event,
			Actor: "uid:" + strconv.Itoa(os.Getuid()), Detail: string(b)}); err != nil {
			log.Error("audit", "event", event, "err", err)
		}
	}
	seal := func() {
		if _, err := keyops.SealAudit(ctx, v.Catalog, v.Provider, v.ID, v.KEK); err != nil && !v.Locked() {
			log.Error("seal audit log", "err", err)
		}
	}
	closeVolume := func() {
		audit("keys.wipe", "reason", "unmount")
		seal()
		if cerr := v.Close(ctx); cerr != nil {
			log.Error("close volume", "err", cerr)
		}
		log.Info("keys wiped", "volume", hex.EncodeToString(v.ID[:]))
	}
	if objcache := filepath.Join(mc.state, "objcache"); mc.diskCache > 0 {
		dc, err := remote.NewDiskCache(v.Store, objcache, mc.diskCache, log)
		if err != nil {
			closeVolume()
			return err
		}
		v.Store = dc
	} else if _, err := os.Stat(objcache); err == nil {
		// Off now: its copies would go stale as objects are deleted without it.
		log.Info("removing the disk cache of an earlier mount (--disk-cache is off)", "dir", objcache)
		if err := os.RemoveAll(objcache); err != nil {
			log.Warn("could not remove the disk cache", "dir", objcache, "err", err)
		}
	}
	data, err := content.New(v, content.Options{
		StagingDir: mc.stagingDir, CacheBytes: mc.cacheSize, StagingCap: mc.stagingCap,
		SyncTimeout: mc.syncTimeout, ReadTimeout: mc.readTimeout, Logger: log,
	})
	if err != nil {
		closeVolume()
		return err
	}
	if err := data.Recover(ctx); err != nil {
		data.Close(ctx)
		closeVolume()
		return fmt.Errorf("recover staged data: %w", err)
	}
	ctl, err := listenControl(mc.mountpoint, log)
	if err != nil {
		data.Close(ctx)
		closeVolume()
		return err
	}
	defer ctl.close()

	var lockMu sync.Mutex      // one coffer lock at a time
	var scrubbed time.Duration // set by Scrub, inside Lock, under lockMu
	fsys := cofferfs.New(v, data, cofferfs.Options{AllowOther: mc.allowOther, ReadOnly: mc.readOnly, Logger: log,
		Scrub: func() { scrubbed = scrub() }})
	srv, err := fsys.Mount(mc.mountpoint)
	if err != nil {
		data.Close(ctx)
		closeVolume()
		return fmt.Errorf("mount %s: %w", mc.mountpoint, err)
	}

	// What the daemon reports when it is done; `coffer unmount` waits for it.
	done := make(chan struct{})
	var result error
	ctl.status = func() any { return daemonStatus(v, data, mc) }
	ctl.unmount = func() error {
		if err := fsys.Unmount(); err != nil {
			if errors.Is(err, cofferfs.ErrDetached) {
				return fmt.Errorf("%s is busy (a file is open or a shell's working directory is inside): detached it; the daemon uploads, wipes keys and exits once the last one is closed", mc.mountpoint)
			}
			return err
		}
		<-done
		return result
	}
	ctl.lock = func() (time.Duration, error) {
		lockMu.Lock()
		defer lockMu.Unlock()
		took, err := fsys.Lock()
		audit("lock", "took_us", took.Microseconds(), "scrub_us", scrubbed.Microseconds(), "ok", err == nil)
		log.Warn("locked: every key wiped", "took", took, "scrub", scrubbed, "err", err)
		return took, err
	}
	ctl.unlock = func(secret []byte) error {
		if err := fsys.Unlock(ctx, secret); err != nil {
			audit("unlock.failed", "error", err.Error())
			return err
		}
		data.Resume()
		audit("unlock")
		seal() // MACs the lock, failed unlocks and this unlock (no key could while locked)
		log.Warn("unlocked")
		return nil
	}
	live := newLiveKeyOps(v, data, fsys, mc.mountpoint, log) // rotate and shred while mounted
	ctl.keyop = live.serve
	go ctl.serve()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			log.Info("signal: unmounting", "signal", s.String())
			if err := fsys.Unmount(); errors.Is(err, cofferfs.ErrDetached) {
				log.Warn("mount busy: detached; finishing once the last open file is closed", "mountpoint", mc.mountpoint)
			} else if err != nil {
				log.Error("unmount on signal", "err", err)
			}
		}
	}()

	audit("mount", "read_only", mc.readOnly)
	seal()
	log.Info("serving", "mountpoint", mc.mountpoint, "volume", hex.EncodeToString(v.ID[:]), "remote", v.Remote)
	signalReady(nil)
	srv.Wait()
	live.stop() // a key operation in progress ends before the volume closes
	log.Info("unmounted; uploading what is staged", "mountpoint", mc.mountpoint)

	cctx, cancel := context.WithTimeout(ctx, mc.unmountTimeout)
	left, cerr := data.Close(cctx)
	cancel()
	closeVolume()
	log.Info("freed memory overwritten", "took", scrub())
	holdBeforeExit(log)
	switch {
	case left > 0:
		result = fmt.Errorf("unmounted, but %d bytes are still staged (remote unreachable?): they upload at the next mount", left)
	case cerr != nil:
		result = fmt.Errorf("unmounted, but finishing uploads failed: %w", cerr)
	}
	close(done)
	if result != nil {
		log.Error(result.Error())
	}
	ctl.flush(5 * time.Second)
	return result
}

func cmdUnmount(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("unmount", flag.ContinueOnError)
	timeout := fl.Duration("timeout", 5*time.Minute, "how long to wait for the daemon to finish")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	if _, err := ctlCall(ctx, pos[0], "unmount", *timeout); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "unmounted %s; keys wiped\n", pos[0])
	return nil
}
