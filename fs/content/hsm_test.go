package content

import (
	"testing"
	"time"

	"coffer/fs/meta"
	"coffer/fs/volume"
	"coffer/keys"
	"coffer/test/softhsm"
)

// TestHSMDerive runs the data path on a volume whose master key is in a
// real SoftHSM2 token, in derive mode (chunks record their key version):
// write, fsync, remount, read, and crash recovery of staged data.
func TestHSMDerive(t *testing.T) {
	tok := softhsm.NewToken(t, "")
	e := newEnvConfig(t, "local", smallLayout, Options{DirtyDelay: time.Hour}, func(c *volume.Config) {
		c.Provider = meta.ProviderPKCS11
		c.HSMModule = tok.Module
		c.HSMToken = tok.Label
		c.Secret = tok.PIN
		c.KeyMode = keys.ModeDerive
	})
	ino := e.createFile("f")
	f := e.openFile(ino)
	data := pattern(1, 0, 50000)
	e.write(f, 0, data)
	e.sync(f)
	for _, c := range e.chunks(ino) {
		if c.KeyVersion != 1 {
			t.Fatalf("derive-mode chunk %d records key version %d, want 1", c.Index, c.KeyVersion)
		}
	}
	p := pattern(2, 30000, 3000)
	e.write(f, 30000, p)
	copy(data[30000:], p)
	e.crash() // the second write is only staged: killed with the file open
	if len(stagingFiles(t, e.stage)) == 0 {
		t.Fatal("no staged data left to recover")
	}
	e.open()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, 60000), data, "after crash and recovery")
	e.release(f)
	e.reopen()
	f = e.openFile(ino)
	mustEqual(t, e.read(f, 0, 60000), data, "after remount")
	e.release(f)
}
