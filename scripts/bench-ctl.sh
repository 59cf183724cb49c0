#!/usr/bin/env bash
# Benchmark: control round-trip while downloading (issue 8 "control round-trip", issue 3 "Done
# when"). A private daemon (`atorrent daemon --detach`) downloads a single-file torrent (1 GiB by
# default) from one libtorrent seeder found through opentracker on loopback; meanwhile
# scripts/bench_ctl.py times `atorrent list` (the whole process, as a script pays it) and a raw
# request on the control socket, and prints p50/p99/max in ms and the download's MB/s. The copy
# is compared with the original.
#
# Env: BENCH_SIZE_MB (1024), BENCH_PIECE_KB (1024), BENCH_TIMEOUT in s (600),
#      BENCH_CTL_SAMPLES (200), BENCH_CTL_INTERVAL_MS between samples (10),
#      BENCH_PROFILE cargo profile (release), BENCH_DIR parent of the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${BENCH_SIZE_MB:-1024}
PIECE_KB=${BENCH_PIECE_KB:-1024}
TIMEOUT=${BENCH_TIMEOUT:-600}
SAMPLES=${BENCH_CTL_SAMPLES:-200}
INTERVAL_MS=${BENCH_CTL_INTERVAL_MS:-10}
PROFILE=${BENCH_PROFILE:-release}
PY=${PYTHON:-/usr/bin/python3}
LT_PEER=$PWD/tests/peers/lt_peer.py

command -v opentracker >/dev/null || { echo "bench-ctl: opentracker missing: run scripts/setup.sh" >&2; exit 1; }

BIN=$(bench_bin "$PROFILE")
echo "bench: measuring $BIN" >&2

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench-ctl.XXXXXX")
chmod 755 "$work"
pids=()
cfg=$work/config.ini
pidfile=$work/atorrent.pid
cleanup() {
  if [ -s "$pidfile" ]; then
    "$BIN" --config "$cfg" shutdown >/dev/null 2>&1 || true
    dpid=$(cat "$pidfile" 2>/dev/null || true)
    for _ in $(seq 100); do
      [ -n "$dpid" ] && kill -0 "$dpid" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$dpid" ] && kill -9 "$dpid" 2>/dev/null || true
  fi
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

TRACKER_IP=127.0.0.1
SEED_IP=127.0.0.2
DAEMON_IP=127.0.0.4
tracker_port=$(free_port $TRACKER_IP)
seed_port=$(free_port $SEED_IP)
daemon_port=$(free_port $DAEMON_IP)

echo "bench-ctl: ${SIZE_MB} MiB, ${PIECE_KB} KiB pieces, scratch $work"
mkdir -p "$work/seed" "$work/tracker" "$work/dl"
bytes=$((SIZE_MB * 1024 * 1024))
head -c "$bytes" /dev/urandom >"$work/seed/bench.bin"
"$PY" "$LT_PEER" --create "$work/seed/bench.bin" -o "$work/bench.torrent" \
  --tracker "http://$TRACKER_IP:$tracker_port/announce" --piece-length $((PIECE_KB * 1024)) \
  >"$work/create.out"
hash=$(sed -n 's/^infohash //p' "$work/create.out")

echo "$hash" >"$work/tracker/whitelist"
chmod 755 "$work/tracker"
chmod 644 "$work/tracker/whitelist"
opentracker -i $TRACKER_IP -p "$tracker_port" -d "$work/tracker" -w whitelist \
  >"$work/tracker.log" 2>&1 &
pids+=($!)
wait_listening $TRACKER_IP "$tracker_port" 10

"$PY" -u "$LT_PEER" seed --torrent "$work/bench.torrent" --dir "$work/seed" \
  --listen "$SEED_IP:$seed_port" --seed-mode --timeout $((TIMEOUT + 120)) \
  >"$work/seeder.out" 2>"$work/seeder.err" &
seed_pid=$!
pids+=($seed_pid)
wait_line "$work/seeder.out" '^ready' 60 $seed_pid

cat >"$cfg" <<INI
download_dir = $work/dl
state_dir = $work/state
log_file = $work/atorrent.log
listen_port = $daemon_port
bind_address = $DAEMON_IP
enable_dht = false
enable_ipv6 = false
INI
"$BIN" --config "$cfg" daemon --detach --pid-file "$pidfile"
sock=$("$BIN" --config "$cfg" daemon --print-config | sed -n 's/^control_socket = //p')

id=$("$BIN" --config "$cfg" start "$work/bench.torrent")
echo "bench-ctl: daemon pid $(cat "$pidfile"), torrent ID $id"
rc=0
"$PY" scripts/bench_ctl.py "$BIN" "$cfg" "$sock" "$bytes" "$SAMPLES" "$INTERVAL_MS" "$TIMEOUT" || rc=$?
if [ "$rc" = 0 ] && ! cmp -s "$work/seed/bench.bin" "$work/dl/bench.bin"; then
  echo "bench-ctl: downloaded copy differs from the original" >&2
  rc=1
fi
if [ "$rc" != 0 ]; then
  echo "bench-ctl: failed; last daemon log lines:" >&2
  tail -5 "$work/atorrent.log" >&2 || true
fi
exit "$rc"
