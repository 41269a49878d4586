package keys

import (
	"context"
	"fmt"
)

// LabelVolumeKey is the purpose label of a volume-level key (FORMAT.md 9.8).
const LabelVolumeKey = "coffer/volume-key/v1"

// VolumeKeyMessage is the HMAC input of the volume-level key for purpose:
//
//	LP("coffer/volume-key/v1") || LP(volume id) || LP(purpose)
func VolumeKeyMessage(volume [IDSize]byte, purpose string) []byte {
	b := make([]byte, 0, 4+len(LabelVolumeKey)+4+IDSize+4+len(purpose))
	b = appendLPString(b, LabelVolumeKey)
	b = AppendLP(b, volume[:])
	return appendLPString(b, purpose)
}

// VolumeKey returns the 256-bit key of one volume-level purpose (sealing what the volume as a
// whole stores, such as catalog replicas) under version ref of the volume's KEK chain:
// HMAC-SHA256 with that version's HMAC key over VolumeKeyMessage, computed inside the HSM
// (or with the HMAC half of a passphrase volume's KEK material), in either key mode. Only the
// KEK provider can produce it; each version gives an unrelated key, so rotation rotates it
// and destroying the version destroys it. The caller wipes the returned key.
func VolumeKey(ctx context.Context, p Provider, ref KEKRef, volume [IDSize]byte, purpose string) (*DEK, error) {
	if ref.Chain != "" {
		return nil, fmt.Errorf("keys: volume key %q: KEK %s is a user chain's; volume keys come from the volume chain", purpose, ref)
	}
	if err := checkPurpose(purpose); err != nil {
		return nil, err
	}
	mac, err := p.MAC(ctx, ref, VolumeKeyMessage(volume, purpose))
	if err != nil {
		return nil, fmt.Errorf("keys: volume key %q with KEK %s: %w", purpose, ref, err)
	}
	if len(mac) != DEKSize {
		clear(mac)
		return nil, fmt.Errorf("keys: volume key %q with KEK %s: provider returned %d bytes, want %d", purpose, ref, len(mac), DEKSize)
	}
	return &DEK{b: mac}, nil
}

// checkPurpose admits 1 to 32 characters of a-z, 0-9 and '-'.
func checkPurpose(purpose string) error {
	if len(purpose) == 0 || len(purpose) > 32 {
		return fmt.Errorf("keys: volume key purpose %q: want 1 to 32 characters", purpose)
	}
	for _, c := range purpose {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("keys: volume key purpose %q: only a-z, 0-9 and '-'", purpose)
		}
	}
	return nil
}
