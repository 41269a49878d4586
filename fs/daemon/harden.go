package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"coffer/crypto/secmem"

	"golang.org/x/sys/unix"
)

// Environ is the daemon's environment: ours without the secrets, plus the settings that
// make freed memory hold no key: the Go collector overwrites every object it frees
// (clobberfree: crypto11 drops Go copies of unwrapped DEKs it never clears), and glibc
// overwrites every chunk it frees (perturb; its per-thread cache skips that, so it is off):
// the PKCS#11 binding frees C buffers that held DEKs and the PIN without zeroing them.
// Both are read at process start: the daemon must be started with it (coffer mount re-runs
// itself as the daemon, with --foreground too).
func Environ() []string {
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

// Harden keeps key material out of core dumps and other processes' reach.
func Harden() {
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
