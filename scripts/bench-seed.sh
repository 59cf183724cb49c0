#!/usr/bin/env bash
# Benchmark: seeding. atorrent (`download --seed` over the complete data), transmission-cli and
# aria2c in turn serve the same single-file torrent (1 GiB by default) to one libtorrent
# downloader that dials the seeder directly (no tracker). Once the seeder is ready (its own
# hash check done: atorrent and transmission verify the data first, aria2c is told to trust it),
# scripts/bench_seed.py runs the downloader and samples the seeder's CPU (utime+stime) and RSS
# over the transfer. Prints the downloader's wall time and MB/s, the seeder's CPU s per GiB,
# its peak RSS during the transfer and its lifetime VmHWM, and atorrent's ratios. Every copy is
# compared with the original.
#
# Env: BENCH_SIZE_MB (1024), BENCH_PIECE_KB (1024), BENCH_TIMEOUT per seeder in s (600),
#      BENCH_SEEDERS_LIST ("atorrent transmission aria2c"), BENCH_PROFILE (release),
#      BENCH_DIR parent of the scratch dir.
# transmission unchokes on its 10 s rechoke pulse, so its wall time includes up to 10 s idle.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${BENCH_SIZE_MB:-1024}
PIECE_KB=${BENCH_PIECE_KB:-1024}
TIMEOUT=${BENCH_TIMEOUT:-600}
SEEDS=${BENCH_SEEDERS_LIST:-atorrent transmission aria2c}
PROFILE=${BENCH_PROFILE:-release}
PY=${PYTHON:-/usr/bin/python3}
LT_PEER=$PWD/tests/peers/lt_peer.py

for tool in aria2c transmission-cli; do
  command -v $tool >/dev/null || { echo "bench-seed: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done

BIN=$(bench_bin "$PROFILE")
echo "bench: measuring $BIN" >&2

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/atorrent-bench-seed.XXXXXX")
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

title="seeding: ${SIZE_MB} MiB, one file, to one libtorrent downloader"
echo "bench-seed: $title; ${PIECE_KB} KiB pieces, scratch $work"
mkdir -p "$work/seed"
bytes=$((SIZE_MB * 1024 * 1024))
head -c "$bytes" /dev/urandom >"$work/seed/bench.bin"
# The announce URL points at a closed port: the downloader is told the seeder's address.
dead_port=$(free_port 127.0.0.1)
"$PY" "$LT_PEER" --create "$work/seed/bench.bin" -o "$work/bench.torrent" \
  --tracker "http://127.0.0.1:$dead_port/announce" --piece-length $((PIECE_KB * 1024)) \
  >"$work/create.out"

results=$work/results.tsv
: >"$results"
n=29
for seeder in $SEEDS; do
  n=$((n + 1))
  ip=127.0.0.$n
  port=$(free_port "$ip")
  log=$work/$seeder.log
  echo "bench-seed: $seeder seeding on $ip:$port ..."
  case $seeder in
    atorrent)
      "$BIN" download --no-dht --seed "$work/bench.torrent" --dir "$work/seed" --bind "$ip" \
        --port "$port" >"$log" 2>&1 &
      spid=$!
      ready='^seeding '
      ;;
    transmission)
      cfg=$work/transmission-config
      rm -rf "$cfg"
      mkdir -p "$cfg"
      cat >"$cfg/settings.json" <<JSON
{
  "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
  "port-forwarding-enabled": false, "blocklist-enabled": false, "rpc-enabled": false,
  "ratio-limit-enabled": false, "idle-seeding-limit-enabled": false,
  "peer-port": $port, "peer-port-random-on-start": false, "bind-address-ipv4": "$ip",
  "encryption": 1, "message-level": 1, "speed-limit-down-enabled": false,
  "speed-limit-up-enabled": false, "alt-speed-enabled": false, "incomplete-dir-enabled": false,
  "download-dir": "$work/seed", "start-added-torrents": true, "rename-partial-files": false
}
JSON
      transmission-cli -g "$cfg" -w "$work/seed" -p "$port" -M -D -U "$work/bench.torrent" \
        >"$log" 2>&1 &
      spid=$!
      ready='Seeding'
      ;;
    aria2c)
      aria2c --no-conf=true --dir="$work/seed" --seed-ratio=0.0 --bt-seed-unverified=true \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
        --enable-peer-exchange=false --file-allocation=none --disable-ipv6=true \
        --interface="$ip" --listen-port="$port" --summary-interval=0 --enable-color=false \
        --console-log-level=warn --bt-tracker-connect-timeout=1 "$work/bench.torrent" >"$log" 2>&1 &
      spid=$!
      ready=
      ;;
    *)
      echo "bench-seed: unknown seeder $seeder" >&2
      continue
      ;;
  esac
  pids+=($spid)
  ok=no
  mfile=$work/measure-$seeder.txt
  if { [ -z "$ready" ] || wait_line "$log" "$ready" "$TIMEOUT" $spid; } &&
    wait_listening "$ip" "$port" 30; then
    dl=$work/dl-$seeder
    mkdir -p "$dl"
    dip=127.0.0.$((n + 100))
    dport=$(free_port "$dip")
    rc=0
    "$PY" scripts/bench_seed.py measure "$spid" "$mfile" -- \
      "$PY" -u "$LT_PEER" download --no-tracker --torrent "$work/bench.torrent" --dir "$dl" \
      --listen "$dip:$dport" --peer "$ip:$port" --timeout "$TIMEOUT" \
      >"$work/dl-$seeder.out" 2>"$work/dl-$seeder.err" || rc=$?
    if [ "$rc" = 0 ] && cmp -s "$work/seed/bench.bin" "$dl/bench.bin"; then ok=yes; fi
    rm -rf "$dl"
  fi
  if [ "$ok" != yes ]; then
    echo "bench-seed: $seeder failed; last seeder and downloader log lines:" >&2
    tail -3 "$log" >&2 || true
    tail -3 "$work/dl-$seeder.err" >&2 2>/dev/null || true
  fi
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  printf '%s\t%s\t%s\n' "$seeder" "$ok" "$mfile" >>"$results"
done

echo
echo "== $title"
"$PY" scripts/bench_seed.py report "$results" "$bytes"
