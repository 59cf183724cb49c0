# atorrent: the usual entry points. `make test` is what CI runs (after scripts/setup.sh,
# which installs the peer programs the integration tests use).

CARGO ?= cargo

.PHONY: all build test lint demo bench setup cross cross-setup cross-test cross-unit cross-e2e size

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

# Static musl cross-builds (cross/): `make cross` builds every target, `make cross TARGET=t`
# (or a quoted list) only those. cross-test runs the unit tests under qemu (armv7, mipsel, mips
# by default; TARGET when given) and the emulated end-to-end download for every built target.
# `make size` fails past the mipsel/armv7 budgets. cross/setup.sh installs qemu, zig, etc.
CROSS_TARGETS := x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
	armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf \
	mipsel-unknown-linux-musl mips-unknown-linux-musl
CROSS_TEST_TARGETS := armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl \
	mips-unknown-linux-musl
ifdef TARGET
CROSS_TARGETS := $(TARGET)
CROSS_TEST_TARGETS := $(TARGET)
endif

cross-setup:
	bash cross/setup.sh

cross: cross-setup
	set -e; for t in $(CROSS_TARGETS); do bash cross/build.sh $$t --release; done

cross-unit: cross-setup
	bash cross/test.sh $(CROSS_TEST_TARGETS)

cross-e2e: build cross
	bash cross/e2e.sh $(CROSS_TARGETS)

cross-test: cross-unit cross-e2e

size: cross
	bash cross/size.sh $(CROSS_TARGETS)
