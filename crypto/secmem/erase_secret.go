//go:build goexperiment.runtimesecret

package secmem

import "runtime/secret"

const erasing = true

func do(f func()) { secret.Do(f) }
