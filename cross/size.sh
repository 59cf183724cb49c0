#!/usr/bin/env bash
# cross/size.sh [TARGET...]: prints the built and the stripped size of each built release binary and fails
# when a budgeted target is over its budget (or was not built). Default: every target.
# Budgets (issue 6, with every feature in): mipsel <= 1 MiB, armv7 <= 768 KiB.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/lib.sh

budget() {
  case "$1" in
    mipsel-unknown-linux-musl) echo 1048576 ;;
    armv7-unknown-linux-musleabihf) echo 786432 ;;
    *) echo "" ;;
  esac
}

# stripped_size FILE: the size after llvm-strip. The release profile already strips
# (strip = true), but on MIPS that leaves ~100 KB of non-loaded .pdr (procedure descriptors
# from zig's musl objects) and .mdebug/.comment sections that any real strip removes; the
# budget is about what lands on flash, so measure a fully stripped copy. zig's objcopy cannot
# strip MIPS, so this needs llvm-strip (cross/setup.sh installs it).
stripped_size() {
  local tmp
  tmp=$(mktemp)
  llvm-strip -o "$tmp" "$1"
  stat -c %s "$tmp"
  rm -f "$tmp"
}

command -v llvm-strip >/dev/null || { echo "cross/size: llvm-strip missing; run cross/setup.sh" >&2; exit 2; }

targets=("$@")
if ((${#targets[@]} == 0)); then targets=("${ALL_TARGETS[@]}"); fi

fail=0
printf '%-34s %10s %10s %9s %10s  %s\n' target built stripped KiB budget status
for t in "${targets[@]}"; do
  f=$(bin "$t")
  b=$(budget "$t")
  if [ ! -f "$f" ]; then
    status="not built (make cross TARGET=$t)"
    if [ -n "$b" ]; then status="FAIL: $status"; fail=1; fi
    printf '%-34s %10s %10s %9s %10s  %s\n' "$t" - - - "${b:--}" "$status"
    continue
  fi
  n=$(stripped_size "$f")
  status=ok
  if [ -n "$b" ] && ((n > b)); then
    status="FAIL: over budget by $((n - b)) bytes"
    fail=1
  fi
  printf '%-34s %10d %10d %9.1f %10s  %s\n' "$t" "$(stat -c %s "$f")" "$n" "$(echo "$n / 1024" | bc -l)" "${b:--}" "$status"
done
exit $fail
