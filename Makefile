# Axon developer entry points. `make test` is the project's test command
# (README, .ci/run).

GO      ?= go
BIN     ?= bin/axon
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Extra arguments for `make run`, e.g. make run ARGS='--backend memory'.
ARGS    ?=

.PHONY: build test bench lint run clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/axon

test:
	$(GO) vet ./... && $(GO) test -count=1 -timeout 25m ./...

bench:
	$(GO) test -run XXX -bench . ./...

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi
	$(GO) vet ./...

run: build
	./$(BIN) serve $(ARGS)

clean:
	rm -rf bin

# Benchmark Axon (Badger, fsync on) against a real etcd and the null server
# on loopback: writes bench-results/report.html and prints the table. Knobs:
# BENCH_DURATION per timed step, BENCH_OBJECTS for the memory step,
# BENCH_SCALE_OBJECTS for the scale step (default 1000000),
# BENCH_SUITE (standard, quick, full), BENCH_STEPS (e.g. create,list),
# BENCH_WATCHERS, BENCH_WATCH_RATE, BENCH_OUT. See benchmark/README.md.
.PHONY: bench-compare
bench-compare: build
	GO='$(GO)' BENCH_AXON_BIN='$(BIN)' bash benchmark/scripts/bench-compare.sh

# End-to-end: kube-apiserver's storage test suite against Axon (a real etcd
# as the control), then a real kube-apiserver (built from deploy/e2e's module
# into deploy/e2e/.bin) on Axon under a client-go workload. E2E_PROFILE=ci
# runs the CI-sized workload; E2E_PARTS=storage or kube runs one part. See
# deploy/e2e/README.md.
.PHONY: e2e
e2e:
	GO='$(GO)' deploy/e2e/run.sh

# A build with the gofail failpoints enabled (docs/failpoints.md), made on a
# temporary copy of the tree so the sources keep their inert comments.
# Control it at run time with GOFAIL_HTTP=host:port or GOFAIL_FAILPOINTS.
.PHONY: build-failpoints
build-failpoints:
	GO='$(GO)' scripts/failpoints.sh build bin/axon-failpoints

# Robustness test (tests/robustness): Kubernetes-shaped traffic against a
# failpoint build of `axon serve`, each failpoint crashed, stalled and
# errored in turn, history checked after every run. ROBUSTNESS_PROFILE=short
# (default, CI, a few minutes) or long; ROBUSTNESS_DURATION sets the traffic
# time of each run (e.g. 30s).
ROBUSTNESS_PROFILE ?= short
.PHONY: robustness
robustness: build-failpoints
	AXON_FAILPOINTS_BIN=$(CURDIR)/bin/axon-failpoints ROBUSTNESS_PROFILE=$(ROBUSTNESS_PROFILE) \
		$(GO) test -count=1 -timeout 120m -v ./tests/robustness/

# The tests that need failpoints compiled in (build tag failpoints): the
# follower-apply and step-down failpoints on three nodes over mock TiKV, and
# snapshot restore failing and crashing midway.
.PHONY: failpoints-test
failpoints-test:
	GO='$(GO)' scripts/failpoints.sh test

# Power-loss test: axon on a FUSE file system (internal/lazyfs) that keeps
# only what was fsynced, power cut at random moments under load, restarted
# and checked. Needs /dev/fuse and fusermount3 (apt-get install fuse3); it
# skips without them. POWERLOSS_CYCLES (default 10; 100 for a long run),
# POWERLOSS_STRICT=1 for strict POSIX directory semantics, POWERLOSS_SEED
# to repeat a run. See tests/powerloss.
.PHONY: powerloss
powerloss:
	$(GO) test -count=1 ./internal/lazyfs
	$(GO) test -count=1 -timeout 60m -v -run 'TestPowerLoss|TestBadgerFlushPowerLoss' ./tests/powerloss
