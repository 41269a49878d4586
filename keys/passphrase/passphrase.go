// Package passphrase is the KEK provider for volumes without an HSM.
//
// Argon2id(passphrase, salt) gives a 32-byte master M; from it, with HMAC-SHA256, a
// key-wrapping key (KWK) and a check value. Each KEK version is 64 random bytes (AES-256 key
// || HMAC-SHA256 key) sealed under the KWK with AES-256-GCM: that sealed blob is the
// "material" the catalog stores. Unsealed KEKs live only in this process's memory. A wrong
// passphrase is detected by the check value (ErrWrongPassphrase), before any material is
// touched; a material that fails to open under the right passphrase is tampered
// (ErrUnwrap). Byte layouts: FORMAT.md section 9.
//
// Key bytes are plain heap slices zeroed with clear() on Wipe; Argon2id's 64 MiB work area
// and Go's AES key schedules cannot be zeroed (see the package notes in FORMAT.md section 9).
package passphrase

import (
	"bytes"
	"cmp"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"

	"coffer/crypto/secmem"
	"coffer/keys"
	"coffer/keys/internal/softkek"
)

// Kind is the provider kind stored in the catalog.
const Kind = "passphrase"

// Material layout: version 0x01 | nonce [12] | AES-256-GCM(KWK, nonce, KEK[64], aad) [80].
const (
	materialVersion = 1
	nonceSize       = 12
	// MaterialSize is the length of a KEK version's material.
	MaterialSize = 1 + nonceSize + softkek.Size + 16
)

// Provider implements keys.Provider with KEKs sealed under a passphrase.
type Provider struct {
	volume [keys.IDSize]byte
	rand   io.Reader // crypto/rand; tests substitute a fixed stream for vectors

	mu    sync.RWMutex
	kwk   []byte      // 32 bytes; nil after Wipe
	kwkGC cipher.AEAD // AES-GCM under kwk
	keks  map[keys.KEKRef]*softkek.KEK
	wiped bool
}

var _ keys.Provider = (*Provider)(nil)

// Create starts a new passphrase volume: a fresh random salt, the given cost, and the check
// value for pass. Store the returned Params (MarshalBinary) with the volume. pass is not
// kept; the caller zeroes it. It is CreateContext without a way to give up.
func Create(pass []byte, volume [keys.IDSize]byte, cost Cost) (*Provider, Params, error) {
	return CreateContext(context.Background(), pass, volume, cost)
}

// CreateContext is Create, returning ctx's error as soon as ctx ends (see OpenContext).
func CreateContext(ctx context.Context, pass []byte, volume [keys.IDSize]byte, cost Cost) (*Provider, Params, error) {
	if err := cost.Validate(); err != nil {
		return nil, Params{}, err
	}
	params := Params{Cost: cost}
	_, _ = rand.Read(params.Salt[:])
	kwk, check, err := derive(ctx, pass, volume, params)
	if err != nil {
		return nil, Params{}, err
	}
	params.Check = check
	p, err := newProvider(volume, kwk)
	if err != nil {
		return nil, Params{}, err
	}
	return p, params, nil
}

// Open unlocks an existing volume: ErrWrongPassphrase if pass does not match params.Check.
// pass is not kept; the caller zeroes it. It is OpenContext without a way to give up: a
// caller that must stay responsive to a signal or a deadline uses OpenContext.
func Open(pass []byte, volume [keys.IDSize]byte, params Params) (*Provider, error) {
	return OpenContext(context.Background(), pass, volume, params)
}

// OpenContext is Open, returning ctx's error as soon as ctx ends. Parameters outside the
// limits (a *RangeError, ErrOutOfRange) are refused before any derivation. Argon2id itself
// cannot be interrupted: a cancelled derivation finishes in the background (at most MaxTime
// passes over MaxMemoryKiB) and its result is zeroed and dropped; exiting the process ends it.
func OpenContext(ctx context.Context, pass []byte, volume [keys.IDSize]byte, params Params) (*Provider, error) {
	if err := params.Cost.check(); err != nil {
		err.Stored = true
		return nil, err
	}
	kwk, check, err := derive(ctx, pass, volume, params)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(check[:], params.Check[:]) != 1 {
		clear(kwk)
		return nil, keys.Errorf(keys.ErrWrongPassphrase, "wrong passphrase for volume %x", volume)
	}
	return newProvider(volume, kwk)
}

// derive computes M = Argon2id(pass, salt, t, m, p, 32), KWK = HMAC-SHA256(M, info_kwk) and
// check = HMAC-SHA256(M, info_check), zeroing M. It refuses a cost outside the limits before
// any work, and returns ctx's error as soon as ctx ends (the computation then finishes in
// the background and its result is zeroed).
func derive(ctx context.Context, pass []byte, volume [keys.IDSize]byte, params Params) (kwk []byte, check [CheckSize]byte, err error) {
	if len(pass) == 0 {
		return nil, check, errors.New("passphrase: the passphrase is empty")
	}
	if err := params.Cost.Validate(); err != nil {
		return nil, check, err
	}
	if err := ctx.Err(); err != nil {
		return nil, check, err
	}
	run := func(pass []byte) (kwk []byte, check [CheckSize]byte) {
		// Argon2id's blocks, M and the HMAC states are allocated inside Do, so the runtime
		// erases them once collected (its lane goroutines' stacks are not covered: they
		// hold mixed blocks, not M or the passphrase).
		secmem.Do(func() {
			m := argon2.IDKey(pass, params.Salt[:], params.Time, params.MemoryKiB, params.Threads, 32)
			defer clear(m)
			kwk = softkek.HMAC(m, infoKWK(volume))
			copy(check[:], softkek.HMAC(m, infoCheck(volume)))
		})
		return kwk, check
	}
	if ctx.Done() == nil { // cannot be cancelled: derive on this goroutine
		kwk, check = run(pass)
		return kwk, check, nil
	}
	// The caller zeroes pass once we return, which may be before Argon2id is done with it:
	// the derivation works on its own copy (allocated inside Do, zeroed after use).
	var own []byte
	secmem.Do(func() { own = bytes.Clone(pass) })
	type result struct {
		kwk   []byte
		check [CheckSize]byte
	}
	ch := make(chan result, 1)
	go func() {
		defer clear(own)
		var r result
		r.kwk, r.check = run(own)
		ch <- r
	}()
	select {
	case r := <-ch:
		return r.kwk, r.check, nil
	case <-ctx.Done():
		go func() { r := <-ch; clear(r.kwk) }()
		return nil, check, ctx.Err()
	}
}

func infoKWK(volume [keys.IDSize]byte) []byte {
	return keys.AppendLP(keys.AppendLP(nil, []byte(keys.LabelPassKWK)), volume[:])
}

func infoCheck(volume [keys.IDSize]byte) []byte {
	return keys.AppendLP(keys.AppendLP(nil, []byte(keys.LabelPassCheck)), volume[:])
}

func newProvider(volume [keys.IDSize]byte, kwk []byte) (*Provider, error) {
	gcm, err := newGCM(kwk)
	if err != nil {
		clear(kwk)
		return nil, err
	}
	return &Provider{volume: volume, rand: rand.Reader, kwk: kwk, kwkGC: gcm, keks: map[keys.KEKRef]*softkek.KEK{}}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	a, err := secmem.NewAESGCM(key)
	if err != nil {
		return nil, fmt.Errorf("passphrase: %w", err)
	}
	return a, nil
}

// Kind returns "passphrase".
func (p *Provider) Kind() string { return Kind }

// CreateKEK makes a random KEK version and returns its sealed material (MaterialSize bytes)
// for the catalog. The version is loaded.
func (p *Provider) CreateKEK(ctx context.Context, ref keys.KEKRef) ([]byte, error) {
	if err := ref.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		return nil, keys.ErrWiped
	}
	if _, ok := p.keks[ref]; ok {
		return nil, fmt.Errorf("passphrase: create KEK %s: version already exists", ref)
	}
	raw := make([]byte, softkek.Size)
	if _, err := io.ReadFull(p.rand, raw); err != nil {
		return nil, fmt.Errorf("passphrase: create KEK %s: random: %w", ref, err)
	}
	material, err := p.sealLocked(p.kwkGC, ref, raw)
	if err != nil {
		clear(raw)
		return nil, err
	}
	k, err := softkek.New(raw)
	if err != nil {
		clear(raw)
		return nil, err
	}
	p.keks[ref] = k
	return material, nil
}

func (p *Provider) sealLocked(gcm cipher.AEAD, ref keys.KEKRef, raw []byte) ([]byte, error) {
	nonce := make([]byte, nonceSize)
	if _, err := io.ReadFull(p.rand, nonce); err != nil {
		return nil, fmt.Errorf("passphrase: seal KEK %s: random: %w", ref, err)
	}
	out := make([]byte, 0, MaterialSize)
	out = append(out, materialVersion)
	out = append(out, nonce...)
	return gcm.Seal(out, nonce, raw, keys.PassphraseKEKAAD(p.volume, ref)), nil
}

// openMaterial unseals a material with gcm; the caller owns (and zeroes) the result.
func (p *Provider) openMaterial(gcm cipher.AEAD, ref keys.KEKRef, material []byte) ([]byte, error) {
	if len(material) != MaterialSize || material[0] != materialVersion {
		return nil, keys.Errorf(keys.ErrUnwrap, "passphrase: KEK %s material is malformed (%d bytes)", ref, len(material))
	}
	raw, err := gcm.Open(nil, material[1:1+nonceSize], material[1+nonceSize:], keys.PassphraseKEKAAD(p.volume, ref))
	if err != nil {
		return nil, keys.Errorf(keys.ErrUnwrap, "passphrase: KEK %s material does not open: tampered, or not this volume's or version's", ref)
	}
	return raw, nil
}

// Load unseals a stored KEK version. The passphrase was already verified by Open, so a
// failure here means the material was tampered with (ErrUnwrap).
func (p *Provider) Load(ref keys.KEKRef, material []byte) error {
	if err := ref.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		return keys.ErrWiped
	}
	if _, ok := p.keks[ref]; ok {
		return nil
	}
	raw, err := p.openMaterial(p.kwkGC, ref, material)
	if err != nil {
		return err
	}
	k, err := softkek.New(raw)
	if err != nil {
		clear(raw)
		return err
	}
	p.keks[ref] = k
	return nil
}

func (p *Provider) kek(ref keys.KEKRef) (*softkek.KEK, error) {
	if p.wiped {
		return nil, keys.ErrWiped
	}
	k, ok := p.keks[ref]
	if !ok {
		return nil, keys.Errorf(keys.ErrKEKMissing, "passphrase: KEK %s is not loaded (destroyed, or its material was not given)", ref)
	}
	return k, nil
}

// use runs f with version ref's KEK under the read lock, after checking ctx.
func (p *Provider) use(ctx context.Context, ref keys.KEKRef, f func(*softkek.KEK) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	k, err := p.kek(ref)
	if err != nil {
		return err
	}
	return f(k)
}

// Seal is AES-256-GCM with the version's AES key.
func (p *Provider) Seal(ctx context.Context, ref keys.KEKRef, iv, plaintext, aad []byte) (out []byte, err error) {
	err = p.use(ctx, ref, func(k *softkek.KEK) error {
		if out, err = k.Seal(iv, plaintext, aad); err != nil {
			return fmt.Errorf("passphrase: seal with KEK %s: %w", ref, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Open reverses Seal: ErrUnwrap if authentication fails.
func (p *Provider) Open(ctx context.Context, ref keys.KEKRef, iv, ciphertext, aad []byte) (out []byte, err error) {
	err = p.use(ctx, ref, func(k *softkek.KEK) error {
		out, err = k.Open(iv, ciphertext, aad)
		if errors.Is(err, softkek.ErrAuth) {
			return keys.Errorf(keys.ErrUnwrap, "passphrase: KEK %s: authentication failed (wrong key or tampered record)", ref)
		}
		if err != nil {
			return fmt.Errorf("passphrase: open with KEK %s: %w", ref, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// MAC is HMAC-SHA256 with the version's HMAC key.
func (p *Provider) MAC(ctx context.Context, ref keys.KEKRef, msg []byte) (out []byte, err error) {
	err = p.use(ctx, ref, func(k *softkek.KEK) error {
		out, err = k.MAC(msg)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DestroyKEK forgets the version (zeroing it). The catalog must delete its material for the
// destruction to be real.
func (p *Provider) DestroyKEK(ctx context.Context, ref keys.KEKRef) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		return keys.ErrWiped
	}
	if k, ok := p.keks[ref]; ok {
		k.Wipe()
		delete(p.keks, ref)
	}
	return nil
}

// Wipe zeroes the KWK and every KEK; the provider is unusable afterwards.
func (p *Provider) Wipe() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ref, k := range p.keks {
		k.Wipe()
		delete(p.keks, ref)
	}
	clear(p.kwk)
	p.kwk, p.kwkGC = nil, nil
	p.wiped = true
	return nil
}

// ChangePassphrase is ChangePassphraseContext without a way to give up.
func (p *Provider) ChangePassphrase(newPass []byte, cost Cost, materials map[keys.KEKRef][]byte) (Params, map[keys.KEKRef][]byte, error) {
	return p.ChangePassphraseContext(context.Background(), newPass, cost, materials)
}

// ChangePassphraseContext re-seals every stored KEK material under a key derived from newPass
// (fresh salt, the given cost) — for coffer passwd. It returns ctx's error as soon as ctx ends
// during the derivation (see OpenContext), changing nothing. materials must hold every version the catalog
// has (loaded or not); each is opened with the current passphrase, so a tampered one fails
// the whole change (ErrUnwrap) and nothing changes. On success the provider switches to the
// new key and the caller stores the new Params and materials in ONE transaction; if that
// fails, Wipe this provider and Open again with the old passphrase.
func (p *Provider) ChangePassphraseContext(ctx context.Context, newPass []byte, cost Cost, materials map[keys.KEKRef][]byte) (Params, map[keys.KEKRef][]byte, error) {
	if err := cost.Validate(); err != nil {
		return Params{}, nil, err
	}
	params := Params{Cost: cost}
	if _, err := io.ReadFull(p.rand, params.Salt[:]); err != nil {
		return Params{}, nil, fmt.Errorf("passphrase: random: %w", err)
	}
	newKWK, check, err := derive(ctx, newPass, p.volume, params)
	if err != nil {
		return Params{}, nil, err
	}
	params.Check = check
	newGC, err := newGCM(newKWK)
	if err != nil {
		clear(newKWK)
		return Params{}, nil, err
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		clear(newKWK)
		return Params{}, nil, keys.ErrWiped
	}
	out := make(map[keys.KEKRef][]byte, len(materials))
	for _, ref := range sortedRefs(materials) {
		raw, err := p.openMaterial(p.kwkGC, ref, materials[ref])
		if err != nil {
			clear(newKWK)
			return Params{}, nil, fmt.Errorf("passphrase: change passphrase: %w", err)
		}
		sealed, err := p.sealLocked(newGC, ref, raw)
		clear(raw)
		if err != nil {
			clear(newKWK)
			return Params{}, nil, err
		}
		out[ref] = sealed
	}
	clear(p.kwk)
	p.kwk, p.kwkGC = newKWK, newGC
	return params, out, nil
}

// sortedRefs orders refs so ChangePassphrase consumes randomness deterministically (vectors).
func sortedRefs(m map[keys.KEKRef][]byte) []keys.KEKRef {
	refs := slices.Collect(maps.Keys(m))
	slices.SortFunc(refs, func(a, b keys.KEKRef) int {
		return cmp.Or(strings.Compare(a.Chain, b.Chain), cmp.Compare(a.Version, b.Version))
	})
	return refs
}
