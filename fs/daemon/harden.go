package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"coffer/crypto/secmem"

	"golang.org/x/sys/unix"
)

// SecretEnv names the environment variables that may carry a PIN or passphrase; the daemon
// never inherits them.
var SecretEnv = []string{"COFFER_HSM_PIN", "COFFER_PASSPHRASE", "COFFER_NEW_PASSPHRASE"}

// Environ is the daemon's environment: ours without the secrets, with the settings that make
// freed memory hold no key (secmem.HardenedEnv). They are read at process start: the daemon
// must be started with them (coffer mount re-runs itself as the daemon, with --foreground
// too).
func Environ() []string { return secmem.HardenedEnv(os.Environ(), SecretEnv...) }

// Harden keeps key material out of core dumps and other processes' reach
// (secmem.HardenProcess) and says what it could not do.
func Harden() {
	for _, err := range secmem.HardenProcess() {
		slog.Warn("daemon hardening: " + err.Error())
	}
	if !secmem.Erasing {
		slog.Warn("built without GOEXPERIMENT=runtimesecret (use make build): AES key schedules and stack copies of keys may outlive a wipe")
	}
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
