package daemon

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
)

// Opt-in profiles of the daemon, for finding where the time goes (make bench rows). Each
// variable names a file; "%p" in it becomes the daemon's pid, so that a benchmark that
// remounts keeps one profile per mount. Profiles hold function names and counts, never data.
const (
	envCPUProfile   = "COFFER_DEBUG_CPUPROFILE"   // CPU profile over the whole mount
	envHeapProfile  = "COFFER_DEBUG_HEAPPROFILE"  // heap profile (in use and allocated) at unmount
	envMutexProfile = "COFFER_DEBUG_MUTEXPROFILE" // lock contention over the whole mount
)

// startProfiling starts what the COFFER_DEBUG_*PROFILE variables ask for and returns the
// function that writes the profiles; call it at the start of Run and the returned
// function when the daemon is done (`defer startProfiling(log)()`). Without the variables it
// does nothing. A profile that cannot be written is logged, never fatal.
func startProfiling(log *slog.Logger) (stop func()) {
	name := func(env string) string {
		return strings.ReplaceAll(os.Getenv(env), "%p", strconv.Itoa(os.Getpid()))
	}
	var stops []func()
	if path := name(envCPUProfile); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			log.Warn("cpu profile", "file", path, "err", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			log.Warn("cpu profile", "file", path, "err", err)
		} else {
			log.Info("cpu profile started", "file", path)
			stops = append(stops, func() {
				pprof.StopCPUProfile()
				if err := f.Close(); err != nil {
					log.Warn("cpu profile", "file", path, "err", err)
				}
			})
		}
	}
	if path := name(envMutexProfile); path != "" {
		runtime.SetMutexProfileFraction(5)
		stops = append(stops, func() { writeProfile(log, "mutex", path) })
	}
	if path := name(envHeapProfile); path != "" {
		stops = append(stops, func() { writeProfile(log, "heap", path) })
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

func writeProfile(log *slog.Logger, kind, path string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		log.Warn(kind+" profile", "file", path, "err", err)
		return
	}
	if err := pprof.Lookup(kind).WriteTo(f, 0); err != nil {
		log.Warn(kind+" profile", "file", path, "err", err)
	}
	if err := f.Close(); err != nil {
		log.Warn(kind+" profile", "file", path, "err", err)
	}
}
