package content

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"coffer/fs/volume"
)

// StagingMarker is the file New keeps in a staging directory it owns: the volume id in hex
// and a newline. It is not a staging file (Recover looks only at *.stg names).
const StagingMarker = ".coffer-staging"

// stagingMarkerTmp is the marker being written (renamed into place).
const stagingMarkerTmp = StagingMarker + ".tmp"

// prepareStagingDir makes dir the staging directory of volume v, or refuses it, changing
// nothing, if it may hold someone else's files (New would make it 0700, and Recover deletes
// *.stg files the catalog does not name). Accepted: a directory that does not exist (created
// 0700, with the marker); one whose marker names v; an empty one, or v's default staging
// directory made by a version without markers (both adopted: made 0700, marker written).
// Refused: a marker of another volume, an unreadable marker, or any other file in it.
func prepareStagingDir(dir string, v *volume.Volume) error {
	want := hex.EncodeToString(v.ID[:])
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("content: create staging directory: %w", err)
		}
		return adoptStagingDir(dir, want)
	case err != nil:
		return fmt.Errorf("content: staging directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("content: staging directory %s is not a directory", dir)
	}
	mk := filepath.Join(dir, StagingMarker)
	body, err := os.ReadFile(mk)
	switch {
	case err == nil:
		got := string(bytes.TrimSpace(body))
		if id, herr := hex.DecodeString(got); herr != nil || len(id) != len(v.ID) {
			return fmt.Errorf("content: staging directory %s: its %s does not name a volume (%d bytes): coffer did not write it; give an empty or new directory",
				dir, StagingMarker, len(body))
		}
		if got != want {
			return fmt.Errorf("content: staging directory %s belongs to volume %s (its %s says so), not to this volume %s: give each volume its own staging directory",
				dir, got, StagingMarker, want)
		}
		if fi.Mode().Perm() != 0o700 {
			if err := os.Chmod(dir, 0o700); err != nil {
				return fmt.Errorf("content: staging directory: %w", err)
			}
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("content: staging directory %s: read %s: %w", dir, StagingMarker, err)
	}
	// No marker: made by an earlier version (the volume's default directory), or empty.
	if !sameDir(dir, volume.StagingDir(v.StateDir)) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("content: staging directory: %w", err)
		}
		for _, e := range ents {
			if e.Name() != stagingMarkerTmp {
				return fmt.Errorf("content: staging directory %s holds files coffer did not put there (%q, and %d entries in all): "+
					"give an empty or new directory (coffer makes it 0700 and removes stray staging files in it)", dir, e.Name(), len(ents))
			}
		}
	}
	return adoptStagingDir(dir, want)
}

// adoptStagingDir makes dir 0700 and writes the marker naming volume id (hex).
func adoptStagingDir(dir, id string) error {
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("content: staging directory: %w", err)
	}
	tmp := filepath.Join(dir, stagingMarkerTmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("content: staging directory: write %s: %w", StagingMarker, err)
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, StagingMarker))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("content: staging directory: write %s: %w", StagingMarker, err)
	}
	return nil
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
