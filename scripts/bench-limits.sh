#!/usr/bin/env bash
# Bandwidth-limit benchmark: an atorrent seeder on 127.0.0.2 and an atorrent downloader on
# 127.0.0.3 limited with `--down RATE`, at several rates for LIMIT_SECS (30) each. Prints the
# achieved rate against the limit. The limit counts every byte on the peer sockets (payload
# and protocol overhead); the file is sized to take LIMIT_SECS at the limit.
#
# Env: LIMIT_RATES ("64K 1M 50M"), LIMIT_SECS (30), BENCH_DIR (TMPDIR or /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

RATES=${LIMIT_RATES:-64K 1M 50M}
SECS=${LIMIT_SECS:-30}
cargo build --release --quiet
BIN=$PWD/target/release/atorrent
work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-limits.XXXXXX")
seed_pid=""
cleanup() {
  [ -n "$seed_pid" ] && kill "$seed_pid" 2>/dev/null && wait "$seed_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

bytes_of() {
  local v=${1%B} n mult=1
  case $v in
    *K) mult=1024; n=${v%K} ;;
    *M) mult=$((1024 * 1024)); n=${v%M} ;;
    *G) mult=$((1024 * 1024 * 1024)); n=${v%G} ;;
    *) n=$v ;;
  esac
  echo $((n * mult))
}

printf '%-8s %12s %14s %14s %8s\n' limit bytes "limit B/s" "achieved B/s" ratio
for rate in $RATES; do
  limit=$(bytes_of "$rate")
  size=$((limit * SECS))
  rm -rf "$work/seed" "$work/dl"
  mkdir -p "$work/seed" "$work/dl"
  head -c "$size" /dev/urandom >"$work/seed/l.bin"
  "$BIN" create "$work/seed/l.bin" -o "$work/l.torrent" >/dev/null
  sport=$(free_port 127.0.0.2)
  "$BIN" -q download --no-dht "$work/l.torrent" --dir "$work/seed" --seed --bind 127.0.0.2 --port "$sport" \
    >"$work/seed.log" 2>&1 &
  seed_pid=$!
  wait_line "$work/seed.log" '^seeding ' 120 $seed_pid
  start=$(now)
  "$BIN" -q download --no-dht "$work/l.torrent" --dir "$work/dl" --bind 127.0.0.3 \
    --port "$(free_port 127.0.0.3)" --peer "127.0.0.2:$sport" --down "$rate" >"$work/dl.log" 2>&1
  end=$(now)
  kill "$seed_pid" 2>/dev/null || true
  wait "$seed_pid" 2>/dev/null || true
  seed_pid=""
  cmp -s "$work/seed/l.bin" "$work/dl/l.bin" || { echo "bench-limits: copy differs at $rate" >&2; exit 1; }
  python3 - "$rate" "$size" "$limit" "$start" "$end" <<'PY'
import sys
rate, size, limit, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
got = size / (end - start)
print(f"{rate:<8} {size:12d} {limit:14d} {got:14.0f} {got / limit:8.3f}")
PY
done
