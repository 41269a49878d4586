package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"coffer/fs/control"
	"coffer/fs/daemon"
	"coffer/fs/replica"
	"coffer/fs/volume"
)

// Fds a daemon child inherits from `coffer mount` (after stdin, stdout, stderr).
const (
	readyFd  = 3 // the child writes "ok\n" or "error: ...\n" when the mount is ready or failed
	secretFd = 4 // the parent writes the PIN or passphrase, then closes it
)

type mountConfig struct {
	daemon.Config
	foreground, child bool
	pinFile, passFile string
}

func cmdMount(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("mount", flag.ContinueOnError)
	var mc mountConfig
	fl.StringVar(&mc.State, "state", "", "state directory of the volume")
	fl.BoolVar(&mc.foreground, "foreground", false, "serve in the foreground (logs to stderr)")
	fl.BoolVar(&mc.AllowOther, "allow-other", false, "let other users use the mount (permissions still apply)")
	fl.BoolVar(&mc.ReadOnly, "read-only", false, "mount read-only")
	fl.StringVar(&mc.pinFile, "hsm-pin-file", "", "file holding the HSM PIN (else COFFER_HSM_PIN or a prompt)")
	fl.StringVar(&mc.passFile, "passphrase-file", "", "file holding the passphrase (else COFFER_PASSPHRASE or a prompt)")
	cache := fl.String("cache-size", "256M", "plaintext block cache in memory")
	staging := fl.String("staging-cap", "8G", "ciphertext staged locally before writes fail with ENOSPC")
	diskCache := fl.String("disk-cache", "0", "keep copies of uploaded objects (ciphertext) in STATE/objcache, up to this size, and read from them (0: off)")
	fl.DurationVar(&mc.UnmountTimeout, "unmount-timeout", time.Minute, "how long unmount waits for uploads before it gives up (data stays staged)")
	fl.DurationVar(&mc.SyncTimeout, "sync-timeout", time.Minute, "how long fsync waits for uploads before it fails with EIO (data stays staged)")
	fl.DurationVar(&mc.ReadTimeout, "read-timeout", time.Minute, "how long a read waits for the remote before it fails with EIO")
	fl.DurationVar(&mc.ReplicaInterval, "replica-interval", time.Second, "catalog changes reach the remote within this; fsync, rotate, shred and passwd wait for theirs anyway")
	fl.DurationVar(&mc.PITRWindow, "pitr-window", replica.DefaultWindow, "how far back restore --at can go (catalog history kept on the remote; 0: only the newest state)")
	fl.BoolVar(&mc.NoReplica, "no-replica", false, "do not replicate the catalog (for benchmarks: if this host is lost, the volume is lost)")
	fl.StringVar(&mc.StagingDir, "staging-dir", "", "where staged ciphertext is kept (default STATE/staging): new, empty, or used by this volume before; it must survive reboots")
	fl.BoolVar(&mc.child, "daemon-child", false, "internal: run as the background daemon")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	if mc.State == "" {
		return usageError{"--state DIR is required"}
	}
	if mc.CacheBytes, err = parseSize(*cache); err != nil {
		return usageError{"--cache-size: " + err.Error()}
	}
	if mc.StagingCap, err = parseSize(*staging); err != nil {
		return usageError{"--staging-cap: " + err.Error()}
	}
	if *diskCache != "0" {
		if mc.DiskCache, err = parseSize(*diskCache); err != nil {
			return usageError{"--disk-cache: " + err.Error()}
		}
	}
	if mc.State, err = filepath.Abs(mc.State); err != nil {
		return err
	}
	if mc.Mountpoint, err = filepath.Abs(pos[0]); err != nil {
		return err
	}
	if mc.StagingDir == "" {
		mc.StagingDir = volume.StagingDir(mc.State)
	} else if mc.StagingDir, err = filepath.Abs(mc.StagingDir); err != nil {
		return err
	}
	if mc.SyncTimeout <= 0 || mc.ReadTimeout <= 0 || mc.UnmountTimeout <= 0 || mc.ReplicaInterval <= 0 {
		return usageError{"--sync-timeout, --read-timeout, --unmount-timeout and --replica-interval must be positive"}
	}
	if mc.PITRWindow < 0 {
		return usageError{"--pitr-window must not be negative"}
	}

	if mc.child {
		secret, err := readSecretFd()
		if err != nil {
			return err
		}
		ready := os.NewFile(readyFd, "ready")
		return daemon.Run(ctx, mc.Config, secret, func(err error) {
			if err != nil {
				fmt.Fprintf(ready, "error: %s\n", oneLine(err.Error()))
			} else {
				fmt.Fprintln(ready, "ok")
			}
			ready.Close()
		})
	}

	if err := daemon.CheckMountpoint(ctx, mc.Mountpoint); err != nil {
		return err
	}
	src, err := stateSecret(ctx, mc.State, mc.pinFile, mc.passFile)
	if err != nil {
		return err
	}
	secret, err := env.readSecret(src)
	if err != nil {
		return err
	}
	defer clear(secret)
	return spawnDaemon(env, mc, args, secret)
}

// spawnDaemon re-runs coffer as the daemon, hands it the secret over a pipe (never the
// environment or argv) and waits until it says the mount is ready. In the background the
// daemon is a session leader logging to STATE/daemon.log; with --foreground it logs to our
// stderr and we wait for it, passing signals on.
func spawnDaemon(env *cliEnv, mc mountConfig, args []string, secret []byte) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := volume.DaemonLog(mc.State)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	secR, secW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return err
	}
	cmd := exec.Command(exe, append([]string{"mount", "--daemon-child"}, args...)...)
	cmd.ExtraFiles = []*os.File{readyW, secR}
	cmd.Env = daemon.Environ()
	if mc.foreground {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// Its own process group: a ^C reaches it once, through us.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sigs)
		go func() {
			for s := range sigs {
				if cmd.Process != nil {
					cmd.Process.Signal(s)
				}
			}
		}()
	} else {
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		readyW.Close()
		secR.Close()
		secW.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	readyW.Close()
	secR.Close()
	_, werr := secW.Write(secret)
	secW.Close()
	clear(secret) // the daemon has it; with --foreground we stay for the whole mount
	if werr != nil {
		cmd.Process.Kill()
		return fmt.Errorf("hand the secret to the daemon: %w", werr)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	line, err := bufio.NewReader(readyR).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok" && mc.foreground:
		fmt.Fprintf(env.stdout, "mounted %s (daemon pid %d); serving until unmounted\n", mc.Mountpoint, cmd.Process.Pid)
		if err := <-exited; err != nil {
			return fmt.Errorf("the daemon of %s: %w", mc.Mountpoint, err)
		}
		return nil
	case line == "ok":
		fmt.Fprintf(env.stdout, "mounted %s (daemon pid %d, log %s)\n", mc.Mountpoint, cmd.Process.Pid, logPath)
		return nil
	case strings.HasPrefix(line, "error: "):
		<-exited
		return errors.New(strings.TrimPrefix(line, "error: "))
	default:
		werr := <-exited
		return fmt.Errorf("the daemon exited before the mount was ready (%v); see %s", werr, logPath)
	}
}

func readSecretFd() ([]byte, error) {
	f := os.NewFile(secretFd, "secret")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("read secret from parent: %w", err)
	}
	if len(b) == 0 {
		return nil, errors.New("no secret from parent")
	}
	return b, nil
}

func cmdUnmount(ctx context.Context, env *cliEnv, args []string) error {
	fl := flag.NewFlagSet("unmount", flag.ContinueOnError)
	timeout := fl.Duration("timeout", 5*time.Minute, "how long to wait for the daemon to finish")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{"want exactly one MOUNTPOINT"}
	}
	if _, err := control.Call(ctx, pos[0], "unmount", *timeout); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "unmounted %s; keys wiped\n", pos[0])
	return nil
}
