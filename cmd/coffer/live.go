package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	cofferfs "coffer/fs"
	"coffer/fs/content"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
)

// Key operations on a live mount. `coffer rotate` and `coffer shred` on a mounted volume do
// not open the catalog (the daemon owns it: one writer): they find the daemon serving the
// state directory and ask it over the control socket. The daemon runs the same fs/keyops
// code the offline commands run, so the audit entries are the same; its actor is the uid of
// the peer (SO_PEERCRED), not what the client claims. While it runs, the daemon streams
// progress lines ({"ok":true,"progress":{...}}) and ends with one reply carrying the result.
// One key operation at a time: a second waits for the first. The client going away (killed,
// Ctrl-C) stops a rotation at its next batch (a rerun finishes it); a shred's catalog part is
// short and always runs to its end.

// errMountLocked is what a key operation on a locked mount says.
var errMountLocked = errors.New("the mount is locked: coffer unlock first")

// errDeriveLive refuses a derive-mode rotation on a live mount: it re-encrypts chunks, which
// needs the data path stopped.
var errDeriveLive = errors.New("derive-mode rotation runs on an unmounted volume: coffer unmount first")

// liveKeyOps runs key operations inside the daemon.
type liveKeyOps struct {
	v    *volume.Volume
	data *content.Store
	fsys *cofferfs.FS
	mnt  string
	log  *slog.Logger

	sem    chan struct{} // one key operation at a time
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

func newLiveKeyOps(v *volume.Volume, data *content.Store, fsys *cofferfs.FS, mountpoint string, log *slog.Logger) *liveKeyOps {
	ctx, cancel := context.WithCancel(context.Background())
	return &liveKeyOps{v: v, data: data, fsys: fsys, mnt: mountpoint, log: log,
		sem: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
}

// stop cancels the key operation in progress (a rotation stops at its next batch; a
// rerun finishes it) and waits until it has returned, so that the volume can be closed.
// Later requests are refused.
func (l *liveKeyOps) stop() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
}

// begin takes the key-operation slot (waiting for one in progress) and registers with stop.
func (l *liveKeyOps) begin(ctx context.Context) (func(), error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("the daemon is unmounting: run the command again on the unmounted volume")
	}
	l.wg.Add(1)
	l.mu.Unlock()
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		l.wg.Done()
		return nil, context.Cause(ctx)
	}
	return func() { <-l.sem; l.wg.Done() }, nil
}

// liveErr words an error of a key operation for the operator.
func liveErr(err error) error {
	switch {
	case errors.Is(err, keys.ErrLocked):
		return errMountLocked
	case errors.Is(err, errClientGone):
		return errors.New("the coffer command went away")
	}
	return err
}

var errClientGone = errors.New("control client closed the connection")

// rotate runs a wrap-mode rotation in the daemon: keyops.Rotate re-wraps every key record
// (new files get the new version as soon as it exists: fs checks it in each create's
// transaction); then every open file takes its re-wrapped record, and only then are older
// versions retired, so no open file keeps a record under a destroyed version.
func (l *liveKeyOps) rotate(ctx context.Context, actor string, retire bool, progress func(keyops.Progress)) (keyops.RotateResult, error) {
	start := time.Now()
	if l.v.Locked() {
		return keyops.RotateResult{}, errMountLocked
	}
	if l.v.KeyMode != keys.ModeWrap {
		return keyops.RotateResult{}, errDeriveLive
	}
	defer l.fsys.KEKsChanged() // new files take the new version at once
	res, err := keyops.Rotate(ctx, l.v, keyops.RotateOptions{Actor: actor, Logger: l.log, Progress: progress})
	if err != nil {
		return res, fmt.Errorf("%w (rerun coffer rotate to finish: %d key records were re-wrapped before it stopped)", liveErr(err), res.Rewrapped)
	}
	if _, err := l.data.ReloadKeyRecords(ctx); err != nil {
		return res, fmt.Errorf("rotated, but open files could not take their new key records: %w (rerun coffer rotate --retire-old)", liveErr(err))
	}
	if retire {
		if res.Retired, err = keyops.Retire(ctx, l.v, actor, l.log); err != nil {
			return res, fmt.Errorf("rotated, but retiring the older versions failed: %w", liveErr(err))
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// shredReply is the result of a shred, as the CLI prints it (offline and live).
type shredReply struct {
	Files        int                  `json:"files"`
	Links        int                  `json:"links"`
	Deleted      int                  `json:"deleted"`
	DeleteFailed int                  `json:"delete_failed"`
	Destroyed    []keys.KEKRef        `json:"destroyed,omitempty"`
	OldVersions  []keys.KEKRef        `json:"old_versions,omitempty"` // a shred is final once these are destroyed
	Now          *keyops.RotateResult `json:"now,omitempty"`
}

func toShredReply(res keyops.ShredResult) shredReply {
	r := shredReply{Files: res.Files, Links: res.Links, Deleted: res.Deleted, DeleteFailed: res.DeleteFailed, Destroyed: res.Destroyed}
	for k := range res.OldVersions {
		r.OldVersions = append(r.OldVersions, k)
	}
	sort.Slice(r.OldVersions, func(i, j int) bool { return r.OldVersions[i].String() < r.OldVersions[j].String() })
	return r
}

// volumePath turns a path under the mountpoint into a path inside the volume; any other path
// is taken as a volume path already.
func volumePath(mnt, p string) string {
	if !filepath.IsAbs(p) {
		return p
	}
	c := filepath.Clean(p)
	if c == mnt {
		return "/"
	}
	if strings.HasPrefix(c, mnt+"/") {
		return strings.TrimPrefix(c, mnt)
	}
	return p
}

// shred runs a file or user shred in the daemon (keyops with the mounted file system taking
// part: open descriptors revoked, kernel caches dropped), then, with now, a rotation that
// retires every older version. The shred itself is not cancelled by the client going away.
// A shred that succeeded but whose --now part failed returns both the reply and the error.
func (l *liveKeyOps) shred(ctx context.Context, actor string, req ctlRequest, progress func(keyops.Progress)) (*shredReply, error) {
	switch {
	case req.Volume:
		return nil, errors.New("--volume on a mounted volume: coffer unmount first (or coffer lock it now)")
	case l.v.Locked():
		return nil, errMountLocked
	case req.Now && l.v.KeyMode != keys.ModeWrap:
		return nil, keyops.ErrDeriveNow
	}
	sopt := keyops.ShredOptions{Actor: actor, Logger: l.log, Live: l.fsys}
	sctx := context.WithoutCancel(ctx)
	var res keyops.ShredResult
	var err error
	switch {
	case req.User != nil:
		defer l.fsys.KEKsChanged() // the user's chain is destroyed
		res, err = keyops.ShredUser(sctx, l.v, *req.User, sopt)
	case len(req.Paths) > 0:
		paths := make([]string, len(req.Paths))
		for i, p := range req.Paths {
			paths[i] = volumePath(l.mnt, p)
		}
		res, err = keyops.ShredPaths(sctx, l.v, paths, sopt)
	default:
		return nil, errors.New("nothing to shred")
	}
	if err != nil {
		return nil, liveErr(err)
	}
	out := toShredReply(res)
	if req.Now {
		rres, err := l.rotate(ctx, actor, true, progress)
		if err != nil {
			return &out, fmt.Errorf("the files are shredded, but making it final failed: %w (run coffer rotate --retire-old to finish)", err)
		}
		out.Now = &rres
	}
	return &out, nil
}

// serve answers one rotate or shred request on c: progress lines, then the final reply.
func (l *liveKeyOps) serve(c *net.UnixConn, uid int, req ctlRequest) {
	actor := "uid:" + strconv.Itoa(uid)
	ctx, cancel := context.WithCancelCause(l.ctx)
	defer cancel(nil)
	c.SetReadDeadline(time.Time{})
	go func() {
		// The client sends nothing more: a read returns only when it goes away.
		var b [1]byte
		c.Read(b[:])
		cancel(errClientGone)
	}()
	w := &streamWriter{c: c, enc: json.NewEncoder(c)}
	done, err := l.begin(ctx)
	if err != nil {
		w.final(ctlReply{Error: liveErr(err).Error()})
		return
	}
	defer done()
	l.log.Info("key operation on the live mount", "op", req.Op, "actor", actor)
	var result any
	switch req.Op {
	case "rotate":
		var res keyops.RotateResult
		res, err = l.rotate(ctx, actor, req.RetireOld, w.progress)
		result = res
	case "shred":
		var res *shredReply
		res, err = l.shred(ctx, actor, req, w.progress)
		if res != nil {
			result = res
		}
	}
	r := ctlReply{OK: err == nil}
	if result != nil {
		r.Result, _ = json.Marshal(result)
	}
	if err != nil {
		r.Error = err.Error()
		l.log.Warn("key operation on the live mount failed", "op", req.Op, "actor", actor, "err", err)
	} else {
		l.log.Info("key operation on the live mount done", "op", req.Op, "actor", actor)
	}
	w.final(r)
}

// streamWriter writes progress lines (at most 10 a second, dropped once a write fails: a
// stalled client must not stall the operation) and the final reply.
type streamWriter struct {
	mu     sync.Mutex
	c      net.Conn
	enc    *json.Encoder
	last   time.Time
	broken bool
}

func (w *streamWriter) progress(p keyops.Progress) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken || time.Since(w.last) < 100*time.Millisecond && p.Done < p.Total {
		return
	}
	w.last = time.Now()
	w.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if err := w.enc.Encode(ctlReply{OK: true, Progress: &p}); err != nil {
		w.broken = true
	}
}

func (w *streamWriter) final(r ctlReply) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	w.enc.Encode(r)
}

// ---- client side ----

// liveMountpoint returns the mountpoint of the daemon that serves the volume of --state
// (made absolute, as absState does), or "" if the volume is not mounted. A volume whose
// catalog is held by something that is not a daemon answering for it (another coffer
// command) is an error.
func liveMountpoint(ctx context.Context, flagState *string) (string, error) {
	state, err := absState(flagState)
	if err != nil {
		return "", err
	}
	probe, err := meta.Open(ctx, state)
	if err == nil {
		probe.Close()
		return "", nil
	}
	if !errors.Is(err, syscall.EBUSY) {
		return "", fmt.Errorf("open volume in %s: %w", state, err)
	}
	busy := fmt.Errorf("the volume in %s is in use by another coffer command (no coffer daemon serving it answers): wait for it to finish", state)
	cat, err := meta.OpenReadOnly(ctx, state)
	if err != nil {
		return "", busy
	}
	// The daemon records its mountpoint in the audit log when it mounts.
	e, ok, err := cat.LastAuditEvent(ctx, "mount")
	cat.Close()
	if err != nil || !ok {
		return "", busy
	}
	var d struct {
		Mountpoint string `json:"mountpoint"`
	}
	if json.Unmarshal([]byte(e.Detail), &d) != nil || d.Mountpoint == "" {
		return "", busy
	}
	r, err := ctlCall(ctx, d.Mountpoint, "status", 10*time.Second)
	if err != nil && strings.HasPrefix(err.Error(), "no coffer daemon serves") {
		return "", busy
	}
	if err != nil { // e.g. permission denied: not root nor the user who mounted
		return "", fmt.Errorf("the volume in %s is mounted on %s: %w", state, d.Mountpoint, err)
	}
	var st mountStatus
	if json.Unmarshal(r.Status, &st) != nil || filepath.Clean(st.State) != filepath.Clean(state) {
		return "", busy
	}
	return d.Mountpoint, nil
}

// ctlStream sends a key-operation request to the daemon of mountpoint and reads its
// progress lines (passed to progress) up to the final reply. Cancelling ctx (Ctrl-C) closes
// the connection, which stops a rotation in the daemon. The final reply is returned with
// its error, if any (a shred with a failed --now carries both a result and an error).
func ctlStream(ctx context.Context, mountpoint string, req ctlRequest, progress func(keyops.Progress)) (ctlReply, error) {
	c, abs, err := ctlDial(ctx, mountpoint)
	if err != nil {
		return ctlReply{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return ctlReply{}, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	dec := json.NewDecoder(c)
	for {
		var r ctlReply
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() != nil {
				return ctlReply{}, fmt.Errorf("interrupted: the daemon of %s stops the %s (rerun the command to finish)", abs, req.Op)
			}
			return ctlReply{}, fmt.Errorf("no answer from the coffer daemon of %s: %w", abs, err)
		}
		if r.Progress != nil {
			if progress != nil {
				progress(*r.Progress)
			}
			continue
		}
		if !r.OK {
			return r, errors.New(r.Error)
		}
		return r, nil
	}
}
