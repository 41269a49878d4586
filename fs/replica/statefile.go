package replica

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// StateFileName is the file in the state directory where a clean unmount
// records the replicated state. It holds no secret: positions, an object id
// and a digest of the catalog file beside it.
const StateFileName = "replica.state"

type stateFile struct {
	Epoch    uint32 `json:"epoch"`
	Position uint64 `json:"position"`
	State    string `json:"state"`
	Size     int64  `json:"catalog_size"`
	SHA256   string `json:"catalog_sha256"`
}

func (s *stateFile) matches(epoch uint32, p uint64, state StateID) bool {
	return s.Epoch == epoch && s.Position == p && s.State == hex.EncodeToString(state[:])
}

func (s *stateFile) stateID() StateID {
	var id StateID
	b, _ := hex.DecodeString(s.State)
	copy(id[:], b)
	return id
}

// fileMatches reports whether the catalog file is still the one recorded.
func (s *stateFile) fileMatches(path string) (bool, error) {
	size, sum, err := digest(path)
	if err != nil {
		return false, err
	}
	return size == s.Size && sum == s.SHA256, nil
}

func digest(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func readStateFile(path string) (*stateFile, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s stateFile
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("replica: %s: %w", path, err)
	}
	return &s, nil
}

func writeStateFile(path, catalog string, epoch uint32, p uint64, state StateID) error {
	size, sum, err := digest(catalog)
	if err != nil {
		return fmt.Errorf("replica: record the clean state: %w", err)
	}
	b, _ := json.Marshal(stateFile{Epoch: epoch, Position: p, State: hex.EncodeToString(state[:]), Size: size, SHA256: sum})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("replica: record the clean state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replica: record the clean state: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
