# atorrent: the usual entry points. `make test` is the README's one test command and what CI
# runs: it installs the peer programs the integration tests use (scripts/setup.sh, a no-op when
# they are present), checks formatting and lints, then runs every test.

CARGO ?= cargo

.PHONY: all build test lint demo bench bench-crypto setup

all: build

build:
	$(CARGO) build --release

test: setup lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

demo:
	bash scripts/demo.sh

bench:
	bash scripts/bench.sh

# Throughput and CPU cost of peer encryption (RC4 vs plaintext), atorrent to atorrent.
bench-crypto:
	bash scripts/bench-crypto.sh

setup:
	bash scripts/setup.sh
