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
