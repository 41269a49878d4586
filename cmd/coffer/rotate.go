package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"coffer/fs/control"

	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"

	"golang.org/x/term"
)

func init() {
	commands["rotate"] = command{"rotate --state DIR [--retire-old]", cmdRotate}
}

// offlineFlags are the flags every offline key command takes.
type offlineFlags struct {
	state, pinFile, passFile *string
}

func addOfflineFlags(fl *flag.FlagSet) offlineFlags {
	return offlineFlags{
		state:    fl.String("state", "", "state directory of the volume"),
		pinFile:  fl.String("hsm-pin-file", "", "file holding the HSM PIN (else COFFER_HSM_PIN or a prompt)"),
		passFile: fl.String("passphrase-file", "", "file holding the passphrase (else COFFER_PASSPHRASE or a prompt)"),
	}
}

func notMounted(state string, err error) error {
	if errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("the volume in %s is in use (it was just mounted, or another coffer command is running): try again", state)
	}
	return err
}

// absState checks --state and makes it absolute.
func absState(flagState *string) (string, error) {
	if *flagState == "" {
		return "", usageError{"--state DIR is required"}
	}
	state, err := filepath.Abs(*flagState)
	if err != nil {
		return "", err
	}
	*flagState = state
	return state, nil
}

// openOffline opens the volume of --state for a key command: it must not be mounted.
func openOffline(ctx context.Context, env *cliEnv, f offlineFlags) (*volume.Volume, error) {
	state, err := absState(f.state)
	if err != nil {
		return nil, err
	}
	src, err := stateSecret(ctx, *f.state, *f.pinFile, *f.passFile)
	if err != nil {
		return nil, err
	}
	// Take the lock before asking for a secret: a mounted volume is refused at once.
	probe, err := meta.Open(ctx, state)
	if err != nil {
		return nil, notMounted(state, fmt.Errorf("open volume in %s: %w", state, err))
	}
	probe.Close()
	secret, err := env.readSecret(src)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	v, err := volume.Open(ctx, state, secret, volume.OpenOptions{})
	if err != nil {
		return nil, notMounted(state, err)
	}
	return v, nil
}

// closeOffline closes a volume an offline command opened; a failure to ship the catalog's
// last changes to the remote's replica fails the command (it says so).
func closeOffline(ctx context.Context, v *volume.Volume, err *error) {
	if cerr := v.Close(context.WithoutCancel(ctx)); cerr != nil && *err == nil {
		*err = fmt.Errorf("done, but the catalog change did not reach the remote's replica (the next mount or key command ships it): %w", cerr)
	}
}

func actor() string { return "uid:" + strconv.Itoa(os.Getuid()) }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressPrinter shows "done/total, rate, ETA" on one terminal line, at most 4 times a second.
type progressPrinter struct {
	w     io.Writer
	what  string
	mu    sync.Mutex
	last  time.Time
	shown bool
}

func (p *progressPrinter) update(pr keyops.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 250*time.Millisecond && pr.Done < pr.Total {
		return
	}
	p.last = time.Now()
	rate := float64(pr.Done) / max(pr.Elapsed.Seconds(), 1e-3)
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(pr.Total-pr.Done)/rate) * time.Second).Round(time.Second).String()
	}
	unit := pr.Unit
	if unit == "" {
		unit = "key records"
	}
	fmt.Fprintf(p.w, "\r%s: %d/%d %s, %.0f/s, ETA %s   ", p.what, pr.Done, pr.Total, unit, rate, eta)
	p.shown = true
}

func (p *progressPrinter) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprintln(p.w)
	}
}

func rotateOptions(env *cliEnv, what string) (keyops.RotateOptions, *progressPrinter) {
	opt := keyops.RotateOptions{Actor: actor()}
	var pp *progressPrinter
	if isTerminal(env.stderr) {
		pp = &progressPrinter{w: env.stderr, what: what}
		opt.Progress = pp.update
	}
	return opt, pp
}

func cmdRotate(ctx context.Context, env *cliEnv, args []string) (err error) {
	fl := flag.NewFlagSet("rotate", flag.ContinueOnError)
	of := addOfflineFlags(fl)
	retire := fl.Bool("retire-old", false, "destroy the older KEK versions once no file key uses them")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	// A mounted volume is rotated by its daemon (the only writer of its catalog).
	if mnt, err := liveMountpoint(ctx, of.state); err != nil {
		return err
	} else if mnt != "" {
		return rotateLive(ctx, env, mnt, *retire)
	}
	v, err := openOffline(ctx, env, of)
	if err != nil {
		return err
	}
	defer closeOffline(ctx, v, &err)
	opt, pp := rotateOptions(env, "rotate")
	opt.RetireOld = *retire
	res, err := keyops.Rotate(ctx, v, opt)
	if pp != nil {
		pp.end()
	}
	if err != nil {
		if v.KeyMode == keys.ModeDerive {
			return fmt.Errorf("%w (rerun coffer rotate to finish: %d chunks were re-encrypted before it stopped)", err, res.Reencrypted)
		}
		return fmt.Errorf("%w (rerun coffer rotate to finish: %d key records were re-wrapped before it stopped)", err, res.Rewrapped)
	}
	fmt.Fprintln(env.stdout, rotateSummary(res, *retire))
	return nil
}

func rotateSummary(res keyops.RotateResult, retire bool) string {
	var b strings.Builder
	if res.Resumed {
		b.WriteString("finished an interrupted rotation: ")
	} else {
		b.WriteString("rotated: ")
	}
	ts := make([]string, len(res.Targets))
	for i, t := range res.Targets {
		ts[i] = t.String()
	}
	fmt.Fprintf(&b, "current KEK %s; %d key records re-wrapped in %s", strings.Join(ts, ", "), res.Rewrapped,
		res.Elapsed.Round(time.Millisecond))
	if res.Rewrapped > 0 && res.Elapsed > time.Second { // a rate of a handful of records says nothing
		fmt.Fprintf(&b, " (%.0f/s)", float64(res.Rewrapped)/res.Elapsed.Seconds())
	}
	if res.Rekeyed > 0 || res.Reencrypted > 0 {
		fmt.Fprintf(&b, "; derive mode: %d key records moved to the new version, %d chunks (%.1f MiB) re-encrypted into new objects, %d old objects deleted",
			res.Rekeyed, res.Reencrypted, float64(res.ReencryptedBytes)/(1<<20), res.DeletedObjects)
	}
	if len(res.Retired) > 0 {
		rs := make([]string, len(res.Retired))
		for i, r := range res.Retired {
			rs[i] = r.String()
		}
		fmt.Fprintf(&b, "; destroyed %s", strings.Join(rs, ", "))
		if res.Passphrase {
			// The versions are sealed in the catalog: destroying them here leaves older copies.
			b.WriteString(" in this catalog only: an older copy of the catalog keeps them, sealed under the passphrase it was made with")
		}
	} else if retire {
		b.WriteString("; no older version left to destroy")
	} else {
		b.WriteString("; older versions kept (destroy them with coffer rotate --retire-old)")
	}
	return b.String()
}

// rotateLive asks the daemon serving mnt to rotate, showing its progress on a terminal.
func rotateLive(ctx context.Context, env *cliEnv, mnt string, retire bool) error {
	opt, pp := rotateOptions(env, "rotate")
	r, err := control.Stream(ctx, mnt, control.Request{Op: "rotate", RetireOld: retire}, opt.Progress)
	if pp != nil {
		pp.end()
	}
	if err != nil {
		return err
	}
	var res keyops.RotateResult
	if err := json.Unmarshal(r.Result, &res); err != nil {
		return fmt.Errorf("the daemon's rotate result: %w", err)
	}
	fmt.Fprintln(env.stdout, rotateSummary(res, retire))
	return nil
}
