package format

import (
	"errors"
	"fmt"
)

// ErrAuth is matched (errors.Is) by every failure caused by the stored bytes:
// a flipped bit, a swapped, reordered, truncated or rolled-back block or
// object, a tampered header, or a wrong key or binding. Callers turn it into
// EIO and log the error, which names the object and block.
var ErrAuth = errors.New("content authentication failed")

// ErrWiped is returned by a Cipher or Box used after Wipe.
var ErrWiped = errors.New("format: key wiped")

// HeaderBlock is the Block value of an AuthError about the header.
const HeaderBlock = -1

// AuthError says which object and block failed authentication.
type AuthError struct {
	Object ID
	Block  int64 // HeaderBlock for the header
	Reason string
}

func (e *AuthError) Error() string {
	if e.Block == HeaderBlock {
		return fmt.Sprintf("format: object %s header: %s: %v", e.Object, e.Reason, ErrAuth)
	}
	return fmt.Sprintf("format: object %s block %d: %s: %v", e.Object, e.Block, e.Reason, ErrAuth)
}

// Unwrap makes errors.Is(err, ErrAuth) true.
func (e *AuthError) Unwrap() error { return ErrAuth }
