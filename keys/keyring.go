package keys

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
)

// ErrLocked is returned by every key operation of a locked Keyring (coffer lock): the cached
// DEKs were zeroed and the provider wiped (HSM sessions closed, passphrase keys zeroed) until
// Unlock installs a freshly opened provider.
var ErrLocked = errors.New("volume is locked: run coffer unlock")

// errKeyringWiped is ErrWiped with a message saying why: the keyring was closed for good.
var errKeyringWiped = Errorf(ErrWiped, "keys wiped: the volume was closed")

// Keyring is the small facade the filesystem uses: one volume's provider plus a DEK cache.
// Every DEK it returns is owned by the caller (Wipe it when the file closes); the cache keeps
// its own copy.
//
// A keyring can be locked (Lock: every cached DEK zeroed, the provider wiped, every operation
// failing with ErrLocked) and unlocked again with a new provider (Unlock). Operations hold a
// read lock for their whole duration, provider call and cache update included, so Lock waits
// for those in flight and none of them can put a key back into the cache after it.
type Keyring struct {
	volume [IDSize]byte
	cache  *Cache // may be nil: no caching
	guard  *guarded

	mu     sync.RWMutex
	p      Provider // nil while locked or wiped
	kind   string
	locked bool
	wiped  bool
	// locking is set by Lock before it waits for operations in flight (an HSM call that
	// hangs would hold it back for good): from then on Locked reports true and new
	// operations fail with ErrLocked at once, without waiting behind it.
	locking atomic.Bool
}

// NewKeyring binds a provider and an optional cache (nil: no caching) to a volume. The
// keyring owns the cache and the provider from now on (Wipe closes both).
func NewKeyring(p Provider, volume [IDSize]byte, cache *Cache) *Keyring {
	k := &Keyring{p: p, kind: p.Kind(), volume: volume, cache: cache}
	k.guard = &guarded{k: k}
	return k
}

// Provider returns a Provider that forwards to the keyring's current provider (for KEK
// management: create, load, destroy). It stays valid across Lock and Unlock: while locked its
// methods fail with ErrLocked; after Unlock they reach the new provider. Its Wipe locks the
// keyring.
func (k *Keyring) Provider() Provider { return k.guard }

// Volume returns the volume id.
func (k *Keyring) Volume() [IDSize]byte { return k.volume }

func (k *Keyring) identity(file [IDSize]byte) FileIdentity {
	return FileIdentity{Volume: k.volume, File: file}
}

// acquire read-locks the keyring and returns its provider, or the error saying why there is
// none. On success the caller must call k.mu.RUnlock.
func (k *Keyring) acquire() (Provider, error) {
	if k.locking.Load() {
		return nil, ErrLocked
	}
	k.mu.RLock()
	switch {
	case k.wiped:
		k.mu.RUnlock()
		return nil, errKeyringWiped
	case k.locked:
		k.mu.RUnlock()
		return nil, ErrLocked
	}
	return k.p, nil
}

// Locked reports whether the keyring is locked (or wiped for good).
func (k *Keyring) Locked() bool {
	if k.locking.Load() {
		return true
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.locked || k.wiped
}

// NewFileKey makes a key for a new file (see the package function) and caches it.
func (k *Keyring) NewFileKey(ctx context.Context, mode Mode, kek KEKRef, file [IDSize]byte) (Record, *DEK, error) {
	p, err := k.acquire()
	if err != nil {
		return Record{}, nil, err
	}
	defer k.mu.RUnlock()
	rec, dek, err := NewFileKey(ctx, p, mode, kek, k.identity(file))
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
	p, err := k.acquire()
	if err != nil {
		return nil, err
	}
	defer k.mu.RUnlock()
	fp := fingerprint(rec)
	if k.cache != nil {
		if d, tag, ok := k.cache.get(file); ok {
			if tag == fp {
				return d, nil
			}
			d.Wipe()
		}
	}
	dek, err := OpenFileKey(ctx, p, rec, k.identity(file))
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
	p, err := k.acquire()
	if err != nil {
		return Record{}, err
	}
	defer k.mu.RUnlock()
	nrec, err := Rewrap(ctx, p, rec, k.identity(file), to)
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

// Lock zeroes every cached DEK and wipes the provider (HSM sessions closed, passphrase keys
// zeroed); from then on every operation fails with ErrLocked until Unlock. It waits for
// operations in flight (an HSM round trip), never for more. DEKs already handed out belong to
// their callers, who must wipe them too (the data path does: content.DataPath.WipeKeys). The
// keyring is locked even when the provider's wipe reports an error (an HSM that did not close
// in time), which Lock returns. Locking a locked keyring does nothing.
//
// The cached DEKs are zeroed, Locked reports true and new operations fail at once, before
// Lock waits for those in flight: an HSM call that never returns delays only the provider's
// wipe (and Lock's return), never the rest.
func (k *Keyring) Lock() error {
	k.locking.Store(true)
	if k.cache != nil {
		k.cache.Wipe() // again below: an operation in flight may still put its key back
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.wiped {
		k.locking.Store(false) // operations keep failing with ErrWiped
		return nil
	}
	if k.locked {
		return nil
	}
	k.locked = true
	if k.cache != nil {
		k.cache.Wipe()
	}
	p := k.p
	k.p = nil
	return p.Wipe()
}

// Unlock installs p, a freshly opened provider with every KEK version loaded, and ends the
// lock. On a keyring that is not locked it replaces the provider (the old one is wiped); on a
// wiped keyring it wipes p and fails with ErrWiped.
func (k *Keyring) Unlock(p Provider) error {
	if p == nil {
		return errors.New("keys: unlock: no provider")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.wiped {
		_ = p.Wipe()
		return errKeyringWiped
	}
	old := k.p
	k.p, k.kind, k.locked = p, p.Kind(), false
	k.locking.Store(false)
	if old != nil {
		if k.cache != nil {
			k.cache.Wipe() // keys from the old provider: no reason to trust them longer
		}
		return old.Wipe()
	}
	return nil
}

// Wipe zeroes every cached DEK, closes the cache and wipes the provider (unmount, signals).
// The keyring is unusable afterwards: every operation fails with ErrWiped and Unlock too.
func (k *Keyring) Wipe() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cache != nil {
		k.cache.Close()
	}
	k.wiped = true
	p := k.p
	k.p = nil
	if p == nil {
		return nil
	}
	return p.Wipe()
}

// guarded is the Provider that Keyring.Provider returns: every call goes to the keyring's
// current provider under its read lock.
type guarded struct{ k *Keyring }

func (g *guarded) Kind() string {
	g.k.mu.RLock()
	defer g.k.mu.RUnlock()
	return g.k.kind
}

func (g *guarded) CreateKEK(ctx context.Context, ref KEKRef) ([]byte, error) {
	p, err := g.k.acquire()
	if err != nil {
		return nil, err
	}
	defer g.k.mu.RUnlock()
	return p.CreateKEK(ctx, ref)
}

func (g *guarded) Load(ref KEKRef, material []byte) error {
	p, err := g.k.acquire()
	if err != nil {
		return err
	}
	defer g.k.mu.RUnlock()
	return p.Load(ref, material)
}

func (g *guarded) Seal(ctx context.Context, ref KEKRef, iv, plaintext, aad []byte) ([]byte, error) {
	p, err := g.k.acquire()
	if err != nil {
		return nil, err
	}
	defer g.k.mu.RUnlock()
	return p.Seal(ctx, ref, iv, plaintext, aad)
}

func (g *guarded) Open(ctx context.Context, ref KEKRef, iv, ciphertext, aad []byte) ([]byte, error) {
	p, err := g.k.acquire()
	if err != nil {
		return nil, err
	}
	defer g.k.mu.RUnlock()
	return p.Open(ctx, ref, iv, ciphertext, aad)
}

func (g *guarded) MAC(ctx context.Context, ref KEKRef, msg []byte) ([]byte, error) {
	p, err := g.k.acquire()
	if err != nil {
		return nil, err
	}
	defer g.k.mu.RUnlock()
	return p.MAC(ctx, ref, msg)
}

func (g *guarded) DestroyKEK(ctx context.Context, ref KEKRef) error {
	p, err := g.k.acquire()
	if err != nil {
		return err
	}
	defer g.k.mu.RUnlock()
	return p.DestroyKEK(ctx, ref)
}

// Wipe locks the keyring (the provider behind it is wiped; Unlock installs another).
func (g *guarded) Wipe() error { return g.k.Lock() }

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
