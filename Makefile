# atorrent: the usual entry points. `make test` is the README's one test command and what CI
# runs: it installs the peer programs the integration tests use (scripts/setup.sh, a no-op when
# they are present), checks formatting and lints, then runs every test.

CARGO ?= cargo

.PHONY: all build test lint demo fuzz crash-test soak bench bench-ctl bench-crypto bench-limits bench-seeders \
	bench-files bench-seed bench-sha1 bench-idle bench-memory bench-io setup cross cross-setup cross-test \
	cross-unit cross-e2e size openwrt-check

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

# The benchmark suite (scripts/bench-all.sh): every case, or those in BENCH_CASES, e.g.
# `make bench BENCH_CASES="download sha1"`. Each case also has its own target below.
bench:
	BENCH_CASES="$(BENCH_CASES)" bash scripts/bench-all.sh

bench-seeders:
	bash scripts/bench-seeders.sh

bench-files:
	bash scripts/bench-files.sh

bench-seed:
	bash scripts/bench-seed.sh

bench-sha1:
	bash scripts/bench-sha1.sh

bench-idle:
	bash scripts/bench-idle.sh

# `atorrent list` round-trip (p50/p99/max) while the daemon downloads at full speed.
bench-ctl:
	bash scripts/bench-ctl.sh

bench-limits:
	bash scripts/bench-limits.sh

# Throughput and CPU cost of peer encryption (RC4 vs plaintext), atorrent to atorrent.
bench-crypto:
	bash scripts/bench-crypto.sh

# Peak RSS downloading a 64 MiB and a 4 GiB torrent from 50 loopback seeders (BENCH_BIG_MB=2048
# to halve it); needs ~8 GiB free under /var/tmp.
bench-memory: build
	bash scripts/bench-memory.sh

# Page cache left (fincore) and bytes written per payload byte after a 1 GiB download, with
# --direct-io on and off.
bench-io: build
	bash scripts/bench-io.sh

setup:
	bash scripts/setup.sh

# SIGKILL the downloading daemon at 20 random moments; checks the bytes, reports re-download.
crash-test:
	bash scripts/crash-test.sh

# Churning loopback swarm for SOAK_SECS (default 1800) sampling the daemon's RSS and fds.
soak:
	bash scripts/soak.sh

# Every cargo-fuzz target under tests/fuzz for FUZZ_SECS (60) seconds each, one after another;
# prints executions per target and fails on a crash. Needs `cargo install cargo-fuzz`.
FUZZ_SECS ?= 60
fuzz:
	FUZZ_SECS=$(FUZZ_SECS) bash scripts/fuzz.sh

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

# The OpenWrt package Makefile (cross/openwrt/atorrent) against a stand-in OpenWrt tree.
openwrt-check:
	bash cross/openwrt/check.sh mipsel
