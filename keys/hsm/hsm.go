// Package hsm is the PKCS#11 KEK provider: every KEK version is a pair of non-extractable
// secret keys generated inside the token (AES-256 for sealing DEKs with AES-GCM, a 256-bit
// generic secret for HMAC-SHA256 derivation), found again by label. Key bytes never enter
// this process; only DEKs do.
//
// It talks to the token through github.com/ThalesIgnite/crypto11 v1.2.5; everything that
// depends on that library is in this file and errors.go, so moving to a fork is local.
//
// Limits inherited from crypto11 v1.2.5 / PKCS#11 (coffer opens one provider per process):
//   - a failed New (wrong PIN, unknown token) finalizes the module for the whole process,
//     invalidating other providers open on the same module;
//   - PKCS#11 login is per process and token: a second provider for a token that is already
//     logged in is accepted without its PIN being checked;
//   - the PIN is handed to crypto11 as a Go string. New builds that string over its own copy
//     of the PIN bytes and zeroes them right after login, so no intact copy stays on the Go
//     heap; the C copy made by the binding is freed without zeroing (set MALLOC_PERTURB_ to
//     have glibc overwrite freed memory).
package hsm

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unsafe"

	"github.com/ThalesIgnite/crypto11"
	"github.com/miekg/pkcs11"

	"coffer/crypto/secmem"
	"coffer/keys"
)

// Kind is the provider kind stored in the catalog.
const Kind = "pkcs11"

// Label suffixes of a KEK version's two objects (see keys.HSMLabel).
const (
	KindAES  = "aes"
	KindHMAC = "hmac"
)

// Config says which token to use and for which volume.
type Config struct {
	Module string   // path of the PKCS#11 module (.so)
	Token  string   // token label
	PIN    []byte   // user PIN; New does not keep or modify it (the caller zeroes it)
	Volume [16]byte // volume id, part of every key label
	// MaxSessions bounds the PKCS#11 sessions (default 16; at least 2).
	MaxSessions int
	// SessionWait bounds the wait for a free session (default 30 s).
	SessionWait time.Duration
	// CloseTimeout bounds how long Wipe waits for the module to close (default 10 s).
	CloseTimeout time.Duration
}

// Provider implements keys.Provider on a PKCS#11 token.
type Provider struct {
	module, token string
	volume        [16]byte
	closeTimeout  time.Duration

	mu        sync.RWMutex
	c11       *crypto11.Context
	keks      map[keys.KEKRef]*kek
	wiped     bool
	c11Closed bool // set by tests that close the context underneath the provider
}

type kek struct {
	aes, hmac *crypto11.SecretKey
	gcm       cipher.AEAD
}

var _ keys.Provider = (*Provider)(nil)

// New checks the module, opens the token and logs in. Errors: keys.ErrModule (missing,
// unsafe or unloadable module), keys.ErrTokenNotFound, keys.ErrWrongPIN; none contains the
// PIN. The module is loaded only if root or the effective user owns it and every directory
// and link on its path, and none of them is writable by group or others (see modpath.go).
func New(cfg Config) (*Provider, error) {
	if cfg.Token == "" {
		return nil, errors.New("hsm: no token label given")
	}
	if len(cfg.PIN) == 0 {
		return nil, fmt.Errorf("hsm: empty PIN for token %q", cfg.Token)
	}
	module, release, err := checkModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	defer release() // after Configure: the binding has its own handle on the module by then
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = 16
	}
	if cfg.MaxSessions < 2 {
		return nil, fmt.Errorf("hsm: MaxSessions must be at least 2, got %d", cfg.MaxSessions)
	}
	if cfg.SessionWait == 0 {
		cfg.SessionWait = 30 * time.Second
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = 10 * time.Second
	}

	// crypto11 wants the PIN as a string: view our own copy as one and zero it after login.
	pin := make([]byte, len(cfg.PIN))
	copy(pin, cfg.PIN)
	c11cfg := &crypto11.Config{
		Path:            module, // the checked file, symbolic links resolved
		TokenLabel:      cfg.Token,
		Pin:             unsafe.String(&pin[0], len(pin)),
		MaxSessions:     cfg.MaxSessions,
		PoolWaitTimeout: cfg.SessionWait,
		GCMIVLength:     keys.IVSize,
	}
	c11, err := crypto11.Configure(c11cfg)
	c11cfg.Pin = "" // crypto11 keeps c11cfg; it logs in only inside Configure
	clear(pin)
	if err != nil {
		return nil, configureError(cfg.Module, cfg.Token, err)
	}
	return &Provider{
		module:       cfg.Module,
		token:        cfg.Token,
		volume:       cfg.Volume,
		closeTimeout: cfg.CloseTimeout,
		c11:          c11,
		keks:         map[keys.KEKRef]*kek{},
	}, nil
}

// Kind returns "pkcs11".
func (p *Provider) Kind() string { return Kind }

// Token returns the token label (for messages and status).
func (p *Provider) Token() string { return p.token }

// Label returns the CKA_LABEL (also used as CKA_ID) of one of ref's objects.
func (p *Provider) Label(ref keys.KEKRef, kind string) string {
	return keys.HSMLabel(p.volume, ref, kind)
}

// template is the attribute set of a new KEK object: token-resident, private, sensitive,
// non-extractable, with only the usage it needs.
func template(label string, encrypt bool) (crypto11.AttributeSet, error) {
	t, err := crypto11.NewAttributeSetWithIDAndLabel([]byte(label), []byte(label))
	if err != nil {
		return nil, err
	}
	for _, a := range []struct {
		typ crypto11.AttributeType
		v   bool
	}{
		{crypto11.CkaToken, true},
		{crypto11.CkaPrivate, true},
		{crypto11.CkaSensitive, true},
		{crypto11.CkaExtractable, false},
		{crypto11.CkaEncrypt, encrypt},
		{crypto11.CkaDecrypt, encrypt},
		{crypto11.CkaSign, !encrypt},
		{crypto11.CkaVerify, !encrypt},
		{crypto11.CkaWrap, false},
		{crypto11.CkaUnwrap, false},
		{crypto11.CkaDerive, false},
	} {
		if err := t.Set(a.typ, a.v); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// CreateKEK generates ref's AES and HMAC keys inside the token, checks that they work (seal,
// open and MAC once), and loads them. It refuses to create a version whose labels already
// exist. The material is nil: nothing needs storing.
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
	for _, kind := range []string{KindAES, KindHMAC} {
		found, err := p.findAllLocked(p.Label(ref, kind))
		if err != nil {
			return nil, fmt.Errorf("hsm: create KEK %s on token %q: %w", ref, p.token, err)
		}
		if len(found) > 0 {
			return nil, fmt.Errorf("hsm: create KEK %s on token %q: version already exists", ref, p.token)
		}
	}
	k := &kek{}
	var err error
	if k.aes, err = p.generateLocked(p.Label(ref, KindAES), crypto11.CipherAES); err != nil {
		return nil, fmt.Errorf("hsm: create KEK %s on token %q: generate AES key: %w", ref, p.token, err)
	}
	if k.hmac, err = p.generateLocked(p.Label(ref, KindHMAC), crypto11.CipherGeneric); err != nil {
		_ = k.aes.Delete()
		return nil, fmt.Errorf("hsm: create KEK %s on token %q: generate HMAC key: %w", ref, p.token, err)
	}
	if k.gcm, err = k.aes.NewGCM(); err != nil {
		_ = k.aes.Delete()
		_ = k.hmac.Delete()
		return nil, fmt.Errorf("hsm: create KEK %s on token %q: %w", ref, p.token, err)
	}
	if err := p.selfTest(k, ref); err != nil {
		_ = k.aes.Delete()
		_ = k.hmac.Delete()
		return nil, fmt.Errorf("hsm: create KEK %s on token %q: new keys fail their self-test: %w", ref, p.token, err)
	}
	p.keks[ref] = k
	return nil, nil
}

func (p *Provider) generateLocked(label string, c *crypto11.SymmetricCipher) (*crypto11.SecretKey, error) {
	t, err := template(label, c == crypto11.CipherAES)
	if err != nil {
		return nil, err
	}
	return p.c11.GenerateSecretKeyWithAttributes(t, 256, c)
}

func (p *Provider) selfTest(k *kek, ref keys.KEKRef) error {
	iv := make([]byte, keys.IVSize)
	_, _ = rand.Read(iv)
	zero := make([]byte, keys.DEKSize)
	aad := keys.SelfTestAAD(p.volume, ref)
	ct, err := seal(k.gcm, iv, zero, aad)
	if err != nil {
		return err
	}
	pt, err := k.gcm.Open(nil, iv, ct, aad)
	if err != nil {
		return err
	}
	if len(pt) != len(zero) || string(pt) != string(zero) {
		return errors.New("open returned different bytes")
	}
	mac, err := hmacSum(k.hmac, aad)
	if err != nil {
		return err
	}
	if len(mac) != keys.MACSize {
		return fmt.Errorf("HMAC returned %d bytes", len(mac))
	}
	return nil
}

// findAllLocked finds the secret keys with this label (any type).
func (p *Provider) findAllLocked(label string) ([]*crypto11.SecretKey, error) {
	return p.c11.FindKeys(nil, []byte(label))
}

// findOne finds exactly one key of the given type and label; (nil, nil) if there is none.
func (p *Provider) findOne(label string, keyType uint) (*crypto11.SecretKey, error) {
	attrs := crypto11.NewAttributeSet()
	if err := attrs.Set(crypto11.CkaLabel, []byte(label)); err != nil {
		return nil, err
	}
	if err := attrs.Set(crypto11.CkaKeyType, keyType); err != nil {
		return nil, err
	}
	found, err := p.c11.FindKeysWithAttributes(attrs)
	if err != nil {
		return nil, err
	}
	switch len(found) {
	case 0:
		return nil, nil
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%d objects labelled %q", len(found), label)
}

// Load finds ref's two keys on the token. material is ignored (nil for an HSM).
// ErrKEKMissing if either key is not there.
func (p *Provider) Load(ref keys.KEKRef, _ []byte) error {
	if err := ref.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.loadLocked(ref)
	return err
}

func (p *Provider) loadLocked(ref keys.KEKRef) (*kek, error) {
	if p.wiped {
		return nil, keys.ErrWiped
	}
	if k, ok := p.keks[ref]; ok {
		return k, nil
	}
	k := &kek{}
	var err error
	if k.aes, err = p.findOne(p.Label(ref, KindAES), pkcs11.CKK_AES); err != nil {
		return nil, p.opError("load", ref, err)
	}
	if k.hmac, err = p.findOne(p.Label(ref, KindHMAC), pkcs11.CKK_GENERIC_SECRET); err != nil {
		return nil, p.opError("load", ref, err)
	}
	if k.aes == nil || k.hmac == nil {
		return nil, keys.Errorf(keys.ErrKEKMissing,
			"hsm: KEK %s not found on token %q (destroyed, or not this volume's token)", ref, p.token)
	}
	if k.gcm, err = k.aes.NewGCM(); err != nil {
		return nil, p.opError("load", ref, err)
	}
	p.keks[ref] = k
	return k, nil
}

// use runs f with ref's keys under the read lock (Wipe waits for it), loading them first if
// needed. If the token says the key handle is gone, the cached handles are dropped.
func (p *Provider) use(ctx context.Context, ref keys.KEKRef, f func(*kek) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.RLock()
	k, ok := p.keks[ref]
	wiped := p.wiped
	p.mu.RUnlock()
	if wiped {
		return keys.ErrWiped
	}
	if !ok {
		if err := ref.Validate(); err != nil {
			return err
		}
		p.mu.Lock()
		_, err := p.loadLocked(ref)
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
	p.mu.RLock()
	if p.wiped {
		p.mu.RUnlock()
		return keys.ErrWiped
	}
	k, ok = p.keks[ref]
	if !ok { // destroyed between the load and now
		p.mu.RUnlock()
		return keys.Errorf(keys.ErrKEKMissing, "hsm: KEK %s not found on token %q (destroyed)", ref, p.token)
	}
	err := f(k)
	p.mu.RUnlock()
	if errors.Is(err, keys.ErrKEKMissing) {
		p.mu.Lock()
		if p.keks[ref] == k {
			delete(p.keks, ref)
		}
		p.mu.Unlock()
	}
	return err
}

// Seal is AES-256-GCM inside the token with ref's AES key and the caller's 12-byte IV.
func (p *Provider) Seal(ctx context.Context, ref keys.KEKRef, iv, plaintext, aad []byte) ([]byte, error) {
	if len(iv) != keys.IVSize {
		return nil, fmt.Errorf("hsm: seal with KEK %s: IV is %d bytes, want %d", ref, len(iv), keys.IVSize)
	}
	var out []byte
	err := p.use(ctx, ref, func(k *kek) error {
		var err error
		out, err = seal(k.gcm, iv, plaintext, aad)
		if err != nil {
			return p.opError("seal", ref, err)
		}
		return nil
	})
	return out, err
}

// Open reverses Seal inside the token: ErrUnwrap when authentication fails.
func (p *Provider) Open(ctx context.Context, ref keys.KEKRef, iv, ciphertext, aad []byte) ([]byte, error) {
	if len(iv) != keys.IVSize {
		return nil, keys.Errorf(keys.ErrUnwrap, "hsm: open with KEK %s: IV is %d bytes, want %d", ref, len(iv), keys.IVSize)
	}
	if len(ciphertext) < keys.TagSize {
		return nil, keys.Errorf(keys.ErrUnwrap, "hsm: open with KEK %s: ciphertext shorter than a tag", ref)
	}
	var out []byte
	err := p.use(ctx, ref, func(k *kek) error {
		var err error
		out, err = open(k.gcm, iv, ciphertext, aad)
		if err != nil {
			return p.opError("open", ref, err)
		}
		return nil
	})
	return out, err
}

// MAC is HMAC-SHA256 inside the token with ref's generic-secret key.
func (p *Provider) MAC(ctx context.Context, ref keys.KEKRef, msg []byte) ([]byte, error) {
	var out []byte
	err := p.use(ctx, ref, func(k *kek) error {
		var err error
		out, err = hmacSum(k.hmac, msg)
		if err != nil {
			return p.opError("mac", ref, err)
		}
		return nil
	})
	return out, err
}

// DestroyKEK deletes every object labelled as ref's AES or HMAC key from the token. Data
// whose keys only that version wrapped or derived becomes unrecoverable.
func (p *Provider) DestroyKEK(ctx context.Context, ref keys.KEKRef) error {
	if err := ref.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		return keys.ErrWiped
	}
	delete(p.keks, ref)
	n := 0
	for _, kind := range []string{KindAES, KindHMAC} {
		found, err := p.findAllLocked(p.Label(ref, kind))
		if err != nil {
			return p.opError("destroy", ref, err)
		}
		for _, k := range found {
			if err := k.Delete(); err != nil {
				return p.opError("destroy", ref, err)
			}
			n++
		}
	}
	if n == 0 {
		return keys.Errorf(keys.ErrKEKMissing, "hsm: destroy KEK %s: not found on token %q", ref, p.token)
	}
	return nil
}

// Wipe forgets every key handle and closes the token's sessions (logging out). It waits for
// operations in flight, but at most CloseTimeout for the module itself.
func (p *Provider) Wipe() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wiped {
		return nil
	}
	p.wiped = true
	clear(p.keks)
	if p.c11Closed {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- p.c11.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("hsm: close token %q: %v", p.token, err)
		}
		return nil
	case <-time.After(p.closeTimeout):
		slog.Warn("hsm: token did not close in time; continuing", "token", p.token, "timeout", p.closeTimeout)
		return fmt.Errorf("hsm: close token %q: timed out after %s", p.token, p.closeTimeout)
	}
}

// seal calls crypto11's Seal, which panics on PKCS#11 errors (cipher.AEAD cannot return
// one), and turns the panic into an error.
func seal(g cipher.AEAD, iv, plaintext, aad []byte) (out []byte, err error) {
	defer secmem.EraseRegisters() // the module copied key bytes through them
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, panicError(r)
		}
	}()
	return g.Seal(nil, iv, plaintext, aad), nil
}

func open(g cipher.AEAD, iv, ciphertext, aad []byte) (out []byte, err error) {
	defer secmem.EraseRegisters() // the module copied key bytes through them
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, panicError(r)
		}
	}()
	return g.Open(nil, iv, ciphertext, aad)
}

// hmacSum computes HMAC-SHA256 inside the token. crypto11's Sum panics on errors.
func hmacSum(key *crypto11.SecretKey, msg []byte) (out []byte, err error) {
	defer secmem.EraseRegisters() // the module copied key bytes through them
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, panicError(r)
		}
	}()
	h, err := key.NewHMAC(pkcs11.CKM_SHA256_HMAC, 0)
	if err != nil {
		return nil, err
	}
	if _, err := h.Write(msg); err != nil {
		// Sum releases the session crypto11 holds for h (it may panic; recovered above).
		h.Sum(nil)
		return nil, err
	}
	return h.Sum(nil), nil
}

func panicError(r any) error {
	if err, ok := r.(error); ok {
		return err
	}
	return fmt.Errorf("%v", r)
}
