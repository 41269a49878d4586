package main

import (
	"flag"
	"fmt"
	"path/filepath"

	"coffer/fs/meta"
	"coffer/fs/volume"
)

// keyFlags are the flags that name a volume's key provider and its secret, for the
// commands that open one with no catalog to read them from (init, restore).
type keyFlags struct {
	module, token, pinFile, passFile *string
	usePass                          *bool
}

func addKeyFlags(fl *flag.FlagSet, passUsage string) keyFlags {
	return keyFlags{
		module:   fl.String("hsm-module", volume.DefaultHSMModule, "PKCS#11 module"),
		token:    fl.String("hsm-token", "coffer", "HSM token label"),
		pinFile:  fl.String("hsm-pin-file", "", "file holding the HSM PIN (else COFFER_HSM_PIN or a prompt)"),
		usePass:  fl.Bool("passphrase", false, passUsage),
		passFile: fl.String("passphrase-file", "", "file holding the passphrase (else COFFER_PASSPHRASE or a prompt)"),
	}
}

// resolve returns the provider kind, the HSM module (absolute: the catalog stores it and
// every later command loads it, wherever it runs; keys/hsm refuses others) and token, and
// where the secret comes from. newPass asks for a new passphrase (typed twice).
func (k keyFlags) resolve(newPass bool) (provider, module, token string, src secretSource, err error) {
	if *k.usePass {
		what := "passphrase"
		if newPass {
			what = "new passphrase"
		}
		return meta.ProviderPassphrase, "", "", secretSource{what: what, envVar: "COFFER_PASSPHRASE", file: *k.passFile,
			flag: "--passphrase-file", confirm: newPass}, nil
	}
	mod, err := filepath.Abs(*k.module)
	if err != nil {
		return "", "", "", src, usageError{"--hsm-module: " + err.Error()}
	}
	return meta.ProviderPKCS11, mod, *k.token, secretSource{what: fmt.Sprintf("PIN of HSM token %q", *k.token),
		envVar: "COFFER_HSM_PIN", file: *k.pinFile, flag: "--hsm-pin-file"}, nil
}
