//go:build !goexperiment.runtimesecret

package secmem

const erasing = false

func do(f func()) { f() }
