package main

import (
	"context"
	"flag"
	"fmt"

	"coffer/fs/keyops"
	"coffer/fs/meta"
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
	cat, err := meta.Open(ctx, dir)
	if err != nil {
		return notMounted(dir, fmt.Errorf("open volume in %s: %w", dir, err))
	}
	defer cat.Close()
	mv, err := cat.Volume(ctx)
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
	if err := keyops.ChangePassphrase(ctx, cat, old, nw, actor()); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "passphrase of volume %x changed (KEKs re-sealed; files and key records unchanged). "+
		"An older copy of the catalog still opens with the old passphrase.\n", mv.ID)
	return nil
}
