#!/usr/bin/env bash
# Benchmark: one libtorrent seeder behind opentracker serves a single-file torrent (1 GiB by
# default) on loopback; atorrent, aria2c and transmission-cli download it in turn, each under
# /usr/bin/time -v. Prints wall time, MB/s, user+sys CPU seconds per GiB and peak RSS, and
# atorrent's ratio to each other client. Every copy is compared with the original.
#
# Env: BENCH_SIZE_MB (1024), BENCH_PIECE_KB (1024), BENCH_TIMEOUT per client in s (600),
#      BENCH_CLIENTS ("atorrent aria2c transmission"), BENCH_PROFILE cargo profile (release),
#      BENCH_DIR parent of the scratch dir (TMPDIR or /tmp; use a disk, not tmpfs, for 1 GiB).
# transmission never dials loopback peers learned from a tracker, so the seeder dials it, and
# its times include its 10 s rechoke pulse before the first request.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${BENCH_SIZE_MB:-1024}
PIECE_KB=${BENCH_PIECE_KB:-1024}
TIMEOUT=${BENCH_TIMEOUT:-600}
CLIENTS=${BENCH_CLIENTS:-atorrent aria2c transmission}
PROFILE=${BENCH_PROFILE:-release}
PY=${PYTHON:-/usr/bin/python3}
LT_PEER=$PWD/tests/peers/lt_peer.py
TIME=/usr/bin/time

for tool in opentracker aria2c transmission-cli; do
  command -v $tool >/dev/null || { echo "bench: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done
[ -x $TIME ] || { echo "bench: $TIME missing (package time): run scripts/setup.sh" >&2; exit 1; }

cargo build --profile "$PROFILE" --quiet
if [ "$PROFILE" = dev ]; then BIN=$PWD/target/debug/atorrent; else BIN=$PWD/target/$PROFILE/atorrent; fi

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench.XXXXXX")
chmod 755 "$work"
pids=()
cleanup() {
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
tracker_port=$(free_port $TRACKER_IP)
seed_port=$(free_port $SEED_IP)

echo "bench: ${SIZE_MB} MiB, ${PIECE_KB} KiB pieces, scratch $work"
mkdir -p "$work/seed" "$work/tracker"
bytes=$((SIZE_MB * 1024 * 1024))
head -c "$bytes" /dev/urandom >"$work/seed/bench.bin"
"$PY" "$LT_PEER" --create "$work/seed/bench.bin" -o "$work/bench.torrent" \
  --tracker "http://$TRACKER_IP:$tracker_port/announce" --piece-length $((PIECE_KB * 1024)) \
  >"$work/create.out"
hash=$(sed -n 's/^infohash //p' "$work/create.out")

# opentracker: whitelist inside its chroot; TCP only.
echo "$hash" >"$work/tracker/whitelist"
chmod 755 "$work/tracker"
chmod 644 "$work/tracker/whitelist"
opentracker -i $TRACKER_IP -p "$tracker_port" -d "$work/tracker" -w whitelist \
  >"$work/tracker.log" 2>&1 &
pids+=($!)
wait_listening $TRACKER_IP "$tracker_port" 10

# The seeder trusts the data (--seed-mode: no 1 GiB hash check) and dials whatever address is
# written to peers.txt (for transmission).
: >"$work/peers.txt"
"$PY" -u "$LT_PEER" seed --torrent "$work/bench.torrent" --dir "$work/seed" \
  --listen "$SEED_IP:$seed_port" --seed-mode --peers-file "$work/peers.txt" \
  --timeout $((TIMEOUT * 4 + 120)) >"$work/seeder.out" 2>"$work/seeder.err" &
seed_pid=$!
pids+=($seed_pid)
wait_line "$work/seeder.out" '^ready' 60 $seed_pid

results=$work/results.tsv
: >"$results"
n=3
for client in $CLIENTS; do
  n=$((n + 1))
  ip=127.0.0.$n
  port=$(free_port "$ip")
  dl=$work/dl-$client
  mkdir -p "$dl"
  tfile=$work/time-$client.txt
  log=$work/$client.log
  rc=0
  echo "bench: $client on $ip:$port ..."
  case $client in
    atorrent)
      $TIME -v -o "$tfile" timeout "$TIMEOUT" "$BIN" download --no-dht "$work/bench.torrent" --dir "$dl" \
        --bind "$ip" --port "$port" >"$log" 2>&1 || rc=$?
      ;;
    aria2c)
      $TIME -v -o "$tfile" timeout "$TIMEOUT" aria2c --no-conf=true --dir="$dl" --seed-time=0 \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=false --file-allocation=none --disable-ipv6=true \
        --interface="$ip" --listen-port="$port" --summary-interval=0 --enable-color=false \
        --console-log-level=warn "$work/bench.torrent" >"$log" 2>&1 || rc=$?
      ;;
    transmission)
      cfg=$work/transmission-config
      mkdir -p "$cfg"
      cat >"$cfg/settings.json" <<JSON
{
  "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
  "port-forwarding-enabled": false, "blocklist-enabled": false, "rpc-enabled": false,
  "ratio-limit-enabled": true, "ratio-limit": 0, "idle-seeding-limit-enabled": false,
  "peer-port": $port, "peer-port-random-on-start": false, "bind-address-ipv4": "$ip",
  "encryption": 1, "message-level": 1, "speed-limit-down-enabled": false,
  "speed-limit-up-enabled": false, "alt-speed-enabled": false, "incomplete-dir-enabled": false,
  "download-dir": "$dl", "start-added-torrents": true, "rename-partial-files": false
}
JSON
      $TIME -v -o "$tfile" timeout "$TIMEOUT" transmission-cli -g "$cfg" -w "$dl" -p "$port" \
        -M -D -U "$work/bench.torrent" >"$log" 2>&1 &
      tpid=$!
      if wait_listening "$ip" "$port" 30; then
        echo "$ip:$port" >"$work/peers.txt"
      fi
      wait $tpid || rc=$?
      : >"$work/peers.txt"
      ;;
    *)
      echo "bench: unknown client $client" >&2
      continue
      ;;
  esac
  ok=no
  if [ "$rc" = 0 ] && cmp -s "$work/seed/bench.bin" "$dl/bench.bin"; then ok=yes; fi
  if [ "$ok" != yes ]; then
    echo "bench: $client failed (exit $rc); last log lines:" >&2
    tail -5 "$log" >&2 || true
  fi
  printf '%s\t%s\t%s\t%s\n' "$client" "$rc" "$ok" "$tfile" >>"$results"
  rm -rf "$dl"
done

python3 scripts/bench_report.py "$results" "$bytes"
