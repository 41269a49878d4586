package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"coffer/fs/control"
	"coffer/fs/meta"
)

// The client side of key operations on a live mount: `coffer rotate` and `coffer shred` on a
// mounted volume do not open the catalog (the daemon owns it: one writer); they find the
// daemon serving the state directory and ask it over the control socket (fs/daemon runs
// them, streaming progress).

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
	st, _, err := control.GetStatus(ctx, d.Mountpoint, 10*time.Second)
	if errors.Is(err, control.ErrNoDaemon) {
		return "", busy
	}
	if err != nil { // e.g. permission denied: not root nor the user who mounted
		return "", fmt.Errorf("the volume in %s is mounted on %s: %w", state, d.Mountpoint, err)
	}
	if filepath.Clean(st.State) != filepath.Clean(state) {
		return "", busy
	}
	return d.Mountpoint, nil
}
