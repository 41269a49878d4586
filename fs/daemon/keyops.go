package daemon

import (
	"coffer/fs/content"
	"coffer/fs/fsck"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"coffer/fs/control"
	"coffer/fs/keyops"
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

// liveKeyOps runs key operations inside the daemon.
type liveKeyOps struct {
	data *content.DataPath // fsck --full reads through it
	v    *volume.Volume
	fsys keyops.LiveFS
	mnt  string
	log  *slog.Logger

	sem    chan struct{} // one key operation at a time
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

func newLiveKeyOps(v *volume.Volume, fsys keyops.LiveFS, data *content.DataPath, mountpoint string, log *slog.Logger) *liveKeyOps {
	ctx, cancel := context.WithCancel(context.Background())
	return &liveKeyOps{v: v, fsys: fsys, data: data, mnt: mountpoint, log: log,
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

// errClientGone cancels a key operation whose client closed the connection.
var errClientGone = errors.New("the coffer command went away")

func (l *liveKeyOps) rotate(ctx context.Context, actor string, retire bool, progress func(keyops.Progress)) (keyops.RotateResult, error) {
	return keyops.RotateMounted(ctx, l.v, l.fsys, retire, keyops.RotateOptions{Actor: actor, Logger: l.log, Progress: progress})
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
func (l *liveKeyOps) shred(ctx context.Context, actor string, req control.Request, progress func(keyops.Progress)) (*control.ShredReply, error) {
	switch {
	case req.Volume:
		return nil, errors.New("--volume on a mounted volume: coffer unmount first (or coffer lock it now)")
	case l.v.Locked():
		return nil, keyops.ErrMountLocked
	case req.Now && l.v.KeyMode != keys.ModeWrap:
		return nil, keyops.DeriveNowError(l.v)
	}
	sopt := keyops.ShredOptions{Actor: actor, Logger: l.log, Live: l.fsys}
	sctx := context.WithoutCancel(ctx)
	var res keyops.ShredResult
	var err error
	switch {
	case req.User != nil:
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
	if errors.Is(err, keys.ErrLocked) {
		return nil, keyops.ErrMountLocked
	}
	if err != nil {
		return nil, err
	}
	out := control.NewShredReply(res)
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
func (l *liveKeyOps) serve(c *net.UnixConn, uid int, req control.Request) {
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
		w.final(control.Reply{Error: err.Error()})
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
		var res *control.ShredReply
		res, err = l.shred(ctx, actor, req, w.progress)
		if res != nil {
			result = res
		}
	case "fsck":
		var res *fsck.Report
		res, err = fsck.Check(ctx, l.v, fsck.Options{Full: req.Full, Repair: req.Repair, Window: req.Window, Data: l.data,
			Logger: l.log, Progress: func(done, total int64) { w.progress(keyops.Progress{Done: done, Total: total, Unit: "bytes"}) }})
		if res != nil {
			result = res
		}
	}
	r := control.Reply{OK: err == nil}
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
	if err := w.enc.Encode(control.Reply{OK: true, Progress: &p}); err != nil {
		w.broken = true
	}
}

func (w *streamWriter) final(r control.Reply) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	w.enc.Encode(r)
}
