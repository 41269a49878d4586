package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestTop(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(file, []byte(`22 1 8:1 / / rw - ext4 /dev/vda rw
36 22 0:45 / /mnt/a\040b rw,nosuid - fuse.coffer coffer rw,user_id=4242,group_id=0
37 36 0:46 / /mnt/a\040b rw - tmpfs tmpfs rw
38 22 0:47 / /mnt/c rw,nosuid - fuse.coffer coffer rw,user_id=0,group_id=0
`), 0o600)
	m, ok, err := Top(file, "/mnt/c")
	if err != nil || !ok || m.Dev != "0:47" || m.FSType != "fuse.coffer" {
		t.Fatalf("Top(/mnt/c) = %+v, %v, %v", m, ok, err)
	}
	if uid, ok := m.Option("user_id"); !ok || uid != "0" {
		t.Fatalf("user_id = %q, %v", uid, ok)
	}
	// The last line on a path is the top mount: a tmpfs over the coffer mount.
	if m, ok, _ := Top(file, "/mnt/a b"); !ok || m.FSType != "tmpfs" || m.Dev != "0:46" {
		t.Fatalf("Top(/mnt/a b) = %+v, %v", m, ok)
	}
	if _, ok, _ := Top(file, "/mnt/none"); ok {
		t.Fatal("found a mount on /mnt/none")
	}
	if _, _, err := Top(filepath.Join(t.TempDir(), "missing"), "/"); err == nil {
		t.Fatal("no error for a missing file")
	}
	if got := Unescape(`/a\040b\134c\011`); got != "/a b\\c\t" {
		t.Fatalf("Unescape = %q", got)
	}
}
