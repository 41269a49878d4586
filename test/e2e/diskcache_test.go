package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// With --disk-cache, what this host uploaded is read back from local copies of its
// objects: after a remount (the memory cache is empty) with S3 stopped, a file written
// with the cache on reads in full, while one written before fails with EIO as without
// the cache. Each copy is a remote object byte for byte (ciphertext: the leak scan at
// cleanup covers STATE/objcache too).
func TestDiskCacheReadsWithS3Down(t *testing.T) {
	v := newVolume(t, s3Remote, withLogErrorsAllowed())
	before := v.P(uniqueName())
	beforeData := markedData(1 << 20)
	mustWrite(t, before, beforeData, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))

	opts := []string{"--disk-cache", "64M", "--read-timeout", "3s"}
	v.Mount(opts...)
	cached := v.P(uniqueName())
	data := markedData(6 << 20) // two chunks
	mustWrite(t, cached, data, 0o644)
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	v.Mount(opts...)
	v.S3.Stop()
	sameBytes(t, "file written with the disk cache on, read with S3 down", mustRead(t, cached), data)
	_, err := os.ReadFile(before)
	errIs(t, "read of a file written before the disk cache, S3 down", err, unix.EIO)
	v.S3.Restart()
	sameBytes(t, "file written before the disk cache, S3 back", mustRead(t, before), beforeData)

	remote := map[string]bool{}
	_ = filepath.WalkDir(v.RemoteDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil {
				remote[string(b)] = true
			}
		}
		return nil
	})
	ents, err := os.ReadDir(filepath.Join(v.State, "objcache"))
	must(t, "list the disk cache", err)
	if len(ents) < 2 { // the file written with it on; reads may have fetched more (fills)
		t.Errorf("the disk cache holds %d files; want at least the 2 objects of the file written with it on", len(ents))
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(v.State, "objcache", e.Name()))
		if err != nil || !remote[string(b)] || bytes.Contains(b, data[:64]) {
			t.Errorf("disk cache file %s (%d bytes, %v) is not one of the remote's objects", e.Name(), len(b), err)
		}
	}

	// A mount without the flag removes the copies (they would go stale as objects are
	// deleted without the cache knowing).
	must(t, "unmount", boolErr(v.Unmount(), "unmount failed"))
	v.Mount()
	if _, err := os.Stat(filepath.Join(v.State, "objcache")); !os.IsNotExist(err) {
		t.Errorf("STATE/objcache after a mount without --disk-cache: %v; want it removed", err)
	}
	sameBytes(t, "file written with the disk cache on, read from S3", mustRead(t, cached), data)
}
