#!/usr/bin/env bash
# Crash consistency (issue 7, part 6): SIGKILL a downloading daemon at CRASH_KILLS random
# moments, restart it each time, let the download finish, then check the bytes and report the
# re-download overhead (bytes the daemon downloaded across all its lives vs the torrent size).
#
# Loopback only: an opentracker and a rate-limited atorrent seeder on 127.0.x.y, the daemon
# on its own address with the DHT off. Bounded by CRASH_TIMEOUT seconds.
#
#   CRASH_KILLS=20 CRASH_SIZE_MB=48 CRASH_RATE=4M CRASH_TIMEOUT=300 scripts/crash-test.sh
#
# The daemon's `downloaded:` counter is read just before each kill (status, then kill at once),
# so the bytes of the last few milliseconds of each life are not counted: the overhead is a
# slight underestimate. Exit 0 when the copy is byte-identical, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KILLS=${CRASH_KILLS:-20}
SIZE_MB=${CRASH_SIZE_MB:-48}
RATE=${CRASH_RATE:-4M}
TIMEOUT=${CRASH_TIMEOUT:-300}
SEED=${CRASH_SEED:-$RANDOM}
BIN=${ATORRENT:-target/debug/atorrent}
[ -x "$BIN" ] || cargo build --quiet
command -v opentracker >/dev/null || { echo "crash-test: opentracker missing (scripts/setup.sh)" >&2; exit 1; }

W=$(mktemp -d /tmp/atorrent-crash.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  exec 2>/dev/null
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ]; then echo "crash-test: kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
START=$SECONDS
deadline() { ((SECONDS - START < TIMEOUT)) || { echo "crash-test: over ${TIMEOUT}s" >&2; FAILED=1; exit 1; }; }

B=$((10 + RANDOM % 200))
T_IP=127.0.$B.2 S_IP=127.0.$B.3 D_IP=127.0.$B.4
T_PORT=$(free_port $T_IP) S_PORT=$(free_port $S_IP) D_PORT=$(free_port $D_IP)

mkdir -p "$W/src" "$W/tracker" "$W/dl" "$W/state"
head -c $((SIZE_MB << 20)) /dev/urandom >"$W/src/crash.bin"
HASH=$("$BIN" create "$W/src/crash.bin" -o "$W/crash.torrent" --piece-length 262144 \
  --tracker "http://$T_IP:$T_PORT/announce" | awk '{print $1}')
SIZE=$(stat -c %s "$W/src/crash.bin")

echo "$HASH" >"$W/tracker/whitelist"
chmod 755 "$W/tracker"; chmod 644 "$W/tracker/whitelist"
opentracker -i "$T_IP" -p "$T_PORT" -d "$W/tracker" -w whitelist >"$W/tracker.log" 2>&1 &
PIDS+=($!)
wait_listening "$T_IP" "$T_PORT" 10

"$BIN" download "$W/crash.torrent" --dir "$W/src" --bind "$S_IP" --port "$S_PORT" --no-dht \
  --seed --up "$RATE" >"$W/seeder.log" 2>&1 &
PIDS+=($!)
wait_line "$W/seeder.log" '^seeding ' 60 $!

CFG=$W/config.ini
cat >"$CFG" <<EOF
download_dir = $W/dl
state_dir = $W/state
log_file = $W/daemon.log
listen_port = $D_PORT
bind_address = $D_IP
enable_dht = false
enable_pex = false
enable_ipv6 = false
log_level = info
EOF
cli() { timeout 20 "$BIN" --config "$CFG" "$@"; }
DPID=
start_daemon() {
  rm -f "$W/state/control.sock"
  "$BIN" --config "$CFG" daemon >>"$W/daemon.out" 2>&1 &
  DPID=$!
  PIDS+=("$DPID")
  local end=$((SECONDS + 20))
  until [ -S "$W/state/control.sock" ] && cli list >/dev/null 2>&1; do
    ((SECONDS < end)) || { echo "crash-test: daemon did not come up" >&2; FAILED=1; exit 1; }
    sleep 0.05
  done
}
field() { awk -v k="$1:" '$1 == k {print $2; exit}'; }

start_daemon
cli start "$W/crash.torrent" >/dev/null
TOTAL=0 MID=0 LIFE_START=0
RANDOM=$SEED
for ((i = 1; i <= KILLS; i++)); do
  deadline
  # 0.2 .. 2.0 s of life
  sleep "$(printf '0.%03d' $((RANDOM % 1000)))"
  sleep "$(printf '0.%03d' $((200 + RANDOM % 800)))"
  S=$(cli status 1 2>/dev/null || true)
  STATE=$(field state <<<"$S")
  DL=$(field downloaded <<<"$S")
  kill -9 "$DPID"
  wait "$DPID" 2>/dev/null || true
  TOTAL=$((TOTAL + ${DL:-0} - LIFE_START))
  [ "$STATE" = downloading ] || [ "$STATE" = checking ] && MID=$((MID + 1))
  printf 'kill %2d: state %-11s %s%% downloaded(this life) %d\n' "$i" "${STATE:-?}" \
    "$(field percent <<<"$S" | tr -d %)" $((${DL:-0} - LIFE_START))
  start_daemon
  LIFE_START=$(cli status 1 2>/dev/null | field downloaded || echo 0)
  LIFE_START=${LIFE_START:-0}
done

until [ "$(cli status 1 | field state)" = seeding ]; do
  deadline
  sleep 0.2
done
DL=$(cli status 1 | field downloaded)
TOTAL=$((TOTAL + DL - LIFE_START))
cli shutdown >/dev/null || true
wait "$DPID" 2>/dev/null || true

if cmp -s "$W/src/crash.bin" "$W/dl/crash.bin"; then OK=identical; else OK=DIFFERENT; FAILED=1; fi
awk -v t="$TOTAL" -v s="$SIZE" -v k="$KILLS" -v m="$MID" -v secs=$((SECONDS - START)) -v ok="$OK" \
  -v seed="$SEED" 'BEGIN {
  printf "crash-test: %d kills (%d mid-download), seed %s, %d s\n", k, m, seed, secs
  printf "crash-test: torrent %d bytes, downloaded %d bytes across all lives: overhead %.1f%% (%.2f MiB)\n",
    s, t, (t - s) * 100 / s, (t - s) / 1048576
  printf "crash-test: bytes %s\n", ok
}'
[ "$OK" = identical ]
