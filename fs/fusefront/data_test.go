package fusefront

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"coffer/fs/content"
	"coffer/fs/volume"
)

// newTestData is the real data path the tests mount over (staging in the
// test's directory, uploads to the volume's local-folder remote). Dirty
// chunks upload after dirtyDelay (0: 50 ms).
func newTestData(t *testing.T, v *volume.Volume, dir string, dirtyDelay time.Duration) dataPath {
	t.Helper()
	if dirtyDelay == 0 {
		dirtyDelay = 50 * time.Millisecond
	}
	s, err := content.New(v, content.Options{StagingDir: filepath.Join(dir, "staging"),
		DirtyDelay: dirtyDelay, SyncTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	return contentDataPath{s}
}

func closeTestData(t *testing.T, d dataPath) {
	t.Helper()
	for {
		if w, ok := d.(*counting); ok {
			d = w.dataPath
			continue
		}
		break
	}
	cs, ok := d.(contentDataPath)
	if !ok {
		t.Fatalf("data path %T is not the content data path", d)
	}
	left, err := cs.Close(context.Background())
	if err != nil || left != 0 {
		t.Errorf("closing the data path: %d bytes left staged, %v", left, err)
	}
}
