package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"coffer/fs/meta"

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

// readSecret returns the secret from the environment, a file, or a terminal prompt. The
// environment variable is removed from this process afterwards so that it is not inherited
// by anything coffer starts. The caller zeroes the returned slice when done.
func (env *cliEnv) readSecret(src secretSource) ([]byte, error) {
	if v := env.getenv(src.envVar); v != "" {
		_ = env.unsetenv(src.envVar)
		return []byte(v), nil
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

func prompt(env *cliEnv, fd int, msg string) ([]byte, error) {
	fmt.Fprint(env.stderr, msg)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(env.stderr)
	if err != nil {
		return nil, fmt.Errorf("read from terminal: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("empty input")
	}
	return b, nil
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return string(bytes.ToUpper([]byte(s[:1]))) + s[1:]
}
