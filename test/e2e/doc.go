// Package e2e holds coffer's end-to-end tests: the real coffer binary (built from
// ./cmd/coffer), real FUSE mounts through /dev/fuse, a real SoftHSM2 token per volume (or a
// passphrase: withProvider(passProvider)), and remotes that are a local folder, a real S3
// server and OpenSSH's sshd serving SFTP, both on 127.0.0.1. Everything lives in
// _test.go files; run them as root with
//
//	go test -count=1 ./test/e2e/
//
// The harness (newVolume) runs coffer init and coffer mount (in the background: it must
// return only once the mount is usable); the test process is a child subreaper, so the
// daemon is re-parented to it and its exit status is checked. Each volume's cleanup runs
// coffer unmount, checks that the daemon exited 0 and left nothing staged, then scans
// everything the daemon wrote: remote objects (contents and names), the state folder
// (staging; the catalog may hold names, nothing else), the daemon's TMPDIR and HOME, its
// logs, and COFFER_DEBUG_SEAL_LOG (no line twice, every remote object logged). Tests write
// content markers (markerPrefix...) only into file contents and use distinctive names
// (namePrefix...), so a leak is a plain substring match. A watchdog kills a stuck daemon
// and lazily unmounts, so a hung mount fails the test instead of hanging the suite.
//
// Environment knobs (all optional):
//
//	COFFER_E2E_MOUNT=plain   harness self-test: "mount" is a plain directory (no FUSE)
//	COFFER_E2E_LOG=debug     daemon log level (default info); logs are shown on failure
//	COFFER_E2E_BIN=FILE      use this coffer binary instead of building ./cmd/coffer
//	COFFER_E2E_KEEP=1        keep each test's folders (state, remote, logs) for inspection
package e2e
