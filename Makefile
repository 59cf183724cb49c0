# atorrent: the usual entry points. `make test` is the README's one test command and what CI
# runs: it installs the peer programs the integration tests use (scripts/setup.sh, a no-op when
# they are present), checks formatting and lints, then runs every test.

CARGO ?= cargo

.PHONY: all build test lint demo bench bench-ctl bench-limits setup

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
	bash scripts/bench-ctl.sh

# `atorrent list` round-trip (p50/p99/max) while the daemon downloads at full speed.
bench-ctl:
	bash scripts/bench-ctl.sh

bench-limits:
	bash scripts/bench-limits.sh

setup:
	bash scripts/setup.sh
