#!/usr/bin/env bash
# make bench: coffer side by side with gocryptfs (same disk) and with an rclone crypt mount
# (same S3 server on 127.0.0.1), and the cost of catalog replication (coffer on that S3 server
# mounted normally vs with --no-replica, paired runs in flipping order). Builds coffer, the
# benchmark driver and rclone (from the pin in go.mod, through the small module in
# test/bench/rclone), then runs the driver as root.
# Knobs (environment): COFFER_BENCH_QUICK=1 (small sizes, 1 run, README untouched),
# COFFER_BENCH_REPS, COFFER_BENCH_S3_REPS, COFFER_BENCH_REPLICA_REPS (REPS, rounded up to even),
# COFFER_BENCH_SIZE (1G), COFFER_BENCH_MEM_SIZE (10G), COFFER_BENCH_RAND_SECONDS,
# COFFER_BENCH_FILES, COFFER_BENCH_TREE, COFFER_BENCH_CACHE (256M),
# COFFER_BENCH_ONLY=local,s3,mem,replica (a run of replica alone rewrites only its README
# section), COFFER_BENCH_DIR (/var/tmp), COFFER_BENCH_KEEP=1.
# COFFER_DEBUG_CPUPROFILE=/tmp/coffer-%p.cpu (and _HEAPPROFILE, _MUTEXPROFILE) reach the
# coffer daemons: one profile per mount (%p = daemon pid), written at unmount.
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
mkdir -p bin

# test/bench/rclone is its own module so that `go vet ./...` of coffer never sees it; it must
# pin the same rclone as coffer.
want=$(grep -E '^\s*github.com/rclone/rclone v' go.mod | awk '{print $2}')
have=$(grep -E '^\s*github.com/rclone/rclone v' test/bench/rclone/go.mod | awk '{print $2}')
if [ "$want" != "$have" ]; then
	echo "coffer-bench: test/bench/rclone/go.mod pins rclone $have, go.mod $want: make them equal" >&2
	exit 1
fi

# The revision measured is the one built now (the tree may move during a long run).
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || rev="$rev (with uncommitted changes)"
$GO build -o bin/coffer ./cmd/coffer
$GO build -o bin/coffer-bench ./test/bench/cmd/coffer-bench
(cd test/bench/rclone && $GO build -o ../../../bin/bench-rclone .)

args=(-coffer bin/coffer -rclone bin/bench-rclone -command "make bench" -rev "$rev")
[ "${COFFER_BENCH_QUICK:-}" = 1 ] || args+=(-readme README.md)
exec bin/coffer-bench "${args[@]}"
