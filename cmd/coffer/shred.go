package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"coffer/fs/control"
	"coffer/fs/keyops"
	"coffer/keys"
)

func init() {
	commands["shred"] = command{"shred --state DIR (PATH... | --user UID | --volume [--yes]) [--now]", cmdShred}
}

func cmdShred(ctx context.Context, env *cliEnv, args []string) (err error) {
	fl := flag.NewFlagSet("shred", flag.ContinueOnError)
	of := addOfflineFlags(fl)
	now := fl.Bool("now", false, "make the shred final at once: rotate, re-wrap every other file and destroy the old KEK versions (wrap mode)")
	user := fl.String("user", "", "shred every file of this uid by destroying the user's KEK chain (volumes made with --kek-per-user)")
	whole := fl.Bool("volume", false, "destroy every KEK version: every file of the volume becomes unrecoverable")
	yes := fl.Bool("yes", false, "with --volume: do not ask for confirmation")
	stagingDir := fl.String("staging-dir", "", "where the volume stages ciphertext (default STATE/staging)")
	paths, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	modes := 0
	if len(paths) > 0 {
		modes++
	}
	if *user != "" {
		modes++
	}
	if *whole {
		modes++
	}
	if modes != 1 {
		return usageError{"give PATH..., --user UID or --volume (exactly one)"}
	}
	var uid uint32
	if *user != "" {
		n, err := strconv.ParseUint(*user, 10, 32)
		if err != nil {
			return usageError{fmt.Sprintf("--user %q: want a numeric uid", *user)}
		}
		uid = uint32(n)
	}
	if *whole && *now {
		return usageError{"--now does not apply to --volume (every KEK version is destroyed at once)"}
	}
	if *whole && !*yes && !isTerminal(env.stdin) {
		return usageError{"--volume destroys every key of the volume: on a terminal it asks to type the volume id; otherwise pass --yes"}
	}

	// A mounted volume is shredded by its daemon (the only writer of its catalog), which
	// also revokes descriptors still open on the files and drops the kernel's caches.
	if mnt, err := liveMountpoint(ctx, of.state); err != nil {
		return err
	} else if mnt != "" {
		req := control.Request{Op: "shred", Paths: paths, Volume: *whole, Now: *now}
		if *user != "" {
			req.User = &uid
		}
		if *whole {
			return errors.New("--volume on a mounted volume: coffer unmount first (or coffer lock it now)")
		}
		return shredLive(ctx, env, mnt, req)
	}
	v, err := openOffline(ctx, env, of)
	if err != nil {
		return err
	}
	defer closeOffline(ctx, v, &err)
	if *now && v.KeyMode != keys.ModeWrap {
		return keyops.DeriveNowError(v)
	}
	sopt := keyops.ShredOptions{Actor: actor(), StagingDir: *stagingDir}
	w := env.stdout

	if *whole {
		if !*yes {
			fmt.Fprintf(env.stderr, "This destroys every KEK version of volume %s: all of its files become unrecoverable.\nType the volume id to confirm: ", v.IDString())
			line, _ := bufio.NewReader(env.stdin).ReadString('\n')
			if strings.TrimSpace(line) != v.IDString() {
				return errors.New("not confirmed: nothing was destroyed")
			}
		}
		refs, err := keyops.ShredVolume(ctx, v, sopt)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "volume %s shredded: %d KEK versions destroyed (%s); its files can no longer be decrypted. "+
			"Remove the state directory and the remote's objects to reclaim space.\n", v.IDString(), len(refs), refList(refs))
		return nil
	}

	var res keyops.ShredResult
	if *user != "" {
		res, err = keyops.ShredUser(ctx, v, uid, sopt)
	} else {
		res, err = keyops.ShredPaths(ctx, v, paths, sopt)
	}
	if err != nil {
		return err
	}
	out := control.NewShredReply(res)
	if *now {
		opt, pp := rotateOptions(env, "shred --now: re-wrap")
		rres, err := keyops.ShredNow(ctx, v, opt)
		if pp != nil {
			pp.end()
		}
		if err != nil {
			fmt.Fprintln(w, shredSummary(out, *user != "", uid))
			return fmt.Errorf("the files are shredded, but making it final failed: %w (run coffer rotate --retire-old to finish)", err)
		}
		out.Now = &rres
	}
	fmt.Fprintln(w, shredSummary(out, *user != "", uid))
	return nil
}

// shredLive asks the daemon serving mnt to shred, showing the progress of --now's rotation
// on a terminal.
func shredLive(ctx context.Context, env *cliEnv, mnt string, req control.Request) error {
	// A relative PATH that names something under the mountpoint from here (mnt/docs/a.txt,
	// or a.txt in a shell inside the mount) means that file; any other is a volume path.
	for i, p := range req.Paths {
		if filepath.IsAbs(p) {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil && strings.HasPrefix(abs, filepath.Clean(mnt)+"/") {
			req.Paths[i] = abs
		}
	}
	opt, pp := rotateOptions(env, "shred --now: re-wrap")
	r, err := control.Stream(ctx, mnt, req, opt.Progress)
	if pp != nil {
		pp.end()
	}
	if len(r.Result) > 0 {
		var out control.ShredReply
		if jerr := json.Unmarshal(r.Result, &out); jerr != nil {
			return fmt.Errorf("the daemon's shred result: %w", jerr)
		}
		var uid uint32
		if req.User != nil {
			uid = *req.User
		}
		fmt.Fprintln(env.stdout, shredSummary(out, req.User != nil, uid))
	}
	return err
}

// shredSummary is the one line a file or user shred prints (offline and live alike). It says
// exactly what is final: against this catalog, the shred always is; against an older copy of
// the catalog, only once every KEK version that wrapped the files' keys is destroyed (HSM
// volumes), never through coffer on a passphrase volume (the copy carries the versions,
// sealed under the passphrase), and, after a chown on a per-user volume, only once the
// previous owner's versions are destroyed too.
func shredSummary(res control.ShredReply, user bool, uid uint32) string {
	var b strings.Builder
	if user {
		fmt.Fprintf(&b, "shredded uid %d: KEK chain %s destroyed (%s), %d files removed",
			uid, keys.UserChain(uid), refList(res.Destroyed), res.Files)
	} else {
		fmt.Fprintf(&b, "shredded %d files (%d entries removed)", res.Files, res.Links)
	}
	fmt.Fprintf(&b, "; %d objects deleted from the remote", res.Deleted)
	if res.DeleteFailed > 0 {
		fmt.Fprintf(&b, ", %d stay queued (deleting failed; retried at the next mount)", res.DeleteFailed)
	}
	fin := res.Finality
	// What an older copy of the catalog still needs destroyed: what --now did not.
	left := res.OldVersions
	now := ""
	if res.Now != nil {
		now = fmt.Sprintf("%d other key records re-wrapped to %s and %s destroyed",
			res.Now.Rewrapped, refList(res.Now.Targets), refList(res.Now.Retired))
		left = nil
		for _, r := range res.OldVersions {
			if !slices.Contains(res.Now.Retired, r) {
				left = append(left, r)
			}
		}
		if fin.Passphrase || len(left) > 0 {
			b.WriteString("; " + now)
		}
	}
	// The versions of other chains (of those in among) that wrapped a key before a chown.
	moved := func(among []keys.KEKRef) []keys.KEKRef {
		var m []keys.KEKRef
		for _, r := range fin.Moved {
			if slices.Contains(among, r) {
				m = append(m, r)
			}
		}
		return m
	}
	switch {
	case fin.Passphrase:
		b.WriteString("; final for this catalog only: an older copy of the catalog plus the passphrase it was made with " +
			"can still open them, for as long as their objects survive somewhere (backups, remote versioning), because a " +
			"passphrase volume keeps its KEK versions in the catalog, sealed under the passphrase (the copy keeps those " +
			"destroyed since; coffer passwd re-seals them in this catalog only): only destroying the older copies of the " +
			"catalog makes it final")
	case len(left) > 0:
		verb := "is"
		if len(left) > 1 {
			verb = "are"
		}
		what := "them"
		if m := moved(left); len(m) == len(left) && fin.MovedFiles < res.Files {
			what = fmt.Sprintf("%d of them", fin.MovedFiles)
		}
		how := "coffer shred --now, or coffer rotate --retire-old"
		if fin.Derive {
			how = "coffer rotate --retire-old: it re-encrypts every other file first"
		}
		fmt.Fprintf(&b, "; not final yet: an older catalog copy can still open %s until KEK %s %s destroyed (%s)", what, refList(left), verb, how)
		if m := moved(left); len(m) > 0 {
			fmt.Fprintf(&b, "; %s: the chain of a previous owner, which wrapped the key of %d of them before a chown re-wrapped it for the new owner",
				refList(m), fin.MovedFiles)
		}
	case now != "":
		b.WriteString("; final: " + now)
		if m := moved(res.OldVersions); len(m) > 0 {
			fmt.Fprintf(&b, " (among them %s, which wrapped the key of %d of them before a chown re-wrapped it for the new owner)",
				refList(m), fin.MovedFiles)
		}
	default:
		b.WriteString("; final: every KEK version that wrapped their keys is destroyed")
	}
	return b.String()
}

func refList(refs []keys.KEKRef) string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = r.String()
	}
	sort.Strings(s)
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
