package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"coffer/crypto/format"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

func cmdInit(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("init", flag.ContinueOnError)
	state := fl.String("state", "", "state directory for the catalog (created 0700)")
	remoteStr := fl.String("remote", "", "rclone remote for the ciphertext (default: the local folder DIR/remote)")
	kf := addKeyFlags(fl, "no HSM: protect the keys with a passphrase")
	mode := fl.String("key-mode", string(keys.ModeWrap), "per-file keys: wrap (envelope, default) or derive")
	blockSize := fl.String("block-size", strconv.Itoa(format.DefaultLayout.BlockSize), "plaintext bytes per sealed block (4K..1M, power of two)")
	chunkSize := fl.String("chunk-size", strconv.FormatInt(format.DefaultLayout.ChunkSize, 10), "plaintext bytes per remote object (multiple of the block size, up to 64M)")
	perUser := fl.Bool("kek-per-user", false, "wrap each file's key under its owner's own KEK chain")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	if *state == "" {
		return usageError{"--state DIR is required"}
	}
	km, err := keys.ParseMode(*mode)
	if err != nil {
		return usageError{err.Error()}
	}
	bs, err := parseSize(*blockSize)
	if err != nil {
		return usageError{"--block-size: " + err.Error()}
	}
	cs, err := parseSize(*chunkSize)
	if err != nil {
		return usageError{"--chunk-size: " + err.Error()}
	}
	stateDir, err := filepath.Abs(*state)
	if err != nil {
		return err
	}
	rem := *remoteStr
	if rem == "" {
		rem = filepath.Join(stateDir, "remote")
	}
	cfg := volume.Config{
		StateDir: stateDir, Remote: rem, KeyMode: km, PerUserKEKs: *perUser,
		Layout: format.Layout{BlockSize: int(bs), ChunkSize: cs},
	}
	if err := cfg.Layout.Validate(); err != nil {
		return usageError{err.Error()}
	}
	var src secretSource
	if cfg.Provider, cfg.HSMModule, cfg.HSMToken, src, err = kf.resolve(true); err != nil {
		return err
	}
	secret, err := env.readSecret(src)
	if err != nil {
		return err
	}
	defer clear(secret)
	cfg.Secret = secret

	sum, err := volume.Create(ctx, cfg)
	if err != nil {
		return err
	}
	w := env.stdout
	fmt.Fprintf(w, "created coffer volume %s\n", sum.IDString())
	fmt.Fprintf(w, "  state:    %s\n", stateDir)
	fmt.Fprintf(w, "  remote:   %s\n", sum.Remote)
	if cfg.Provider == meta.ProviderPKCS11 {
		fmt.Fprintf(w, "  keys:     HSM token %q via %s, KEK %s, key mode %s\n", cfg.HSMToken, cfg.HSMModule, sum.KEK, sum.KeyMode)
	} else {
		fmt.Fprintf(w, "  keys:     passphrase (Argon2id), KEK %s, key mode %s\n", sum.KEK, sum.KeyMode)
	}
	fmt.Fprintf(w, "  layout:   %s blocks in %s chunks\n", humanSize(int64(sum.Layout.BlockSize)), humanSize(sum.Layout.ChunkSize))
	return nil
}

// parseSize reads "65536", "64K", "64KiB", "4M", "4MiB".
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, strings.TrimSuffix(t, "K")
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, strings.TrimSuffix(t, "M")
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, strings.TrimSuffix(t, "G")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 65536, 64K, 4M)", s)
	}
	return n * mult, nil
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
