package keyops

import (
	"coffer/fs/meta"
	"coffer/keys"
)

// refOf names catalog KEK version k as keys does.
func refOf(k meta.KEK) keys.KEKRef { return keys.KEKRef{Chain: k.Chain, Version: k.Version} }
