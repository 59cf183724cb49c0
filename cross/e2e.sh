#!/usr/bin/env bash
# cross/e2e.sh [TARGET...]: for each target, the emulated release atorrent
# (target/TARGET/release/atorrent under its qemu runner) downloads a ~4 MiB torrent on
# loopback from a NATIVE atorrent seeder (target/release/atorrent), and the bytes are compared
# with cmp. Default: every target. Build first: `make build cross`.
# E2E_SIZE_KB (default 4096, plus an odd tail so the last piece is short) and E2E_TIMEOUT
# (seconds per download, default 180) tune it; E2E_KEEP=1 keeps the work directory and logs.
# Prints one line per target with the downloader's last output line; exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
. cross/lib.sh

SIZE_KB=${E2E_SIZE_KB:-4096}
TIMEOUT=${E2E_TIMEOUT:-180}
SEED_IP=127.0.0.2
DL_IP=127.0.0.3
NATIVE=$PWD/target/release/atorrent

targets=("$@")
if ((${#targets[@]} == 0)); then targets=("${ALL_TARGETS[@]}"); fi

[ -x "$NATIVE" ] || { echo "cross/e2e: $NATIVE missing; run make build" >&2; exit 2; }
for t in "${targets[@]}"; do
  runner "$t" >/dev/null
  [ -x "$(bin "$t")" ] || { echo "cross/e2e: $(bin "$t") missing; run make cross TARGET=$t" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/atorrent-cross-e2e.XXXXXX")
seed_pid=""
cleanup() {
  if [ -n "$seed_pid" ] && kill -0 "$seed_pid" 2>/dev/null; then
    kill "$seed_pid" 2>/dev/null || true
    wait "$seed_pid" 2>/dev/null || true
  fi
  if [ "${E2E_KEEP:-}" = 1 ]; then
    echo "cross/e2e: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

mkdir -p "$work/seed"
head -c $((SIZE_KB * 1024 + 4321)) /dev/urandom >"$work/seed/payload.bin"
"$NATIVE" create "$work/seed/payload.bin" -o "$work/t.torrent" >/dev/null

# One native seeder serves every target in turn.
seed_port=$(free_port $SEED_IP)
"$NATIVE" download --no-dht "$work/t.torrent" --dir "$work/seed" --seed --bind $SEED_IP \
  --port "$seed_port" >"$work/seed.out" 2>"$work/seed.err" &
seed_pid=$!
if ! wait_line "$work/seed.out" '^seeding ' 60 "$seed_pid"; then
  tail -20 "$work/seed.err" >&2
  exit 1
fi
echo "cross/e2e: native seeder on $SEED_IP:$seed_port, payload $(stat -c %s "$work/seed/payload.bin") bytes"

fail=0
for t in "${targets[@]}"; do
  dl=$work/dl-$t
  mkdir -p "$dl"
  port=$(free_port $DL_IP)
  # shellcheck disable=SC2046 # the runner is a command prefix: split it into words
  set -- $(runner "$t") "$PWD/$(bin "$t")"
  t0=$(now)
  rc=0
  timeout "$TIMEOUT" "$@" download --no-dht "$work/t.torrent" --dir "$dl" --bind $DL_IP --port "$port" \
    --peer "$SEED_IP:$seed_port" >"$work/$t.out" 2>"$work/$t.err" || rc=$?
  secs=$(python3 -c "print('%.1f' % ($(now) - $t0))")
  if [ "$rc" = 0 ] && cmp -s "$work/seed/payload.bin" "$dl/payload.bin"; then
    printf 'cross/e2e: %-32s ok   %5ss  %s\n' "$t" "$secs" "$(grep -a "^complete" "$work/$t.out" | tail -1)"
  else
    why="exit $rc"
    if [ "$rc" = 124 ]; then why="timed out after ${TIMEOUT}s"; fi
    if [ "$rc" = 0 ]; then why="bytes differ: $(cmp "$work/seed/payload.bin" "$dl/payload.bin" 2>&1 | head -1)"; fi
    printf 'cross/e2e: %-32s FAIL %5ss (%s)\n' "$t" "$secs" "$why"
    tail -15 "$work/$t.err" | sed 's/^/    /' >&2
    fail=1
  fi
  rm -rf "$dl"
done
if ! kill -0 "$seed_pid" 2>/dev/null; then
  echo "cross/e2e: the native seeder died" >&2
  tail -15 "$work/seed.err" >&2
  fail=1
fi
exit $fail
