#!/usr/bin/env bash
# Demo: one atorrent seeds a random file on 127.0.0.2, another downloads it on 127.0.0.3 by
# dialling the seeder (--peer), and both copies are checked with sha256.
# DEMO_SIZE_MB (default 64) sets the file size; DEMO_TIMEOUT (default 300) bounds the download.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${DEMO_SIZE_MB:-64}
TIMEOUT=${DEMO_TIMEOUT:-300}
SEED_IP=127.0.0.2
DL_IP=127.0.0.3

cargo build --release --quiet
BIN=$PWD/target/release/atorrent

work=$(mktemp -d "${TMPDIR:-/tmp}/atorrent-demo.XXXXXX")
seed_pid=""
cleanup() {
  if [ -n "$seed_pid" ] && kill -0 "$seed_pid" 2>/dev/null; then
    kill "$seed_pid" 2>/dev/null || true
    wait "$seed_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/seed" "$work/dl"
bytes=$((SIZE_MB * 1024 * 1024 + 4321)) # an odd size: the last piece is short
head -c "$bytes" /dev/urandom >"$work/seed/demo.bin"

"$BIN" create "$work/seed/demo.bin" -o "$work/demo.torrent"
[ -s "$work/demo.torrent" ] || { echo "demo: atorrent create wrote no torrent" >&2; exit 1; }
echo "== atorrent info"
"$BIN" info "$work/demo.torrent"

seed_port=$(free_port $SEED_IP)
dl_port=$(free_port $DL_IP)

echo "== seeding on $SEED_IP:$seed_port"
"$BIN" download --no-dht "$work/demo.torrent" --dir "$work/seed" --bind $SEED_IP --port "$seed_port" \
  --seed >"$work/seed.out" 2>"$work/seed.err" &
seed_pid=$!
if ! wait_line "$work/seed.out" '^seeding ' 120 "$seed_pid"; then
  tail -20 "$work/seed.err" >&2
  exit 1
fi

echo "== downloading on $DL_IP:$dl_port from $SEED_IP:$seed_port"
t0=$(now)
rc=0
timeout "$TIMEOUT" "$BIN" download --no-dht "$work/demo.torrent" --dir "$work/dl" --bind $DL_IP \
  --port "$dl_port" --peer "$SEED_IP:$seed_port" >"$work/dl.out" 2>"$work/dl.err" || rc=$?
t1=$(now)
if [ "$rc" != 0 ]; then
  echo "download failed (exit $rc)" >&2
  tail -20 "$work/dl.err" >&2
  exit 1
fi

kill -TERM "$seed_pid"
seed_rc=0
wait "$seed_pid" || seed_rc=$?
seed_pid=""

a=$(sha256sum <"$work/seed/demo.bin" | cut -d' ' -f1)
b=$(sha256sum <"$work/dl/demo.bin" | cut -d' ' -f1)
secs=$(python3 -c "print($t1 - $t0)")
rate=$(python3 -c "print('%.1f' % ($bytes / 1e6 / max($secs, 1e-9)))")

echo "== report"
printf '  size        %d bytes (%d MiB)\n' "$bytes" "$SIZE_MB"
printf '  time        %.2f s\n' "$secs"
printf '  rate        %s MB/s\n' "$rate"
printf '  seed sha256 %s\n' "$a"
printf '  dl   sha256 %s\n' "$b"
printf '  downloader  %s\n' "$(tail -1 "$work/dl.out")"
printf '  seeder exit %s on SIGTERM\n' "$seed_rc"
if [ "$a" != "$b" ]; then
  echo "FAIL: the copies differ" >&2
  exit 1
fi
echo "OK: identical copies"
