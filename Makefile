# coffer — see README.md. Every target installs what it needs (test/deps.sh) on Debian 12.
GO      ?= go
PYTHON  ?= /usr/bin/python3
BIN     := bin/coffer
export PATH := $(PATH):/usr/local/go/bin
# runtime/secret: key schedules and stack copies of keys are erased (SECURITY.md, "Wipe").
export GOEXPERIMENT := runtimesecret

# Fuzz targets run briefly by `make test` (package:target:executions), about 4 s each here.
# A count, not a duration: Go 1.26's coordinator can fail a target with a bare "context
# deadline exceeded" when a duration -fuzztime expires (go.dev/issue/75804, fixed in 1.27).
FUZZ := $(addprefix ./crypto/format:,FuzzParseID:300000 FuzzHeader:300000 FuzzOpenBlock:300000 \
	FuzzOpenRange:300000 FuzzOpenChunk:10000 FuzzOpenBox:300000 FuzzLayout:300000 \
	FuzzOpenReplica:80000) \
	./fs/replica:FuzzReadCommitted:120000

.PHONY: all build deps demo test check unit vectors fuzz bench bench-go clean

all: build

deps:
	@test/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/coffer

demo: deps build
	@test/demo.sh

test: deps check unit vectors fuzz
	@echo "make test: all checks passed"

check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 40m ./...

vectors:
	$(PYTHON) test/format/decode.py
	$(PYTHON) test/format/decode_keys.py

fuzz:
	@set -e; log=$$(mktemp); for t in $(FUZZ); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$${rest#*:}; \
		echo "fuzz $$pkg $$name ($$n executions)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $${n}x $$pkg >$$log 2>&1 || \
			{ cat $$log; rm -f $$log; exit 1; }; \
	done; rm -f $$log

# Side by side with gocryptfs (same disk) and an rclone crypt mount (same S3 server): medians,
# spread and ratios, written into README.md. COFFER_BENCH_QUICK=1 for a short smoke run.
bench:
	@COFFER_BENCH=1 test/deps.sh
	test/bench/run.sh

# Go micro-benchmarks of the parts: block crypto beside raw AES-GCM, HSM wraps, catalog,
# data path, remote, rotation.
bench-go: deps
	$(GO) test -run '^$$' -bench . -benchtime 1s ./crypto/format ./keys/hsm ./keys/passphrase ./fs/meta ./fs/content ./remote
	$(GO) test -run '^$$' -bench Rotation -benchtime 1x ./fs/keyops

clean:
	rm -rf bin .demo
