package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is one mounted filesystem under test. Mount starts a fresh daemon; Unmount stops it
// and records its peak RSS; Settle waits until what was written is on the backing store.
type target interface {
	Name() string
	Mount(ctx context.Context) error
	Unmount(ctx context.Context) error
	Settle(ctx context.Context) error
	Dir() string
	PID() int
	PeakRSS() int64 // largest VmHWM seen over every mount so far, bytes
}

// daemonProc is a daemon serving a mount point: its pid, and the peak RSS seen.
type daemonProc struct {
	mnt  string
	pid  int
	cmd  *exec.Cmd // nil when the daemon is not our child (coffer's background mount)
	done chan struct{}
	peak int64
}

func (d *daemonProc) Dir() string    { return d.mnt }
func (d *daemonProc) PID() int       { return d.pid }
func (d *daemonProc) PeakRSS() int64 { return d.peak }

// notePeak reads VmHWM of the daemon now; called before every unmount.
func (d *daemonProc) notePeak() {
	if d.pid == 0 {
		return
	}
	if v := vmHWM(d.pid); v > d.peak {
		d.peak = v
	}
}

// vmHWM is the peak resident set of pid in bytes (0 if unknown).
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// startChild starts a daemon that serves in the foreground and waits until mnt is mounted.
func (d *daemonProc) startChild(ctx context.Context, logf string, fstype string, name string, args ...string) error {
	lf, err := os.OpenFile(logf, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.cmd, d.pid, d.done = cmd, cmd.Process.Pid, make(chan struct{})
	go func() { _ = cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for !isMounted(d.mnt, fstype) {
		select {
		case <-d.done:
			return fmt.Errorf("%s exited before %s was mounted (log %s)", name, d.mnt, logf)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not mount %s within 60 s (log %s)", name, d.mnt, logf)
		}
	}
	return nil
}

// stop unmounts with fusermount3 and waits for the daemon to exit.
func (d *daemonProc) stop(ctx context.Context) error {
	d.notePeak()
	if out, err := exec.CommandContext(ctx, "fusermount3", "-u", d.mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("fusermount3 -u %s: %v: %s", d.mnt, err, bytes.TrimSpace(out))
	}
	return d.waitExit(ctx)
}

func (d *daemonProc) waitExit(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if d.done != nil {
			select {
			case <-d.done:
				d.pid = 0
				return nil
			default:
			}
		} else if err := syscall.Kill(d.pid, 0); err == syscall.ESRCH {
			d.pid = 0
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon %d serving %s did not exit within 5 min", d.pid, d.mnt)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// isMounted reports whether /proc/self/mountinfo has a mount of type fstype on mnt.
func isMounted(mnt, fstype string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || f[4] != mnt {
			continue
		}
		if i := strings.Index(l, " - "); i >= 0 && strings.HasPrefix(l[i+3:], fstype+" ") {
			return true
		}
	}
	return false
}

// --- coffer ---

type cofferFS struct {
	daemonProc
	name, bin, state, pinFile, cacheSize string
	env                                  []string
	// diskCache is --disk-cache ("" = off). The cache is emptied before every mount, as
	// rclone's VFS cache is, so cold rows stay cold.
	diskCache string
	noReplica bool   // mount with --no-replica (catalog replication off)
	label     string // the name in tables and logs ("" : name)
}

func newCoffer(ctx context.Context, w *work, name, remote, tokenLabel, cacheSize string) (*cofferFS, error) {
	dir := filepath.Join(w.dir, name)
	c := &cofferFS{name: name, bin: w.cofferBin, state: filepath.Join(dir, "state"),
		pinFile: w.pinFile, cacheSize: cacheSize}
	c.mnt = filepath.Join(dir, "mnt")
	if err := os.MkdirAll(c.mnt, 0o755); err != nil {
		return nil, err
	}
	if err := w.initToken(ctx, tokenLabel); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, c.bin, "init", "--state", c.state, "--remote", remote,
		"--hsm-module", softhsmModule, "--hsm-token", tokenLabel, "--hsm-pin-file", c.pinFile)
	cmd.Env = childEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("coffer init %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return c, nil
}

func (c *cofferFS) Name() string {
	if c.label != "" {
		return c.label
	}
	return c.name
}

func (c *cofferFS) Mount(ctx context.Context) error {
	args := []string{"mount", "--state", c.state, "--hsm-pin-file", c.pinFile,
		"--cache-size", c.cacheSize, "--staging-cap", "64G"}
	if c.diskCache != "" {
		if err := os.RemoveAll(filepath.Join(c.state, "objcache")); err != nil {
			return err
		}
		args = append(args, "--disk-cache", c.diskCache)
	}
	if c.noReplica {
		args = append(args, "--no-replica")
	}
	cmd := exec.CommandContext(ctx, c.bin, append(args, c.mnt)...)
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("coffer mount %s: %v: %s", c.name, err, bytes.TrimSpace(out))
	}
	// "mounted MNT (daemon pid N, log ...)"
	s := string(out)
	i := strings.Index(s, "daemon pid ")
	if i < 0 {
		return fmt.Errorf("coffer mount %s: no daemon pid in %q", c.name, s)
	}
	pid, err := strconv.Atoi(strings.TrimRight(strings.Fields(s[i+len("daemon pid "):])[0], ",)"))
	if err != nil {
		return fmt.Errorf("coffer mount %s: daemon pid in %q: %v", c.name, s, err)
	}
	c.pid, c.done, c.cmd = pid, nil, nil
	return nil
}

func (c *cofferFS) Unmount(ctx context.Context) error {
	c.notePeak()
	cmd := exec.CommandContext(ctx, c.bin, "unmount", c.mnt)
	cmd.Env = childEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("coffer unmount %s: %v: %s", c.name, err, bytes.TrimSpace(out))
	}
	return c.waitExit(ctx)
}

// Settle: coffer's fsync and unmount already wait for uploads.
func (c *cofferFS) Settle(ctx context.Context) error { return nil }

// --- gocryptfs ---

type gocryptFS struct {
	daemonProc
	cipher, passFile, log string
}

func newGocryptfs(ctx context.Context, w *work) (*gocryptFS, error) {
	dir := filepath.Join(w.dir, "gocryptfs")
	g := &gocryptFS{cipher: filepath.Join(dir, "cipher"), passFile: w.passFile, log: filepath.Join(dir, "gocryptfs.log")}
	g.mnt = filepath.Join(dir, "mnt")
	for _, d := range []string{g.cipher, g.mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if out, err := exec.CommandContext(ctx, "gocryptfs", "-init", "-q", "-passfile", g.passFile, g.cipher).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gocryptfs -init: %v: %s", err, bytes.TrimSpace(out))
	}
	return g, nil
}

func (g *gocryptFS) Name() string { return "gocryptfs" }
func (g *gocryptFS) Mount(ctx context.Context) error {
	return g.startChild(ctx, g.log, "fuse.gocryptfs", "gocryptfs", "-fg", "-q", "-passfile", g.passFile, g.cipher, g.mnt)
}
func (g *gocryptFS) Unmount(ctx context.Context) error { return g.stop(ctx) }
func (g *gocryptFS) Settle(ctx context.Context) error  { return nil }

// --- rclone crypt mount ---

type rcloneFS struct {
	daemonProc
	bin, conf, cacheDir, log, rcAddr string
}

func newRclone(ctx context.Context, w *work, s3endpoint string) (*rcloneFS, error) {
	dir := filepath.Join(w.dir, "rclone")
	r := &rcloneFS{bin: w.rcloneBin, conf: filepath.Join(dir, "rclone.conf"),
		cacheDir: filepath.Join(dir, "cache"), log: filepath.Join(dir, "rclone.log")}
	r.mnt = filepath.Join(dir, "mnt")
	if err := os.MkdirAll(r.mnt, 0o755); err != nil {
		return nil, err
	}
	pass, err := os.ReadFile(w.passFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, r.bin, "obscure", "-")
	cmd.Stdin = bytes.NewReader(pass)
	cmd.Env = childEnv()
	obscured, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("rclone obscure: %v", err)
	}
	conf := fmt.Sprintf("[s3]\ntype = s3\nprovider = Rclone\nendpoint = %s\n\n[secret]\ntype = crypt\nremote = s3:bkt-rclone/crypt\npassword = %s\n",
		s3endpoint, strings.TrimSpace(string(obscured)))
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r.rcAddr = fmt.Sprintf("127.0.0.1:%d", port)
	return r, nil
}

func (r *rcloneFS) Name() string { return "rclone crypt" }

// Mount starts with an empty VFS cache, so every mount is cold.
func (r *rcloneFS) Mount(ctx context.Context) error {
	if err := os.RemoveAll(r.cacheDir); err != nil {
		return err
	}
	return r.startChild(ctx, r.log, "fuse.rclone", r.bin, "mount2", "secret:", r.mnt,
		"--config", r.conf, "--vfs-cache-mode", "full", "--cache-dir", r.cacheDir,
		"--rc", "--rc-addr", r.rcAddr, "--rc-no-auth", "--log-level", "ERROR")
}

func (r *rcloneFS) Unmount(ctx context.Context) error {
	if err := r.Settle(ctx); err != nil {
		return err
	}
	return r.stop(ctx)
}

// Settle waits until the VFS cache has uploaded everything written (rclone uploads after
// close plus --vfs-write-back, 5 s by default). The queue must stay empty for a second: the
// kernel sends RELEASE after close(2) returns, so right after a close rclone may not have
// queued the file yet (a remount then lost it with the cache: seen once in a full run).
func (r *rcloneFS) Settle(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Minute)
	var emptySince time.Time
	for {
		resp, err := http.Post("http://"+r.rcAddr+"/vfs/stats", "application/json", strings.NewReader("{}"))
		if err != nil {
			return fmt.Errorf("rclone rc vfs/stats: %w", err)
		}
		var st struct {
			DiskCache struct {
				InProgress int `json:"uploadsInProgress"`
				Queued     int `json:"uploadsQueued"`
			} `json:"diskCache"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("rclone rc vfs/stats: %w", err)
		}
		if st.DiskCache.InProgress == 0 && st.DiskCache.Queued == 0 {
			if emptySince.IsZero() {
				emptySince = time.Now()
			} else if time.Since(emptySince) >= time.Second {
				return nil
			}
		} else {
			emptySince = time.Time{}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rclone still uploading after 15 min")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
