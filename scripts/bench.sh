#!/usr/bin/env bash
# Benchmark: download cases. libtorrent seeders behind opentracker serve a torrent (1 GiB by
# default) on loopback; atorrent, a libtorrent client, aria2c, transmission-cli and rqbit (only
# when `rqbit` is on PATH; it is never installed) download it in turn, each under /usr/bin/time
# -v. Prints wall time, MB/s, user+sys CPU seconds per GiB and peak RSS, and atorrent's ratio to
# each other client. Every copy is compared with the original.
#
# The same script runs the one-seeder case (default), the four-seeder case
# (scripts/bench-seeders.sh: BENCH_SEEDERS=4) and the many-files case (scripts/bench-files.sh:
# BENCH_FILES=2000, files of varied sizes in 20 directories summing to BENCH_SIZE_MB).
#
# Env: BENCH_SIZE_MB (1024), BENCH_PIECE_KB (1024), BENCH_TIMEOUT per client in s (600),
#      BENCH_SEEDERS (1), BENCH_FILES (1 = one file), BENCH_TITLE (table heading),
#      BENCH_CLIENTS ("atorrent libtorrent aria2c transmission", plus rqbit when installed),
#      BENCH_PROFILE cargo profile (release), BENCH_DIR parent of the scratch dir (TMPDIR or
#      /tmp; use a disk, not tmpfs, for 1 GiB), BENCH_ATORRENT_WRAP a command prefix for
#      atorrent only (e.g. "perf record -g -o /tmp/perf.data --"), BENCH_RQBIT_ARGS (extra
#      rqbit global flags, default --disable-dht), BENCH_BIN another atorrent binary (e.g. one
#      built with debug symbols for perf).
# transmission never dials loopback peers learned from a tracker, so the seeders dial it, and
# its times include its 10 s rechoke pulse before the first request.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SIZE_MB=${BENCH_SIZE_MB:-1024}
PIECE_KB=${BENCH_PIECE_KB:-1024}
TIMEOUT=${BENCH_TIMEOUT:-600}
SEEDERS=${BENCH_SEEDERS:-1}
FILES=${BENCH_FILES:-1}
default_clients="atorrent libtorrent aria2c transmission"
if command -v rqbit >/dev/null; then default_clients="$default_clients rqbit"; fi
CLIENTS=${BENCH_CLIENTS:-$default_clients}
PROFILE=${BENCH_PROFILE:-release}
WRAP=${BENCH_ATORRENT_WRAP:-}
PY=${PYTHON:-/usr/bin/python3}
LT_PEER=$PWD/tests/peers/lt_peer.py
TIME=/usr/bin/time
if [ "$FILES" = 1 ]; then shape="one file"; else shape="$FILES files"; fi
TITLE=${BENCH_TITLE:-"download: ${SIZE_MB} MiB, $shape, $SEEDERS libtorrent seeder(s)"}

for tool in opentracker aria2c transmission-cli; do
  command -v $tool >/dev/null || { echo "bench: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done
[ -x $TIME ] || { echo "bench: $TIME missing (package time): run scripts/setup.sh" >&2; exit 1; }

BIN=$(bench_bin "$PROFILE")
echo "bench: measuring $BIN" >&2

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
tracker_port=$(free_port $TRACKER_IP)

echo "bench: $TITLE; ${PIECE_KB} KiB pieces, scratch $work"
mkdir -p "$work/seed" "$work/tracker"
bytes=$((SIZE_MB * 1024 * 1024))
if [ "$FILES" = 1 ]; then
  name=bench.bin
  head -c "$bytes" /dev/urandom >"$work/seed/$name"
else
  name=bench
  "$PY" scripts/bench_mkfiles.py "$work/seed/$name" "$FILES" "$bytes"
fi
"$PY" "$LT_PEER" --create "$work/seed/$name" -o "$work/bench.torrent" \
  --tracker "http://$TRACKER_IP:$tracker_port/announce" --piece-length $((PIECE_KB * 1024)) \
  >"$work/create.out"
hash=$(sed -n 's/^infohash //p' "$work/create.out")
# The payload was just written: flush it to disk so its writeback does not land on the first
# client measured.
sync

# opentracker: whitelist inside its chroot; TCP only.
echo "$hash" >"$work/tracker/whitelist"
chmod 755 "$work/tracker"
chmod 644 "$work/tracker/whitelist"
opentracker -i $TRACKER_IP -p "$tracker_port" -d "$work/tracker" -w whitelist \
  >"$work/tracker.log" 2>&1 &
pids+=($!)
wait_listening $TRACKER_IP "$tracker_port" 10

# The seeders (127.0.0.2, .3, ...) hash-check the data before they report ready, so no client
# pays for it (in --seed-mode libtorrent hashes each piece when it is first requested, which
# made the first client measured share the seeder's CPU with its hashing). They dial whatever
# address is written to peers.txt (for transmission).
: >"$work/peers.txt"
seeder_pids=()
for s in $(seq 1 "$SEEDERS"); do
  sip=127.0.0.$((s + 1))
  sport=$(free_port "$sip")
  "$PY" -u "$LT_PEER" seed --torrent "$work/bench.torrent" --dir "$work/seed" \
    --listen "$sip:$sport" --peers-file "$work/peers.txt" \
    --timeout $((TIMEOUT * 6 + 120)) >"$work/seeder$s.out" 2>"$work/seeder$s.err" &
  spid=$!
  pids+=($spid)
  seeder_pids+=($spid)
  wait_line "$work/seeder$s.out" '^ready' 60 $spid
done
# Let every seeder announce before the first client asks the tracker.
sleep 1

same() {
  if [ "$FILES" = 1 ]; then cmp -s "$work/seed/$name" "$1/$name"; else diff -rq "$work/seed/$name" "$1/$name" >/dev/null; fi
}

# seeders_ticks: user+system clock ticks used so far by the seeder processes (all threads).
seeders_ticks() {
  local t=0 p
  for p in "${seeder_pids[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $t
}

results=$work/results.tsv
: >"$results"
n=19
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
  s0=$(seeders_ticks)
  case $client in
    atorrent)
      # shellcheck disable=SC2086
      $TIME -v -o "$tfile" timeout "$TIMEOUT" $WRAP "$BIN" download --no-dht "$work/bench.torrent" --dir "$dl" \
        --bind "$ip" --port "$port" >"$log" 2>&1 || rc=$?
      ;;
    libtorrent)
      $TIME -v -o "$tfile" "$PY" -u "$LT_PEER" download --torrent "$work/bench.torrent" --dir "$dl" \
        --listen "$ip:$port" --timeout "$TIMEOUT" >"$log" 2>&1 || rc=$?
      ;;
    rqbit)
      # shellcheck disable=SC2086
      $TIME -v -o "$tfile" timeout "$TIMEOUT" rqbit ${BENCH_RQBIT_ARGS:---disable-dht} download \
        -o "$dl" --exit-on-finish "$work/bench.torrent" >"$log" 2>&1 || rc=$?
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
      rm -rf "$cfg"
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
  if [ "$rc" = 0 ] && same "$dl"; then ok=yes; fi
  if [ "$ok" != yes ]; then
    echo "bench: $client failed (exit $rc); last log lines:" >&2
    tail -5 "$log" >&2 || true
  fi
  s1=$(seeders_ticks)
  seed_cpu=$(python3 -c 'import sys; print(int(sys.argv[1]) / int(sys.argv[2]))' $((s1 - s0)) "$(getconf CLK_TCK)")
  printf '%s\t%s\t%s\t%s\t%s\n' "$client" "$rc" "$ok" "$tfile" "$seed_cpu" >>"$results"
  rm -rf "$dl"
  # Write back this client's dirty pages (and the deletion) now, not during the next client.
  sync
done

echo
echo "== $TITLE"
python3 scripts/bench_report.py "$results" "$bytes"
