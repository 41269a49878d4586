package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"coffer/fs/fusefront"
)

// TestCheckMountpointLeavesOtherUsersMount: a coffer mount that another user's daemon
// serves is refused as mounted, never taken for a dead mount and detached (root's client
// finds no socket of its own for it; before, root's `coffer mount` detached it).
func TestCheckMountpointLeavesOtherUsersMount(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: makes a FUSE mount of uid 4242")
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	// A FUSE connection nothing answers: nothing may touch the mount. Closing the fd after
	// the detach aborts it, so that removing the folder cannot hang.
	fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/fuse: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=4242,group_id=0", fd)
	if err := syscall.Mount("coffer-test", mnt, "fuse.coffer", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		t.Fatalf("mount FUSE: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	err = CheckMountpoint(context.Background(), mnt)
	if err == nil || !strings.Contains(err.Error(), "already mounted") || !strings.Contains(err.Error(), "uid 4242") {
		t.Fatalf("CheckMountpoint on another user's mount: %v", err)
	}
	if !fusefront.IsCofferMount(mnt) {
		t.Fatal("CheckMountpoint detached another user's mount")
	}
}
