// Command coffer is the command-line interface of the coffer encrypted filesystem.
//
// Every subcommand prints one clear line on stderr and exits non-zero on failure. Secrets
// (HSM PIN, passphrase) come from the environment, a file or a terminal prompt, never argv.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"coffer/crypto/secmem"
)

// command is one subcommand: its one-line synopsis and the function that runs it.
type command struct {
	usage string
	run   func(ctx context.Context, env *cliEnv, args []string) error
}

var commands = map[string]command{
	"init":    {"init --state DIR [--remote REMOTE] [--hsm-module SO --hsm-token LABEL | --passphrase] [--key-mode wrap|derive] [--block-size N] [--chunk-size N]", cmdInit},
	"status":  {"status (MOUNTPOINT | --state DIR) [--json]", cmdStatus},
	"mount":   {"mount --state DIR MOUNTPOINT [--foreground] [--allow-other] [--read-only] [--cache-size N] [--staging-cap N] [--staging-dir DIR] [--sync-timeout D] [--read-timeout D] [--unmount-timeout D] [--replica-interval D] [--pitr-window D]", cmdMount},
	"unmount": {"unmount MOUNTPOINT", cmdUnmount},
	"lock":    {"lock MOUNTPOINT", cmdLock},
	"unlock":  {"unlock MOUNTPOINT [--hsm-pin-file F | --passphrase-file F]", cmdUnlock},
	"audit":   {"audit --state DIR [--json] [--verify]", cmdAudit},
}

// cliEnv is what a subcommand may touch of the outside world; tests swap it.
type cliEnv struct {
	stdin          *os.File
	stdout, stderr io.Writer
	getenv         func(string) string
	unsetenv       func(string) error
}

// usageError marks a mistake in the command line (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	reexecHardened()
	env := &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, unsetenv: eraseEnv}
	code := run(env, os.Args[1:])
	holdBeforeExit()
	os.Exit(code)
}

// secretCommands may read a PIN or passphrase and then hold keys.
var secretCommands = map[string]bool{"init": true, "mount": true, "unlock": true, "rotate": true,
	"shred": true, "passwd": true, "audit": true, "restore": true}

// reexecHardened re-runs this process, same pid, arguments and descriptors, with the
// environment settings that make freed memory get overwritten (secmem.HardenedEnv: the Go
// runtime and glibc read them at start only), before a command that may read a secret does
// anything. If exec fails the command runs as it is, with a warning.
func reexecHardened() {
	if len(os.Args) < 2 || !secretCommands[os.Args[1]] || secmem.EnvHardened() {
		return
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, os.Args, secmem.HardenedEnv(os.Environ()))
	}
	fmt.Fprintf(os.Stderr, "coffer: warning: could not re-run hardened (%v): freed memory may keep copies of keys\n", err)
}

// holdBeforeExit is a test hook for the memory scan of an offline key command: with
// COFFER_TEST_HOLD_EXIT=DIR, once rotate, shred, passwd or audit is done, the process makes
// the collector free (and so overwrite) what it dropped, creates DIR/held and waits (at most
// a minute) for DIR/release.
func holdBeforeExit() {
	dir := os.Getenv("COFFER_TEST_HOLD_EXIT")
	if dir == "" || len(os.Args) < 2 {
		return
	}
	switch os.Args[1] {
	case "rotate", "shred", "passwd", "audit":
	default:
		return
	}
	runtime.GC()
	runtime.GC()
	if err := os.WriteFile(filepath.Join(dir, "held"), nil, 0o600); err != nil {
		return
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "release")); err == nil {
			return
		}
	}
}

func run(env *cliEnv, args []string) int {
	slog.SetDefault(slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: logLevel(env.getenv("COFFER_LOG"))})))
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(env.stdout)
		return 0
	}
	name := args[0]
	if name == "version" || name == "--version" {
		fmt.Fprintln(env.stdout, "coffer", version)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.stderr, "coffer: unknown command %q (run 'coffer help')\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, env, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(env.stderr, "coffer %s: %s\n", name, oneLine(err.Error()))
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(env.stderr, "usage: coffer %s\n", cmd.usage)
			return 2
		}
		return 1
	}
	return 0
}

const version = "0.1.0-dev"

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "coffer: an encrypted filesystem with keys in an HSM and ciphertext on any rclone remote.")
	fmt.Fprintln(w, "\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  coffer %s\n", commands[n].usage)
	}
	fmt.Fprintln(w, "\nSecrets: COFFER_HSM_PIN or --hsm-pin-file; COFFER_PASSPHRASE or --passphrase-file; else a terminal prompt.")
	fmt.Fprintln(w, "Logs: COFFER_LOG=debug|info|warn|error (default warn).")
}

func logLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	case "error":
		return slog.LevelError
	}
	return slog.LevelWarn
}

// oneLine keeps an error on one line of stderr, as the CLI contract promises.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// parseFlags parses flags that may stand before, between or after positional arguments
// (`coffer mount MNT --foreground` works like `coffer mount --foreground MNT`).
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
