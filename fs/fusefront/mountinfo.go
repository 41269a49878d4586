package fusefront

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
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

// mountEntry finds the top mount on mp in /proc/self/mountinfo (read, never a stat of mp,
// so a serving process never touches its own mount): its device number and type.
func mountEntry(mp string) (dev, fstype string, err error) {
	fh, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		// 36 35 0:45 / /mnt rw,... - fuse.coffer coffer rw,...
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mp {
			dev, fstype = fields[2], "" // the last matching line is the top mount
			if _, rest, ok := strings.Cut(line, " - "); ok {
				fstype, _, _ = strings.Cut(rest, " ")
			}
		}
	}
	if dev == "" {
		return "", "", fmt.Errorf("%s not in /proc/self/mountinfo", mp)
	}
	return dev, fstype, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space...) of
// /proc/self/mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			ok := true
			for _, d := range s[i+1 : i+4] {
				if d < '0' || d > '7' {
					ok = false
					break
				}
				c = c*8 + byte(d-'0')
			}
			if ok {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
