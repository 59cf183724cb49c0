#!/usr/bin/env bash
# cross/size.sh [TARGET...]: prints the stripped size of each built release binary and fails
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

# stripped_size FILE: release binaries are already stripped (profile.release strip = true);
# if one is not, measure a stripped copy so the number never includes symbols.
stripped_size() {
  local f=$1
  if file -b "$f" | grep -q 'not stripped'; then
    local tmp
    tmp=$(mktemp)
    .venv-zig/bin/python3 -m ziglang objcopy --strip-all "$f" "$tmp"
    stat -c %s "$tmp"
    rm -f "$tmp"
  else
    stat -c %s "$f"
  fi
}

targets=("$@")
if ((${#targets[@]} == 0)); then targets=("${ALL_TARGETS[@]}"); fi

fail=0
printf '%-34s %10s %9s %10s  %s\n' target bytes KiB budget status
for t in "${targets[@]}"; do
  f=$(bin "$t")
  b=$(budget "$t")
  if [ ! -f "$f" ]; then
    status="not built (make cross TARGET=$t)"
    if [ -n "$b" ]; then status="FAIL: $status"; fail=1; fi
    printf '%-34s %10s %9s %10s  %s\n' "$t" - - "${b:--}" "$status"
    continue
  fi
  n=$(stripped_size "$f")
  status=ok
  if [ -n "$b" ] && ((n > b)); then
    status="FAIL: over budget by $((n - b)) bytes"
    fail=1
  fi
  printf '%-34s %10d %9.1f %10s  %s\n' "$t" "$n" "$(echo "$n / 1024" | bc -l)" "${b:--}" "$status"
done
exit $fail
