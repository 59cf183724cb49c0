#!/usr/bin/env bash
# cross/test.sh [TARGET...]: runs the unit tests (`cargo test --lib`) for each target under its
# qemu runner (.cargo/config.toml), built with the optimised test-opt profile. Default: armv7,
# mipsel and mips (big-endian: where byte-order bugs show). Extra libtest arguments can be
# passed in CROSS_TEST_ARGS (e.g. a test name filter). Exits 1 if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh

targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(armv7-unknown-linux-musleabihf mipsel-unknown-linux-musl mips-unknown-linux-musl)
fi

fail=0
summary=()
for t in "${targets[@]}"; do
  runner "$t" >/dev/null
  echo "cross/test: unit tests for $t"
  t0=$SECONDS
  # shellcheck disable=SC2086 # CROSS_TEST_ARGS is a word list
  if bash cross/build.sh test "$t" --lib --profile test-opt -- ${CROSS_TEST_ARGS:-}; then
    summary+=("$(printf '%-32s ok   %4ss' "$t" $((SECONDS - t0)))")
  else
    summary+=("$(printf '%-32s FAIL %4ss' "$t" $((SECONDS - t0)))")
    fail=1
  fi
done
for s in "${summary[@]}"; do echo "cross/test: $s"; done
exit $fail
