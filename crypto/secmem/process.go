package secmem

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// HardenProcess keeps a process that holds a secret (the daemon, and every CLI command that
// reads a PIN or passphrase) out of other processes' reach: not dumpable (no core file, no
// ptrace or /proc/PID/mem by the same uid), a core limit of 0, and, when the memory lock limit
// allows it, every page locked in RAM as it is touched (MCL_ONFAULT: no RSS for reserved but
// unused address space). Without CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK, locking future
// mappings would make allocations fail once the limit is hit, so then only the key buffers
// (Buf) are locked. It returns what it could not do, for the caller to log; none of it is
// fatal.
func HardenProcess() []error {
	var errs []error
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		errs = append(errs, fmt.Errorf("could not make the process non-dumpable: %w", err))
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		errs = append(errs, fmt.Errorf("could not disable core dumps: %w", err))
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil && (lim.Cur == unix.RLIM_INFINITY || hasCapIPCLock()) {
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
			errs = append(errs, fmt.Errorf("could not lock the process's memory (it may be swapped out): %w", err))
		}
	} else {
		errs = append(errs, errors.New("the process's memory can be swapped out (no CAP_IPC_LOCK, RLIMIT_MEMLOCK limited); key buffers are locked"))
	}
	return errs
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

// EraseEnv overwrites with zero bytes the values of the named variables, in both places a
// Go process keeps them: the environment block the process was started with, which
// /proc/PID/environ shows for the whole life of the process, and the Go runtime's copy of
// it, which stays reachable (and so is never freed) after os.Unsetenv. Call it once the
// value is copied, then os.Unsetenv; strings obtained from os.Getenv for these names read
// zeros afterwards.
func EraseEnv(names ...string) error {
	for _, name := range names {
		// The runtime copied each variable to the heap at start (one string per entry);
		// Getenv returns a substring of that copy.
		if v, ok := syscall.Getenv(name); ok && len(v) > 0 {
			clear(unsafe.Slice(unsafe.StringData(v), len(v)))
		}
	}
	start, end, err := envBounds()
	if err != nil {
		return err
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("erase environment: %w", err)
	}
	defer mem.Close()
	block := make([]byte, end-start)
	if _, err := mem.ReadAt(block, int64(start)); err != nil {
		return fmt.Errorf("erase environment: read the block: %w", err)
	}
	off := 0
	for _, entry := range bytes.Split(block, []byte{0}) {
		for _, name := range names {
			if v, ok := bytes.CutPrefix(entry, []byte(name+"=")); ok && len(v) > 0 {
				at := off + len(name) + 1
				if _, err := mem.WriteAt(make([]byte, len(v)), int64(start)+int64(at)); err != nil {
					return fmt.Errorf("erase environment: %w", err)
				}
			}
		}
		off += len(entry) + 1
	}
	clear(block)
	return nil
}

// envBounds reads env_start and env_end (fields 50 and 51) from /proc/self/stat.
func envBounds() (start, end uint64, err error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("erase environment: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("erase environment: unexpected /proc/self/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 51-3+1 {
		return 0, 0, errors.New("erase environment: /proc/self/stat has no env_start/env_end")
	}
	if start, err = strconv.ParseUint(f[50-3], 10, 64); err == nil {
		end, err = strconv.ParseUint(f[51-3], 10, 64)
	}
	if err != nil || end < start || end-start > 1<<24 {
		return 0, 0, fmt.Errorf("erase environment: bad env_start/env_end in /proc/self/stat")
	}
	return start, end, nil
}

// The settings HardenedEnv adds. Both the Go runtime and glibc read them at process start
// only, so a process must be started (or re-executed) with them.
const (
	envClobberFree = "clobberfree=1"               // in GODEBUG
	envTcacheOff   = "glibc.malloc.tcache_count=0" // in GLIBC_TUNABLES
	envPerturb     = "MALLOC_PERTURB_=165"
)

// HardenedEnv returns environ (KEY=VALUE entries) with the settings that make freed memory
// hold no key: the Go collector overwrites every object it frees (clobberfree: crypto11
// drops Go copies of unwrapped DEKs it never clears), and glibc overwrites every chunk it
// frees (perturb; its per-thread cache skips that, so it is off): the PKCS#11 binding frees
// C buffers that held DEKs and the PIN without zeroing them. Entries named in drop are left
// out (secrets a child must not inherit).
func HardenedEnv(environ []string, drop ...string) []string {
	var out []string
	godebug, tunables := envClobberFree, envTcacheOff
	for _, e := range environ {
		k, v, _ := strings.Cut(e, "=")
		switch {
		case k == "MALLOC_PERTURB_" || slices.Contains(drop, k):
		case k == "GODEBUG":
			if !slices.Contains(strings.Split(v, ","), envClobberFree) {
				godebug = v + "," + godebug
			} else {
				godebug = v
			}
		case k == "GLIBC_TUNABLES":
			// glibc splits the value at ':' in place: one tunable more is one entry more.
			if !slices.Contains(strings.Split(v, ":"), envTcacheOff) {
				tunables = v + ":" + tunables
			} else {
				tunables = v
			}
		default:
			out = append(out, e)
		}
	}
	return append(out, "GODEBUG="+godebug, "GLIBC_TUNABLES="+tunables, envPerturb)
}

// EnvHardened reports whether this process was started with HardenedEnv's settings.
func EnvHardened() bool {
	return strings.Contains(os.Getenv("GODEBUG"), envClobberFree) &&
		strings.Contains(os.Getenv("GLIBC_TUNABLES"), envTcacheOff) &&
		"MALLOC_PERTURB_="+os.Getenv("MALLOC_PERTURB_") == envPerturb
}
