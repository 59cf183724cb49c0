#!/usr/bin/env bash
# Runs every cargo-fuzz target under tests/fuzz in turn for FUZZ_SECS seconds each (one
# libFuzzer process, one core) and prints per-target executions and whether it crashed.
# Inputs: the committed seeds (tests/fuzz/seeds/<target>, read only; crash-* files there are
# known reproducers and must pass) plus the growing local corpus (tests/fuzz/corpus/<target>,
# not committed). Crashes land in tests/fuzz/artifacts/<target>/; the script exits 1 if any.
#
# Env: FUZZ_SECS (60), FUZZ_TARGETS (all), FUZZ_SANITIZER (address; "none" is ~2x faster),
#      FUZZ_ARGS (extra libFuzzer flags), FUZZ_TOOLCHAIN (e.g. "+nightly"; default: stable
#      with RUSTC_BOOTSTRAP=1, which cargo-fuzz's -Z flags need).
# Needs cargo-fuzz: `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${FUZZ_SECS:-60}
SAN=${FUZZ_SANITIZER:-address}
TC=${FUZZ_TOOLCHAIN:-}
DIR=tests/fuzz
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
  exit 2
fi
[ -z "$TC" ] && export RUSTC_BOOTSTRAP=1
# Default build: optimised, with debug assertions and overflow checks (arithmetic overflow on
# remote input is a bug here, so it must abort).
fuzz() { cargo $TC fuzz "$@"; }
TARGETS=${FUZZ_TARGETS:-$(fuzz list --fuzz-dir "$DIR")}

if ! fuzz build --fuzz-dir "$DIR" -s "$SAN" >"${TMPDIR:-/tmp}/atorrent-fuzz-build.log" 2>&1; then
  cat "${TMPDIR:-/tmp}/atorrent-fuzz-build.log" >&2
  exit 2
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/atorrent-fuzz.XXXXXX")
trap 'rm -rf "$logs"' EXIT
crashed=0
printf '%-13s %12s %9s %7s  %s\n' target executions exec/s corpus result
for t in $TARGETS; do
  mkdir -p "$DIR/corpus/$t" "$DIR/artifacts/$t"
  before=$(find "$DIR/artifacts/$t" -type f | wc -l)
  set +e
  # shellcheck disable=SC2086
  fuzz run --fuzz-dir "$DIR" -s "$SAN" "$t" "$DIR/corpus/$t" "$DIR/seeds/$t" -- \
    -max_total_time="$SECS" -print_final_stats=1 ${FUZZ_ARGS:-} >"$logs/$t.log" 2>&1
  rc=$?
  set -e
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$logs/$t.log" | grep -oE '[0-9]+$' | tail -1 || true)
  if [ -z "$execs" ]; then
    execs=$(grep -oE '^#[0-9]+' "$logs/$t.log" | tail -1 | tr -d '#' || true)
  fi
  rate=$(grep -oE 'exec/s: [0-9]+' "$logs/$t.log" | tail -1 | grep -oE '[0-9]+$' || true)
  corpus=$(find "$DIR/corpus/$t" -type f | wc -l)
  after=$(find "$DIR/artifacts/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]; then
    result=ok
  else
    crashed=1
    art=$(grep -oE "$DIR/artifacts/$t/[a-z]+-[0-9a-f]+" "$logs/$t.log" | tail -1 || true)
    result="CRASH (exit $rc) ${art:-see log}"
    cp "$logs/$t.log" "$DIR/artifacts/$t/last-run.log"
    grep -m1 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$logs/$t.log" | sed 's/^/    /' >&2 || true
  fi
  printf '%-13s %12s %9s %7s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done
exit "$crashed"
