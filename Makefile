# atorrent: the usual entry points. `make test` is what CI runs (after scripts/setup.sh,
# which installs the peer programs the integration tests use).

CARGO ?= cargo

.PHONY: all build test lint demo bench setup

all: build

build:
	$(CARGO) build --release

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

demo:
	bash scripts/demo.sh

bench:
	bash scripts/bench.sh

setup:
	bash scripts/setup.sh
