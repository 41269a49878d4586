package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"coffer/fs/control"
)

func cmdLock(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("lock", flag.ContinueOnError)
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	r, err := control.Call(ctx, pos[0], "lock", 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "locked %s: every key wiped in %s; file contents are unreadable until 'coffer unlock %s'\n", pos[0], r.Took, pos[0])
	return nil
}

func cmdUnlock(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("unlock", flag.ContinueOnError)
	pinFile := fl.String("hsm-pin-file", "", "file holding the HSM PIN (else COFFER_HSM_PIN or a prompt)")
	passFile := fl.String("passphrase-file", "", "file holding the passphrase (else COFFER_PASSPHRASE or a prompt)")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	// Ask the daemon which secret it wants, then send it over the control socket.
	st, _, err := control.GetStatus(ctx, pos[0], 30*time.Second)
	if err != nil {
		return err
	}
	secret, err := env.readSecret(volumeSecret(st.Provider, st.HSMToken, *pinFile, *passFile))
	if err != nil {
		return err
	}
	defer clear(secret)
	if _, err := control.CallSecret(ctx, pos[0], "unlock", secret, 2*time.Minute); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "unlocked %s\n", pos[0])
	return nil
}
