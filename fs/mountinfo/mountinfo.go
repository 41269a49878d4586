// Package mountinfo reads a mountinfo file (/proc/self/mountinfo): what is mounted on a
// path, read from the kernel's table without touching the path itself (a stat of a dead
// FUSE mount fails or hangs, and a serving daemon must never touch its own mount).
package mountinfo

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Self is the mount table of this process's mount namespace.
const Self = "/proc/self/mountinfo"

// Mount is one line of a mountinfo file.
type Mount struct {
	Dev          string   // major:minor of the mounted file system
	Point        string   // where it is mounted (unescaped)
	FSType       string   // e.g. "fuse.coffer"
	SuperOptions []string // per-superblock options, e.g. "user_id=0"
}

// Top returns the topmost mount on point (an absolute, clean path) listed in file, and
// whether there is one.
func Top(file, point string) (Mount, bool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Mount{}, false, fmt.Errorf("read %s: %w", file, err)
	}
	var top Mount
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		// 36 35 0:45 / /mnt rw,nosuid - fuse.coffer coffer rw,user_id=0,group_id=0
		fields := strings.Fields(line)
		if len(fields) < 5 || Unescape(fields[4]) != point {
			continue
		}
		m := Mount{Dev: fields[2], Point: point} // the last matching line is the top mount
		if _, rest, ok := strings.Cut(line, " - "); ok {
			if super := strings.Fields(rest); len(super) > 0 {
				m.FSType = super[0]
				if len(super) > 2 {
					m.SuperOptions = strings.Split(super[2], ",")
				}
			}
		}
		top, found = m, true
	}
	return top, found, nil
}

// Option returns the value of the per-superblock option name ("user_id" -> "0").
func (m Mount) Option(name string) (string, bool) {
	for _, o := range m.SuperOptions {
		if v, ok := strings.CutPrefix(o, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Unescape undoes the octal escapes (\040 for a space...) of mountinfo paths.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
