package content

import (
	"encoding/hex"
	"fmt"
	"os"
	"sync"

	"coffer/crypto/format"
)

// SealLogEnv names a file to which the data path appends one line per seal,
// for end-to-end tests that check no (key, nonce) pair is ever used twice:
//
//	object <object id>                  a chunk object sealed (ids must never repeat)
//	box <staging id> <nonce hex>        a staging box sealed under that staging file's key
//
// Nothing secret is written: ids and nonces are public. Never set it in
// production: it grows without bound.
const SealLogEnv = "COFFER_DEBUG_SEAL_LOG"

type sealLog struct {
	on   bool // set once at open
	mu   sync.Mutex
	f    *os.File
	hook func(kind, value string)
}

func openSealLog(path string, hook func(kind, value string)) (*sealLog, error) {
	l := &sealLog{hook: hook}
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("content: open seal log %s (%s): %w", path, SealLogEnv, err)
		}
		l.f = f
	}
	l.on = l.f != nil || hook != nil
	return l, nil
}

func (l *sealLog) enabled() bool { return l.on }

func (l *sealLog) record(kind, value string) {
	if l.hook != nil {
		l.hook(kind, value)
	}
	l.mu.Lock()
	if l.f != nil {
		_, _ = l.f.WriteString(kind + " " + value + "\n")
	}
	l.mu.Unlock()
}

func (l *sealLog) object(id format.ID) {
	if l.enabled() {
		l.record("object", id.String())
	}
}

// box records the nonce of a freshly sealed staging box.
func (l *sealLog) box(stg format.ID, box []byte) {
	if l.enabled() && len(box) >= format.NonceSize {
		l.record("box", stg.String()+" "+hex.EncodeToString(box[:format.NonceSize]))
	}
}

func (l *sealLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		_ = l.f.Close()
		l.f = nil
	}
}
