package fs

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"coffer/fs/content"
	"coffer/fs/volume"
)

// newTestData is the real data path the tests mount over (staging in the
// test's directory, uploads to the volume's local-folder remote).
func newTestData(t *testing.T, v *volume.Volume, dir string) dataStore {
	t.Helper()
	s, err := content.New(v, content.Options{StagingDir: filepath.Join(dir, "staging"),
		DirtyDelay: 50 * time.Millisecond, SyncTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	return contentStore{s}
}

func closeTestData(t *testing.T, d dataStore) {
	t.Helper()
	for {
		if w, ok := d.(*counting); ok {
			d = w.dataStore
			continue
		}
		break
	}
	cs, ok := d.(contentStore)
	if !ok {
		t.Fatalf("data path %T is not the content store", d)
	}
	left, err := cs.Close(context.Background())
	if err != nil || left != 0 {
		t.Errorf("closing the data path: %d bytes left staged, %v", left, err)
	}
}
