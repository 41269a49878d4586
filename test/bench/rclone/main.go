// Command bench-rclone is the rclone used by coffer's benchmarks: rclone's own command line
// (pinned by go.mod), cut down to what the benchmark runs, so it builds from the modules
// coffer already requires. It has `serve s3` (the S3 server both filesystems talk to),
// `mount2` (the crypt peer; rclone's go-fuse mount, since its bazil.org/fuse `mount` is not in
// coffer's module graph) and the local, s3 and crypt backends.
package main

import (
	_ "github.com/rclone/rclone/backend/crypt"
	_ "github.com/rclone/rclone/backend/local"
	_ "github.com/rclone/rclone/backend/s3"
	"github.com/rclone/rclone/cmd"
	_ "github.com/rclone/rclone/cmd/mount2"
	_ "github.com/rclone/rclone/cmd/obscure"
	_ "github.com/rclone/rclone/cmd/serve"
	_ "github.com/rclone/rclone/cmd/serve/s3"
	_ "github.com/rclone/rclone/cmd/version"
)

func main() { cmd.Main() }
