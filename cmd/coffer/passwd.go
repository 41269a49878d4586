package main

import (
	"context"
	"flag"
	"fmt"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
)

func init() {
	commands["passwd"] = command{"passwd --state DIR [--passphrase-file F] [--new-passphrase-file F]", cmdPasswd}
}

func cmdPasswd(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("passwd", flag.ContinueOnError)
	state := fl.String("state", "", "state directory of the volume")
	passFile := fl.String("passphrase-file", "", "file holding the current passphrase (else COFFER_PASSPHRASE or a prompt)")
	newFile := fl.String("new-passphrase-file", "", "file holding the new passphrase (else COFFER_NEW_PASSPHRASE or a prompt)")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	dir, err := absState(state)
	if err != nil {
		return err
	}
	// The catalog alone says which provider the volume uses; the volume itself is opened
	// (remote included) only with the current passphrase, so the change reaches the
	// catalog's replica (r/keys and the catalog) before passwd reports success.
	cat, err := meta.OpenReadOnly(ctx, dir)
	if err != nil {
		return notMounted(dir, fmt.Errorf("open volume in %s: %w", dir, err))
	}
	mv, err := cat.Volume(ctx)
	cat.Close()
	if err != nil {
		return err
	}
	if mv.Provider != meta.ProviderPassphrase {
		return fmt.Errorf("this volume's keys are in HSM token %q, not under a passphrase: change the token's PIN with its own tools (e.g. pkcs11-tool --change-pin)", mv.HSMToken)
	}
	old, err := env.readSecret(secretSource{what: "current passphrase", envVar: "COFFER_PASSPHRASE", file: *passFile, flag: "--passphrase-file"})
	if err != nil {
		return err
	}
	defer clear(old)
	nw, err := env.readSecret(secretSource{what: "new passphrase", envVar: "COFFER_NEW_PASSPHRASE", file: *newFile, flag: "--new-passphrase-file", confirm: true})
	if err != nil {
		return err
	}
	defer clear(nw)
	v, err := volume.Open(ctx, dir, old, volume.OpenOptions{})
	if err != nil {
		return notMounted(dir, fmt.Errorf("open volume in %s: %w", dir, err))
	}
	if err := keyops.ChangePassphrase(ctx, v.Catalog(), old, nw, actor()); err != nil {
		v.Close(context.WithoutCancel(ctx))
		return err
	}
	if err := v.Close(ctx); err != nil {
		return fmt.Errorf("the passphrase is changed, but the change did not reach the remote's replica yet (mount or rerun a command to ship it): %w", err)
	}
	fmt.Fprintf(env.stdout, "passphrase of volume %x changed (KEKs re-sealed; files and key records unchanged). "+
		"An older copy of the catalog still opens with the old passphrase.\n", mv.ID)
	return nil
}
