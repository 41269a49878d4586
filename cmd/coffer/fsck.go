package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"time"

	"coffer/fs/control"
	"coffer/fs/fsck"
	"coffer/fs/keyops"
	"coffer/fs/replica"
)

func init() {
	commands["fsck"] = command{"fsck --state DIR [--full] [--repair] [--pitr-window D]", cmdFsck}
}

// errNotClean is fsck's exit status 1 when it found problems (the report says which).
var errNotClean = errors.New("the volume is not clean (see above)")

func cmdFsck(ctx context.Context, env *cliEnv, args []string) (err error) {
	fl := flag.NewFlagSet("fsck", flag.ContinueOnError)
	of := addOfflineFlags(fl)
	full := fl.Bool("full", false, "also read and authenticate every file's content")
	repair := fl.Bool("repair", false, "queue orphans for deletion and drop the chunks of missing objects (they read as zeros)")
	window := fl.Duration("pitr-window", replica.DefaultWindow, "the mount's --pitr-window: unreferenced objects younger than this (and 1 h) are not orphans yet")
	pos, err := parseFlags(fl, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
	}
	var progress func(keyops.Progress)
	var pp *progressPrinter
	if *full && isTerminal(env.stderr) {
		pp = &progressPrinter{w: env.stderr, what: "fsck --full"}
		start := time.Now()
		progress = func(p keyops.Progress) {
			p.Elapsed = time.Since(start)
			pp.update(p)
		}
	}
	var r *fsck.Report
	var id string
	// A mounted volume is checked by its daemon (the only writer of its catalog).
	if mnt, err := liveMountpoint(ctx, of.state); err != nil {
		return err
	} else if mnt != "" {
		rep, err := control.Stream(ctx, mnt, control.Request{Op: "fsck", Full: *full, Repair: *repair, Window: *window}, progress)
		if pp != nil {
			pp.end()
		}
		if err != nil {
			return err
		}
		if err := json.Unmarshal(rep.Result, &r); err != nil || r == nil {
			return fmt.Errorf("the daemon's fsck result: %v", err)
		}
		st, _, err := control.GetStatus(ctx, mnt, 30*time.Second)
		if err != nil {
			return err
		}
		id = st.Volume
	} else {
		v, err := openOffline(ctx, env, of)
		if err != nil {
			return err
		}
		defer closeOffline(ctx, v, &err)
		opt := fsck.Options{Full: *full, Repair: *repair, Window: *window}
		if progress != nil {
			opt.Progress = func(done, total int64) { progress(keyops.Progress{Done: done, Total: total, Unit: "bytes"}) }
		}
		r, err = fsck.Check(ctx, v, opt)
		if pp != nil {
			pp.end()
		}
		if err != nil {
			return err
		}
		id = v.IDString()
	}
	w := env.stdout
	fmt.Fprintf(w, "fsck of volume %s: %d chunk objects named by the catalog\n", id, r.Objects)
	for _, p := range r.Catalog {
		fmt.Fprintf(w, "  catalog: inode %d: %s\n", p.Ino, p.Detail)
	}
	for _, d := range r.Missing {
		fmt.Fprintf(w, "  missing: %s (chunk %d, object %s): %s\n", d.Path, d.Chunk, d.Object, d.Why)
	}
	for _, d := range r.Lost {
		fmt.Fprintf(w, "  lost: %s (chunk %d): %s\n", d.Path, d.Chunk, d.Why)
	}
	for _, d := range r.Corrupt {
		fmt.Fprintf(w, "  corrupt: %s (near chunk %d): %s\n", d.Path, d.Chunk, d.Why)
	}
	for _, o := range r.Orphans {
		state := "not referenced"
		if o.Repaired {
			state = "queued for deletion"
		}
		fmt.Fprintf(w, "  orphan: %s (%d bytes, written %s ago): %s\n", o.Name, o.Size, o.Age.Round(time.Second), state)
	}
	for _, h := range r.ReplicaHoles {
		fmt.Fprintf(w, "  replica hole: %s is missing (a restore stops before it)\n", h)
	}
	if r.Young > 0 {
		fmt.Fprintf(w, "  %d unreferenced objects are younger than %s (uploads whose commit may still come, or history kept for restore --at): not orphans yet\n",
			r.Young, max(fsck.MinOrphanAge, *window))
	}
	if *full {
		fmt.Fprintf(w, "  read and authenticated %d bytes in %s (%.0f MB/s)\n", r.Bytes, r.Elapsed.Round(time.Millisecond),
			float64(r.Bytes)/1e6/max(r.Elapsed.Seconds(), 1e-3))
	}
	if r.Truncated > 0 {
		fmt.Fprintf(w, "  repaired: truncated %d files with lost data to their last uploaded content\n", r.Truncated)
	} else if *repair && len(r.Lost) > 0 {
		fmt.Fprintln(w, "  files with lost data stay while the volume is mounted: unmount and run fsck --repair again to truncate them")
	}
	if r.Dropped > 0 {
		fmt.Fprintf(w, "  repaired: dropped %d chunks whose objects are missing (those bytes now read as zeros)\n", r.Dropped)
	} else if *repair && len(r.Missing) > 0 {
		fmt.Fprintln(w, "  the chunks of missing objects stay while the volume is mounted: unmount and run fsck --repair again to drop them")
	}
	if r.Clean() {
		fmt.Fprintln(w, "clean")
		return nil
	}
	if *repair && len(r.Catalog) == 0 && len(r.Corrupt) == 0 && len(r.ReplicaHoles) == 0 && r.Dropped == len(r.Missing) && r.Truncated > 0 == (len(r.Lost) > 0) {
		fmt.Fprintln(w, "repaired")
		return nil
	}
	return errNotClean
}
