package remote

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/rclone/rclone/fs"
	"github.com/rclone/rclone/fs/config"
	"github.com/rclone/rclone/fs/config/configfile"
	"github.com/rclone/rclone/fs/fspath"
	"github.com/rclone/rclone/lib/atexit"
)

// roStorage is the user's rclone.conf, read but never written back: backends
// save discovered settings (sftp wrote shell_type and md5sum_command on first
// connect), which must stay in memory.
type roStorage struct{ *configfile.Storage }

func (roStorage) Save() error { return nil }

var (
	setupOnce sync.Once
	setupErr  error
)

// setupRclone prepares rclone's process-wide state once: no signal
// handler of its own (it would os.Exit during our shutdown), logs at ERROR
// into our slog, no terminal prompts, and the user's config read-only. The
// config is loaded here so that a broken or encrypted file gives an error
// instead of rclone's os.Exit(1) at first use.
func setupRclone() error {
	setupOnce.Do(func() {
		atexit.IgnoreSignals()
		fs.SetLogger(rcloneLogHandler{})
		// Written only if needed: rclone goroutines already running (a
		// test's S3 server) read these fields without a lock.
		ci := fs.GetConfig(context.Background())
		if ci.LogLevel != fs.LogLevelError {
			ci.LogLevel = fs.LogLevelError
		}
		if ci.AskPassword {
			ci.AskPassword = false // a daemon must never prompt; use RCLONE_CONFIG_PASS
		}
		// rclone as a library does not read RCLONE_CONFIG (its command line does).
		if p := os.Getenv("RCLONE_CONFIG"); p != "" {
			if err := config.SetConfigPath(p); err != nil {
				setupErr = fmt.Errorf("remote: RCLONE_CONFIG: %w", err)
				return
			}
		}
		st := &configfile.Storage{}
		if config.GetConfigPath() != "" {
			if err := st.Load(); err != nil && !errors.Is(err, config.ErrorConfigFileNotFound) {
				setupErr = fmt.Errorf("remote: load rclone config %s: %w", config.GetConfigPath(), err)
				return
			}
		}
		config.SetData(roStorage{st})
	})
	return setupErr
}

// backendDefaults are options coffer sets on a backend unless the user set
// them (in the string, the environment or rclone.conf). Reasoned from what
// a Store does: mostly ranged reads of blocks.
var backendDefaults = map[string]map[string]string{
	// sftp's concurrent reads pump the object to its end and Close waits
	// for them: a 4 KiB range at the start of a 4 MiB object took 5-13 ms
	// on loopback, 0.5-0.8 ms without (whole 4 MiB reads: 9-16 ms with,
	// 20-27 ms without).
	"sftp": {"disable_concurrent_reads": "true"},
	// After a single-part PUT rclone HEADs the object to read back its metadata, which
	// coffer never uses; the PUT carries Content-MD5, so its 200 already says the bytes
	// arrived intact. Without the HEAD a Put is one request instead of two (rclone serve
	// s3 answers a HEAD by hashing the whole object: 18% of the CPU of 4 MiB Puts).
	"s3": {"no_head": "true"},
}

// tuneRemote returns the string given to rclone: backendDefaults added,
// and the root marked as a folder with a trailing '/', so S3 skips the
// HEAD that checks whether the root is a file (Open then needs no network,
// and an unreachable or refusing server is not mistaken for "root is a
// file", which rclone reports when that HEAD fails).
// Options in extra ("key=value") are added as they are.
func tuneRemote(remote string, p fspath.Parsed, extra ...string) string {
	cfg := p.ConfigString
	for _, e := range extra {
		cfg += "," + e
	}
	if ri, name, _, conn, err := fs.ParseRemote(remote); err == nil {
		keys := make([]string, 0, len(backendDefaults[ri.Name]))
		for k := range backendDefaults[ri.Name] {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !userSet(ri, name, conn, k) {
				cfg += "," + k + "=" + backendDefaults[ri.Name][k]
			}
		}
	}
	root := p.Path
	if root != "" && !strings.HasSuffix(root, "/") {
		root += "/"
	}
	return cfg + ":" + root
}

// userSet reports whether the user gave option key of a remote: in the
// connection string, rclone's environment variables or rclone.conf.
// (fs.ConfigMap cannot tell: it reports registry defaults as set.)
func userSet(ri *fs.RegInfo, name string, conn map[string]string, key string) bool {
	if _, ok := conn[key]; ok {
		return true
	}
	if _, ok := os.LookupEnv(fs.OptionToEnv(ri.Prefix + "-" + key)); ok {
		return true
	}
	if strings.HasPrefix(name, ":") {
		return false
	}
	if _, ok := os.LookupEnv(fs.ConfigToEnv(name, key)); ok {
		return true
	}
	v, ok := config.LoadedData().GetValue(name, key)
	return ok && v != ""
}
