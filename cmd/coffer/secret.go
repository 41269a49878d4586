package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"coffer/crypto/secmem"
	"coffer/fs/meta"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// secretSource says where one secret may come from, in order of precedence.
type secretSource struct {
	what    string // "HSM PIN", "passphrase": used in prompts and errors, never the value
	envVar  string // e.g. COFFER_HSM_PIN
	file    string // value of --xxx-file, "" if not given
	flag    string // name of that flag, for the error message
	confirm bool   // ask twice on a terminal (choosing a new secret)
}

// volumeSecret says where the PIN or passphrase of a volume with this provider comes from.
func volumeSecret(provider, token, pinFile, passFile string) secretSource {
	if provider == meta.ProviderPassphrase {
		return secretSource{what: "passphrase", envVar: "COFFER_PASSPHRASE", file: passFile, flag: "--passphrase-file"}
	}
	return secretSource{what: fmt.Sprintf("PIN of HSM token %q", token), envVar: "COFFER_HSM_PIN", file: pinFile, flag: "--hsm-pin-file"}
}

// stateSecret peeks at the catalog in state (read-only) to learn which secret the volume wants.
func stateSecret(ctx context.Context, state, pinFile, passFile string) (secretSource, error) {
	cat, err := openStateReadOnly(ctx, state)
	if err != nil {
		return secretSource{}, err
	}
	defer cat.Close()
	v, err := cat.Volume(ctx)
	if err != nil {
		return secretSource{}, err
	}
	return volumeSecret(v.Provider, v.HSMToken, pinFile, passFile), nil
}

// readSecret returns the secret from the environment, a file, or a terminal prompt. Giving
// both the environment variable and the file is an error: one of them would be silently
// ignored, and a volume could be sealed under a secret the user did not pick. The variable's
// value is erased from this process's environment block once copied (os.Unsetenv alone
// leaves it in /proc/PID/environ), and the process is hardened first (hardenForSecret). The
// caller zeroes the returned slice when done.
func (env *cliEnv) readSecret(src secretSource) ([]byte, error) {
	hardenForSecret()
	fromEnv := env.getenv(src.envVar)
	if fromEnv != "" {
		b := []byte(fromEnv) // a copy: fromEnv points into the block erased next
		_ = env.unsetenv(src.envVar)
		if src.file != "" {
			clear(b)
			return nil, fmt.Errorf("both %s and %s give the %s: use one (nothing was read)", src.envVar, src.flag, src.what)
		}
		return b, nil
	}
	if src.file != "" {
		b, err := os.ReadFile(src.file)
		if err != nil {
			return nil, fmt.Errorf("read %s file: %w", src.what, err)
		}
		s := bytes.TrimRight(b, "\r\n")
		if len(s) == 0 {
			clear(b)
			return nil, fmt.Errorf("%s file %s is empty", src.what, src.file)
		}
		out := bytes.Clone(s)
		clear(b)
		return out, nil
	}
	fd := int(env.stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("no %s given: set %s, pass %s FILE, or run on a terminal to be prompted", src.what, src.envVar, src.flag)
	}
	first, err := prompt(env, fd, fmt.Sprintf("%s: ", capitalize(src.what)))
	if err != nil {
		return nil, err
	}
	if !src.confirm {
		return first, nil
	}
	again, err := prompt(env, fd, fmt.Sprintf("Repeat %s: ", src.what))
	if err != nil {
		clear(first)
		return nil, err
	}
	defer clear(again)
	if !bytes.Equal(first, again) {
		clear(first)
		return nil, fmt.Errorf("the two %ss differ", src.what)
	}
	return first, nil
}

// eraseEnv is the real cliEnv.unsetenv: the value is overwritten in the environment block
// the process started with, then dropped from Go's view.
func eraseEnv(name string) error {
	err := secmem.EraseEnv(name)
	if uerr := os.Unsetenv(name); err == nil {
		err = uerr
	}
	return err
}

var hardenOnce sync.Once

// hardenForSecret hardens this process as the daemon is (not dumpable, no core file, memory
// locked when allowed) before it holds a secret. The environment settings that make freed
// memory get overwritten were applied at start (reexecHardened).
func hardenForSecret() {
	hardenOnce.Do(func() {
		for _, err := range secmem.HardenProcess() {
			slog.Debug("hardening: " + err.Error())
		}
	})
}

// prompt reads one line from the terminal fd with echo off, into one fixed buffer: a growing
// slice would leave copies of the secret's prefixes behind in freed memory.
func prompt(env *cliEnv, fd int, msg string) ([]byte, error) {
	fmt.Fprint(env.stderr, msg)
	b, err := readNoEcho(fd)
	fmt.Fprintln(env.stderr)
	if err != nil {
		return nil, fmt.Errorf("read from terminal: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("empty input")
	}
	return b, nil
}

// maxSecretLen bounds a typed secret (the control socket takes at most 4 KiB).
const maxSecretLen = 4095

func readNoEcho(fd int) ([]byte, error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	quiet.Iflag |= unix.ICRNL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return nil, err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	buf := make([]byte, maxSecretLen+1)
	// ^C (or SIGTERM) at the prompt ends the command at once: the read would otherwise go on
	// until a newline, since the command's context takes those signals.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-sigs:
			unix.IoctlSetTermios(fd, unix.TCSETS, old)
			clear(buf)
			fmt.Fprintln(os.Stderr, "\ncoffer: interrupted")
			os.Exit(130)
		case <-done:
		}
	}()
	n := 0
	var c [1]byte
	for {
		k, err := unix.Read(fd, c[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			clear(buf)
			return nil, err
		}
		if k == 0 || c[0] == '\n' {
			break
		}
		if c[0] == '\r' {
			continue
		}
		if n == maxSecretLen {
			clear(buf)
			return nil, fmt.Errorf("longer than %d bytes", maxSecretLen)
		}
		buf[n] = c[0]
		n++
	}
	c[0] = 0
	out := bytes.Clone(buf[:n])
	clear(buf)
	return out, nil
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return string(bytes.ToUpper([]byte(s[:1]))) + s[1:]
}
