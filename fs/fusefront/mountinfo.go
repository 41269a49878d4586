package fusefront

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"coffer/fs/mountinfo"
)

// ClearDeadMount clears what a killed daemon left on mountpoint: a mount
// whose every access fails with ENOTCONN, which would make a new mount fail.
// Anything else (a live mount, a plain directory, a missing path) is left for
// the mount itself to report.
func ClearDeadMount(mountpoint string) error {
	_, err := os.Stat(mountpoint)
	if !errors.Is(err, syscall.ENOTCONN) {
		return nil
	}
	if err := Detach(mountpoint); err != nil {
		return fmt.Errorf("clear dead mount on %s: %w", mountpoint, err)
	}
	return nil
}

// Detach unmounts lazily: umount2(MNT_DETACH) as root, else fusermount3 -u -z.
func Detach(mp string) error {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err == nil {
			return nil
		}
	}
	out, err := exec.Command("fusermount3", "-u", "-z", mp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// raiseReadAhead sets the mount's bdi read_ahead_kb (root only; best
// effort). The device number comes from /proc/self/mountinfo, so the serving
// process never touches its own mount.
func raiseReadAhead(mp string) error {
	dev, _, err := mountEntry(mp)
	if err != nil {
		return err
	}
	return os.WriteFile("/sys/class/bdi/"+dev+"/read_ahead_kb", []byte(fmt.Sprint(readAheadKB)), 0)
}

// IsCofferMount reports whether the top mount on mp is a coffer FUSE mount. A mount left
// by a killed daemon is one too (stat on it may not fail with ENOTCONN yet).
func IsCofferMount(mp string) bool {
	_, fstype, err := mountEntry(mp)
	return err == nil && fstype == "fuse.coffer"
}

// mountEntry finds the top mount on mp (never a stat of mp, so a serving process never
// touches its own mount): its device number and type.
func mountEntry(mp string) (dev, fstype string, err error) {
	m, ok, err := mountinfo.Top(mountinfo.Self, mp)
	if err != nil {
		return "", "", err
	}
	if !ok {
		return "", "", fmt.Errorf("%s not in %s", mp, mountinfo.Self)
	}
	return m.Dev, m.FSType, nil
}
