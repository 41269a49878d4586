package keys

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
)

// Keyring is the small facade the filesystem uses: one volume's provider plus a DEK cache.
// Every DEK it returns is owned by the caller (Wipe it when the file closes); the cache keeps
// its own copy.
type Keyring struct {
	p      Provider
	volume [IDSize]byte
	cache  *Cache // may be nil: no caching
}

// NewKeyring binds a provider and an optional cache (nil: no caching) to a volume. The
// keyring owns the cache from now on (Wipe closes it).
func NewKeyring(p Provider, volume [IDSize]byte, cache *Cache) *Keyring {
	return &Keyring{p: p, volume: volume, cache: cache}
}

// Provider returns the keyring's provider (for KEK management: create, load, destroy).
func (k *Keyring) Provider() Provider { return k.p }

// Volume returns the volume id.
func (k *Keyring) Volume() [IDSize]byte { return k.volume }

func (k *Keyring) identity(file [IDSize]byte) FileIdentity {
	return FileIdentity{Volume: k.volume, File: file}
}

// NewFileKey makes a key for a new file (see the package function) and caches it.
func (k *Keyring) NewFileKey(ctx context.Context, mode Mode, kek KEKRef, file [IDSize]byte) (Record, *DEK, error) {
	rec, dek, err := NewFileKey(ctx, k.p, mode, kek, k.identity(file))
	if err != nil {
		return Record{}, nil, err
	}
	if k.cache != nil {
		k.cache.put(file, fingerprint(rec), dek.Clone())
	}
	return rec, dek, nil
}

// FileKey returns the DEK of a file's record, from the cache when the cached key came from
// the same record, else from the provider (and caches it).
func (k *Keyring) FileKey(ctx context.Context, rec Record, file [IDSize]byte) (*DEK, error) {
	fp := fingerprint(rec)
	if k.cache != nil {
		if d, tag, ok := k.cache.get(file); ok {
			if tag == fp {
				return d, nil
			}
			d.Wipe()
		}
	}
	dek, err := OpenFileKey(ctx, k.p, rec, k.identity(file))
	if err != nil {
		return nil, err
	}
	if k.cache != nil {
		k.cache.put(file, fp, dek.Clone())
	}
	return dek, nil
}

// Rewrap re-seals a file's wrap-mode record under KEK version to.
func (k *Keyring) Rewrap(ctx context.Context, rec Record, file [IDSize]byte, to KEKRef) (Record, error) {
	nrec, err := Rewrap(ctx, k.p, rec, k.identity(file), to)
	if err != nil {
		return Record{}, err
	}
	if k.cache != nil {
		// The DEK is unchanged; re-tag a cached copy so the new record hits.
		if d, tag, ok := k.cache.get(file); ok {
			if tag == fingerprint(rec) {
				k.cache.put(file, fingerprint(nrec), d)
			} else {
				d.Wipe()
			}
		}
	}
	return nrec, nil
}

// Forget wipes the cached key of a file (shred, delete).
func (k *Keyring) Forget(file [IDSize]byte) {
	if k.cache != nil {
		k.cache.Drop(file)
	}
}

// WipeCache zeroes every cached DEK now, leaving the provider usable.
func (k *Keyring) WipeCache() {
	if k.cache != nil {
		k.cache.Wipe()
	}
}

// Wipe zeroes every cached DEK, closes the cache and wipes the provider (coffer lock,
// unmount, signals). The keyring is unusable afterwards.
func (k *Keyring) Wipe() error {
	if k.cache != nil {
		k.cache.Close()
	}
	return k.p.Wipe()
}

// fingerprint identifies a record's content (not secret): SHA-256 over its fields.
func fingerprint(r Record) [MACSize]byte {
	h := sha256.New()
	var b []byte
	b = appendLPString(b, string(r.Mode))
	b = appendLPString(b, r.KEK.Chain)
	b = binary.BigEndian.AppendUint32(b, r.KEK.Version)
	b = AppendLP(b, r.IV)
	b = AppendLP(b, r.Wrapped)
	b = AppendLP(b, r.Salt)
	h.Write(b)
	var out [MACSize]byte
	h.Sum(out[:0])
	return out
}
