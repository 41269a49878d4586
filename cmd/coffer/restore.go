package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"coffer/fs/keyops"
	"coffer/fs/volume"
)

func init() {
	commands["restore"] = command{"restore --state DIR --remote REMOTE [--hsm-module SO --hsm-token LABEL | --passphrase] [--at TIME]", cmdRestore}
}

// cmdRestore rebuilds a lost host's state directory from the catalog replica on the remote.
func cmdRestore(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("restore", flag.ContinueOnError)
	state := fl.String("state", "", "new state directory (absent or empty)")
	remoteStr := fl.String("remote", "", "the volume's rclone remote")
	kf := addKeyFlags(fl, "a passphrase volume")
	at := fl.String("at", "", "restore the catalog as it was at this time (RFC 3339, e.g. 2026-12-07T10:00:00Z) instead of the newest")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	if *state == "" || *remoteStr == "" {
		return usageError{"--state DIR and --remote REMOTE are required"}
	}
	stateDir, err := filepath.Abs(*state)
	if err != nil {
		return err
	}
	cfg := volume.RestoreConfig{StateDir: stateDir, Remote: *remoteStr}
	if *at != "" {
		t, err := time.Parse(time.RFC3339Nano, *at)
		if err != nil {
			return usageError{fmt.Sprintf("--at %q: want an RFC 3339 time such as 2026-12-07T10:00:00Z", *at)}
		}
		cfg.At = t
	}
	var src secretSource
	if cfg.Provider, cfg.HSMModule, cfg.HSMToken, src, err = kf.resolve(false); err != nil {
		return err
	}
	secret, err := env.readSecret(src)
	if err != nil {
		return err
	}
	defer clear(secret)
	cfg.Secret = secret
	var pp *progressPrinter
	if isTerminal(env.stderr) {
		pp = &progressPrinter{w: env.stderr, what: "restore"}
		start := time.Now()
		cfg.Progress = func(done, total int64) {
			pp.update(keyops.Progress{Done: done, Total: total, Elapsed: time.Since(start), Unit: "bytes"})
		}
	}
	sum, err := volume.Restore(ctx, cfg)
	if pp != nil {
		pp.end()
	}
	if err != nil {
		return err
	}
	w := env.stdout
	fmt.Fprintf(w, "restored coffer volume %s\n", sum.Volume.IDString())
	fmt.Fprintf(w, "  state:     %s\n", stateDir)
	fmt.Fprintf(w, "  remote:    %s\n", sum.Volume.Remote)
	fmt.Fprintf(w, "  restored to: the catalog as replicated at %s (position %d)\n", sum.Time.UTC().Format(time.RFC3339Nano), sum.Position)
	fmt.Fprintf(w, "  read:      %d replica objects, %s\n", sum.Objects, fmt.Sprintf("%d bytes", sum.Bytes))
	fmt.Fprintf(w, "  catalog:   %d inodes; owner epoch now %d (a host still holding the old catalog stops writing)\n", sum.Files, sum.Epoch)
	if sum.DroppedTail != "" {
		fmt.Fprintf(w, "  warning:   the newest replica object %s did not open and was left out (an upload cut short when the host died, or tampering)\n", sum.DroppedTail)
	}
	if len(sum.Unuploaded) > 0 {
		fmt.Fprintf(w, "  %d files had writes staged on the lost host that never reached the remote; reads of that data fail with EIO until coffer fsck --repair truncates them to their last uploaded content:\n", len(sum.Unuploaded))
		for _, p := range sum.Unuploaded {
			fmt.Fprintf(w, "    %s\n", p)
		}
	}
	return nil
}
