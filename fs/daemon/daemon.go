// Package daemon is the mount daemon: it opens a volume, mounts it through
// coffer/fs/fusefront, serves the mount's control socket (status, unmount, lock and
// unlock, live rotate and shred), and at the end uploads what is staged and wipes every
// key. `coffer mount` runs it in a process of its own (Environ, Harden).
package daemon

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"coffer/fs/content"
	"coffer/fs/control"
	"coffer/fs/fusefront"
	"coffer/fs/keyops"
	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/remote"
)

// Config is one mount's settings (coffer mount's flags).
type Config struct {
	State, Mountpoint    string // absolute
	AllowOther, ReadOnly bool
	CacheBytes           int64 // plaintext block cache in memory
	StagingCap           int64 // staged ciphertext before writes fail with ENOSPC
	DiskCache            int64 // bytes of uploaded objects kept in STATE/objcache; 0 = off
	UnmountTimeout       time.Duration
	SyncTimeout          time.Duration // fsync gives up with EIO after this
	ReadTimeout          time.Duration // one remote read gives up with EIO after this
	StagingDir           string        // staged ciphertext (default STATE/staging)
	ReplicaInterval      time.Duration // catalog changes reach the remote within this (fsync waits for them anyway)
	PITRWindow           time.Duration // replica history kept for restore --at; 0: none
	NoReplica            bool          // no catalog replication (benchmarks): a host loss loses the volume
}

// Run opens the volume, mounts it, serves until unmounted, then uploads what is staged
// and wipes every key. ready is called once: with nil when the mount is usable, or with the
// error that stopped it.
func Run(parent context.Context, mc Config, secret []byte, ready func(error)) (err error) {
	defer startProfiling(slog.Default())() // only with COFFER_DEBUG_*PROFILE set
	ctx := context.WithoutCancel(parent)   // signals are handled below, not by cancelling I/O
	readyCalled := false
	signalReady := func(e error) {
		if !readyCalled {
			readyCalled = true
			ready(e)
		}
	}
	defer func() {
		if err != nil {
			signalReady(err)
		}
	}()
	Harden()
	// The block cache is ordinary Go memory: without a limit the collector lets the heap
	// grow to about twice what is live (610 MiB peak for a 256 MiB cache). A soft limit
	// keeps RSS near the cache cap plus working memory.
	debug.SetMemoryLimit(mc.CacheBytes + 96<<20)
	log := slog.Default()
	if err := CheckMountpoint(ctx, mc.Mountpoint); err != nil {
		return err
	}

	objcache := volume.DiskCacheDir(mc.State)
	opt := volume.OpenOptions{Logger: log, ReplicaInterval: mc.ReplicaInterval, PITRWindow: mc.PITRWindow, NoReplica: mc.NoReplica}
	if mc.NoReplica {
		log.Warn("catalog replication is off (--no-replica): if this host is lost, the volume is lost")
	}
	if mc.PITRWindow == 0 {
		opt.PITRWindow = -1 // none
	}
	if mc.DiskCache > 0 {
		opt.WrapStore = func(s remote.Store) (remote.Store, error) {
			return remote.NewDiskCache(s, objcache, mc.DiskCache, log)
		}
	} else if _, err := os.Stat(objcache); err == nil {
		// Off now: its copies would go stale as objects are deleted without it.
		log.Info("removing the disk cache of an earlier mount (--disk-cache is off)", "dir", objcache)
		if err := os.RemoveAll(objcache); err != nil {
			log.Warn("could not remove the disk cache", "dir", objcache, "err", err)
		}
	}
	v, err := volume.Open(ctx, mc.State, secret, opt)
	clear(secret)
	if err != nil {
		return err
	}
	audit := func(event string, kv ...any) {
		detail := map[string]any{"mountpoint": mc.Mountpoint, "pid": os.Getpid()}
		for i := 0; i+1 < len(kv); i += 2 {
			detail[kv[i].(string)] = kv[i+1]
		}
		b, _ := json.Marshal(detail)
		if _, err := v.Catalog().AppendAudit(ctx, meta.AuditEvent{Time: time.Now().UnixNano(), Event: event,
			Actor: "uid:" + strconv.Itoa(os.Getuid()), Detail: string(b)}); err != nil {
			log.Error("audit", "event", event, "err", err)
		}
	}
	seal := func() {
		if _, err := keyops.SealAudit(ctx, v.Catalog(), v.Provider(), v.ID, v.KEK()); err != nil && !v.Locked() {
			log.Error("seal audit log", "err", err)
		}
	}
	// closeVolume ships the catalog's last changes within cctx, wipes every key and closes.
	closeVolume := func(cctx context.Context) error {
		audit("keys.wipe", "reason", "unmount")
		seal()
		cerr := v.Close(cctx)
		if cerr != nil {
			log.Error("close volume", "err", cerr)
		}
		log.Info("keys wiped", "volume", hex.EncodeToString(v.ID[:]))
		return cerr
	}
	data, err := content.New(v, content.Options{
		StagingDir: mc.StagingDir, CacheBytes: mc.CacheBytes, StagingCap: mc.StagingCap,
		SyncTimeout: mc.SyncTimeout, ReadTimeout: mc.ReadTimeout, Logger: log,
	})
	if err != nil {
		closeVolume(ctx)
		return err
	}
	if err := data.Recover(ctx); err != nil {
		data.Close(ctx)
		closeVolume(ctx)
		return fmt.Errorf("recover staged data: %w", err)
	}
	ctl, err := listen(mc.Mountpoint, log)
	if err != nil {
		data.Close(ctx)
		closeVolume(ctx)
		return err
	}
	defer ctl.close()

	var lockMu sync.Mutex      // one coffer lock at a time
	var scrubbed time.Duration // set by Scrub, inside Lock, under lockMu
	fsys := fusefront.New(v, data, fusefront.Options{AllowOther: mc.AllowOther, ReadOnly: mc.ReadOnly, Logger: log,
		Scrub: func() { scrubbed = scrub() }})
	if err := fsys.Mount(mc.Mountpoint); err != nil {
		data.Close(ctx)
		closeVolume(ctx)
		return fmt.Errorf("mount %s: %w", mc.Mountpoint, err)
	}

	// What the daemon reports when it is done; `coffer unmount` waits for it.
	done := make(chan struct{})
	var result error
	ctl.status = func() any { return status(v, data, mc) }
	ctl.unmount = func() error {
		if err := fsys.Unmount(); err != nil {
			if errors.Is(err, fusefront.ErrDetached) {
				return fmt.Errorf("%s is busy (a file is open or a shell's working directory is inside): detached it; the daemon uploads, wipes keys and exits once the last one is closed", mc.Mountpoint)
			}
			return err
		}
		<-done
		return result
	}
	ctl.lock = func() (time.Duration, error) {
		lockMu.Lock()
		defer lockMu.Unlock()
		took, err := fsys.Lock()
		audit("lock", "took_us", took.Microseconds(), "scrub_us", scrubbed.Microseconds(), "ok", err == nil)
		log.Warn("locked: every key wiped", "took", took, "scrub", scrubbed, "err", err)
		return took, err
	}
	ctl.unlock = func(secret []byte) error {
		if err := fsys.Unlock(ctx, secret); err != nil {
			audit("unlock.failed", "error", err.Error())
			return err
		}
		audit("unlock")
		seal() // MACs the lock, failed unlocks and this unlock (no key could while locked)
		log.Warn("unlocked")
		return nil
	}
	live := newLiveKeyOps(v, fsys, data, mc.Mountpoint, log) // rotate, shred and fsck while mounted
	ctl.keyop = live.serve
	go ctl.serve()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			log.Info("signal: unmounting", "signal", s.String())
			if err := fsys.Unmount(); errors.Is(err, fusefront.ErrDetached) {
				log.Warn("mount busy: detached; finishing once the last open file is closed", "mountpoint", mc.Mountpoint)
			} else if err != nil {
				log.Error("unmount on signal", "err", err)
			}
		}
	}()

	audit("mount", "read_only", mc.ReadOnly)
	seal()
	log.Info("serving", "mountpoint", mc.Mountpoint, "volume", hex.EncodeToString(v.ID[:]), "remote", v.Remote)
	signalReady(nil)
	fsys.Wait()
	live.stop() // a key operation in progress ends before the volume closes
	log.Info("unmounted; uploading what is staged", "mountpoint", mc.Mountpoint)

	// One budget for the uploads and the catalog's last replication.
	cctx, cancel := context.WithTimeout(ctx, mc.UnmountTimeout)
	left, cerr := data.Close(cctx)
	verr := closeVolume(cctx)
	cancel()
	log.Info("freed memory overwritten", "took", scrub())
	holdBeforeExit(log)
	switch {
	case left > 0:
		result = fmt.Errorf("unmounted, but %d bytes are still staged (remote unreachable?): they upload at the next mount", left)
	case cerr != nil:
		result = fmt.Errorf("unmounted, but finishing uploads failed: %w", cerr)
	case verr != nil:
		result = fmt.Errorf("unmounted, but the catalog's last changes are not on the remote yet (the next mount ships them): %w", verr)
	}
	close(done)
	if result != nil {
		log.Error(result.Error())
	}
	ctl.flush(5 * time.Second)
	return result
}

// CheckMountpoint fails if a running daemon serves mnt, clears a mount left by a dead one,
// and checks that mnt is a directory.
func CheckMountpoint(ctx context.Context, mnt string) error {
	_, err := control.Call(ctx, mnt, "status", 2*time.Second)
	switch {
	case err == nil:
		return fmt.Errorf("%s is already mounted by a running coffer daemon (coffer unmount %s)", mnt, mnt)
	case errors.Is(err, os.ErrPermission):
		// Another user's daemon serves it: never take it for a dead mount and detach it.
		return fmt.Errorf("%s is already mounted: %w", mnt, err)
	}
	// A coffer mount that no daemon answers for was left by a killed daemon. Right after a
	// kill -9 it may not fail with ENOTCONN yet, so look it up rather than stat it.
	if fusefront.IsCofferMount(mnt) {
		slog.Warn("clearing a coffer mount left by a dead daemon", "mountpoint", mnt)
		if err := fusefront.Detach(mnt); err != nil {
			return fmt.Errorf("clear dead mount on %s: %w", mnt, err)
		}
	}
	if err := fusefront.ClearDeadMount(mnt); err != nil {
		return err
	}
	st, serr := os.Stat(mnt)
	if serr != nil {
		return fmt.Errorf("mountpoint: %w", serr)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", mnt)
	}
	return nil
}

// status is the daemon's live view for `coffer status MOUNTPOINT`.
func status(v *volume.Volume, data *content.DataPath, mc Config) control.Status {
	ctx := context.Background()
	var token string
	if mv, err := v.Catalog().Volume(ctx); err == nil {
		token = mv.HSMToken
	}
	// From the catalog, not v.KEK(): a live rotation moves that on another goroutine.
	kek := "?"
	if k, err := v.Catalog().CurrentKEK(ctx, ""); err == nil {
		kek = keys.KEKRef{Chain: k.Chain, Version: k.Version}.String()
	}
	st := control.Status{
		HSMToken: token,
		PID:      os.Getpid(), Mountpoint: mc.Mountpoint, State: mc.State, Volume: hex.EncodeToString(v.ID[:]),
		Remote: v.Remote, Provider: v.Kind, KeyMode: string(v.KeyMode), KEK: kek,
		ReadOnly: mc.ReadOnly, Locked: v.Locked(), Data: data.Stats(),
	}
	if r := v.Replica(); r != nil {
		rs := r.Status()
		st.Replica = &control.ReplicaStatus{Epoch: rs.Epoch, Position: rs.Position, LagBytes: rs.LagBytes, LastError: rs.LastError}
		if !rs.LastShip.IsZero() {
			st.Replica.LastShip = rs.LastShip.UTC().Format(time.RFC3339Nano)
		}
	}
	return st
}
